"""Conversion: turn any model source into an export folder (``config.json`` + ``model.safetensors``)
or, with ``--format diffusers-b0|diffusers-b``, a diffusers pipeline folder.

Sources are whatever :mod:`.loading` opens: an official ``.pth`` (JiT) or ``.pt`` (pMF), a run folder,
its ``checkpoints/latest``, a training checkpoint, an export folder or a diffusers-style folder or file.
A pMF model exports to our format only (its family in ``config.json``, its v head kept when present).
The export format lives in :mod:`jit_diffusion.models.pretrained`, the official import in :mod:`.official`,
the diffusers layouts in :mod:`.diffusers` and :mod:`.diffusers_folder`. The ``jit convert`` command is
:mod:`jit_diffusion.cli.convert`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..models.config import ModelInfo
from ..models.jit import JiT
from ..models.pretrained import CONFIG_NAME, FORMAT, WEIGHTS_NAME, save_pretrained
from ..models.pretrained import load_pretrained as _load_pretrained
from .diffusers_folder import save_diffusers
from .loading import Source, open_source
from .official import infer_config, load_official

__all__ = ["CONFIG_NAME", "FORMAT", "FORMATS", "WEIGHTS_NAME", "convert", "infer_config", "load_official",
           "load_pretrained", "load_source", "save_diffusers", "save_pretrained"]  # fmt: skip

# --format value -> diffusers layout written (None: our export format)
FORMATS = {"jit": None, "diffusers-b0": "B0", "diffusers-b": "B"}


def load_pretrained(
    folder: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None
) -> tuple[JiT, ModelInfo]:
    """Open an export folder as a :class:`JiT` (see :func:`pretrained.load_pretrained`)."""
    return _load_pretrained(folder, JiT, device=device, dtype=dtype)


def load_source(
    src: str | Path | Source, weights: str | None = None, *, in_context_start: int | None = None
) -> tuple[torch.nn.Module, ModelInfo]:
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
    merge_lora: bool = False,
) -> tuple[Path, torch.nn.Module, ModelInfo]:
    """Export ``src`` (see :func:`load_source`) at ``out`` in ``fmt`` (see :data:`FORMATS`). A LoRA run
    exports its base with the adapters merged in, and only when ``merge_lora`` says so (and it is one)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {list(FORMATS)}")
    source = src if isinstance(src, Source) else open_source(src, in_context_start=in_context_start)
    if bool(source.lora) != merge_lora:
        raise ValueError(f"{source.path} is a LoRA run: add --merge-lora to write its base with the adapters merged"
                         if source.lora else f"--merge-lora: {source.path} is no LoRA run ({source.describe()})")
    if FORMATS[fmt] is not None and source.family != "jit":
        raise ValueError(f"--format {fmt} holds JiT models only; a {source.family} model converts to --format jit")
    model, info = load_source(source, weights)
    if FORMATS[fmt] is None:
        folder = save_pretrained(model, out, info, dtype=dtype, overwrite=overwrite)
    else:
        folder = save_diffusers(model, out, info, layout=FORMATS[fmt], dtype=dtype, overwrite=overwrite)
    return folder, model, info
