"""Few-step samplers on a trained model: which time grid each solver wants, and quality against network
evaluations (NFE).

  grids   ODE error of dpm++2m / dpm++3m / unipc at 10-25 steps on each time grid: the relative L2 distance
          of the images (before uint8) to a fine solution of the same ODE (Heun without the final Euler
          step, 400 steps, a node at the CFG edge), on a few images. Writes OUT/grids.{json,md}.
  sweep   `jit eval` over steps x methods for each seed (FD-emoji and class accuracy), then the table,
          the headline and the figure: OUT/sweep.{json,md,png}.

    python experiments/sampler_sweep.py grids RUN --out runs/samplers
    python experiments/sampler_sweep.py sweep RUN --out runs/samplers --per-class 20 --seeds 0,1

Re-running resumes (jit eval skips finished sample chunks).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from jit_diffusion.cli import main as jit_main
from jit_diffusion.diffusion.sampling import GuidedVelocity, image_noise, sample, solve
from jit_diffusion.formats.loading import load_model

NEW_METHODS = ("dpm++2m", "dpm++3m", "unipc")
GRIDS = (("uniform", None), ("shifted", 1.5), ("shifted", 2.0), ("shifted", 3.0), ("logsnr", None))


def fine_solution(model, noise, labels, cfg: float, interval, t_eps: float, steps: int = 400) -> torch.Tensor:
    """Heun (no final Euler step) on a uniform grid split at the CFG edge, each step weighted by its interval."""
    lo = interval[0]
    velocity = GuidedVelocity(model, labels, null_label=model.num_classes, t_eps=t_eps)
    first = round(steps * lo)
    z = solve(velocity, noise, torch.linspace(0, lo, first + 1), [1.0] * (first + 1), t_eps=t_eps, final_euler=False)
    rest = steps - first
    return solve(velocity, z, torch.linspace(lo, 1, rest + 1), [cfg] * (rest + 1), t_eps=t_eps, final_euler=False)


@torch.no_grad()
def run_grids(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    model, info = load_model(args.run, weights=args.ema, device="cpu")
    labels = torch.arange(args.images) % info.num_classes
    noise = image_noise(range(args.images), (3, info.image_size, info.image_size), seed=args.seed)
    opts = dict(cfg=args.cfg, cfg_interval=info.cfg_interval, t_eps=info.t_eps, noise_scale=info.noise_scale)
    start = time.perf_counter()
    reference = fine_solution(model, noise * info.noise_scale, labels, args.cfg, info.cfg_interval, info.t_eps)
    results = {"reference_seconds": round(time.perf_counter() - start, 1), "images": args.images, "cfg": args.cfg,
               "errors": {}}  # fmt: skip
    for method in ("heun", *NEW_METHODS):
        for grid, shift in [("uniform", None)] if method == "heun" else GRIDS:
            key = f"{method} {grid}" + (f" {shift:g}" if shift else "")
            errors = {}
            for steps in args.steps:
                out = sample(model, noise, labels, method=method, steps=steps, grid=grid, shift=shift, **opts)
                errors[steps] = round(((out - reference).norm() / reference.norm()).item(), 6)
            results["errors"][key] = errors
            print(key, errors, flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "grids.json").write_text(json.dumps(results, indent=1))
    lines = ["| method, grid | " + " | ".join(f"{s} steps" for s in args.steps) + " |",
             "|---|" + "---|" * len(args.steps)]  # fmt: skip
    lines += [f"| {k} | " + " | ".join(f"{v[s]:.4f}" for s in args.steps) + " |" for k, v in results["errors"].items()]
    (Path(args.out) / "grids.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def run_sweep(args: argparse.Namespace) -> None:
    out = Path(args.out)
    runs = [("heun", args.heun_steps), *[(m, args.steps) for m in args.methods]]
    for seed in args.seeds:
        for method, steps in runs:
            code = jit_main(["eval", args.run, "--per-class", str(args.per_class), "--metrics", "fd-emoji,acc",
                             "--cfg", str(args.cfg), "--ema", args.ema, "--seed", str(seed), "--steps",
                             ",".join(map(str, steps)), "--method", method, "--batch-size", "160",
                             "--device", "cpu", "--out", str(out / f"seed{seed}" / method)])  # fmt: skip
            if code:
                raise SystemExit(code)
    summarise(out, args.seeds, [m for m, _ in runs])


def summarise(out: Path, seeds: list[int], methods: list[str]) -> None:
    """Two-seed table, headline and figure from the per-setting metrics.json files."""
    rows = {}
    for seed in seeds:
        for method in methods:
            for path in sorted((out / f"seed{seed}" / method).glob("*/metrics.json")):
                record = json.loads(path.read_text())
                key = (method, record["sampling"]["steps"])
                row = rows.setdefault(key, {"method": method, "steps": key[1], "nfe": record["network_evaluations"],
                                            "fd": [], "acc": [], "seconds": []})  # fmt: skip
                row["fd"].append(record["metrics"]["FD-emoji"])
                row["acc"].append(record["metrics"]["class_accuracy"])
                row["seconds"].append(record["generation_seconds"])
                row.setdefault("folders", []).append(str(path.parent))
    table = sorted(rows.values(), key=lambda r: (methods.index(r["method"]), r["nfe"]))
    heun50 = rows[("heun", 50)]
    for r in table:  # RMS distance (uint8 levels) of each image to the Heun-50 image from the same noise
        r["rms_to_heun50"] = statistics.mean(_rms(Path(a), Path(b)) for a, b in zip(r["folders"], heun50["folders"]))
        r["fd_minus_heun50"] = [a - b for a, b in zip(r["fd"], heun50["fd"])]  # paired: same seed, same noise
    # the rule: mean FD within the seed-to-seed noise of Heun-50 (the largest spread of any row);
    # the paired rule: mean paired difference within the largest seed-to-seed spread of a paired difference
    spread = max(max(r["fd"]) - min(r["fd"]) for r in table)
    paired_spread = max(max(r["fd_minus_heun50"]) - min(r["fd_minus_heun50"]) for r in table)
    match = statistics.mean(heun50["fd"]) + spread
    headline = {m: min((r["nfe"] for r in table if r["method"] == m and statistics.mean(r["fd"]) <= match),
                       default=None) for m in methods}  # fmt: skip
    paired = {m: min((r["nfe"] for r in table if r["method"] == m
                      and statistics.mean(r["fd_minus_heun50"]) <= paired_spread), default=None) for m in methods}
    lines = [f"| method | steps | NFE | FD-emoji (seeds {', '.join(map(str, seeds))}) | mean | minus Heun-50, "
             "per seed | class acc. (mean) | RMS to Heun-50 |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in table:
        lines.append(f"| {r['method']} | {r['steps']} | {r['nfe']} | {' / '.join(f'{v:.2f}' for v in r['fd'])} | "
                     f"{statistics.mean(r['fd']):.2f} | {' / '.join(f'{v:+.2f}' for v in r['fd_minus_heun50'])} | "
                     f"{100 * statistics.mean(r['acc']):.1f}% | {r['rms_to_heun50']:.1f} |")  # fmt: skip
    lines.append(f"\nHeun-50 (99 NFE) FD-emoji {statistics.mean(heun50['fd']):.2f}; largest seed-to-seed difference "
                 f"{spread:.2f}; fewest NFE whose mean FD-emoji <= {match:.2f}: "
                 + ", ".join(f"{m} {n}" for m, n in headline.items()))  # fmt: skip
    lines.append(f"Paired: largest seed-to-seed spread of (FD - Heun-50's FD) {paired_spread:.2f}; fewest NFE whose "
                 "mean paired difference is within it: " + ", ".join(f"{m} {n}" for m, n in paired.items()))
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    (out / "sweep.json").write_text(json.dumps({"rows": table, "spread": spread, "headline": headline,
                                                "paired_spread": paired_spread, "paired_headline": paired}, indent=1))
    print("\n".join(lines))
    plot(out / "sweep.png", table, methods, statistics.mean(heun50["fd"]), spread)


def _rms(folder: Path, reference: Path) -> float:
    """Root-mean-square difference of the uint8 images of two settings (same noise, same order)."""
    total, count = 0.0, 0
    chunks = [sorted((f / "samples").glob("chunk_*.npz")) for f in (folder, reference)]
    for a, b in zip(*chunks):
        diff = np.load(a)["arr_0"].astype(np.float64) - np.load(b)["arr_0"].astype(np.float64)
        total, count = total + (diff**2).sum(), count + diff.size
    return (total / count) ** 0.5


def plot(path: Path, table: list[dict], methods: list[str], heun50_fd: float, spread: float) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    panels = [("fd", 1, "FD-emoji (lower is better)"), ("fd_minus_heun50", 1, "FD-emoji minus Heun-50's, same seed"),
              ("acc", 100, "class accuracy (%)")]  # fmt: skip
    for i, (key, scale, title) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for method in methods:
            pts = [r for r in table if r["method"] == method]
            means = [scale * statistics.mean(r[key]) for r in pts]
            lows = [m - scale * min(r[key]) for m, r in zip(means, pts)]
            highs = [scale * max(r[key]) - m for m, r in zip(means, pts)]
            ax.errorbar([r["nfe"] for r in pts], means, yerr=[lows, highs], marker="o", capsize=3, label=method)
        if key == "fd":
            ax.axhspan(heun50_fd - spread, heun50_fd + spread, color="grey", alpha=0.2, label="Heun-50 +- seed noise")
        if key == "fd_minus_heun50":
            ax.axhline(0, color="grey", lw=1)
            ax.set_ylim(-0.5, 1.0)
        ax.set_xscale("log")
        ticks = [4, 6, 10, 15, 20, 30, 50, 99]
        ax.set_xticks(ticks, labels=[str(t) for t in ticks])
        ax.set_xlabel("network evaluations per image (NFE)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("grids", "sweep"):
        s = sub.add_parser(name)
        s.add_argument("run", help="run folder or checkpoint")
        s.add_argument("--out", required=True)
        s.add_argument("--cfg", type=float, default=3.0)
        s.add_argument("--ema", default="ema1")
    g = sub.choices["grids"]
    g.add_argument("--images", type=int, default=32)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--steps", type=lambda v: [int(x) for x in v.split(",")], default=[10, 15, 20, 25])
    s = sub.choices["sweep"]
    s.add_argument("--per-class", type=int, default=20)
    s.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=[0, 1])
    s.add_argument("--methods", type=lambda v: v.split(","), default=list(NEW_METHODS))
    s.add_argument("--steps", type=lambda v: [int(x) for x in v.split(",")], default=[4, 6, 8, 10, 15, 20, 30])
    s.add_argument("--only-summary", action="store_true", help="re-read the finished settings, generate nothing")
    s.add_argument("--heun-steps", type=lambda v: [int(x) for x in v.split(",")], default=[5, 8, 10, 15, 25, 50])
    args = p.parse_args()
    if args.command == "grids":
        run_grids(args)
    elif args.only_summary:
        summarise(Path(args.out), args.seeds, ["heun", *args.methods])
    else:
        run_sweep(args)


if __name__ == "__main__":
    main()
