"""Image generation from a trained model: deterministic per-image noise, batching, image writers,
and the ``jit sample`` command."""

from __future__ import annotations

import argparse
import contextlib
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .sampling import FINALS, GRIDS, METHODS, sample


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> cuda if available, else mps, else cpu; any other name or device as given."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def autocast_context(device: torch.device, precision: str = "auto"):
    """bf16 autocast on CUDA for ``auto``/``bf16``; plain fp32 otherwise."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"--precision must be auto, bf16 or fp32, got {precision!r}")
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def image_noise(indices: Sequence[int], shape: Sequence[int], seed: int) -> torch.Tensor:
    """Standard-normal starting noise (B, *shape): image ``i`` always gets the same draw for a seed,
    whatever the batch, chunk or rank it lands in."""
    out = torch.empty(len(indices), *shape)
    gen = torch.Generator()
    for row, index in enumerate(indices):
        gen.manual_seed((int(seed) * 1_000_003 + int(index)) % (2**63))
        out[row] = torch.randn(*shape, generator=gen)
    return out


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) images in [-1, 1] -> uint8 (B, H, W, 3)."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def generate(
    model,
    labels: Sequence[int] | torch.Tensor,
    *,
    image_size: int,
    seed: int = 0,
    start_index: int = 0,
    cfg: float = 1.0,
    cfg_interval: Sequence[float] = (0.1, 1.0),
    steps: int = 50,
    method: str = "heun",
    noise_scale: float = 1.0,
    t_eps: float = 0.05,
    prediction: str = "x",
    grid: str = "auto",
    shift: float | None = None,
    final: str = "ode",
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    precision: str = "auto",
    progress: bool = False,
) -> np.ndarray:
    """Sample one image per label; image k uses the noise of index ``start_index + k``. ``grid``, ``shift``
    and ``final`` go to :func:`sampling.sample`.

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
            out = sample(model, noise, y, method=method, steps=steps, cfg=cfg, cfg_interval=cfg_interval,
                         noise_scale=noise_scale, t_eps=t_eps, prediction=prediction, grid=grid, shift=shift,
                         final=final)  # fmt: skip
        chunks.append(to_uint8(out))
    if not chunks:
        return np.zeros((0, image_size, image_size, 3), dtype=np.uint8)
    return np.concatenate(chunks)


def make_grid(images: np.ndarray, nrow: int, pad: int = 2, background: int = 255) -> np.ndarray:
    """Tile uint8 (N, H, W, 3) images into one (rows*(H+pad)+pad, ...) image, ``nrow`` per row."""
    n, h, w, c = images.shape
    rows = max(1, math.ceil(n / nrow))
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), background, dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = img
    return grid


def save_grid(images: np.ndarray, path: str | Path, nrow: int, upscale: int = 1) -> Path:
    """Write a PNG grid (optionally upscaled with nearest-neighbour for small images)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(make_grid(images, nrow))
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    img.save(path)
    return path


def save_png_folder(images: np.ndarray, labels: Sequence[int], folder: str | Path, start_index: int = 0) -> None:
    """One PNG per image, named ``{index:06d}_c{label}.png``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for k, (img, y) in enumerate(zip(images, labels)):
        Image.fromarray(img).save(folder / f"{start_index + k:06d}_c{int(y)}.png")


def save_npz(images: np.ndarray, labels: Sequence[int], path: str | Path) -> Path:
    """``.npz`` with ``arr_0`` uint8 (N, H, W, 3) (the ADM evaluation layout) and ``labels`` (N,)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, arr_0=images, labels=np.asarray(labels, dtype=np.int64))
    return path


def parse_classes(spec: str | None, class_names: Sequence[str], num_classes: int) -> list[int]:
    """``None``/``all`` -> every class; otherwise a comma list of indices or class names."""
    if num_classes == 0:
        return [0]
    if spec in (None, "", "all"):
        return list(range(num_classes))
    out = []
    for item in spec.split(","):
        item = item.strip()
        if item.lstrip("-").isdigit():
            k = int(item)
        elif item in class_names:
            k = list(class_names).index(item)
        else:
            raise ValueError(
                f"--classes: unknown class {item!r}; use indices 0..{num_classes - 1} or names {list(class_names)}"
            )
        if not 0 <= k < num_classes:
            raise ValueError(f"--classes: class index {k} is out of range 0..{num_classes - 1}")
        out.append(k)
    return out


def parse_interval(text: str) -> tuple[float, float]:
    """``"0.1,1.0"`` -> (0.1, 1.0)."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError as err:
        raise ValueError(f"--interval expects two comma-separated numbers like 0.1,1.0, got {text!r}") from err
    if not 0 <= lo <= hi <= 1:
        raise ValueError(f"--interval must satisfy 0 <= min <= max <= 1, got {text!r}")
    return lo, hi


