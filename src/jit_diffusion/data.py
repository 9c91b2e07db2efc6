"""Image datasets for training and evaluation: image folders, a uint8 cache, and the built-in emoji set.

Every dataset yields ``(image, label)`` with ``image`` a ``torch.uint8`` tensor (3, H, W) in RGB, neither
flipped nor scaled (the trainer does both with its own generator, so a resumed run is exact), and
``label`` an int. Every dataset has ``num_classes``, ``class_names``, ``image_size`` and ``labels`` (a 1-D
int64 array, one per item). An unconditional dataset has ``num_classes == 0`` and every label 0, which is
the model's null label for ``num_classes = 0``.

``load_dataset(spec, image_size)`` picks the kind: ``"emoji"``, a cache folder written by
:func:`build_cache` (it holds ``meta.json``), or an image folder. Folders are read by
:mod:`image_folder`, caches by :mod:`data_cache`; this module adds the ``jit data`` commands.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch.utils.data import Dataset

from .data_cache import CACHE_FORMAT, CACHE_VERSION, CachedDataset, build_cache, is_cache_dir, write_cache
from .errors import at_least
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
    "ImageFolderDataset", "add_cli", "build_cache", "center_crop_arr", "check_images", "class_grid", "find_images",
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


def _describe(dataset: Dataset, name: str, grid: str | None, per_class: int) -> None:
    """Print item counts per class; optionally write a class grid."""
    print(f"{name}: {len(dataset)} images, {dataset.num_classes} classes, {dataset.image_size} px")
    counts = np.bincount(np.asarray(dataset.labels), minlength=max(dataset.num_classes, 1))
    for c, n in enumerate(counts):
        label = dataset.class_names[c] if dataset.class_names else "(unconditional)"
        print(f"  {c:>3}  {label:<20} {n:>7}")
    if grid:
        Path(grid).expanduser().parent.mkdir(parents=True, exist_ok=True)
        class_grid(dataset, per_class=per_class).save(grid)
        print(f"wrote {grid}")


def _cmd_emoji(args: argparse.Namespace) -> None:
    from .emoji import EmojiDataset

    start = time.perf_counter()
    dataset = EmojiDataset(args.img_size, split=args.split, cache_dir=args.cache_dir, skin_tones=args.skin_tones)
    seconds = time.perf_counter() - start
    print(f"loaded in {seconds:.2f} s from {dataset.cache_path}")
    print(f"{len(dataset.missing)} emoji of emoji-test.txt skipped: no bitmap in the font")
    _describe(dataset, f"emoji/{args.split}", args.grid, args.per_class)


def _cmd_info(args: argparse.Namespace) -> None:
    dataset = load_dataset(args.source, args.img_size, split=args.split, cache_dir=args.cache_dir)
    _describe(dataset, args.source, args.grid, args.per_class)


def _cmd_cache(args: argparse.Namespace) -> None:
    dataset = load_dataset(args.source, args.img_size, split=args.split)
    start = time.perf_counter()
    meta = write_cache(dataset, args.out, num_workers=args.num_workers, overwrite=args.overwrite)
    seconds = time.perf_counter() - start
    skipped, path = meta["skipped"], Path(args.out).expanduser()
    for item in skipped:
        print(f"skipped {item['path']}: {item['reason']}")
    kept = meta["num_items"]
    print(f"cached {kept} images ({dataset.num_classes} classes, {args.img_size} px) to {path} in {seconds:.1f} s"
          + (f"; {len(skipped)} did not decode and were left out" if skipped else ""))  # fmt: skip


def _cmd_check(args: argparse.Namespace) -> int:
    """Decode every image of a folder; list the bad ones; exit code 1 if there are any."""
    paths, _, _ = find_images(args.folder)
    bad = check_images(paths, workers=args.workers)
    for path, reason in bad:
        print(f"bad: {path}: {reason}")
    print(f"checked {len(paths)} images in {args.folder}: {len(bad)} bad" + (" (listed above)" if bad else ""))
    return 1 if bad else 0


def add_cli(subparsers) -> None:
    """Register ``jit data {emoji,info,cache,check}``."""
    parser = subparsers.add_parser("data", help="inspect and cache datasets (the built-in emoji set, image folders)")
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser, default_size: int | None) -> None:
        p.add_argument(
            "--img-size", type=at_least(1), default=default_size, required=default_size is None,
            help="image side in pixels" + (f" (default {default_size})" if default_size else ""),
        )  # fmt: skip
        p.add_argument(
            "--split", default="train",
            help="train, heldout (emoji only: a fixed ~10%% of each class) or all (default train)",
        )  # fmt: skip

    def grid_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--grid", metavar="PNG", help="also write a grid image with one row per class")
        p.add_argument("--per-class", type=at_least(1), default=8, help="images per row of the grid (default 8)")
        p.add_argument("--cache-dir", help="where cached data lives (default $JIT_CACHE_DIR or ~/.cache/jit-diffusion)")

    p = actions.add_parser("emoji", help="build (once) and describe the built-in emoji dataset")
    common(p, 64)
    grid_flags(p)
    p.add_argument("--skin-tones", action="store_true", help="keep the skin-tone variants (about 3,650 images)")
    p.set_defaults(func=_cmd_emoji)

    p = actions.add_parser("info", help="describe a dataset: class counts, optionally a grid")
    p.add_argument("source", help="'emoji', an image folder, or a cache folder made by `jit data cache`")
    common(p, None)
    grid_flags(p)
    p.set_defaults(func=_cmd_info)

    p = actions.add_parser("cache", help="decode a dataset once into a memory-mapped uint8 cache")
    p.add_argument("source", help="an image folder (class subfolders, or flat for unconditional) or 'emoji'")
    common(p, None)
    p.add_argument("--out", required=True, help="cache folder to create (images.npy, labels.npy, meta.json)")
    p.add_argument(
        "--num-workers",
        type=at_least(0),
        default=min(8, os.cpu_count() or 1),
        help="decoding processes (default: up to 8, one per CPU)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing cache at --out")
    p.set_defaults(func=_cmd_cache)

    p = actions.add_parser("check", help="decode every image of a folder and list those that fail (exit code 1)")
    p.add_argument("folder", help="an image folder (class subfolders, or flat)")
    p.add_argument("--workers", type=at_least(0), default=min(8, os.cpu_count() or 1),
                   help="decoding processes (default: up to 8, one per CPU)")  # fmt: skip
    p.set_defaults(func=_cmd_check)
