"""A dataset decoded once into a memory-mapped uint8 cache (``jit data cache``).

A cache folder holds ``images.npy`` (N, 3, H, W) uint8, ``labels.npy`` (N,) int64 and ``meta.json``;
images that do not decode are left out and listed in ``meta.json`` under ``skipped``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..core.fileio import atomic_folder, read_json_object, save_json
from .image_folder import BAD_IMAGE_ERRORS, failure_reason

CACHE_FORMAT = "jit-diffusion-uint8-cache"
CACHE_VERSION = 1


def _read_meta(path: Path) -> dict[str, Any] | None:
    """The ``meta.json`` of a cache folder, or None when path is not a cache."""
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = read_json_object(meta_path)
    except (OSError, ValueError):
        return None
    return meta if meta.get("format") == CACHE_FORMAT else None


def is_cache_dir(path: str | os.PathLike) -> bool:
    """Whether path is a dataset cache written by :func:`build_cache`."""
    return _read_meta(Path(path)) is not None


class _Decoded(Dataset):
    """Items ``(image, label, "")``, or ``(zeros, -1, reason)`` for an image that does not decode."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        try:
            image, label = self.dataset[index]
        except BAD_IMAGE_ERRORS as err:
            size = self.dataset.image_size
            return torch.zeros(3, size, size, dtype=torch.uint8), -1, failure_reason(err)
        return image, label, ""


def _item_name(dataset: Dataset, index: int) -> str:
    paths = getattr(dataset, "paths", None)
    return str(paths[index]) if paths is not None else f"item {index}"


def _shrink(npy: Path, count: int) -> None:
    """Keep the first ``count`` rows of a C-order .npy file in place: rewrite the shape in the header
    (padded to its old length, so the data offset and its alignment stay) and truncate the file.

    Not atomic on its own: :func:`build_cache` calls it inside the temporary folder that is renamed into
    place only once the cache is complete, so a crash here never leaves a published half-shrunk cache."""
    with open(npy, "r+b") as f:
        version = np.lib.format.read_magic(f)
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in readers:
            raise ValueError(f"{npy}: .npy format version {version} is not supported here")
        shape, fortran_order, dtype = readers[version](f)
        if fortran_order or not 0 < count <= shape[0]:
            raise ValueError(f"{npy}: cannot shrink a {shape} array to {count} rows")
        data_offset = f.tell()
        text_start = 6 + 2 + (2 if version == (1, 0) else 4)  # magic, version, header-length field
        descr = np.lib.format.dtype_to_descr(dtype)
        fields = {"descr": descr, "fortran_order": False, "shape": (int(count), *shape[1:])}
        text = repr(fields)[:-1] + ", }"  # "{'descr': '|u1', 'fortran_order': False, 'shape': (...), }"
        room = data_offset - text_start - 1  # the header text ends in a newline
        if len(text) > room:
            raise ValueError(f"{npy}: the new header does not fit the old one")
        f.seek(text_start)
        f.write((text.ljust(room) + "\n").encode("latin1"))
        row_bytes = dtype.itemsize * int(np.prod(shape[1:]))
        f.truncate(data_offset + count * row_bytes)


def _fill(dataset: Dataset, images: np.ndarray, labels: np.ndarray, loader: DataLoader, bar) -> list[dict]:
    """Write the decodable items into the first rows of images/labels; returns the skipped ones."""
    kept, index, skipped = 0, 0, []
    for batch_images, batch_labels, reasons in loader:  # (B, 3, H, W) uint8, (B,), B reasons
        good = [i for i, reason in enumerate(reasons) if not reason]
        skipped += [{"path": _item_name(dataset, index + i), "reason": r} for i, r in enumerate(reasons) if r]
        images[kept : kept + len(good)] = batch_images[good].numpy()
        labels[kept : kept + len(good)] = batch_labels[good].numpy()
        kept += len(good)
        index += len(reasons)
        bar.update(len(reasons))
    return skipped


def build_cache(dataset: Dataset, path: str | os.PathLike, **options) -> Path:
    """:func:`write_cache` (``options``: its keywords), returning the cache path."""
    write_cache(dataset, path, **options)
    return Path(path).expanduser()


def write_cache(
    dataset: Dataset,
    path: str | os.PathLike,
    num_workers: int = 0,
    batch_size: int = 64,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Decode every item of dataset once into ``path/``: ``images.npy`` (N, 3, H, W) uint8,
    ``labels.npy`` (N,) int64 and ``meta.json``. Items that do not decode are left out and listed in
    ``meta.json`` (``skipped``: path and reason). Written to a temporary folder, then renamed into
    place, so an interrupted build never leaves a broken cache. Returns the contents of ``meta.json``
    (``num_items``, ``skipped``, ...) so a caller need not read it back."""
    from tqdm import tqdm

    path = Path(path).expanduser()
    if path.exists() and not overwrite:
        raise ValueError(f"cache {path} already exists: remove it or pass overwrite=True (--overwrite)")
    n, size = len(dataset), dataset.image_size
    if n == 0:
        raise ValueError("cannot cache an empty dataset")
    source = str(getattr(dataset, "source", type(dataset).__name__))
    with atomic_folder(path, overwrite=True) as tmp:
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
        labels = np.empty(n, dtype=np.int64)
        loader = DataLoader(_Decoded(dataset), batch_size=batch_size, shuffle=False, num_workers=num_workers)
        with tqdm(total=n, desc=f"caching {path.name}", unit="img", disable=not progress) as bar:
            skipped = _fill(dataset, images, labels, loader, bar)
        images.flush()
        del images
        kept = n - len(skipped)
        if kept == 0:
            raise ValueError(f"none of the {n} images of {source} decodes (first: {skipped[0]['path']})")
        if kept < n:
            _shrink(tmp / "images.npy", kept)
        np.save(tmp / "labels.npy", labels[:kept])
        meta = {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "num_items": kept,
            "image_size": size,
            "num_classes": int(dataset.num_classes),
            "class_names": list(dataset.class_names),
            "source": source,
            "skipped": skipped,
        }
        save_json(tmp / "meta.json", meta)
    return meta


class CachedDataset(Dataset):
    """A cache written by :func:`build_cache`, memory-mapped; items ``(uint8 (3, H, W), int)``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        meta = _read_meta(self.path)
        if meta is None:
            raise FileNotFoundError(
                f"no dataset cache at {self.path}: expected a meta.json written by `jit data cache`"
            )
        self.image_size = int(meta["image_size"])
        self.num_classes = int(meta["num_classes"])
        self.class_names = list(meta["class_names"])
        self.source = meta.get("source", str(self.path))
        self.labels = np.load(self.path / "labels.npy", allow_pickle=False).astype(np.int64)
        self._images: np.ndarray | None = None
        expected = (len(self.labels), 3, self.image_size, self.image_size)
        if self.images.shape != expected or self.images.dtype != np.uint8:
            raise ValueError(
                f"cache {self.path} is inconsistent: images {self.images.shape}, expected {expected} uint8"
            )

    @property
    def images(self) -> np.ndarray:
        """All images, (N, 3, H, W) uint8, memory-mapped (opened lazily, so workers reopen their own)."""
        if self._images is None:
            self._images = np.load(self.path / "images.npy", mmap_mode="r", allow_pickle=False)
        return self._images

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_images"] = None  # pickling a memmap would copy the whole array
        return state

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.array(self.images[index])), int(self.labels[index])
