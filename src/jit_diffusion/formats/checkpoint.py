"""Training checkpoints: atomic writes, a ``latest`` pointer, keep-last-k, safe loading.

A run folder holds ``checkpoints/step_XXXXXXXX.pt`` files and a ``checkpoints/latest`` text file
naming the newest complete one. A checkpoint is written to a temporary file, fsynced, then renamed,
and only after that is ``latest`` replaced (the same way), so a crash or kill at any moment leaves
the previous checkpoint and pointer intact. Files hold only tensors and plain Python values and are
read with ``torch.load(weights_only=True)``: loading never runs pickled code.

A full disk or a read-only folder during a save is a one-line :class:`CheckpointWriteError` naming the
folder and the bytes needed; the partial file is removed and the previous checkpoint stays. On the way
in, :func:`verify_checkpoint` checks a file's zip structure, size and pickle checksum, and
:func:`latest_checkpoint` skips (with a warning) a newest checkpoint that fails it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import re
import shutil
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from ..core.errors import UserError
from ..core.fileio import atomic_write_bytes, atomic_write_text, safe_torch_load
from ..models.config import DEFAULT_FAMILY, ModelInfo, family_spec

CKPT_DIR = "checkpoints"
LATEST = "latest"
_STEP_RE = re.compile(r"^step_(\d{8,})\.pt$")

# a write that fails for one of these reasons is the user's to fix (space, quota, permissions)
_STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}

__all__ = [
    "CKPT_DIR", "LATEST", "CheckpointWriteError", "ModelInfo", "checkpoint_path", "checkpoint_candidates",
    "info_from_training", "is_training_checkpoint", "latest_checkpoint", "list_checkpoints", "read_checkpoint",
    "resolve_checkpoint", "save_checkpoint", "state_nbytes", "training_family", "training_weights",
    "verify_checkpoint", "writing_to",
]  # fmt: skip


class CheckpointWriteError(UserError):
    """A checkpoint (or other run file) could not be written: no space, a quota, a read-only folder."""


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CKPT_DIR / f"step_{step:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint files of a run, oldest first."""
    folder = Path(run_dir) / CKPT_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _STEP_RE.match(p.name))


def state_nbytes(obj: Any) -> int:
    """Bytes of tensor data in a (nested) state: about the size of its checkpoint file."""
    if isinstance(obj, torch.Tensor):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_nbytes(v) for v in obj)
    return 0


def _megabytes(count: float) -> str:
    return f"{count / 1e6:,.1f} MB"


def _free_bytes(folder: Path) -> int | None:
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    try:
        return shutil.disk_usage(existing).free if existing is not None else None
    except OSError:
        return None


@contextlib.contextmanager
def writing_to(folder: str | Path, what: str, needed: int = 0) -> Iterator[None]:
    """Turn a write failing for lack of space or permission into a one-line :class:`CheckpointWriteError`
    naming ``folder``, the bytes ``needed`` and those free; other errors pass through."""
    try:
        yield
    except OSError as err:
        if err.errno not in _STORAGE_ERRORS:
            raise
        folder, free = Path(folder), _free_bytes(Path(folder))
        room = f"; {_megabytes(free)} free there" if free is not None else ""
        need = f" (needs about {_megabytes(needed)}{room})" if needed else room
        raise CheckpointWriteError(f"cannot write {what} to {folder}: {err.strerror or err}{need}") from None


def save_checkpoint(state: dict[str, Any], run_dir: str | Path, step: int, keep_last: int = 3) -> Path:
    """Write ``state`` as the checkpoint of ``step``, point ``latest`` at it, prune older ones.

    On a full disk or a read-only folder this raises :class:`CheckpointWriteError` (one line) and
    leaves the previous checkpoint and ``latest`` as they were."""
    folder = Path(run_dir) / CKPT_DIR
    path = checkpoint_path(run_dir, step)
    with writing_to(folder, f"checkpoint {path.name}", needed=state_nbytes(state)):
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, lambda f: torch.save(state, f))
        atomic_write_text(folder / LATEST, path.name + "\n")
    if keep_last > 0:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            if old != path:
                old.unlink(missing_ok=True)
    return path


def verify_checkpoint(path: str | Path) -> str | None:
    """None if ``path`` looks complete, else why not: a torch zip file whose directory is intact,
    whose records all lie inside the file, and whose pickle matches its CRC-32."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
            beyond = [r.filename for r in records if r.header_offset + r.compress_size > size]
            if beyond:
                return f"truncated: record {beyond[0]} ends past the file's {size} bytes"
            pickles = [r for r in records if r.filename.endswith("data.pkl")]
            if not pickles:
                return "no data.pkl record: not a torch checkpoint"
            archive.read(pickles[0])  # checks the record's CRC-32
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        return f"truncated or not a checkpoint ({err})" if isinstance(err, zipfile.BadZipFile) else str(err)
    return None


def _pointed(pointer: Path) -> Path | None:
    """The checkpoint a ``latest`` file names, or None (with a warning) when that file is missing."""
    candidate = pointer.parent / pointer.read_text().strip()
    if candidate.is_file():
        return candidate
    warnings.warn(f"{pointer} names a missing file; using the newest checkpoint instead", stacklevel=3)
    return None


def checkpoint_candidates(run_dir: str | Path) -> list[Path]:
    """Checkpoints to resume from, best first: the one ``latest`` names (the newest if it names a
    missing file), then every older one, newest first."""
    found = list_checkpoints(run_dir)
    pointer = Path(run_dir) / CKPT_DIR / LATEST
    if pointer.is_file() and (named := _pointed(pointer)) is not None:
        return [named, *reversed([p for p in found if p.name < named.name])]
    return list(reversed(found))


def latest_checkpoint(run_dir: str | Path, verify: bool = True) -> Path | None:
    """The checkpoint ``latest`` names; if it is missing, the newest complete one; None if none.

    With ``verify``, a candidate that fails :func:`verify_checkpoint` (say, truncated by a full disk)
    is skipped with a warning naming it, in favour of the next older one."""
    for candidate in checkpoint_candidates(run_dir):
        problem = verify_checkpoint(candidate) if verify else None
        if problem is None:
            return candidate
        warnings.warn(f"skipping checkpoint {candidate}: {problem}", stacklevel=2)
    return None


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


def training_family(ckpt: dict) -> str:
    """The model family a training checkpoint records (``model_family``; absent: ``jit``)."""
    return str(ckpt.get("model_family") or DEFAULT_FAMILY)


def info_from_training(ckpt: dict, source: str, weights: str) -> ModelInfo:
    """The :class:`ModelInfo` of a training checkpoint: its family, model config, classes, flow and the
    sampling settings the run recorded (for pMF: omega, the interval in our time and the step count)."""
    cfg, spec = ckpt["config"], family_spec(training_family(ckpt), source)
    return ModelInfo.create(
        ckpt["model_config"], ckpt.get("class_names"), prediction=cfg.get("prediction"),
        noise_scale=cfg.get("noise_scale"), t_eps=cfg.get("t_eps"), cfg=cfg.get("sample_cfg"),
        cfg_interval=cfg.get("sample_interval"), method=cfg.get("sample_method"), source=source, weights=weights,
        step=int(ckpt.get("step", 0)), family=spec.name,
        steps=cfg.get("sample_steps") if spec.steps is not None else None,  # JiT runs: the CLI's default
    )  # fmt: skip


def weights_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names, dtypes, shapes and tensor bytes (in name order): which weights
    made a folder's images, whatever file or path they were loaded from."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach()
        digest.update(f"{name}:{str(tensor.dtype).removeprefix('torch.')}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
