"""``jit convert``: turn any model source into an export folder (``config.json`` + ``model.safetensors``)
or, with ``--format diffusers-b0|diffusers-b``, a diffusers pipeline folder.

Sources are whatever :mod:`loading` opens: an official ``.pth``, a run folder, its ``checkpoints/latest``,
a training checkpoint, an export folder or a diffusers-style folder or file. The export format lives in
:mod:`pretrained`, the official import in :mod:`official`, the diffusers layouts in :mod:`diffusers` and
:mod:`diffusers_folder`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..core.errors import UserError
from ..models.config import ModelInfo, find_preset
from ..models.jit import JiT
from ..models.pretrained import CONFIG_NAME, FORMAT, WEIGHTS_NAME, save_pretrained
from ..models.pretrained import load_pretrained as _load_pretrained
from .diffusers_folder import save_diffusers
from .loading import Source, open_source
from .official import WEIGHT_CHOICES, infer_config, load_official

__all__ = ["CONFIG_NAME", "FORMAT", "FORMATS", "WEIGHTS_NAME", "convert", "infer_config", "load_official",
           "load_pretrained", "load_source", "save_diffusers", "save_pretrained"]  # fmt: skip

# --format value -> diffusers layout written (None: our export format)
FORMATS = {"jit": None, "diffusers-b0": "B0", "diffusers-b": "B"}
FORMAT_HELP = """output formats:
  jit           (default) an export folder: config.json + model.safetensors, with every sampling
                setting, for `jit sample`, `jit eval` and JiT.from_pretrained
  diffusers-b0  a diffusers pipeline folder in layout B0, the community JiTTransformer2DModel's names
                (BiliSakura/JiT-diffusers): model_index.json, scheduler/scheduler_config.json,
                transformer/config.json + transformer/diffusion_pytorch_model.safetensors, and
                jit_diffusion.json with our sampling settings
  diffusers-b   the same folder in layout B, the diffusers pull request's class (attn.qkv split into
                to_q/to_k/to_v, norm_q/norm_k, to_out.0)

sources: an official checkpoint-*.pth, a run folder, checkpoints/latest, a training .pt, an export
folder, or a diffusers-style model: a pipeline folder (model_index.json), its transformer/ folder, a
diffusion_pytorch_model.safetensors beside its config.json, or a sharded
diffusion_pytorch_model.safetensors.index.json. Diffusers layouts A (official names under
transformer. or net.), B0 and B are told apart by their tensor names; fp32, fp16 and bf16 files load
as fp32. Only safetensors and weights-only checkpoints are read: no pickled code is ever run."""


def load_pretrained(
    folder: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None
) -> tuple[JiT, ModelInfo]:
    """Open an export folder as a :class:`JiT` (see :func:`pretrained.load_pretrained`)."""
    return _load_pretrained(folder, JiT, device=device, dtype=dtype)


def load_source(
    src: str | Path | Source, weights: str | None = None, *, in_context_start: int | None = None
) -> tuple[JiT, ModelInfo]:
    """Open anything ``jit convert`` accepts (or use an opened :class:`Source`), on the CPU.

    ``weights`` defaults to ema1, or the one weight set an export or diffusers folder holds."""
    source = src if isinstance(src, Source) else open_source(src, in_context_start=in_context_start)
    return source.load(weights, "cpu")


def convert(
    src: str | Path | Source,
    out: str | Path,
    *,
    weights: str | None = None,
    dtype: str = "fp32",
    overwrite: bool = False,
    in_context_start: int | None = None,
    fmt: str = "jit",
) -> tuple[Path, JiT, ModelInfo]:
    """Export ``src`` (see :func:`load_source`) at ``out`` in ``fmt`` (see :data:`FORMATS`)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {list(FORMATS)}")
    model, info = load_source(src, weights, in_context_start=in_context_start)
    if FORMATS[fmt] is None:
        folder = save_pretrained(model, out, info, dtype=dtype, overwrite=overwrite)
    else:
        folder = save_diffusers(model, out, info, layout=FORMATS[fmt], dtype=dtype, overwrite=overwrite)
    return folder, model, info


def run_convert(args: argparse.Namespace) -> None:
    source = open_source(args.src, in_context_start=args.in_context_start)
    try:
        folder, model, info = convert(source, args.out, weights=args.weights, dtype=args.dtype,
                                      overwrite=args.overwrite, fmt=args.format)  # fmt: skip
    except FileExistsError as err:
        raise UserError(str(err)) from None
    preset = find_preset(model.config) or "custom architecture"
    layout = FORMATS[args.format]
    written = f"diffusers pipeline, layout {layout}" if layout else "export folder"
    print(
        f"wrote {folder} ({written}): {preset}, {model.num_params() / 1e6:.2f}M params, {info.image_size}px, "
        f"{info.num_classes} classes, weights {info.weights} as {args.dtype}, from {args.src} ({source.describe()})"
    )


def add_cli(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="export an official .pth, a run, an export or a diffusers folder as an export or diffusers folder",
        description="Convert a model into an export folder (config.json + model.safetensors) that "
        "`jit sample`, `jit eval` and JiT.from_pretrained open, or into a diffusers pipeline folder to share.",
        epilog=FORMAT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", help="official checkpoint .pth, run folder, checkpoints/latest, training checkpoint .pt, "
                               "export folder, or diffusers pipeline / transformer folder / .safetensors "
                               "(see below)")  # fmt: skip
    p.add_argument("out", help="output folder (must not exist or be empty, unless --overwrite)")
    p.add_argument(
        "--weights",
        choices=WEIGHT_CHOICES,
        default=None,
        help="which weights to export: ema1 (default, used for sampling), ema2 or raw",
    )
    p.add_argument("--format", choices=list(FORMATS), default="jit",
                   help="what to write: jit (default, our export folder), diffusers-b0 or diffusers-b (see below)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="storage dtype (default fp32)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
    p.add_argument(
        "--in-context-start",
        type=int,
        default=None,
        help="block index where in-context tokens join; needed only for non-preset official weights",
    )
    p.set_defaults(func=run_convert)
