"""``jit toy``: the paper's manifold toy experiment (:mod:`jit_diffusion.toy.experiment`) from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import at_least
from ..toy.experiment import ToyConfig, run_toy
from ..toy.report import format_table


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _str_list(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def run_cli(args: argparse.Namespace) -> int:
    """``jit toy``: run the grid, print the table; flags left out keep the (quick) configuration's values."""
    flags = {"seed": args.seed, "threads": args.threads, "workers": args.workers, "dims": args.dims,
             "predictions": args.predictions, "steps": args.steps}  # fmt: skip
    overrides = {name: value for name, value in flags.items() if value is not None}
    cfg = ToyConfig.quick(**overrides) if args.quick else ToyConfig(**overrides)
    print(f"toy: dims {list(cfg.dims)}, predictions {list(cfg.predictions)}, {cfg.steps} steps x batch "
          f"{cfg.batch_size}, {cfg.workers} workers x {cfg.threads} threads -> {args.out}")
    metrics = run_toy(cfg, args.out)
    print(format_table(metrics))
    print(f"wrote {Path(args.out) / 'toy.png'}, toy_samples.npz, toy_metrics.json")
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("toy", help="the paper's manifold toy experiment (x/eps/v-prediction vs. dimension D)",
                       description="Train a 5-layer ReLU MLP on a 2-D spiral embedded in D dims with the v-loss, "
                       "reading its output as x-, eps- or v-prediction; plot and score samples projected back to 2-D.")
    p.add_argument("--out", default="runs/toy", help="output folder for toy.png, toy_samples.npz, toy_metrics.json "
                   "(default runs/toy)")
    p.add_argument("--dims", type=_int_list, default=None, help="comma list of ambient dimensions D "
                   "(default 2,8,16,512)")
    p.add_argument("--predictions", type=_str_list, default=None, help="comma list of prediction types among "
                   "x,eps,v (default x,eps,v)")
    p.add_argument("--steps", type=at_least(1), default=None,
                   help="training steps per cell (default 2000; 20 with --quick)")
    p.add_argument("--seed", type=int, default=0, help="seed for data, embeddings, init and sampling (default 0)")
    p.add_argument("--workers", type=at_least(1), default=None,
                   help="cells trained in parallel processes (default 2; 1 with --quick)")
    p.add_argument("--threads", type=at_least(1), default=1, help="torch CPU threads per worker (default 1)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run that finishes in a few seconds")
    p.set_defaults(func=run_cli)

