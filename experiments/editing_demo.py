"""The editing figures of docs/results.md from a trained emoji model: an img2img strength strip, inpainting,
the inversion round-trip error against steps, class interpolation strips and class swaps.

Inputs are held-out emoji (never seen in training), at the model's size, edited under their own class.

    python experiments/editing_demo.py RUN --out docs

Writes OUT/edit_img2img.png, edit_inpaint.png, edit_interpolate.png, edit_swap.png (``--parts figures``),
OUT/edit_inversion.{json,md} (``inversion``) and, with ``--classifier DIR`` (``jit classifier train``),
OUT/edit_swap.md: swaps against img2img under the target class, scored by the classifier.
Deterministic for a run, seed and settings.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from jit_diffusion.core.fileio import atomic_write_text, save_json
from jit_diffusion.core.images import save_grid, to_uint8
from jit_diffusion.data.emoji import EmojiDataset
from jit_diffusion.diffusion.sampling import image_noise
from jit_diffusion.editing.inputs import box_mask, to_unit
from jit_diffusion.editing.operations import ODESettings, img2img, inpaint, interpolate, reconstruct, swap
from jit_diffusion.evaluation.classifier_net import load_classifier, predict
from jit_diffusion.formats.loading import load_model

STRENGTHS = (0.2, 0.4, 0.6, 0.8, 1.0)
INVERSION_METHODS = ("heun", "euler", "dpm++2m", "dpm++3m", "unipc")
INVERSION_STEPS = (10, 20, 40, 80)
PAIRS = (("faces-happy", "mammals"), ("plants-produce", "food-drink"), ("hearts-shapes", "flags"),
         ("faces-other", "people"))  # fmt: skip


def picks(data: EmojiDataset, classes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The first held-out image of each named class: uint8 (N, 3, H, W), labels (N,)."""
    index = [int(np.flatnonzero(data.labels == data.class_names.index(name))[0]) for name in classes]
    return torch.from_numpy(data.images[index].copy()), torch.from_numpy(data.labels[index])


def uint8_rows(rows: list[torch.Tensor | np.ndarray]) -> np.ndarray:
    """Columns (each N images, [-1, 1] tensors or uint8 NHWC arrays) -> uint8 images in row-major order."""
    cols = [r if isinstance(r, np.ndarray) else to_uint8(r) for r in rows]
    return np.stack(cols, axis=1).reshape(-1, *cols[0].shape[1:])


def strength_strip(model, x, labels, settings, out: Path) -> dict:
    noise = image_noise(range(len(x)), x.shape[1:], 0)
    cols = [x] + [img2img(model, x, labels, noise, settings, strength=s) for s in STRENGTHS]
    save_grid(uint8_rows(cols), out / "edit_img2img.png", nrow=len(cols), upscale=3)
    return {"columns": ["input", *[f"strength {s}" for s in STRENGTHS]]}


def inpaint_figure(model, x, labels, settings, out: Path, size: int) -> dict:
    box = box_mask(f"{size // 4},{size // 4},{3 * size // 4},{3 * size // 4}", size)
    holed = torch.where(box, torch.zeros_like(x), x)  # the hole shown grey
    cols = [x, holed]
    for seed in range(3):
        noise = image_noise(range(len(x)), x.shape[1:], seed)
        cols.append(inpaint(model, x, box, labels, noise, settings))
    save_grid(uint8_rows(cols), out / "edit_inpaint.png", nrow=len(cols), upscale=3)
    return {"columns": ["input", "hole (centre half)", "seed 0", "seed 1", "seed 2"]}


def inversion_table(model, x, labels, info, out: Path) -> dict:
    reference = to_uint8(x).astype(np.float64)
    table = {}
    for method in INVERSION_METHODS:
        table[method] = {}
        for steps in INVERSION_STEPS:
            settings = ODESettings.from_info(info, method=method, steps=steps, cfg=1.0)
            start = time.perf_counter()
            noise, back = reconstruct(model, x, labels, settings)
            diff = to_uint8(back).astype(np.float64) - reference
            rms = float((back - x).pow(2).mean().sqrt())
            table[method][steps] = {"mae_levels": float(np.abs(diff).mean()),
                                    "psnr_db": 10 * math.log10(255**2 / max(float((diff**2).mean()), 1e-12)),
                                    "rms": rms, "noise_std": float(noise.std()),
                                    "seconds": round(time.perf_counter() - start, 2)}  # fmt: skip
    for rows in table.values():
        steps = list(rows)
        for a, b in zip(steps[:-1], steps[1:]):
            rows[b]["order"] = math.log2(rows[a]["rms"] / rows[b]["rms"]) / math.log2(b / a)
    save_json(out / "edit_inversion.json", table)
    atomic_write_text(out / "edit_inversion.md", inversion_markdown(table, len(x)))
    return table


def inversion_markdown(table: dict, images: int) -> str:
    head = "| method | " + " | ".join(f"{s} steps" for s in INVERSION_STEPS) + " | order (last doubling) |"
    lines = [head, "|---" * (len(INVERSION_STEPS) + 2) + "|"]
    for method, rows in table.items():
        cells = [f"{r['mae_levels']:.2f} / {r['psnr_db']:.1f} dB" for r in rows.values()]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {list(rows.values())[-1]['order']:.2f} |")
    note = (f"\nMean |error| in uint8 levels / PSNR of the round trip image -> noise -> image over {images} held-out "
            "images (cfg 1, each under its own class); order = log2 of the RMS error ratio per doubling.\n")
    return "\n".join(lines) + "\n" + note


