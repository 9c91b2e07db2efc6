"""``jit convert``: any model source -> an export folder or a diffusers pipeline folder."""

from __future__ import annotations

import argparse

from ..core.errors import UserError
from ..formats.convert import FORMATS, convert
from ..formats.loading import open_source
from ..formats.official import WEIGHT_CHOICES
from ..models.config import preset_name

FORMAT_HELP = """output formats:
  jit           (default) an export folder: config.json + model.safetensors, with every sampling
                setting, for `jit sample`, `jit eval` and JiT.from_pretrained
  diffusers-b0  a diffusers pipeline folder in layout B0, the community JiTTransformer2DModel's names
                (BiliSakura/JiT-diffusers): model_index.json, scheduler/scheduler_config.json,
                transformer/config.json + transformer/diffusion_pytorch_model.safetensors, and
                jit_diffusion.json with our sampling settings
  diffusers-b   the same folder in layout B, the diffusers pull request's class (attn.qkv split into
                to_q/to_k/to_v, norm_q/norm_k, to_out.0)

sources: an official checkpoint-*.pth, an official pMF .pt (pMF-B-16.pt, ...; pMF models convert to
the jit format only, v head kept), a run folder, checkpoints/latest, a training .pt, an export
folder, or a diffusers-style model: a pipeline folder (model_index.json), its transformer/ folder, a
diffusion_pytorch_model.safetensors beside its config.json, or a sharded
diffusion_pytorch_model.safetensors.index.json. Diffusers layouts A (official names under
transformer. or net.), B0 and B are told apart by their tensor names; fp32, fp16 and bf16 files load
as fp32. Only safetensors and weights-only checkpoints are read: no pickled code is ever run."""


def run_convert(args: argparse.Namespace) -> None:
    source = open_source(args.src, in_context_start=args.in_context_start)
    try:
        folder, model, info = convert(source, args.out, weights=args.weights, dtype=args.dtype,
                                      overwrite=args.overwrite, fmt=args.format,
                                      merge_lora=args.merge_lora)  # fmt: skip
    except FileExistsError as err:
        raise UserError(str(err)) from None
    preset = preset_name(model.config) or "custom architecture"
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
    p.add_argument("--merge-lora", action="store_true",
                   help="the source is a LoRA run (jit train --lora-rank): write its base with the adapters of "
                        "--weights merged in, a plain export that loads anywhere")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="storage dtype (default fp32)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
    p.add_argument(
        "--in-context-start",
        type=int,
        default=None,
        help="block index where in-context tokens join; needed only for non-preset official weights",
    )
    p.set_defaults(func=run_convert)

