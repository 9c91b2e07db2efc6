"""Image generation from a trained model: deterministic per-image noise, batching, image writers,
and the ``jit sample`` command."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .device import PRECISIONS, autocast_context, check_precision, resolve_device
from .errors import at_least
from .images import make_grid, npz_path, save_grid, save_npz, save_png_folder, to_uint8
from .loading import load_model
from .sampling import FINALS, GRIDS, METHODS, check_interval, image_noise, sample, sampling_times

__all__ = ["add_sampling_args", "autocast_context", "generate", "image_noise", "interval_arg", "make_grid",
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


def add_sampling_args(p: argparse.ArgumentParser, sweep: bool = False) -> None:
    """Sampler flags shared by ``jit sample`` and ``jit eval`` (``sweep``: --steps and --method take lists)."""
    if sweep:
        p.add_argument("--steps", default="50", help="ODE steps, comma list for a sweep (default 50)")
        p.add_argument("--method", default=None,
                       help=f"ODE solver(s), comma list for a sweep: {', '.join(METHODS)} (default: the model's, "
                            "usually heun)")  # fmt: skip
    else:
        p.add_argument("--steps", type=at_least(1), default=50, help="ODE steps (default 50)")
        p.add_argument("--method", choices=METHODS, default=None,
                       help="ODE solver (default: the model's, usually heun; dpm++2m, dpm++3m, unipc spend one "
                            "evaluation per step)")  # fmt: skip
    p.add_argument("--time-grid", choices=("auto", *GRIDS), default="auto",
                   help="time grid (default auto: uniform for heun/euler, the measured best for the others)")
    p.add_argument("--shift", type=float, default=None,
                   help="the shifted grid's s in t' = t / (t + s (1 - t)) (implies --time-grid shifted; default 2)")
    p.add_argument("--final", choices=FINALS, default="ode",
                   help="ode: the ODE's end state (default); denoise: the last x-prediction")
    p.add_argument("--interval", type=interval_arg(), default=None,
                   help="CFG interval min,max in t (default: the model's, usually 0.1,1.0)")
    p.add_argument("--seed", type=int, default=0, help="noise seed; image i always gets the same noise")
    p.add_argument("--batch-size", type=at_least(1), default=64, help="images per forward batch")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto = bf16 autocast on CUDA, fp32 elsewhere (the ODE state is always fp32)")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="do not torch.compile the network on CUDA (faster start, slower sampling)")


def _check_outputs(args: argparse.Namespace) -> None:
    """What ``jit sample`` writes, checked before any work: at least one output, files not folders and
    the reverse."""
    if not (args.grid or args.png_dir or args.npz):
        raise ValueError("nothing to write: give --grid PATH, --png-dir DIR and/or --npz PATH")
    for flag, path in (("--grid", args.grid), ("--npz", args.npz and npz_path(args.npz))):
        if path and Path(path).expanduser().is_dir():
            raise ValueError(f"{flag} {path} is a folder: give a file name")
    if args.png_dir and Path(args.png_dir).expanduser().exists() and not Path(args.png_dir).expanduser().is_dir():
        raise ValueError(f"--png-dir {args.png_dir} is a file, not a folder")


def run_sample(args: argparse.Namespace) -> None:
    """``jit sample``: images of the chosen classes as a grid, a PNG folder and/or an .npz (each written
    atomically)."""
    check_precision(args.precision)
    _check_outputs(args)
    device = resolve_device(args.device)
    model, info = load_model(args.model_path, weights=args.ema, device=device)
    compile_for_sampling(model, device, args.compile)
    classes = parse_classes(args.classes, info.class_names, info.num_classes)
    labels = [c for c in classes for _ in range(args.per_class)]
    cfg = info.cfg if args.cfg is None else args.cfg
    interval = info.cfg_interval if args.interval is None else args.interval
    if info.num_classes == 0 and cfg != 1.0:
        print("unconditional model: ignoring --cfg")
        cfg = 1.0
    method = args.method or info.method
    sampling_times(method, args.steps, grid=args.time_grid, shift=args.shift, cfg=cfg, cfg_interval=interval,
                   t_eps=info.t_eps)  # fmt: skip  # the grid's checks (t_eps, --shift), before any image
    images = generate(model, labels, image_size=info.image_size, seed=args.seed, cfg=cfg, cfg_interval=interval,
                      steps=args.steps, method=method, noise_scale=info.noise_scale,
                      t_eps=info.t_eps, prediction=info.prediction, grid=args.time_grid, shift=args.shift,
                      final=args.final, batch_size=args.batch_size, device=device,
                      precision=args.precision, progress=True)  # fmt: skip
    if args.grid:
        upscale = max(1, 64 // info.image_size)
        print(f"wrote {save_grid(images, args.grid, nrow=args.per_class, upscale=upscale)}")
    if args.png_dir:
        save_png_folder(images, labels, args.png_dir)
        print(f"wrote {len(images)} PNGs to {args.png_dir}")
    if args.npz:
        print(f"wrote {save_npz(images, labels, args.npz)}")


def add_cli(sub) -> None:
    p = sub.add_parser("sample", help="generate images from a run folder, checkpoint or exported model",
                       description="Generate images: a PNG grid (a row per class), a folder of PNGs and/or an .npz.")
    p.add_argument("model_path", help="run folder, checkpoint .pt, exported folder, or official checkpoint .pth")
    p.add_argument("--ema", default=None,
                   help="weights to use: ema1 (default; an export folder: its own), ema2 or raw")
    p.add_argument("--classes", default=None,
                   help="comma list of class indices or names (default: all); a whole name with commas, e.g. "
                        "'tabby, tabby cat', is one class, and so is one of its comma-separated synonyms")
    p.add_argument("--per-class", type=at_least(1), default=8, help="images per class (default 8)")
    p.add_argument("--cfg", type=float, default=None, help="guidance weight (default: the model's)")
    add_sampling_args(p)
    p.add_argument("--grid", default=None, help="write a PNG grid here")
    p.add_argument("--png-dir", default=None, help="write one PNG per image into this folder")
    p.add_argument("--npz", default=None,
                   help="write uint8 images (N,H,W,3) and labels to this .npz (.npz is appended when missing)")
    p.set_defaults(func=run_sample)