def interpolation_strips(model, data, info, settings, out: Path, frames: int = 8) -> dict:
    shape = (3, info.image_size, info.image_size)
    noise = image_noise([0], shape, 0)[0]
    rows = []
    for a, b in PAIRS:
        ends = (data.class_names.index(a), data.class_names.index(b))
        rows.append(to_uint8(interpolate(model, ends, (noise, noise), frames, settings)))
    other = image_noise([1], shape, 0)[0]
    same = data.class_names.index("mammals")
    rows.append(to_uint8(interpolate(model, (same, same), (noise, other), frames, settings)))
    save_grid(np.concatenate(rows), out / "edit_interpolate.png", nrow=frames, upscale=3)
    return {"rows": [f"{a} -> {b} (one noise)" for a, b in PAIRS] + ["mammals, noise 0 -> noise 1 (slerp)"]}


def swap_figure(model, x, labels, target: int, settings, out: Path) -> dict:
    to = torch.full_like(labels, target)
    cols = [x] + [swap(model, x, labels, to, settings, strength=s) for s in (0.4, 0.6, 0.8, 1.0)]
    cols.append(img2img(model, x, to, image_noise(range(len(x)), x.shape[1:], 0), settings, strength=0.8))
    save_grid(uint8_rows(cols), out / "edit_swap.png", nrow=len(cols), upscale=3)
    return {"columns": ["input", "swap 0.4", "swap 0.6", "swap 0.8", "swap 1.0", "img2img 0.8 as target"]}


def swap_measure(model, data, settings, classifier: str, out: Path, count: int = 64) -> dict:
    """Swap against img2img under the target class on ``count`` held-out images, each sent to class
    (label + 8) mod 16: the classifier's share of outputs in the target class, and the mean |distance| to the
    input in uint8 levels (how much of the image is kept)."""
    net, _ = load_classifier(classifier)
    step = max(1, len(data.labels) // count)
    images, labels = torch.from_numpy(data.images[::step][:count].copy()), torch.from_numpy(data.labels[::step][:count])
    x, target = to_unit(images), (labels + 8) % data.num_classes
    reference = to_uint8(x)
    noise = image_noise(range(len(x)), x.shape[1:], 0)
    rows = {"inputs": {"target_acc": float((predict(net, reference)[1] == target.numpy()).mean()),
                       "source_acc": float((predict(net, reference)[1] == labels.numpy()).mean()), "distance": 0.0}}
    for strength in (0.4, 0.6, 0.8, 1.0):
        for name, fn in (("swap", lambda s: swap(model, x, labels, target, settings, strength=s)),
                         ("img2img", lambda s: img2img(model, x, target, noise, settings, strength=s))):
            result = to_uint8(fn(strength))
            predicted = predict(net, result)[1]
            rows[f"{name} {strength}"] = {"target_acc": float((predicted == target.numpy()).mean()),
                                          "source_acc": float((predicted == labels.numpy()).mean()),
                                          "distance": float(np.abs(result.astype(float) - reference).mean())}
    lines = ["| edit | in target class | still in source class | mean distance to input (levels) |",
             "|---|---|---|---|"]
    lines += [f"| {k} | {v['target_acc']:.0%} | {v['source_acc']:.0%} | {v['distance']:.1f} |" for k, v in rows.items()]
    atomic_write_text(out / "edit_swap.md", "\n".join(lines) + "\n")
    return rows


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="run folder or checkpoint of an emoji model")
    p.add_argument("--out", default="docs", help="folder for the figures and tables (default docs)")
    p.add_argument("--steps", type=int, default=25, help="ODE steps of the edits (default 25)")
    p.add_argument("--cfg", type=float, default=3.0, help="guidance of the edits (default 3)")
    p.add_argument("--ema", default=None, help="weights (default ema1)")
    p.add_argument("--classifier", default=None, help="an emoji classifier folder: also measure swaps (edit_swap.md)")
    p.add_argument("--parts", default="figures,inversion", help="figures, inversion and/or swap (needs --classifier)")
    args = p.parse_args()
    torch.set_grad_enabled(False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, info = load_model(args.run, weights=args.ema, device="cpu")
    data = EmojiDataset(info.image_size, split="heldout")
    settings = ODESettings.from_info(info, steps=args.steps, cfg=args.cfg)
    images, labels = picks(data, ["faces-happy", "mammals", "plants-produce", "food-drink", "travel-places",
                                  "hearts-shapes"])  # fmt: skip
    x = to_unit(images)
    start = time.perf_counter()
    record = {"run": str(args.run), "step": info.step, "steps": args.steps, "cfg": args.cfg, "method": info.method,
              "machine": f"{platform.machine()} CPU, torch {torch.__version__}"}  # fmt: skip
    parts = set(args.parts.split(",")) | ({"swap"} if args.classifier else set())
    if "figures" in parts:
        record["img2img"] = strength_strip(model, x, labels, settings, out)
        record["inpaint"] = inpaint_figure(model, x, labels, settings, out, info.image_size)
        record["interpolate"] = interpolation_strips(model, data, info, settings, out)
        record["swap"] = swap_figure(model, x[:4], labels[:4], data.class_names.index("mammals"), settings, out)
    if "inversion" in parts:
        inv_images = torch.from_numpy(data.images[::8][:16].copy())
        record["inversion"] = inversion_table(model, to_unit(inv_images), torch.from_numpy(data.labels[::8][:16]),
                                              info, out)  # fmt: skip
    if "swap" in parts:
        record["swap_measure"] = swap_measure(model, data, settings, args.classifier, out)
    record["seconds"] = round(time.perf_counter() - start, 1)
    save_json(out / f"edit_demo_{'_'.join(sorted(parts))}.json", record)
    print(f"wrote the editing figures to {out} in {record['seconds']} s")


if __name__ == "__main__":
    main()
