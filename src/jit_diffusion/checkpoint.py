"""Training checkpoints: atomic writes, a ``latest`` pointer, keep-last-k, safe loading.

A run folder holds ``checkpoints/step_XXXXXXXX.pt`` files and a ``checkpoints/latest`` text file
naming the newest complete one. A checkpoint is written to a temporary file, fsynced, then renamed,
and only after that is ``latest`` replaced (the same way), so a crash or kill at any moment leaves
the previous checkpoint and pointer intact. Files hold only tensors and plain Python values and are
read with ``torch.load(weights_only=True)``: loading never runs pickled code.

:func:`load_model` opens anything a user may point at for inference: a run folder, a training
checkpoint, an exported folder (``config.json`` + ``model.safetensors``) or an official ``.pth``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from .model import JiT, JiTConfig

CKPT_DIR = "checkpoints"
LATEST = "latest"
_STEP_RE = re.compile(r"^step_(\d{8,})\.pt$")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, write) -> None:
    """Write a file atomically: ``write(fileobj)`` into ``path.tmp``, fsync, rename over ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically replace a small text file."""
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


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


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint ``latest`` names; if it is missing, the newest complete one; None if none."""
    folder = Path(run_dir) / CKPT_DIR
    pointer = folder / LATEST
    if pointer.is_file():
        candidate = folder / pointer.read_text().strip()
        if candidate.is_file():
            return candidate
        warnings.warn(f"{pointer} names a missing file; using the newest checkpoint instead", stacklevel=2)
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a training checkpoint safely (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - unreadable or unsafe file: report which
        raise ValueError(f"cannot load checkpoint {path}: {str(err).splitlines()[0]}") from err


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder -> its latest checkpoint; a checkpoint file -> itself."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"no checkpoint in run folder {path} (expected {CKPT_DIR}/step_*.pt)")
        return found
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    return path


# --------------------------------------------------------------------------------------------
# Inference loading
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ModelInfo:
    """What a sampler needs to know beside the weights."""

    model_config: dict
    class_names: list[str]
    prediction: str = "x"
    noise_scale: float = 1.0
    t_eps: float = 0.05
    cfg: float = 1.0
    cfg_interval: tuple[float, float] = (0.1, 1.0)
    source: str = ""
    weights: str = "ema1"
    step: int | None = None

    @property
    def num_classes(self) -> int:
        return int(self.model_config["num_classes"])

    @property
    def image_size(self) -> int:
        return int(self.model_config["input_size"])


def model_from_config(model_config: dict) -> JiT:
    """Build a JiT from a config dict, ignoring unknown keys with a clear error for missing ones."""
    fields = {f.name for f in dataclasses.fields(JiTConfig)}
    return JiT(**{k: v for k, v in model_config.items() if k in fields})


def _info_from_training(ckpt: dict, source: str, weights: str) -> ModelInfo:
    cfg = ckpt["config"]
    return ModelInfo(
        model_config=ckpt["model_config"],
        class_names=list(ckpt.get("class_names", [])),
        prediction=cfg.get("prediction", "x"),
        noise_scale=float(cfg.get("noise_scale", 1.0)),
        t_eps=float(cfg.get("t_eps", 0.05)),
        cfg=float(cfg.get("sample_cfg", 1.0)),
        cfg_interval=tuple(cfg.get("sample_interval", (0.1, 1.0))),
        source=source,
        weights=weights,
        step=int(ckpt.get("step", 0)),
    )


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


def load_model(
    path: str | Path, weights: str = "ema1", device: str | torch.device = "cpu"
) -> tuple[JiT, ModelInfo]:
    """Open a run folder, training checkpoint, exported folder or official ``.pth`` for inference.

    ``weights`` picks ``ema1`` (default), ``ema2`` or ``raw``. Returns the model in eval mode on
    ``device`` (``auto``: CUDA when available) and a :class:`ModelInfo`.
    """
    from .generate import resolve_device

    path = Path(path)
    device = resolve_device(device)
    if path.is_dir() and (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        from .convert import load_pretrained

        return load_pretrained(path, device=device)
    if path.is_file() and path.suffix == ".pth":
        from .convert import load_official

        return load_official(path, weights=weights, device=device)
    ckpt_path = resolve_checkpoint(path)
    ckpt = read_checkpoint(ckpt_path)
    if "model_config" not in ckpt or "model" not in ckpt:
        raise ValueError(f"{ckpt_path} is not a jit-diffusion training checkpoint (no model_config/model)")
    model = model_from_config(ckpt["model_config"])
    model.load_state_dict(training_weights(ckpt, weights), strict=True)
    return model.to(device).eval(), _info_from_training(ckpt, str(ckpt_path), weights)


def save_json(path: str | Path, obj: Any) -> None:
    """Atomically write pretty JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
