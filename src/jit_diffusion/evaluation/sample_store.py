"""The sample store of ``jit eval``: a setting's images as resumable, rank-sharded chunks.

A folder ``samples/`` holds ``chunk_00000.npz`` ... (``arr_0`` uint8 (n, H, W, 3), ``labels`` (n,)) and
``settings.json``, everything that determines the images. Image ``i`` gets class ``i % num_classes``
and the noise of index ``i``, so chunks are independent: a rerun skips complete chunks, and rank
``r`` of ``w`` processes generates the chunks ``k`` with ``k % w == r``. The chunks stream into one
ADM-style ``.npz`` without holding every image in memory.
"""

from __future__ import annotations

import io
import json
import math
import time
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from ..core.fileio import atomic_write_bytes, save_json
from ..diffusion.generate import generate
from ..formats.checkpoint import weights_digest  # noqa: F401 (its home before it moved down a layer)

SETTINGS_FILE = "settings.json"
IDENTITY = ("model", "step")  # describe the weights in settings.json; their sha256 decides


def sample_labels(num: int, num_classes: int) -> np.ndarray:
    """Class of image i: ``i % num_classes`` (every class equally often when num is a multiple); 0 when
    unconditional (the null label of a num_classes = 0 model)."""
    if num_classes <= 0:
        return np.zeros(num, dtype=np.int64)
    return np.arange(num, dtype=np.int64) % num_classes


def chunk_path(samples_dir: Path, k: int) -> Path:
    """File of chunk ``k``."""
    return samples_dir / f"chunk_{k:05d}.npz"


def read_chunk(path: Path, expected: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(images, labels) of ``path`` if it is a readable chunk of ``expected`` images and labels, else None."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as f:
            images, labels = f["arr_0"], f["labels"]
    except Exception:  # noqa: BLE001 - unreadable: regenerate it
        return None
    return (images, labels) if len(labels) == expected and images.shape[0] == expected else None


def chunk_complete(path: Path, expected: int) -> bool:
    """Whether ``path`` is a readable chunk of ``expected`` images and labels."""
    return read_chunk(path, expected) is not None


def _weights_line(record: dict) -> str:
    sha = record.get("weights_sha256")
    step = "" if record.get("step") is None else f" step {record['step']}"
    return f"{record.get('model')}{step} {record.get('weights')}, sha256 {sha[:12] if sha else 'not recorded'}"


def check_resume(samples_dir: Path, settings: dict, write: bool) -> None:
    """Refuse to add to a folder whose images were made by other weights (``weights_sha256``, see
    :func:`weights_digest`; the ``model`` path and ``step`` only describe them) or with other ``settings``;
    record them in a new folder when ``write``."""
    path = samples_dir / SETTINGS_FILE
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("weights_sha256") != settings.get("weights_sha256"):
            raise ValueError(f"{samples_dir} holds samples of another model ({_weights_line(old)}; now "
                             f"{_weights_line(settings)}): pass another --out or remove it")  # fmt: skip
        # both ways: a setting named only when it is not the default (time_grid, final) may be on either side
        changed = sorted(k for k in settings.keys() | old.keys() if old.get(k) != settings.get(k) and k not in IDENTITY)
        if changed:
            raise ValueError(f"{samples_dir} holds samples made with other settings ({', '.join(changed)}): "
                             "use another --out or delete that folder")  # fmt: skip
    elif write:
        samples_dir.mkdir(parents=True, exist_ok=True)
        save_json(path, settings)


def generate_chunks(
    model,
    samples_dir: str | Path,
    labels: np.ndarray,
    *,
    chunk_size: int,
    rank: int = 0,
    world_size: int = 1,
    progress: str | None = None,
    **gen_kwargs,
) -> int:
    """Generate the missing chunks of this rank (``k % world_size == rank``) into ``samples_dir``.

    Chunk k holds images ``k*chunk_size ...``; each is written atomically. Returns the number of chunks
    generated (complete chunks are skipped)."""
    samples_dir = Path(samples_dir)
    samples_dir.mkdir(parents=True, exist_ok=True)
    num_chunks = math.ceil(len(labels) / chunk_size)
    made = 0
    for k in range(rank, num_chunks, world_size):
        lo, hi = k * chunk_size, min(len(labels), (k + 1) * chunk_size)
        path = chunk_path(samples_dir, k)
        if chunk_complete(path, hi - lo):
            continue
        start = time.perf_counter()
        images = generate(model, labels[lo:hi], start_index=lo, **gen_kwargs)
        chunk_labels = labels[lo:hi]
        atomic_write_bytes(path, lambda f, im=images, y=chunk_labels: np.savez(f, arr_0=im, labels=y))
        made += 1
        if progress:
            print(f"{progress}: chunk {k + 1}/{num_chunks} ({hi - lo} images) in {time.perf_counter() - start:.1f} s",
                  flush=True)  # fmt: skip
    return made


def iter_chunks(samples_dir: str | Path, num: int, chunk_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images uint8 (n, H, W, 3), labels (n,)) of each chunk in order; a missing chunk is an error."""
    samples_dir = Path(samples_dir)
    for k in range(math.ceil(num / chunk_size)):
        path = chunk_path(samples_dir, k)
        expected = min(num, (k + 1) * chunk_size) - k * chunk_size
        chunk = read_chunk(path, expected)
        if chunk is None:
            raise FileNotFoundError(f"sample chunk {path} is missing or incomplete: rerun the same command")
        yield chunk


def write_adm_npz(path: str | Path, chunks: Iterable[tuple[np.ndarray, np.ndarray]], num: int) -> Path:
    """Stream chunks into one ``.npz`` with ``arr_0`` uint8 (N, H, W, 3) (what the ADM evaluation suite
    reads) and ``arr_1`` labels (N,), without holding all images in memory; written atomically."""
    path = Path(path)

    def write(f) -> None:
        all_labels = []
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("arr_0.npy", "w", force_zip64=True) as member:
                for images, labels in chunks:
                    if not all_labels:  # the header needs the dtype and image shape of the first chunk
                        header = {"descr": np.lib.format.dtype_to_descr(images.dtype), "fortran_order": False,
                                  "shape": (num, *images.shape[1:])}  # fmt: skip
                        np.lib.format.write_array_header_2_0(member, header)
                    member.write(np.ascontiguousarray(images).tobytes())
                    all_labels.append(labels)
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.concatenate(all_labels).astype(np.int64))
            zf.writestr("arr_1.npy", buffer.getvalue())

    atomic_write_bytes(path, write)
    return path
