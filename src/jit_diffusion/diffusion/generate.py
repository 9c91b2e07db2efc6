"""Image generation from a trained model: deterministic per-image noise, batching, uint8 images; the
``jit sample`` command around it is :mod:`jit_diffusion.cli.sample`."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.device import autocast_context, resolve_device
from ..core.images import make_grid, save_grid, save_npz, save_png_folder, to_uint8
from .sampling import check_interval, image_noise, sample

__all__ = ["autocast_context", "generate", "image_noise", "interval_arg", "make_grid",
           "parse_classes", "parse_interval", "resolve_device", "save_grid", "save_npz", "save_png_folder",
           "to_uint8"]  # fmt: skip


@torch.no_grad()
def generate(
    model,
    labels: Sequence[int] | torch.Tensor,
    *,
    image_size: int,
    seed: int = 0,
    start_index: int = 0,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    precision: str = "auto",
    progress: bool = False,
    **sampler,
) -> np.ndarray:
    """Sample one image per label; image k uses the noise of index ``start_index + k``. ``sampler`` are
    :func:`sampling.sample`'s keywords (``method``, ``steps``, ``cfg``, ``cfg_interval``, ``noise_scale``,
    ``t_eps``, ``prediction``, ``grid``, ``shift``, ``final``).

    Returns uint8 (N, H, W, 3).
    """
    device = resolve_device(device)
    labels = torch.as_tensor(labels, dtype=torch.long)
    chunks = []
    batches = range(0, len(labels), batch_size)
    for lo in tqdm(batches, disable=not progress, desc="sampling", unit="batch"):
        y = labels[lo : lo + batch_size].to(device)
        idx = range(start_index + lo, start_index + lo + len(y))
        noise = image_noise(idx, (model.in_channels, image_size, image_size), seed).to(device)
        with autocast_context(device, precision):
            out = sample(model, noise, y, **sampler)
        chunks.append(to_uint8(out))
    if not chunks:
        return np.zeros((0, image_size, image_size, 3), dtype=np.uint8)
    return np.concatenate(chunks)


def compile_for_sampling(model, device: torch.device, enabled: bool = True):
    """``torch.compile`` the whole forward on CUDA (``jit sample``/``jit eval`` unless ``--no-compile``); each
    batch shape (with and without the CFG rows, the last batch) compiles once. Idempotent; returns ``model``."""
    if enabled and torch.device(device).type == "cuda" and getattr(model, "_compiled_call_impl", None) is None:
        model.compile_model("model")
    return model


def _class_by_name(item: str, class_names: Sequence[str], num_classes: int) -> int:
    """The class named ``item``, else the one whose name lists it among its comma-separated synonyms
    (ImageNet style: "tabby, tabby cat"), ignoring case; an error when none or several classes do."""
    wanted = item.casefold()
    hits = [i for i, name in enumerate(class_names) if name == item] or [
        i for i, name in enumerate(class_names) if wanted in {s.strip().casefold() for s in name.split(",")}]
    if len(hits) > 1:
        raise ValueError(f"--classes: {item!r} names classes {hits}; give the index instead")
    if not hits:
        shown = ", ".join(repr(n) for n in list(class_names)[:8]) + (", ..." if len(class_names) > 8 else "")
        raise ValueError(f"--classes: unknown class {item!r}; use indices 0..{num_classes - 1} or names ({shown})")
    return hits[0]


def _whole_name(items: list[str], class_names: Sequence[str]) -> tuple[int, int] | None:
    """(class, items used) of the longest run of 2+ ``items`` that together spell a class name containing
    commas ("tabby, tabby cat"), ignoring case and the spaces around commas; None when none does."""
    spelled = {}
    for i, name in enumerate(class_names):
        spelled.setdefault(_normalized(name.split(",")), []).append(i)
    longest = max((name.count(",") + 1 for name in class_names), default=1)
    for used in range(min(longest, len(items)), 1, -1):
        hits = spelled.get(_normalized(items[:used]), [])
        if len(hits) > 1:
            raise ValueError(f"--classes: {', '.join(items[:used])!r} names classes {hits}; give the index instead")
        if hits:
            return hits[0], used
    return None


def _normalized(parts: Sequence[str]) -> str:
    return ", ".join(p.strip() for p in parts).casefold()


def parse_classes(spec: str | None, class_names: Sequence[str], num_classes: int) -> list[int]:
    """``None``/``all`` -> every class; otherwise a comma list of indices, class names, or one of the
    comma-separated synonyms of a class name (``golden retriever`` for "golden retriever", ``tabby`` for
    "tabby, tabby cat"). A whole name wins over its parts: ``tabby, tabby cat`` is that one class."""
    if num_classes == 0:
        return [0]
    if spec in (None, "", "all"):
        return list(range(num_classes))
    items = [item.strip() for item in spec.split(",")]
    out = []
    while items:
        item = items[0]
        whole = None if item.lstrip("-").isdigit() else _whole_name(items, class_names)
        if whole is not None:
            k, used = whole
        else:
            k = int(item) if item.lstrip("-").isdigit() else _class_by_name(item, class_names, num_classes)
            used = 1
        if not 0 <= k < num_classes:
            raise ValueError(f"--classes: class index {k} is out of range 0..{num_classes - 1}")
        out.append(k)
        items = items[used:]
    return out


def parse_interval(text: str, flag: str = "--interval") -> tuple[float, float]:
    """``"0.1,1.0"`` -> (0.1, 1.0); a one-line ValueError naming ``flag`` unless 0 <= min <= max <= 1."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = None
    if values is None or len(values) != 2:
        raise ValueError(f"{flag} expects two comma-separated numbers like 0.1,1.0, got {text!r}")
    return check_interval(values, flag)


def interval_arg(flag: str = "--interval") -> Callable[[str], tuple[float, float]]:
    """The argparse ``type`` of a CFG interval flag: :func:`parse_interval`, whose message argparse prints
    (after "argument FLAG:") instead of its generic "invalid value"."""

    def parse(text: str) -> tuple[float, float]:
        try:
            return parse_interval(text, flag)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err).removeprefix(f"{flag} ")) from None

    parse.__name__ = "interval"
    return parse
