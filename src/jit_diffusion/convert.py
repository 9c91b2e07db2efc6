"""``jit convert``: turn any model source into an export folder (``config.json`` + ``model.safetensors``).

Sources are whatever :mod:`loading` opens: an official ``.pth``, a run folder, its ``checkpoints/latest``,
a training checkpoint or another export folder. The format itself lives in :mod:`pretrained`, the
official import in :mod:`official`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .config import ModelInfo, find_preset
from .errors import UserError
from .loading import open_source
from .model import JiT
from .official import WEIGHT_CHOICES, infer_config, load_official
from .pretrained import CONFIG_NAME, FORMAT, WEIGHTS_NAME, save_pretrained
from .pretrained import load_pretrained as _load_pretrained

__all__ = ["CONFIG_NAME", "FORMAT", "WEIGHTS_NAME", "convert", "infer_config", "load_official", "load_pretrained",
           "load_source", "save_pretrained"]  # fmt: skip


def load_pretrained(
    folder: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None
) -> tuple[JiT, ModelInfo]:
    """Open an export folder as a :class:`JiT` (see :func:`pretrained.load_pretrained`)."""
    return _load_pretrained(folder, JiT, device=device, dtype=dtype)


def load_source(
    src: str | Path, weights: str | None = None, *, in_context_start: int | None = None
) -> tuple[JiT, ModelInfo]:
    """Open anything ``jit convert`` accepts, on the CPU (``weights`` default: ema1, or an export's own)."""
    return open_source(src, in_context_start=in_context_start).load(weights, "cpu")


def convert(
    src: str | Path,
    out: str | Path,
    *,
    weights: str | None = None,
    dtype: str = "fp32",
    overwrite: bool = False,
    in_context_start: int | None = None,
) -> tuple[Path, JiT, ModelInfo]:
    """Export ``src`` (see :func:`load_source`) as an export folder at ``out``."""
    model, info = load_source(src, weights, in_context_start=in_context_start)
    folder = save_pretrained(model, out, info, dtype=dtype, overwrite=overwrite)
    return folder, model, info


def run_convert(args: argparse.Namespace) -> None:
    try:
        folder, model, info = convert(args.src, args.out, weights=args.weights, dtype=args.dtype,
                                      overwrite=args.overwrite, in_context_start=args.in_context_start)  # fmt: skip
    except FileExistsError as err:
        raise UserError(str(err)) from None
    preset = find_preset(model.config) or "custom architecture"
    print(
        f"wrote {folder}: {preset}, {model.num_params() / 1e6:.2f}M params, {info.image_size}px, "
        f"{info.num_classes} classes, weights {info.weights} as {args.dtype}, from {args.src}"
    )


def add_cli(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="export an official .pth, a run folder or a training checkpoint as config.json + model.safetensors",
        description="Convert a checkpoint into an export folder (config.json + model.safetensors) that "
        "`jit sample`, `jit eval` and JiT.from_pretrained open.",
    )
    p.add_argument("src", help="official checkpoint .pth, run folder, checkpoints/latest, training checkpoint .pt, "
                               "or export folder")  # fmt: skip
    p.add_argument("out", help="output folder (must not exist or be empty, unless --overwrite)")
    p.add_argument(
        "--weights",
        choices=WEIGHT_CHOICES,
        default=None,
        help="which weights to export: ema1 (default, used for sampling), ema2 or raw",
    )
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="storage dtype (default fp32)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
    p.add_argument(
        "--in-context-start",
        type=int,
        default=None,
        help="block index where in-context tokens join; needed only for non-preset official weights",
    )
    p.set_defaults(func=run_convert)
