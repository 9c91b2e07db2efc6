"""Images out: [-1, 1] tensors to uint8, PNG grids, a PNG per image, and ``.npz`` batches."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .fileio import atomic_write_bytes


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) images in [-1, 1] -> uint8 (B, H, W, 3)."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def make_grid(images: np.ndarray, nrow: int, pad: int = 2, background: int = 255) -> np.ndarray:
    """Tile uint8 (N, H, W, 3) images into one (rows*(H+pad)+pad, ...) image, ``nrow`` per row."""
    n, h, w, c = images.shape
    rows = max(1, math.ceil(n / nrow))
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), background, dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = img
    return grid


def _image_format(path: Path) -> str:
    """PIL's format for ``path``'s extension (PNG when it has none PIL knows)."""
    return Image.registered_extensions().get(path.suffix.lower(), "PNG")


def save_image(img: Image.Image, path: str | Path) -> Path:
    """Write ``img`` atomically (a kill leaves the old file or the new one, never half a file)."""
    path = Path(path)
    return atomic_write_bytes(path, lambda f: img.save(f, format=_image_format(path)))


def save_grid(images: np.ndarray, path: str | Path, nrow: int, upscale: int = 1) -> Path:
    """Write a PNG grid (optionally upscaled with nearest-neighbour for small images), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(make_grid(images, nrow))
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    return save_image(img, path)


def save_png_folder(images: np.ndarray, labels: Sequence[int], folder: str | Path, start_index: int = 0) -> None:
    """One PNG per image, named ``{index:06d}_c{label}.png``, each written atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for k, (img, y) in enumerate(zip(images, labels)):
        save_image(Image.fromarray(img), folder / f"{start_index + k:06d}_c{int(y)}.png")


def npz_path(path: str | Path) -> Path:
    """The file ``np.savez`` writes for ``path``: ``path`` itself when it ends in ``.npz``, else ``path.npz``."""
    path = Path(path)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def save_npz(images: np.ndarray, labels: Sequence[int], path: str | Path) -> Path:
    """``.npz`` with ``arr_0`` uint8 (N, H, W, 3) (the ADM evaluation layout) and ``labels`` (N,), written
    atomically to :func:`npz_path` of ``path`` (numpy's rule: ``.npz`` appended when missing); returns it."""
    path = npz_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(labels, dtype=np.int64)
    return atomic_write_bytes(path, lambda f: np.savez(f, arr_0=images, labels=labels))
