"""Files that are never half-written: atomic file and folder writes, JSON, and the one safe ``torch.load``.

Every writer here puts its bytes into a temporary name in the destination folder, fsyncs, then renames
over the destination, so a crash or kill at any moment leaves either the old file or the new one.
Written files get the usual permissions (0666 minus the process umask), not the 0600 of a temp file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import re
import shutil
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch

# everything official JiT checkpoints pickle beyond tensors and plain values
SAFE_GLOBALS = [argparse.Namespace]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """Permissions a plain ``open(path, "w")`` would give: 0666 minus the umask."""
    return 0o666 & ~_umask()


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entry table (so a rename inside it survives a power cut); best effort."""
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


def temp_name(path: Path, tag: str = "tmp") -> Path:
    """A hidden sibling name for ``path`` unique to this process: ``.name.tmpPID``."""
    return path.with_name(f".{path.name}.{tag}{os.getpid()}")


def atomic_write_path(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Atomically create ``path`` with ``write(tmp_path)`` (for writers that want a file name)."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Atomically create ``path`` with ``write(fileobj)`` (a binary file object)."""

    def to_file(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            write(f)

    return atomic_write_path(path, to_file)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically replace a small text file."""
    return atomic_write_bytes(path, lambda f: f.write(text.encode()))


def save_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write pretty JSON (values JSON does not know are written as strings)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON file holding an object; a one-line ValueError naming the file otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name, then move it to ``path`` in one rename.

    ``with atomic_folder(out) as tmp: ...write files into tmp...``. An existing non-empty ``path`` is
    refused unless ``overwrite``; then the old folder is swapped out and removed only after the new one
    is in place (and put back if the swap fails).
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} exists and is not empty (pass --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = temp_name(path), temp_name(path, "old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old.exists():
                os.replace(old, path)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(path.parent)


# --------------------------------------------------------------------------------------------
# Safe torch.load
# --------------------------------------------------------------------------------------------


def _unsafe_globals(path: Path, err: Exception) -> str | None:
    """Name the globals that made the safe unpickler refuse a file (static scan; nothing is run)."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        if names:
            return ", ".join(names)
    except Exception:  # noqa: BLE001 - the scan is only for the message; fall back to the error text
        pass
    match = re.search(r"GLOBAL\s+([\w.]+)", str(err))
    return match.group(1) if match else None


def _unpickler_reason(err: Exception) -> str:
    text = str(err).split("WeightsUnpickler error:")[-1].split("Check the documentation")[0]
    return " ".join(text.split()) or "unreadable pickle"


def safe_torch_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True``: tensors, plain values and ``argparse.Namespace`` only.

    Zip-format files are memory-mapped, so only the tensors that are used get read. A file that pickles
    anything else is refused with a one-line error naming what it pickles; nothing in it is executed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(path, map_location=map_location, weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        offending = _unsafe_globals(path, err)
        if offending is None:
            raise ValueError(f"cannot read {path} as a torch checkpoint: {_unpickler_reason(err)}") from None
        raise ValueError(
            f"refusing to load {path}: it pickles {offending}, which is not allowed "
            f"(only tensors, plain values and argparse.Namespace; nothing was executed)"
        ) from None
    except Exception as err:  # noqa: BLE001 - corrupt or foreign file: one line naming it
        raise ValueError(f"cannot read {path} as a torch checkpoint: {str(err).strip().splitlines()[0]}") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, expected a checkpoint dict")
    return obj
