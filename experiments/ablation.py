"""Image ablations in the spirit of the paper's Table 2 and Figure 4, on the built-in emoji data.

64 px images with 16x16 patches give 768 values per token; the network (JiT-Ti/16: width 192, a
64-wide patch bottleneck) is far narrower than a token, the regime where the paper finds that only
x-prediction works. Two groups of cells, all trained with the same recipe and number of steps:

  pred-loss   all nine prediction x loss spaces (x/eps/v network output, x/eps/v loss)
  bottleneck  x-prediction + v-loss with patch bottlenecks 16, 32, 64, 128, 256 and none

Every cell is scored by the offline emoji classifier (FD-emoji, lower is better, and class
accuracy of conditional samples; see `jit classifier`), written to ``OUT/results.md``/``.json``, and
drawn as sample figures. Re-running skips finished cells (training and scoring). One command runs everything:

    python experiments/ablation.py --out runs/ablation

Run time (2-core CPU, this repo's defaults: 600 steps of batch 64 per cell): about 1 h 50 min in all,
of which 87 min training (340-390 s a cell) and about 85 s of sampling and scoring a cell.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from jit_diffusion.core.fileio import atomic_write_bytes
from jit_diffusion.core.images import make_grid
from jit_diffusion.diffusion.generate import generate
from jit_diffusion.evaluation.classifier import ClassifierMetrics
from jit_diffusion.formats.checkpoint import latest_checkpoint, read_checkpoint
from jit_diffusion.formats.loading import load_model
from jit_diffusion.train.trainer import TrainConfig, Trainer

SPACES = ("x", "eps", "v")
BOTTLENECKS = (16, 32, 64, 128, 256, 0)  # 0 = a plain linear patch embedding
PRESET_BOTTLENECK = 64  # JiT-Ti's own bottleneck


def cells(groups: list[str]) -> list[dict]:
    """The experiment grid as (name, overrides) records."""
    out = []
    if "pred-loss" in groups:
        for pred in SPACES:
            for loss in SPACES:
                out.append({"name": f"{pred}-pred_{loss}-loss", "group": "pred-loss", "prediction": pred, "loss": loss})
    if "bottleneck" in groups:
        for width in BOTTLENECKS:
            cell = {"name": f"bottleneck-{width or 'none'}", "group": "bottleneck", "prediction": "x", "loss": "v",
                    "bottleneck_dim": width}  # fmt: skip
            if width == PRESET_BOTTLENECK:  # the preset itself: the x-pred/v-loss cell of the other group
                cell.update(bottleneck_dim=None, run="x-pred_v-loss")
            out.append(cell)
    return out


def train_cell(cell: dict, args: argparse.Namespace, run_dir: Path) -> float:
    """Train one cell (or finish an interrupted one); returns the training wall time in seconds."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None and read_checkpoint(ckpt)["step"] >= args.steps:
        return float(json.loads((run_dir / "timing.json").read_text())["train_seconds"])
    cfg = TrainConfig(
        model=args.model, img_size=args.img_size, data="emoji", prediction=cell["prediction"], loss=cell["loss"],
        bottleneck_dim=cell.get("bottleneck_dim"), batch_size=args.batch_size, lr=args.lr,
        warmup_steps=args.warmup_steps, steps=args.steps, ema_decays=[args.ema], seed=args.seed,
        out=str(run_dir), ckpt_every=args.steps // 4, log_every=50, sample_every=0, sample_cfg=args.cfg,
        device=args.device,
    )  # fmt: skip
    start = time.perf_counter()
    trainer = Trainer(cfg, resume=ckpt is not None)
    try:
        trainer.run()
    finally:
        trainer.close()
    seconds = time.perf_counter() - start
    (run_dir / "timing.json").write_text(json.dumps({"train_seconds": seconds}))
    return seconds


def evaluate_cell(run_dir: Path, metrics: ClassifierMetrics, args: argparse.Namespace) -> tuple[dict, np.ndarray]:
    """Sample ``per_class`` images of every class from EMA1 and score them (cached in ``run_dir``)."""
    cache = run_dir / f"eval_cfg{args.cfg}_n{args.per_class}_s{args.sample_steps}.npz"
    if cache.exists():
        with np.load(cache) as f:
            return json.loads(str(f["scores"])), f["images"]
    model, info = load_model(run_dir, weights="ema1", device=args.device)
    labels = np.repeat(np.arange(info.num_classes), args.per_class)
    start = time.perf_counter()
    images = generate(model, labels, image_size=info.image_size, seed=args.seed, cfg=args.cfg,
                      cfg_interval=info.cfg_interval, steps=args.sample_steps, noise_scale=info.noise_scale,
                      t_eps=info.t_eps, prediction=info.prediction, batch_size=128, device=args.device)  # fmt: skip
    scores = metrics.compute(images, labels)
    scores["sample_seconds"] = time.perf_counter() - start
    atomic_write_bytes(cache, lambda f: np.savez(f, images=images, scores=np.array(json.dumps(scores))))
    return scores, images


