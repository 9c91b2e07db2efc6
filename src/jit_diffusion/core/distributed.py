"""torchrun integration: process-group setup from the environment, rank helpers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .device import resolve_device


@dataclass
class DistInfo:
    """This process's place in the job (world_size 1 when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", timeout: timedelta | None = None) -> DistInfo:
    """Read RANK/WORLD_SIZE/LOCAL_RANK set by torchrun; init NCCL on GPUs, gloo on CPU (collectives wait
    up to ``timeout``, default PyTorch's).

    Works for one node or many (torchrun's rendezvous provides MASTER_ADDR/PORT). Without those
    variables this is a single process on ``device`` (``auto``: cuda if available, else cpu).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None,
                                **({"timeout": timeout} if timeout is not None else {}))  # fmt: skip
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()


def all_gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj``, in rank order (just ``[obj]`` in a single process)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, info: DistInfo, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean over ranks (on a copy)."""
    return all_reduce_sum(tensor, info) / info.world_size if info.enabled else tensor


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum over ranks (on a copy)."""
    if not info.enabled:
        return tensor
    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def cleanup(info: DistInfo) -> None:
    """Tear the process group down once every rank is here (a peer still inside a collective while the
    group is destroyed can abort the process)."""
    if info.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