def parse_list(text: str, flag: str, kind=str) -> list:
    """``"10,20"`` -> [10, 20] (``kind`` converts each item); a one-line error naming ``flag`` otherwise."""
    try:
        values = [kind(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise ValueError(f"{flag} expects a comma-separated list, got {text!r}") from err
    if not values:
        raise ValueError(f"{flag} is empty")
    return values


def add_sampling_args(p: argparse.ArgumentParser, sweep: bool = False) -> None:
    """Sampler flags shared by ``jit sample`` and ``jit eval`` (``sweep``: --steps and --method take lists)."""
    if sweep:
        p.add_argument("--steps", type=lambda v: parse_list(v, "--steps", int), default=[50],
                       help="ODE steps, comma list for a sweep (default 50)")
        p.add_argument("--method", type=lambda v: parse_list(v, "--method"), default=["heun"],
                       help=f"ODE solver(s), comma list for a sweep: {', '.join(METHODS)} (default heun)")
    else:
        p.add_argument("--steps", type=int, default=50, help="ODE steps (default 50)")
        p.add_argument("--method", choices=METHODS, default="heun",
                       help="ODE solver (default heun; dpm++2m, dpm++3m, unipc spend one evaluation per step)")
    p.add_argument("--time-grid", choices=("auto", *GRIDS), default="auto",
                   help="time grid (default auto: uniform for heun/euler, the measured best for the others)")
    p.add_argument("--shift", type=float, default=None,
                   help="the shifted grid's s in t' = t / (t + s (1 - t)) (implies --time-grid shifted; default 2)")
    p.add_argument("--final", choices=FINALS, default="ode",
                   help="ode: the ODE's end state (default); denoise: the last x-prediction")
    p.add_argument("--interval", type=parse_interval, default=None,
                   help="CFG interval min,max in t (default: the model's, usually 0.1,1.0)")
    p.add_argument("--seed", type=int, default=0, help="noise seed; image i always gets the same noise")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward batch")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="auto = bf16 autocast on CUDA, fp32 elsewhere (the ODE state is always fp32)")


def run_sample(args: argparse.Namespace) -> None:
    from .checkpoint import load_model

    device = resolve_device(args.device)
    model, info = load_model(args.model_path, weights=args.ema, device=device)
    classes = parse_classes(args.classes, info.class_names, info.num_classes)
    labels = [c for c in classes for _ in range(args.per_class)]
    if not (args.grid or args.png_dir or args.npz):
        raise ValueError("nothing to write: give --grid PATH, --png-dir DIR and/or --npz PATH")
    cfg = info.cfg if args.cfg is None else args.cfg
    interval = info.cfg_interval if args.interval is None else args.interval
    if info.num_classes == 0 and cfg != 1.0:
        print("unconditional model: ignoring --cfg")
        cfg = 1.0
    images = generate(model, labels, image_size=info.image_size, seed=args.seed, cfg=cfg, cfg_interval=interval,
                      steps=args.steps, method=args.method, noise_scale=info.noise_scale, t_eps=info.t_eps,
                      prediction=info.prediction, grid=args.time_grid, shift=args.shift, final=args.final,
                      batch_size=args.batch_size, device=device,
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
    p.add_argument("--ema", default="ema1", help="weights to use: ema1 (default), ema2 or raw")
    p.add_argument("--classes", default=None, help="comma list of class indices or names (default: all)")
    p.add_argument("--per-class", type=int, default=8, help="images per class (default 8)")
    p.add_argument("--cfg", type=float, default=None, help="guidance weight (default: the model's)")
    add_sampling_args(p)
    p.add_argument("--grid", default=None, help="write a PNG grid here")
    p.add_argument("--png-dir", default=None, help="write one PNG per image into this folder")
    p.add_argument("--npz", default=None, help="write uint8 images (N,H,W,3) and labels to this .npz")
    p.set_defaults(func=run_sample)
