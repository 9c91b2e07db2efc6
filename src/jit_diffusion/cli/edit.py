"""``jit edit``: image-to-image, inpainting, inversion, reconstruction, interpolation and class swaps with
any model source (flags and printing around :mod:`.editing`). pMF models take img2img and inpaint (their
few-step sampler from t0 = 1 - strength); the other operations run the ODE of JiT models."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import numpy as np
import torch

from ..core.device import autocast_context, check_precision, resolve_device
from ..core.errors import UserError
from ..core.images import to_uint8
from ..diffusion.generate import check_cfg, check_method, compile_for_sampling, parse_classes
from ..diffusion.sampling import image_noise
from ..editing import operations as editing
from ..editing.inputs import box_mask, check_animation_path, load_inputs, load_mask, save_animation, save_noise, to_unit
from ..formats.loading import open_source
from .sample import add_sampling_args, ode_only_flags, write_outputs

NULL_NAMES = ("null", "none")  # the null class: unconditional
FEW_STEP_OPERATIONS = ("img2img", "inpaint")  # what a pMF model takes


def class_list(spec: str | None, info, flag: str = "--classes") -> list[int]:
    """Class indices of a comma list (indices, names, or ``null`` for the null class); [] when not given.
    An unconditional model has the single class 0."""
    if info.num_classes == 0:
        return [0]
    if spec in (None, ""):
        return []
    out = []
    for item in spec.split(","):
        if item.strip().casefold() in NULL_NAMES:
            out.append(info.num_classes)
            continue
        try:
            out.extend(parse_classes(item.strip(), info.class_names, info.num_classes))
        except ValueError as err:
            raise UserError(str(err).replace("--classes", flag)) from None
    return out


def input_labels(spec: str | None, info, count: int, flag: str = "--classes") -> torch.Tensor:
    """One label per input image: one class for all, one per image, or (not given) the null class."""
    classes = class_list(spec, info, flag)
    if not classes:
        print(f"no {flag}: editing under the null class (unconditional)")
        classes = [info.num_classes]
    if len(classes) == 1:
        classes = classes * count
    if len(classes) != count:
        raise UserError(f"{flag} gives {len(classes)} classes for {count} input images: give one, or one per image")
    return torch.tensor(classes, dtype=torch.long)


def _settings(args: argparse.Namespace, info, default_cfg: float | None = None) -> editing.ODESettings:
    cfg = args.cfg if args.cfg is not None else default_cfg
    if info.num_classes == 0 and cfg not in (None, 1.0):
        print("unconditional model: ignoring --cfg")
        cfg = 1.0
    if info.family != "jit":
        check_method(info.family, args.method)
        check_cfg(info.family, info.cfg if cfg is None else cfg, info.model_config)
        if ode_only_flags(args):
            print(f"{info.family} model: ignoring {', '.join(ode_only_flags(args))} (ODE solver options)")
        return editing.ODESettings.from_info(info, steps=args.steps, cfg=cfg, cfg_interval=args.interval)
    return editing.ODESettings.from_info(info, method=args.method, steps=args.steps, cfg=cfg,
                                         cfg_interval=args.interval, grid=args.time_grid, shift=args.shift,
                                         final=args.final)  # fmt: skip


def _check_outputs(args: argparse.Namespace, required: bool = True) -> None:
    if required and not (args.grid or args.png_dir or args.npz or getattr(args, "animation", None)):
        raise UserError("nothing to write: give --grid PATH, --png-dir DIR and/or --npz PATH")
    check_animation_path(getattr(args, "animation", None))


def _open(args: argparse.Namespace):
    """(source, info) without building the network: enough to check every input first."""
    check_precision(args.precision)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    source = open_source(args.model_path)
    info = source.info(args.ema)
    if info.family != "jit" and args.operation not in FEW_STEP_OPERATIONS:
        raise UserError(f"{args.model_path} is a {info.family} model: jit edit takes it for "
                        f"{' and '.join(FEW_STEP_OPERATIONS)}; {args.operation} runs the ODE of JiT models only")
    return source, info


def _load(args: argparse.Namespace, source):
    device = resolve_device(args.device)
    model, _ = source.load(args.ema, device)
    return compile_for_sampling(model, device, args.compile), device


def _batched(args, model, device, images: torch.Tensor, labels: torch.Tensor, run: Callable) -> torch.Tensor:
    """``run(model, x, labels, noise, indices)`` over batches; image k gets noise k of ``--seed``."""
    outs = []
    for lo in range(0, len(images), args.batch_size):
        x = to_unit(images[lo : lo + args.batch_size]).to(device)
        y = labels[lo : lo + len(x)].to(device)
        indices = range(lo, lo + len(x))
        noise = image_noise(indices, tuple(x.shape[1:]), args.seed).to(device)
        with autocast_context(device, args.precision):
            outs.append(run(model, x, y, noise, indices).float().cpu())
    return torch.cat(outs)


def _prepare(args: argparse.Namespace, default_cfg: float | None = None, outputs: bool = True, opened=None):
    """Checks every input, then loads the model: (model, device, info, settings, uint8 images, labels, mask)."""
    source, info = opened or _open(args)
    _check_outputs(args, outputs)
    settings = _settings(args, info, default_cfg)
    images, _ = load_inputs(args.input, info.image_size)
    labels = input_labels(args.classes, info, len(images))
    if hasattr(args, "strength"):
        editing.check_strength(args.strength)
    if getattr(args, "resample", 1) != 1:
        editing.check_resample(args.resample)
        if info.family != "jit":
            raise UserError(f"--resample applies to JiT models (the ODE); a {info.family} model inpaints with "
                            f"--resample 1")  # fmt: skip
    mask = _mask(args, info.image_size) if args.operation == "inpaint" else None
    model, device = _load(args, source)
    return model, device, info, settings, images, labels, mask


def _mask(args: argparse.Namespace, image_size: int) -> torch.Tensor:
    if (args.mask is None) == (args.box is None):
        raise UserError("inpaint needs exactly one of --mask PNG and --box x0,y0,x1,y1")
    return load_mask(args.mask, image_size) if args.mask else box_mask(args.box, image_size)


def run_img2img(args: argparse.Namespace) -> None:
    model, device, info, s, images, labels, _ = _prepare(args)
    out = _batched(args, model, device, images, labels,
                   lambda m, x, y, e, _: editing.img2img(m, x, y, e, s, strength=args.strength))  # fmt: skip
    write_outputs(to_uint8(out), labels.tolist(), args, nrow=min(len(out), 8), image_size=info.image_size)


def run_inpaint(args: argparse.Namespace) -> None:
    model, device, info, s, images, labels, mask = _prepare(args)
    run = lambda m, x, y, e, i: editing.inpaint(m, x, mask, y, e, s, strength=args.strength,  # noqa: E731
                                                resample=args.resample, seed=args.seed, indices=i)  # fmt: skip
    out = _batched(args, model, device, images, labels, run)
    print(f"regenerated {int(mask.sum())} of {mask.numel()} pixels per image")
    write_outputs(to_uint8(out), labels.tolist(), args, nrow=min(len(out), 8), image_size=info.image_size)


def run_invert(args: argparse.Namespace) -> None:
    model, device, info, s, images, labels, _ = _prepare(args, default_cfg=1.0, outputs=False)
    noise = _batched(args, model, device, images, labels, lambda m, x, y, e, _: editing.invert(m, x, y, s))
    print(f"inverted {len(noise)} images ({s.method}, {s.steps} steps, cfg {s.cfg}): noise mean "
          f"{float(noise.mean()):+.3f}, std {float(noise.std()):.3f} (1 for a standard normal)")  # fmt: skip
    print(f"wrote {save_noise(noise, labels.tolist(), args.noise_out)}")


def reconstruction_error(images: torch.Tensor, recon: np.ndarray) -> tuple[float, float]:
    """(mean absolute error in uint8 levels, PSNR in dB) of uint8 reconstructions (N, H, W, 3)."""
    diff = recon.astype(np.float64) - images.permute(0, 2, 3, 1).numpy().astype(np.float64)
    mse = float(np.mean(diff**2))
    return float(np.mean(np.abs(diff))), (math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse))


def run_reconstruct(args: argparse.Namespace) -> None:
    model, device, info, s, images, labels, _ = _prepare(args, default_cfg=1.0, outputs=False)
    out = _batched(args, model, device, images, labels, lambda m, x, y, e, _: editing.reconstruct(m, x, y, s)[1])
    recon = to_uint8(out)
    mae, psnr = reconstruction_error(images, recon)
    print(f"reconstruction error ({s.method}, {s.steps} steps, cfg {s.cfg}): mean |error| {mae:.3f} levels "
          f"of 255, PSNR {psnr:.2f} dB over {len(recon)} images")  # fmt: skip
    write_outputs(recon, labels.tolist(), args, nrow=min(len(recon), 8), image_size=info.image_size)


def run_swap(args: argparse.Namespace) -> None:
    source, info = _open(args)
    target = class_list(args.to, info, "--to")
    if info.num_classes == 0 or len(target) != 1:
        raise UserError("swap needs a class-conditional model and one class for --to")
    model, device, info, s, images, labels, _ = _prepare(args, opened=(source, info))
    to = torch.full_like(labels, target[0])
    out = _batched(args, model, device, images, labels,
                   lambda m, x, y, e, _: editing.swap(m, x, y, to[: len(y)].to(y.device), s, strength=args.strength,
                                                   invert_cfg=args.invert_cfg))  # fmt: skip
    write_outputs(to_uint8(out), to.tolist(), args, nrow=min(len(out), 8), image_size=info.image_size)


def _pair(text: str, flag: str, parse: Callable[[str], list[int]]) -> tuple[int, int]:
    values = parse(text)
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise UserError(f"{flag} expects one or two values A,B, got {text!r}")
    return values[0], values[1]


def _noise_indices(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"--noises expects image indices like 0,1, got {text!r}") from None
    if any(v < 0 for v in values):
        raise UserError(f"--noises: indices must be >= 0, got {text!r}")
    return values


def run_interpolate(args: argparse.Namespace) -> None:
    source, info = _open(args)
    _check_outputs(args)
    if args.frames < 2:
        raise UserError(f"--frames must be >= 2, got {args.frames}")
    classes = _pair(args.classes or "null", "--classes", lambda t: class_list(t, info))
    noises = _pair(args.noises, "--noises", _noise_indices)
    settings = _settings(args, info)
    model, device = _load(args, source)
    shape = (model.in_channels, info.image_size, info.image_size)
    ends = [image_noise([k], shape, args.seed)[0].to(device) for k in noises]
    with autocast_context(device, args.precision):
        out = editing.interpolate(model, classes, (ends[0], ends[1]), args.frames, settings)
    frames = to_uint8(out)
    write_outputs(frames, [classes[0]] * len(frames), args, nrow=args.frames, image_size=info.image_size)
    if args.animation:
        print(f"wrote {save_animation(frames, args.animation, upscale=max(1, 128 // info.image_size))}")


def _common(p: argparse.ArgumentParser, inputs: bool = True, outputs: str | None = "the edited images",
            cfg: str = "the model's") -> None:  # fmt: skip
    p.add_argument("model_path", help="run folder, checkpoint .pt, exported folder, official .pth or diffusers folder")
    p.add_argument("--ema", default=None, help="weights to use: ema1 (default; an export folder: its own), ema2 or raw")
    if inputs:
        p.add_argument("--input", required=True,
                       help="an image file or a folder of images (any size: centre-cropped and resized like the "
                            "training data); image k uses noise k of --seed")  # fmt: skip
        p.add_argument("--classes", default=None,
                       help="class of the inputs (one for all, or one per image; index, name or null; "
                            "default null = unconditional)")  # fmt: skip
    p.add_argument("--cfg", type=float, default=None,
                   help=f"guidance weight (default: {cfg}); for a pMF model the omega it is conditioned on")
    add_sampling_args(p, class_scale=False)
    if outputs is None:
        return
    p.add_argument("--grid", default=None, help=f"write a PNG grid of {outputs} here")
    p.add_argument("--png-dir", default=None, help=f"write {outputs} as one PNG each into this folder")
    p.add_argument("--npz", default=None, help=f"write {outputs} (uint8 N,H,W,3) and labels to this .npz")


def _strength(p: argparse.ArgumentParser, default: float, what: str) -> None:
    p.add_argument("--strength", type=float, default=default,
                   help=f"{what}: start time t0 = 1 - strength (1 = from pure noise, 0 = the input; default "
                        f"{default})")  # fmt: skip


def add_cli(sub) -> None:
    p = sub.add_parser("edit", help="edit real images: img2img, inpaint, invert, reconstruct, interpolate, swap",
                       description="Edit images with any model: image-to-image, inpainting, inversion to noise, "
                                   "reconstruction, noise/class interpolation and class swaps. pMF models take "
                                   "img2img and inpaint (their 1-2 step sampler from t0 = 1 - strength, --cfg "
                                   "is omega); the others run the ODE of JiT models.")  # fmt: skip
    ops = p.add_subparsers(dest="operation", metavar="OPERATION", required=True)
    q = ops.add_parser("img2img", help="re-generate images from a noised copy (SDEdit; pMF models too)")
    _common(q)
    _strength(q, 0.5, "how much to change")
    q.set_defaults(func=run_img2img)
    q = ops.add_parser("inpaint", help="regenerate the white part of a mask, keep the rest exactly (pMF models too)")
    _common(q)
    q.add_argument("--mask", default=None, help="black-and-white mask image (white = regenerate; any size)")
    q.add_argument("--box", default=None, help="rectangle to regenerate, x0,y0,x1,y1 in the model's pixels")
    _strength(q, 1.0, "how much of the masked part to change")
    q.add_argument("--resample", type=int, default=1, metavar="K",
                   help="RePaint jumps: take each step K times, re-noising back along the path in between (fresh "
                        "noise of --seed and the image index) for seams that match; 1 = none (default; JiT models)")
    q.set_defaults(func=run_inpaint)
    q = ops.add_parser("invert", help="run the ODE backwards from images to their noise (guidance off by default)")
    _common(q, outputs=None, cfg="1, no guidance")
    q.add_argument("--noise-out", required=True, help="write the noises (fp32 N,3,H,W) and labels to this .npz")
    q.set_defaults(func=run_invert)
    q = ops.add_parser("reconstruct", help="invert, sample back, print the reconstruction error")
    _common(q, outputs="the reconstructions", cfg="1, no guidance")
    q.set_defaults(func=run_reconstruct)
    q = ops.add_parser("interpolate", help="frames between two classes and/or two noises")
    _common(q, inputs=False, outputs="the frames")
    q.add_argument("--classes", default=None, help="A,B: the end classes (index, name or null; default null)")
    q.add_argument("--noises", default="0", help="i,j: the end noises, image indices of --seed (default 0: one noise)")
    q.add_argument("--frames", type=int, default=8, help="frames including both ends (default 8)")
    q.add_argument("--animation", default=None, help="write the frames as a looping .gif or .webp")
    q.set_defaults(func=run_interpolate)
    q = ops.add_parser("swap", help="re-render images of one class as another, keeping their layout")
    _common(q)
    q.add_argument("--to", required=True, help="the class to render the inputs as (index or name)")
    q.add_argument("--invert-cfg", type=float, default=1.0, help="guidance while inverting (default 1: none)")
    _strength(q, 0.8, "how far back to invert")
    q.set_defaults(func=run_swap)
