"""Image files: finding them in a folder, decoding them (the ADM centre crop), checking that they decode.

An image folder holds class subfolders (sorted names are the classes, images found recursively in
each) or, for unconditional data, image files directly. Items are ``(uint8 (3, H, W), label)``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


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


# --------------------------------------------------------------------------------------------
# checking that files decode
# --------------------------------------------------------------------------------------------

# what reading a bad file raises: undecodable (CorruptImageError), vanished or unreadable (OSError)
BAD_IMAGE_ERRORS = (CorruptImageError, OSError)


def failure_reason(err: BaseException) -> str:
    """The short reason of a decoding failure: the decoder's or the OS's message, on one line."""
    cause = err.__cause__ if isinstance(err, CorruptImageError) and err.__cause__ is not None else err
    return " ".join(str(cause).split()) or type(cause).__name__


def decode_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` does not decode as an image, or None when it does."""
    try:
        load_image(path)
    except BAD_IMAGE_ERRORS as err:
        return failure_reason(err)
    return None


class _DecodeCheck(Dataset):
    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, str]:
        return index, decode_problem(self.paths[index]) or ""


def check_images(paths: list[Path], workers: int = 0, progress: bool = True) -> list[tuple[Path, str]]:
    """Decode every file, in ``workers`` processes; returns (path, reason) of those that fail, in order."""
    from tqdm import tqdm

    loader = DataLoader(_DecodeCheck(paths), batch_size=16, num_workers=workers, collate_fn=list)
    bad = []
    with tqdm(total=len(paths), desc="checking", unit="img", disable=not progress) as bar:
        for batch in loader:
            bad.extend((paths[index], reason) for index, reason in batch if reason)
            bar.update(len(batch))
    return bad
