"""Image datasets for training and evaluation: image folders, a uint8 cache, and the built-in emoji set.

Every dataset yields ``(image, label)`` with ``image`` a ``torch.uint8`` tensor (3, H, W) in RGB, neither
flipped nor scaled (the trainer does both with its own generator, so a resumed run is exact), and
``label`` an int. Every dataset has ``num_classes``, ``class_names``, ``image_size`` and ``labels`` (a 1-D
int64 array, one per item). An unconditional dataset has ``num_classes == 0`` and every label 0, which is
the model's null label for ``num_classes = 0``.

``load_dataset(spec, image_size)`` picks the kind: ``"emoji"``, a cache folder written by
:func:`build_cache` (it holds ``meta.json``), or an image folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch.utils.data import DataLoader, Dataset

from .fileio import atomic_folder

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
CACHE_FORMAT = "jit-diffusion-uint8-cache"
CACHE_VERSION = 1
FOLDER_SPLITS = ("train", "all")


class CorruptImageError(ValueError):
    """An image file that cannot be decoded; the message names the file."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB. Transparent images (RGBA, LA, palette with transparency) are
    composited onto white rather than losing their alpha; 16/32-bit grayscale is scaled to 8 bits."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode.startswith("I"):  # "I", "I;16", "I;16B", ...: 16-bit samples, scaled 65535 -> 255
        gray = np.asarray(image, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(gray), 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode == "F":  # float samples are taken to be 0..255
        return Image.fromarray(np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8), "L").convert("RGB")
    return image.convert("RGB")


