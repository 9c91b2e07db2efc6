"""``jit sample``: open any model source, generate images for the chosen classes, write a grid, PNGs or an .npz.

Every flag speaks this project's time (t = 1 clean). For a pMF model ``--cfg`` is the guidance weight omega
the network is conditioned on, ``--interval a,b`` the guidance interval (the network gets [1 - b, 1 - a]),
``--steps`` defaults to the model's (1) and ``--method`` is ``pmf`` or left out."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..core.device import PRECISIONS, check_precision, resolve_device
from ..core.errors import at_least
from ..core.images import npz_path, save_grid, save_npz, save_png_folder
from ..diffusion.generate import (
    DEFAULT_STEPS,
    SAMPLER_NAMES,
    check_cfg,
    check_class_scale,
    check_method,
    compile_for_sampling,
    generate,
    interval_arg,
    parse_classes,
)
from ..diffusion.sampling import FINALS, GRIDS, METHODS, sampling_times
from ..formats.loading import load_model


def ode_only_flags(args: argparse.Namespace) -> list[str]:
    """The ODE-solver flags given with non-default values (they do not apply to a pMF model)."""
    given = [("--time-grid", args.time_grid != "auto"), ("--shift", args.shift is not None),
             ("--final", args.final != "ode")]  # fmt: skip
    return [flag for flag, on in given if on]


def add_sampling_args(p: argparse.ArgumentParser, sweep: bool = False, class_scale: bool = True) -> None:
    """Sampler flags shared by ``jit sample``, ``jit eval`` and ``jit edit`` (``sweep``: --steps, --method and
    --class-scale take lists; ``class_scale``: whether to offer --class-scale)."""
    if sweep:
        p.add_argument("--steps", default=None,
                       help="steps, comma list for a sweep (default: the model's; 50 for JiT, 1 for pMF)")
        p.add_argument("--method", default=None,
                       help=f"ODE solver(s), comma list for a sweep: {', '.join(METHODS)} (default: the model's, "
                            "usually heun); pMF models: pmf")  # fmt: skip
    else:
        p.add_argument("--steps", type=at_least(1), default=None,
                       help=f"steps (default: the model's; {DEFAULT_STEPS} ODE steps for JiT, 1 for pMF)")
        p.add_argument("--method", choices=SAMPLER_NAMES, default=None,
                       help="ODE solver (default: the model's, usually heun; dpm++2m, dpm++3m, unipc spend one "
                            "evaluation per step); pMF models: pmf, one evaluation per step")  # fmt: skip
    p.add_argument("--time-grid", choices=("auto", *GRIDS), default="auto",
                   help="time grid (default auto: uniform for heun/euler, the measured best for the others)")
    p.add_argument("--shift", type=float, default=None,
                   help="the shifted grid's s in t' = t / (t + s (1 - t)) (implies --time-grid shifted; default 2)")
    p.add_argument("--final", choices=FINALS, default="ode",
                   help="ode: the ODE's end state (default); denoise: the last x-prediction")
    p.add_argument("--interval", type=interval_arg(), default=None,
                   help="CFG interval min,max in t, t = 1 clean (default: the model's, usually 0.1,1.0; pMF B/16 "
                        "0.3,0.9)")  # fmt: skip
    scale_help = ("pMF: each class embedding e moved away from the classes' mean m, m + S (e - m): a stronger "
                  "class at no extra evaluation (default 1 = off; 1.5 for the README's short-run recipe)")
    if class_scale and sweep:
        p.add_argument("--class-scale", default=None, help=scale_help + "; comma list for a sweep")
    elif class_scale:
        p.add_argument("--class-scale", type=float, default=1.0, help=scale_help)
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
    check_method(info.family, args.method)
    if info.method not in METHODS and ode_only_flags(args):
        print(f"{info.family} model: ignoring {', '.join(ode_only_flags(args))} (ODE solver options)")
    compile_for_sampling(model, device, args.compile)
    classes = parse_classes(args.classes, info.class_names, info.num_classes)
    labels = [c for c in classes for _ in range(args.per_class)]
    cfg = info.cfg if args.cfg is None else args.cfg
    interval = info.cfg_interval if args.interval is None else args.interval
    if info.num_classes == 0 and cfg != 1.0:
        print("unconditional model: ignoring --cfg")
        cfg = 1.0
    check_cfg(info.family, cfg, info.model_config)
    check_class_scale(info.family, args.class_scale)
    steps = args.steps or info.steps or DEFAULT_STEPS
    method = args.method or info.method
    if method in METHODS:  # the ODE grid's checks (t_eps, --shift), before any image
        sampling_times(method, steps, grid=args.time_grid, shift=args.shift, cfg=cfg, cfg_interval=interval,
                       t_eps=info.t_eps)  # fmt: skip
    images = generate(model, labels, image_size=info.image_size, seed=args.seed, cfg=cfg, cfg_interval=interval,
                      steps=steps, method=method, noise_scale=info.noise_scale,
                      t_eps=info.t_eps, prediction=info.prediction, grid=args.time_grid, shift=args.shift,
                      final=args.final, batch_size=args.batch_size, device=device,
                      precision=args.precision, progress=True, family=info.family,
                      class_scale=args.class_scale)  # fmt: skip
    write_outputs(images, labels, args, nrow=args.per_class, image_size=info.image_size)


def write_outputs(images: np.ndarray, labels: Sequence[int], args: argparse.Namespace, *, nrow: int,
                  image_size: int) -> None:  # fmt: skip
    """Write the outputs ``args`` asks for (``--grid``, ``--png-dir``, ``--npz``), each atomically, and say
    what was written."""
    if args.grid:
        upscale = max(1, 64 // image_size)
        print(f"wrote {save_grid(images, args.grid, nrow=nrow, upscale=upscale)}")
    if args.png_dir:
        save_png_folder(images, labels, args.png_dir)
        print(f"wrote {len(images)} PNGs to {args.png_dir}")
    if args.npz:
        print(f"wrote {save_npz(images, labels, args.npz)}")


def add_cli(sub) -> None:
    p = sub.add_parser("sample", help="generate images from a run folder, checkpoint or exported model",
                       description="Generate images: a PNG grid (a row per class), a folder of PNGs and/or an .npz.")
    p.add_argument("model_path", help="run folder, checkpoint .pt, exported folder, official JiT checkpoint .pth or "
                                      "official pMF checkpoint .pt")  # fmt: skip
    p.add_argument("--ema", default=None,
                   help="weights to use: ema1 (default; an export folder: its own), ema2 or raw")
    p.add_argument("--classes", default=None,
                   help="comma list of class indices or names (default: all); a whole name with commas, e.g. "
                        "'tabby, tabby cat', is one class, and so is one of its comma-separated synonyms")
    p.add_argument("--per-class", type=at_least(1), default=8, help="images per class (default 8)")
    p.add_argument("--cfg", type=float, default=None,
                   help="guidance weight (default: the model's); for pMF the omega the network is conditioned on")
    add_sampling_args(p)
    p.add_argument("--grid", default=None, help="write a PNG grid here")
    p.add_argument("--png-dir", default=None, help="write one PNG per image into this folder")
    p.add_argument("--npz", default=None,
                   help="write uint8 images (N,H,W,3) and labels to this .npz (.npz is appended when missing)")
    p.set_defaults(func=run_sample)
