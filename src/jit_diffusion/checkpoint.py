"""Training checkpoints: atomic writes, a ``latest`` pointer, keep-last-k, safe loading.

A run folder holds ``checkpoints/step_XXXXXXXX.pt`` files and a ``checkpoints/latest`` text file
naming the newest complete one. A checkpoint is written to a temporary file, fsynced, then renamed,
and only after that is ``latest`` replaced (the same way), so a crash or kill at any moment leaves
the previous checkpoint and pointer intact. Files hold only tensors and plain Python values and are
read with ``torch.load(weights_only=True)``: loading never runs pickled code.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch

from .config import ModelInfo
from .fileio import atomic_write_bytes, atomic_write_text, safe_torch_load

CKPT_DIR = "checkpoints"
LATEST = "latest"
_STEP_RE = re.compile(r"^step_(\d{8,})\.pt$")

__all__ = [
    "CKPT_DIR", "LATEST", "ModelInfo", "checkpoint_path", "info_from_training", "is_training_checkpoint",
    "latest_checkpoint", "list_checkpoints", "read_checkpoint", "resolve_checkpoint", "save_checkpoint",
    "training_weights",
]  # fmt: skip


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CKPT_DIR / f"step_{step:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint files of a run, oldest first."""
    folder = Path(run_dir) / CKPT_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _STEP_RE.match(p.name))


def save_checkpoint(state: dict[str, Any], run_dir: str | Path, step: int, keep_last: int = 3) -> Path:
    """Write ``state`` as the checkpoint of ``step``, point ``latest`` at it, prune older ones."""
    folder = Path(run_dir) / CKPT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(run_dir, step)
    atomic_write_bytes(path, lambda f: torch.save(state, f))
    atomic_write_text(folder / LATEST, path.name + "\n")
    if keep_last > 0:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            if old != path:
                old.unlink(missing_ok=True)
    return path


def _pointed(pointer: Path) -> Path | None:
    """The checkpoint a ``latest`` file names, or None (with a warning) when that file is missing."""
    candidate = pointer.parent / pointer.read_text().strip()
    if candidate.is_file():
        return candidate
    warnings.warn(f"{pointer} names a missing file; using the newest checkpoint instead", stacklevel=3)
    return None


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint ``latest`` names; if it is missing, the newest complete one; None if none."""
    pointer = Path(run_dir) / CKPT_DIR / LATEST
    if pointer.is_file() and (found := _pointed(pointer)) is not None:
        return found
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder (or its ``checkpoints/`` folder, or the ``latest`` pointer) -> the latest checkpoint;
    a checkpoint file -> itself."""
    path = Path(path)
    if path.is_dir():
        run = path.parent if path.name == CKPT_DIR and not (path / CKPT_DIR).is_dir() else path
        found = latest_checkpoint(run)
        if found is None:
            raise FileNotFoundError(f"no checkpoint in run folder {path} (expected {CKPT_DIR}/step_*.pt)")
        return found
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.name == LATEST and path.parent.name == CKPT_DIR:
        found = latest_checkpoint(path.parent.parent)
        if found is None:
            raise FileNotFoundError(f"{path} names no existing checkpoint")
        return found
    return path


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a training checkpoint safely (``weights_only=True``)."""
    return safe_torch_load(path, map_location=map_location)


def is_training_checkpoint(ckpt: dict[str, Any]) -> bool:
    """Whether a loaded checkpoint dict was written by ``jit train``."""
    return "model_config" in ckpt and "model" in ckpt


def training_weights(ckpt: dict, weights: str = "ema1") -> dict[str, torch.Tensor]:
    """Pick ``raw`` (the trained weights) or an EMA (``ema1``, ``ema2``, ...) from a training checkpoint."""
    if weights in ("raw", "model"):
        return ckpt["model"]
    emas = ckpt.get("ema", {})
    if weights not in emas:
        raise ValueError(f"checkpoint has no weights {weights!r}; choose one of {['raw', *emas]}")
    state = dict(ckpt["model"])  # buffers/non-EMA entries from the model, parameters from the EMA
    state.update(emas[weights])
    return state


def info_from_training(ckpt: dict, source: str, weights: str) -> ModelInfo:
    """The :class:`ModelInfo` of a training checkpoint: its model config, classes, flow and grid settings."""
    cfg = ckpt["config"]
    return ModelInfo.create(
        ckpt["model_config"], ckpt.get("class_names"), prediction=cfg.get("prediction"),
        noise_scale=cfg.get("noise_scale"), t_eps=cfg.get("t_eps"), cfg=cfg.get("sample_cfg"),
        cfg_interval=cfg.get("sample_interval"), source=source, weights=weights, step=int(ckpt.get("step", 0)),
    )  # fmt: skip
