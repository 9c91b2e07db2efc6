"""FSDP2 sharding for large presets, and state-dict helpers that work sharded or not.

With ``--fsdp`` under torchrun every block and then the root module are wrapped by
``torch.distributed.fsdp.fully_shard``: parameters, gradients, optimizer states and EMAs live as
1/N shards per process, and each block's weights are all-gathered just in time for its forward and
backward. Checkpoints are still written as full (unsharded) tensors, so a run can resume with or
without FSDP and on another number of processes.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

try:  # torch >= 2.6
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # pragma: no cover - older torch
    DTensor = ()  # type: ignore[assignment]
    distribute_tensor = None


def apply_fsdp(model: nn.Module, blocks: Iterable[nn.Module] | None = None) -> nn.Module:
    """Shard each transformer block (default ``model.blocks``), then the rest of the model (in place);
    returns the model."""
    from torch.distributed.fsdp import fully_shard

    for block in model.blocks if blocks is None else blocks:
        fully_shard(block)
    fully_shard(model)
    return model


def is_sharded(t: torch.Tensor) -> bool:
    return bool(DTensor) and isinstance(t, DTensor)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (an all-gather for a shard, which every rank must call)."""
    return t.full_tensor() if is_sharded(t) else t


def copy_into(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Copy a full tensor into ``dst``, taking only this rank's shard when ``dst`` is sharded."""
    if is_sharded(dst):
        local = distribute_tensor(src.to(dst.device_mesh.device_type), dst.device_mesh, dst.placements)
        dst.to_local().copy_(local.to_local())
    else:
        dst.copy_(src)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full CPU state dict of a sharded or plain model (collective under FSDP)."""
    return {k: full_tensor(v.detach()).cpu() for k, v in model.state_dict().items()}


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, sharded: bool) -> dict:
    """Optimizer state with full tensors (collective under FSDP)."""
    if not sharded:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                               cpu_offload=True))


# what an optimizer was built with rather than what it learnt: a resumed run keeps its own (a run saved with
# --cuda-graph may resume without it, or under FSDP without it, and the other way round)
KERNEL_SETTINGS = ("capturable", "fused", "foreach", "lr")


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict, sharded: bool) -> None:
    """Load a full optimizer state dict, re-sharding it under FSDP; every group keeps this optimizer's
    ``KERNEL_SETTINGS`` (the schedule sets the learning rate before each step)."""
    own = [{k: group[k] for k in KERNEL_SETTINGS if k in group} for group in optimizer.param_groups]
    state = {**state, "param_groups": [{**saved, **mine} for saved, mine in zip(state["param_groups"], own)]}
    if not sharded:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True))
