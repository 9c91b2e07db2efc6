"""Image datasets for training and evaluation: image folders, a uint8 cache, and the built-in emoji set.

Every dataset yields ``(image, label)`` with ``image`` a ``torch.uint8`` tensor (3, H, W) in RGB, neither
flipped nor scaled (the trainer does both with its own generator, so a resumed run is exact), and
``label`` an int. Every dataset has ``num_classes``, ``class_names``, ``image_size`` and ``labels`` (a 1-D
int64 array, one per item). An unconditional dataset has ``num_classes == 0`` and every label 0, which is
the model's null label for ``num_classes = 0``.

``load_dataset(spec, image_size)`` picks the kind: ``"emoji"``, a cache folder written by
:func:`build_cache` (it holds ``meta.json``), or an image folder. Folders are read by
:mod:`.image_folder`, caches by :mod:`.cache`; the ``jit data`` commands are :mod:`jit_diffusion.cli.data`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch.utils.data import Dataset

from .cache import CACHE_FORMAT, CACHE_VERSION, CachedDataset, build_cache, is_cache_dir, write_cache
from .image_folder import (
    IMAGE_EXTENSIONS,
    CorruptImageError,
    ImageFolderDataset,
    center_crop_arr,
    check_images,
    find_images,
    image_to_tensor,
    load_image,
    to_rgb,
)

__all__ = [
    "CACHE_FORMAT", "CACHE_VERSION", "FOLDER_SPLITS", "IMAGE_EXTENSIONS", "CachedDataset", "CorruptImageError",
    "ImageFolderDataset", "build_cache", "center_crop_arr", "check_images", "class_grid", "find_images",
    "image_to_tensor", "is_cache_dir", "load_dataset", "load_image", "to_rgb", "write_cache",
]  # fmt: skip

FOLDER_SPLITS = ("train", "all")


def load_dataset(spec: str, image_size: int, split: str = "train", cache_dir: str | None = None) -> Dataset:
    """The dataset named by spec: ``"emoji"``, a cache folder from :func:`build_cache`, or an image folder.

    ``split``: the emoji set has ``train``, ``heldout`` and ``all``; folders and caches are one split
    (``train`` or ``all``). ``cache_dir``: for emoji, where the rendered set is cached (default
    ``$JIT_CACHE_DIR`` or ``~/.cache/jit-diffusion``); for an image folder, when given, a uint8 cache of
    it is built there once and used (rebuilt when the files change).
    """
    if spec == "emoji":
        from .emoji import EmojiDataset

        return EmojiDataset(image_size, split=split, cache_dir=cache_dir)
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"dataset {spec!r} not found: expected 'emoji', an image folder or a cache made by `jit data cache`"
        )
    if split not in FOLDER_SPLITS:
        raise ValueError(
            f"split {split!r} is not available for {path}: image folders and caches have one split "
            "('train' or 'all'); only the emoji set has 'heldout'"
        )
    if is_cache_dir(path):
        dataset = CachedDataset(path)
        if dataset.image_size != image_size:
            raise ValueError(
                f"cache {path} holds {dataset.image_size} px images but {image_size} px were requested: "
                f"rebuild it with `jit data cache SOURCE --img-size {image_size} --out DIR`"
            )
        return dataset
    dataset = ImageFolderDataset(path, image_size)
    if cache_dir is None:
        return dataset
    cache_path = Path(cache_dir).expanduser() / "folders" / f"{path.name}-{dataset.fingerprint()}-{image_size}px"
    if not is_cache_dir(cache_path):
        build_cache(dataset, cache_path, num_workers=min(8, os.cpu_count() or 1), overwrite=True)
    return CachedDataset(cache_path)


def class_grid(dataset: Dataset, per_class: int = 8, label_rows: bool = True) -> Image.Image:
    """A PNG-ready grid with one row per class (evenly spaced items of that class) and its name on the left."""
    num_rows = max(dataset.num_classes, 1)
    names = list(dataset.class_names) or ["all"]
    size, gap = dataset.image_size, 2
    try:
        font = ImageFont.load_default(size=max(10, min(24, size // 4)))
    except (ImportError, OSError):  # Pillow without FreeType: the small bitmap font
        font = ImageFont.load_default()
    margin = int(max(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(n, font=font) for n in names)) + 8
    margin = margin if label_rows else 0
    width = margin + per_class * (size + gap) + gap
    grid = Image.new("RGB", (width, num_rows * (size + gap) + gap), (200, 200, 200))
    draw = ImageDraw.Draw(grid)
    labels = np.asarray(dataset.labels)
    for row in range(num_rows):
        members = np.flatnonzero(labels == row)
        picks = members[np.linspace(0, len(members) - 1, min(per_class, len(members))).round().astype(int)]
        y = gap + row * (size + gap)
        if label_rows:
            top, bottom = font.getbbox(names[row])[1::2]
            draw.text((4, y + (size - top - bottom) // 2), names[row], fill=(0, 0, 0), font=font)
        for col, index in enumerate(picks):
            image, _ = dataset[int(index)]
            tile = Image.fromarray(image.permute(1, 2, 0).numpy())
            grid.paste(tile, (margin + gap + col * (size + gap), y))
    return grid
