"""``jit data {emoji,info,cache,check}``: build, describe, cache and check datasets."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from ..core.errors import at_least
from ..data.cache import write_cache
from ..data.datasets import class_grid, load_dataset
from ..data.image_folder import check_images, find_images


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
    from ..data.emoji import EmojiDataset

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