def cell_strip(images: np.ndarray, per_class: int, classes: list[int], shown: int) -> np.ndarray:
    """One row: ``shown`` samples of each of ``classes``."""
    picks = [images[c * per_class + i] for c in classes for i in range(min(shown, per_class))]
    return make_grid(np.stack(picks), nrow=len(picks), pad=1)


def sample_figure(rows: list[tuple[str, np.ndarray]], path: Path, scale: int = 2) -> None:
    """Stack labelled strips into one PNG."""
    label_w = 150
    strips = [Image.fromarray(s).resize((s.shape[1] * scale, s.shape[0] * scale), Image.NEAREST) for _, s in rows]
    width = label_w + max(s.width for s in strips)
    fig = Image.new("RGB", (width, sum(s.height for s in strips)), "white")
    draw = ImageDraw.Draw(fig)
    y = 0
    for (name, _), strip in zip(rows, strips):
        fig.paste(strip, (label_w, y))
        draw.text((4, y + strip.height // 2 - 6), name, fill="black")
        y += strip.height
    fig.save(path)


def write_tables(out: Path, results: list[dict], fd_name: str) -> None:
    """``results.md`` (two tables, as in the paper) and ``results.json``."""
    (out / "results.json").write_text(json.dumps(results, indent=2))
    by_name = {r["name"]: r for r in results}
    lines = [f"Emoji 64 px, JiT-Ti/16 (width 192 < 768 values per token); {fd_name} (lower is better) / class "
             f"accuracy of conditional samples.", "", "| prediction \\ loss | x-loss | eps-loss | v-loss |",
             "|---|---|---|---|"]  # fmt: skip
    for pred in SPACES:
        row = [f"{pred}-pred"]
        for loss in SPACES:
            r = by_name.get(f"{pred}-pred_{loss}-loss")
            row.append(f"{r[fd_name]:.1f} / {100 * r['class_accuracy']:.0f}%" if r else "-")
        lines.append("| " + " | ".join(row) + " |")
    bn = [r for r in results if r["group"] == "bottleneck"]
    if bn:
        lines += [
            "",
            "| bottleneck | " + " | ".join(r["name"].split("-")[1] for r in bn) + " |",
            "|---|" + "---|" * len(bn),
            f"| {fd_name} | " + " | ".join(f"{r[fd_name]:.1f}" for r in bn) + " |",
            "| class accuracy | " + " | ".join(f"{100 * r['class_accuracy']:.0f}%" for r in bn) + " |",
        ]
    lines += ["", "| cell | train s | sample s |", "|---|---|---|"]
    lines += [f"| {r['name']} | {r['train_seconds']:.0f} | {r['sample_seconds']:.0f} |" for r in results]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/ablation", help="output folder (re-running skips finished cells)")
    p.add_argument("--groups", default="pred-loss,bottleneck", help="pred-loss and/or bottleneck")
    p.add_argument("--model", default="JiT-Ti/16")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=600, help="training steps per cell (the same for all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--ema", type=float, default=0.995, help="EMA decay (short runs need short EMAs)")
    p.add_argument("--cfg", type=float, default=3.0, help="guidance weight for the scored samples")
    p.add_argument("--per-class", type=int, default=20, help="scored samples per class")
    p.add_argument("--sample-steps", type=int, default=25, help="Heun steps of the scored samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "args.json").write_text(json.dumps(vars(args), indent=2))
    groups = [g.strip() for g in args.groups.split(",")]
    metrics = ClassifierMetrics.create("emoji", args.img_size, device="cpu")
    results, strips = [], {}
    shown_classes = [0, 4, 7, 8, 15]  # faces-happy, mammals, plants-produce, food-drink, flags
    for cell in cells(groups):
        run_dir = out / cell.get("run", cell["name"])
        print(f"== {cell['name']}", flush=True)
        train_seconds = train_cell(cell, args, run_dir)
        scores, images = evaluate_cell(run_dir, metrics, args)
        result = {**cell, **scores, "train_seconds": train_seconds, "steps": args.steps}
        print(json.dumps(result), flush=True)
        results.append(result)
        strips[cell["name"]] = cell_strip(images, args.per_class, shown_classes, shown=4)
        write_tables(out, results, metrics.fd_name)
    for group in groups:
        rows = [(r["name"], strips[r["name"]]) for r in results if r["group"] == group]
        if rows:
            sample_figure(rows, out / f"samples_{group}.png")
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
