"""The state of a run that a checkpoint holds, and how a resumed run gets it back exactly.

A checkpoint holds full (unsharded) CPU tensors: model, EMAs, optimizer; plus the step, the config,
the class names and the RNG state of every rank (the dropout masks are the only draws that use it).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from ..core.distributed import DistInfo, all_gather_objects, broadcast_object
from ..core.errors import UserError
from ..core.parallel import full_state_dict, full_tensor, load_optimizer_state, optimizer_state
from ..diffusion.ema import EMA
from ..formats.checkpoint import CheckpointWriteError, read_checkpoint, save_checkpoint
from .config import TRAJECTORY_FIELDS, TrainConfig
from .pmf_optim import MuonWithAdam

_DEFAULTS = dataclasses.asdict(TrainConfig())


def rng_state(device: torch.device) -> dict:
    """This process's torch RNG state (CPU, and CUDA on a GPU)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def read_resume(path: Path, cfg: TrainConfig) -> dict:
    """Load the checkpoint to resume from; refuse it if it was trained with other trajectory settings."""
    ckpt = read_checkpoint(path, map_location="cpu")
    saved = {**_DEFAULTS, **ckpt["config"]}  # a field added since the checkpoint was written: its default
    changed = {k: (saved.get(k), getattr(cfg, k)) for k in TRAJECTORY_FIELDS if saved.get(k) != getattr(cfg, k)}
    if changed:
        detail = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in sorted(changed.items()))
        raise UserError(f"--resume: {path} was trained with other settings ({detail})")
    return ckpt


def training_state(
    *, raw_model: nn.Module, model: nn.Module, ema: EMA, optimizer: torch.optim.Optimizer, sharded: bool,
    dist: DistInfo, step: int, steps_per_epoch: int, cfg: TrainConfig, class_names: list[str],
) -> dict:  # fmt: skip
    """Everything needed to continue exactly; collective (every rank must call it)."""
    rng_states = all_gather_objects(rng_state(dist.device), dist)
    epoch, batch = divmod(step, steps_per_epoch)
    return {
        "model": full_state_dict(raw_model),
        "ema": {name: {k: full_tensor(v).cpu() for k, v in sd.items()} for name, sd in ema.state_dict().items()},
        "optimizer": optimizer_state(model, optimizer, sharded),
        "step": step,
        "epoch": epoch,
        "data_position": {"epoch": epoch, "batch": batch},
        "rng": [{k: v.cpu() for k, v in s.items()} for s in rng_states],
        "config": dataclasses.asdict(cfg),
        "model_config": dataclasses.asdict(raw_model.config),
        "class_names": class_names,
        "world_size": dist.world_size,
        **({"model_family": cfg.family} if cfg.family != "jit" else {}),  # absent: jit (older checkpoints)
    }


def restore_training_state(
    ckpt: dict, *, model: nn.Module, ema: EMA, optimizer: torch.optim.Optimizer, sharded: bool, dist: DistInfo
) -> int:
    """EMAs, optimizer and RNG from ``ckpt`` (model weights are loaded before wrapping); returns the step."""
    ema.load_state_dict(ckpt["ema"])
    if isinstance(optimizer, MuonWithAdam):  # one state per inner optimizer
        for name, inner in (("muon", optimizer.muon), ("adam", optimizer.adam)):
            if inner is not None:
                load_optimizer_state(model, inner, ckpt["optimizer"][name], sharded)
    else:
        load_optimizer_state(model, optimizer, ckpt["optimizer"], sharded)
    states = ckpt.get("rng", [])
    if len(states) == dist.world_size:
        set_rng_state(states[dist.rank], dist.device)
    elif dist.is_main:
        print(f"--resume: {len(states)} saved RNG states for {dist.world_size} processes; dropout masks "
              f"will differ from an uninterrupted run (all other draws do not)")  # fmt: skip
    return int(ckpt["step"])


def save_state(
    state: dict, run_dir: Path, step: int, keep_last: int, dist: DistInfo, previous: Path | None = None
) -> Path | None:
    """Rank 0 writes the checkpoint of ``step`` (and prunes to ``keep_last``); every rank waits for it.

    If the write fails for lack of space or permission, every rank raises the same one-line
    :class:`CheckpointWriteError`, which also names ``previous`` (still intact)."""
    path, error = None, None
    if dist.is_main:
        try:
            path = save_checkpoint(state, run_dir, step, keep_last=keep_last)
        except CheckpointWriteError as err:
            error = f"{err}; the previous checkpoint {previous or '(none)'} is intact"
    error = broadcast_object(error, dist)  # also the barrier after the write
    if error is not None:
        raise CheckpointWriteError(error)
    return path
