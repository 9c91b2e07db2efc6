"""Fine-tuning onto new classes against training from scratch, on the emoji data.

  split   the emoji train split at --img-size as two class-folder datasets: OUT/source (12 classes) and
          OUT/target (the 4 --held classes), PNGs on disk.
  train   OUT/runs/pretrain (JiT on source), then on target with the same steps and checkpoints:
          scratch (random weights), full (--init-from pretrain) and lora (the same, LoRA rank --lora-rank).
  eval    `jit eval` of every checkpoint of the target runs (FD-target and class accuracy from a classifier
          trained on the target folder) of --weights, then OUT/transfer-WEIGHTS.{json,md,png}.

    python experiments/finetune_transfer.py split --out runs/transfer
    python experiments/finetune_transfer.py train --out runs/transfer --pretrain-steps 1500 --steps 600
    python experiments/finetune_transfer.py eval  --out runs/transfer --per-class 64

Every stage resumes: finished runs and evaluated checkpoints are skipped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from jit_diffusion.cli import main as jit_main
from jit_diffusion.data.emoji import EmojiDataset

HELD = "faces-happy,mammals,food-drink,hearts-shapes"  # each has a related class among the 12 others
TARGET_RUNS = ("scratch", "full", "lora")


def split(args: argparse.Namespace) -> None:
    data = EmojiDataset(args.img_size, split="train")
    held = args.held.split(",")
    unknown = sorted(set(held) - set(data.class_names))
    if unknown:
        raise SystemExit(f"--held: unknown emoji classes {unknown}; the classes are {data.class_names}")
    counts = {"source": 0, "target": 0}
    for i, (image, label) in enumerate(zip(data.images, data.labels)):
        name = data.class_names[label]
        part = "target" if name in held else "source"
        folder = Path(args.out) / part / name
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(folder / f"{i:05d}.png")
        counts[part] += 1
    print(f"{counts['source']} source images ({16 - len(held)} classes), {counts['target']} target images "
          f"({len(held)} classes) under {args.out}")  # fmt: skip


def _train(run: Path, flags: list[str]) -> None:
    if (run / "checkpoints" / "latest").exists() and (run / "done.json").exists():
        return
    resume = ["--resume"] if (run / "checkpoints" / "latest").exists() else []
    code = jit_main(["train", *flags, "--out", str(run), *resume])
    if code:
        raise SystemExit(code)
    (run / "done.json").write_text(json.dumps({"flags": flags}))


def train(args: argparse.Namespace) -> None:
    out = Path(args.out)
    common = ["--model", "JiT-Ti/8", "--img-size", str(args.img_size), "--batch-size", "64", "--ema", "0.995,0.999",
              "--sample-every", "0", "--sample-cfg", "3.0", "--device", "cpu"]  # fmt: skip
    names = args.runs.split(",")
    if {"full", "lora"} & set(names):  # the source model first
        source = ["--data", str(out / "source"), "--lr", "1e-3", "--warmup-steps", "200", "--ckpt-every", "500"]
        _train(out / "runs" / "pretrain", [*common, *source, "--steps", str(args.pretrain_steps)])
    every = ["--steps", str(args.steps), "--ckpt-every", str(args.steps // args.points), "--keep-last", "0"]
    target = [*common, "--data", str(out / "target"), *every]
    init = ["--init-from", str(out / "runs" / "pretrain"), "--init-weights", "ema1"]
    settings = {
        "scratch": ["--lr", "1e-3", "--warmup-steps", "200"],
        "full": [*init, "--lr", str(args.lr), "--warmup-steps", "50"],
        "lora": [*init, "--lr", str(args.lora_lr), "--warmup-steps", "50", "--lora-rank", str(args.lora_rank),
                 "--lora-targets", "attn.qkv,attn.proj,mlp.w12,mlp.w3,y_embedder.embedding_table"],  # new label rows
    }
    for name in names:
        _train(out / "runs" / name, [*target, *settings[name]])


def evaluate(args: argparse.Namespace) -> None:
    out = Path(args.out)
    rows = []
    for name in TARGET_RUNS:
        for ckpt in sorted((out / "runs" / name / "checkpoints").glob("step_*.pt")):
            folder = out / f"eval-{args.weights}" / name / ckpt.stem
            sampler = ["--method", "dpm++2m", "--steps", "10", "--cfg", "3.0", "--ema", args.weights]
            code = jit_main(["eval", str(ckpt), "--data", str(out / "target"), "--metrics", "fd-emoji,acc",
                             "--per-class", str(args.per_class), *sampler, "--device", "cpu", "--out", str(folder)])
            if code:
                raise SystemExit(code)
            for path in folder.glob("*/metrics.json"):
                record = json.loads(path.read_text())
                fd = next(v for k, v in record["metrics"].items() if k.startswith("FD-"))
                rows.append({"run": name, "step": int(ckpt.stem.split("_")[1]), "fd": fd,
                             "acc": record["metrics"]["class_accuracy"]})  # fmt: skip
    summarise(out, rows, args.weights)


def summarise(out: Path, rows: list[dict], weights: str) -> None:
    """Table, the steps-to-match headline and the figure."""
    by_run = {n: sorted((r for r in rows if r["run"] == n), key=lambda r: r["step"]) for n in TARGET_RUNS}
    steps = sorted({r["step"] for r in rows})
    lines = ["| steps | " + " | ".join(f"{n} FD / acc." for n in TARGET_RUNS if by_run[n]) + " |",
             "|---|" + "---|" * sum(1 for n in TARGET_RUNS if by_run[n])]  # fmt: skip
    for s in steps:
        cells = []
        for n in TARGET_RUNS:
            if by_run[n]:
                r = next((r for r in by_run[n] if r["step"] == s), None)
                cells.append(f"{r['fd']:.2f} / {100 * r['acc']:.1f}%" if r else "-")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    headline = {}
    if by_run["scratch"]:
        final = by_run["scratch"][-1]
        for n in ("full", "lora"):
            reach = next((r["step"] for r in by_run[n] if r["fd"] <= final["fd"]), None)
            headline[n] = {"steps_to_scratch_final_fd": reach, "scratch_steps": final["step"]}
        lines.append(f"\nscratch's final FD {final['fd']:.2f} at {final['step']} steps; first checkpoint at or below "
                     "it: " + ", ".join(f"{n} {h['steps_to_scratch_final_fd']}" for n, h in headline.items()))
    (out / f"transfer-{weights}.md").write_text("\n".join(lines) + "\n")
    (out / f"transfer-{weights}.json").write_text(json.dumps({"rows": rows, "headline": headline}, indent=1))
    print("\n".join(lines))
    plot(out / f"transfer-{weights}.png", by_run)


def plot(path: Path, by_run: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for name, rows in by_run.items():
        if rows:
            axes[0].plot([r["step"] for r in rows], [r["fd"] for r in rows], marker="o", label=name)
            axes[1].plot([r["step"] for r in rows], [100 * r["acc"] for r in rows], marker="o", label=name)
    axes[0].set(xlabel="steps on the 4 new classes", ylabel="FD-target (lower is better)")
    axes[1].set(xlabel="steps on the 4 new classes", ylabel="class accuracy %")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=("split", "train", "eval"))
    p.add_argument("--out", required=True)
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--held", default=HELD, help="the target classes (comma list)")
    p.add_argument("--pretrain-steps", type=int, default=1500)
    p.add_argument("--steps", type=int, default=600, help="steps of each target run")
    p.add_argument("--points", type=int, default=6, help="checkpoints per target run")
    p.add_argument("--lr", type=float, default=5e-4, help="full fine-tuning learning rate")
    p.add_argument("--lora-lr", type=float, default=2e-3)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--runs", default=",".join(TARGET_RUNS), help="which target runs to train")
    p.add_argument("--per-class", type=int, default=64)
    p.add_argument("--weights", default="ema1", help="eval: ema1 (EMA 0.995), ema2 or raw")
    args = p.parse_args()
    {"split": split, "train": train, "eval": evaluate}[args.stage](args)


if __name__ == "__main__":
    main()