def center_crop_arr(pil_image: Image.Image, image_size: int) -> Image.Image:
    """The ADM centre crop: convert to RGB, halve with BOX filtering while the short side is at least
    2 * image_size, BICUBIC-resize so the short side equals image_size, then crop the centre square."""
    image = to_rgb(pil_image)
    while min(image.size) >= 2 * image_size:
        image = image.resize(tuple(side // 2 for side in image.size), resample=Image.BOX)
    scale = image_size / min(image.size)
    image = image.resize(tuple(round(side * scale) for side in image.size), resample=Image.BICUBIC)
    left, top = (image.width - image_size) // 2, (image.height - image_size) // 2
    return image.crop((left, top, left + image_size, top + image_size))


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image as RGB; any decoding failure becomes a CorruptImageError naming it.
    The first frame of animations is used; EXIF orientation is not applied (as in the ADM/JiT pipelines)."""
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except FileNotFoundError:
        raise
    except Exception as err:  # PIL raises many kinds (OSError, SyntaxError, struct.error, ...) for bad files
        raise CorruptImageError(f"cannot decode image {path}: {err}") from err


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor (3, H, W)."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy())


def _is_image(name: str, extensions: tuple[str, ...]) -> bool:
    return name.lower().endswith(extensions) and not name.startswith(".")


def _images_under(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Image files anywhere below folder (following links, skipping hidden entries), sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(Path(dirpath) / f for f in filenames if _is_image(f, extensions))
    return sorted(found)


def find_images(root: str | os.PathLike, extensions: tuple[str, ...] = IMAGE_EXTENSIONS):
    """Scan an image folder: returns (paths, labels, class_names).

    Class-per-folder trees (sorted subfolder names are the classes, images found recursively in each)
    give labels 0..C-1; a flat folder of images gives class_names ``[]`` and every label 0.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder: expected a folder of images or of class subfolders")
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    loose = [root / e.name for e in entries if e.is_file() and _is_image(e.name, extensions)]
    subdirs = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    per_class = {name: _images_under(root / name, extensions) for name in subdirs}
    class_names = [name for name in subdirs if per_class[name]]
    if class_names:
        if loose:
            raise ValueError(
                f"{root} holds both images ({loose[0].name}, ...) and class subfolders: put every image in a "
                "class subfolder, or remove the subfolders for an unconditional dataset"
            )
        empty = [name for name in subdirs if not per_class[name]]
        if empty:
            raise ValueError(f"class folder {root / empty[0]} holds no images ({len(empty)} empty class folders)")
        paths = [p for name in class_names for p in per_class[name]]
        labels = [c for c, name in enumerate(class_names) for _ in per_class[name]]
        return paths, np.array(labels, dtype=np.int64), class_names
    if not loose:
        exts = "/".join(extensions)
        raise ValueError(
            f"no images found in {root}: expected class subfolders holding {exts} files, or image files directly"
        )
    return loose, np.zeros(len(loose), dtype=np.int64), []


class ImageFolderDataset(Dataset):
    """Images from a folder, ADM-centre-cropped to image_size: class subfolders, or a flat folder
    (unconditional: ``num_classes == 0``, every label 0). Items are ``(uint8 (3, H, W), int)``."""

    def __init__(self, root: str | os.PathLike, image_size: int, extensions: tuple[str, ...] = IMAGE_EXTENSIONS):
        if image_size < 1:
            raise ValueError(f"image size must be positive, got {image_size}")
        self.root = Path(root).expanduser()
        self.image_size = image_size
        self.paths, self.labels, self.class_names = find_images(self.root, tuple(e.lower() for e in extensions))
        self.num_classes = len(self.class_names)
        self.source = str(self.root.resolve())

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = center_crop_arr(load_image(self.paths[index]), self.image_size)
        return image_to_tensor(image), int(self.labels[index])

    def fingerprint(self) -> str:
        """A short hash of the file list with sizes and modification times (changes when files do)."""
        digest = hashlib.sha1()
        for path in self.paths:
            stat = path.stat()
            digest.update(f"{path.relative_to(self.root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:12]


def is_cache_dir(path: str | os.PathLike) -> bool:
    """Whether path is a dataset cache written by :func:`build_cache`."""
    meta = Path(path) / "meta.json"
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("format") == CACHE_FORMAT
    except (OSError, ValueError):
        return False


def build_cache(
    dataset: Dataset,
    path: str | os.PathLike,
    num_workers: int = 0,
    batch_size: int = 64,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Decode every item of dataset once into ``path/``: ``images.npy`` (N, 3, H, W) uint8,
    ``labels.npy`` (N,) int64 and ``meta.json``. Written to a temporary folder, then renamed into place,
    so an interrupted build never leaves a broken cache. Returns the cache path."""
    from tqdm import tqdm

    path = Path(path).expanduser()
    if path.exists() and not overwrite:
        raise ValueError(f"cache {path} already exists: remove it or pass overwrite=True (--overwrite)")
    n, size = len(dataset), dataset.image_size
    if n == 0:
        raise ValueError("cannot cache an empty dataset")
    with atomic_folder(path, overwrite=True) as tmp:
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
        labels = np.empty(n, dtype=np.int64)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        start = 0
        with tqdm(total=n, desc=f"caching {path.name}", unit="img", disable=not progress) as bar:
            for batch_images, batch_labels in loader:  # (B, 3, H, W) uint8, (B,)
                stop = start + len(batch_images)
                images[start:stop] = batch_images.numpy()
                labels[start:stop] = batch_labels.numpy()
                start = stop
                bar.update(len(batch_images))
        images.flush()
        del images
        np.save(tmp / "labels.npy", labels)
        meta = {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "num_items": n,
            "image_size": size,
            "num_classes": int(dataset.num_classes),
            "class_names": list(dataset.class_names),
            "source": str(getattr(dataset, "source", type(dataset).__name__)),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return path


class CachedDataset(Dataset):
    """A cache written by :func:`build_cache`, memory-mapped; items ``(uint8 (3, H, W), int)``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        if not is_cache_dir(self.path):
            raise FileNotFoundError(
                f"no dataset cache at {self.path}: expected a meta.json written by `jit data cache`"
            )
        meta = json.loads((self.path / "meta.json").read_text())
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
    path = build_cache(dataset, args.out, num_workers=args.num_workers, overwrite=args.overwrite)
    seconds = time.perf_counter() - start
    print(
        f"cached {len(dataset)} images ({dataset.num_classes} classes, {args.img_size} px) to {path} in {seconds:.1f} s"
    )


def add_cli(subparsers) -> None:
    """Register ``jit data {emoji,info,cache}``."""
    parser = subparsers.add_parser("data", help="inspect and cache datasets (the built-in emoji set, image folders)")
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser, default_size: int | None) -> None:
        p.add_argument(
            "--img-size", type=int, default=default_size, required=default_size is None,
            help="image side in pixels" + (f" (default {default_size})" if default_size else ""),
        )  # fmt: skip
        p.add_argument(
            "--split", default="train",
            help="train, heldout (emoji only: a fixed ~10%% of each class) or all (default train)",
        )  # fmt: skip

    def grid_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--grid", metavar="PNG", help="also write a grid image with one row per class")
        p.add_argument("--per-class", type=int, default=8, help="images per row of the grid (default 8)")
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
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="decoding processes (default: up to 8, one per CPU)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing cache at --out")
    p.set_defaults(func=_cmd_cache)
