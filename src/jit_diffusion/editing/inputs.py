"""Inputs and outputs of ``jit edit``: images to edit (a file or a folder, any size and format, centre-cropped
like the training data), masks (a black-and-white image of any size, or a ``--box``), animations.

Every reader checks everything before any work is done and fails with a one-line error naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..core.errors import UserError
from ..core.fileio import atomic_write_path
from ..data.image_folder import BAD_IMAGE_ERRORS, IMAGE_EXTENSIONS, center_crop_arr, image_to_tensor, load_image, to_rgb

ANIMATIONS = (".gif", ".webp")


def input_paths(path: str | os.PathLike) -> list[Path]:
    """The image files of ``--input``: the file itself, or the images in a folder (recursively, sorted)."""
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if not path.exists():
        raise UserError(f"--input {path} does not exist")
    found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))  # fmt: skip
    if not found:
        raise UserError(f"--input {path} holds no images ({'/'.join(IMAGE_EXTENSIONS)})")
    return found


def load_inputs(path: str | os.PathLike, image_size: int) -> tuple[torch.Tensor, list[Path]]:
    """uint8 (N, 3, S, S) images of ``--input`` (RGB; transparency flattened on white, grayscale expanded;
    the ADM centre crop to ``image_size``) and their paths; a one-line error for a file that does not decode."""
    paths = input_paths(path)
    images = []
    for p in paths:
        try:
            images.append(image_to_tensor(center_crop_arr(load_image(p), image_size)))
        except BAD_IMAGE_ERRORS as err:
            raise UserError(f"--input: cannot read {p} as an image ({' '.join(str(err).split())})") from None
    return torch.stack(images), paths


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> fp32 in [-1, 1], as training sees them."""
    return images.float() / 127.5 - 1.0  # [0, 255] -> [-1, 1]


def _centre_square(image: Image.Image) -> Image.Image:
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))


def load_mask(path: str | os.PathLike, image_size: int) -> torch.Tensor:
    """A mask image (white = regenerate, black = keep) -> bool (1, 1, S, S): its centre square (the input's
    crop) resized with nearest-neighbour; transparency counts as white background. Colour images are refused."""
    path = Path(path).expanduser()
    try:
        with Image.open(path) as image:
            image.load()
            rgb = np.asarray(to_rgb(image), dtype=np.int16)
    except FileNotFoundError:
        raise UserError(f"--mask {path} does not exist") from None
    except Exception as err:  # noqa: BLE001 - PIL raises many kinds for bad files
        raise UserError(f"--mask: cannot read {path} as an image ({' '.join(str(err).split())})") from None
    spread = int((rgb.max(axis=2) - rgb.min(axis=2)).max())
    if spread > 8:
        raise UserError(f"--mask {path} is a colour image; a mask must be black and white (white = regenerate)")
    return mask_from_gray(Image.fromarray(rgb.mean(axis=2).round().astype(np.uint8), "L"), image_size)


def mask_from_gray(gray: Image.Image, image_size: int) -> torch.Tensor:
    """A gray mask of any size (>= 128: regenerate) -> bool (1, 1, S, S): its centre square (the input's crop)
    resized with nearest-neighbour."""
    small = _centre_square(gray.convert("L")).resize((image_size, image_size), Image.NEAREST)
    return torch.from_numpy(np.asarray(small) >= 128).view(1, 1, image_size, image_size)


def box_mask(text: str, image_size: int) -> torch.Tensor:
    """``--box x0,y0,x1,y1`` (pixels of the model's image: columns x0..x1-1, rows y0..y1-1) -> bool mask."""
    try:
        x0, y0, x1, y1 = (int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--box expects four comma-separated integers x0,y0,x1,y1, got {text!r}") from None
    if not (0 <= x0 < x1 <= image_size and 0 <= y0 < y1 <= image_size):
        raise UserError(f"--box {text} is out of range: need 0 <= x0 < x1 <= {image_size} and "
                        f"0 <= y0 < y1 <= {image_size} (the model's {image_size} px image)")  # fmt: skip
    mask = torch.zeros(1, 1, image_size, image_size, dtype=torch.bool)
    mask[..., y0:y1, x0:x1] = True
    return mask


def check_animation_path(path: str | os.PathLike | None) -> None:
    """A one-line error unless ``path`` is None or names a .gif or .webp file."""
    if path is not None and Path(path).suffix.lower() not in ANIMATIONS:
        raise UserError(f"--animation {path}: expected a .gif or .webp file")


def save_animation(frames: np.ndarray, path: str | os.PathLike, *, upscale: int = 1, ms: int = 120) -> Path:
    """uint8 (K, H, W, 3) frames -> a looping GIF or WebP (by extension), written atomically; the
    animation plays forth and back."""
    check_animation_path(path)
    path = Path(path)
    images = [Image.fromarray(f) for f in [*frames, *frames[-2:0:-1]]]
    if upscale > 1:
        images = [im.resize((im.width * upscale, im.height * upscale), Image.NEAREST) for im in images]
    fmt = "GIF" if path.suffix.lower() == ".gif" else "WEBP"
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {"lossless": True} if fmt == "WEBP" else {}
    return atomic_write_path(path, lambda tmp: images[0].save(tmp, format=fmt, save_all=True,
                                                              append_images=images[1:], duration=ms, loop=0,
                                                              **extra))  # fmt: skip


def save_noise(noise: torch.Tensor, labels: Sequence[int], path: str | os.PathLike) -> Path:
    """Inverted noises (N, 3, H, W) fp32 and their labels as an ``.npz`` (``noise``, ``labels``), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"noise": noise.float().cpu().numpy(), "labels": np.asarray(labels, dtype=np.int64)}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write_path(path, write)
