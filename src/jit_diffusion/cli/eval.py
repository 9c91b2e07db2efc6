"""``jit eval`` (sample sets, metrics and sweeps: :mod:`jit_diffusion.evaluation.evaluate`) and ``jit fid-stats``."""

from __future__ import annotations

import argparse
import time

import numpy as np

from ..core.device import resolve_device
from ..core.errors import at_least
from ..evaluation.evaluate import check_data_spec, run_eval
from ..evaluation.metrics import (
    InceptionFeatures,
    default_inception_path,
    inception_weights,
    reference_source,
    save_stats,
)
from .sample import add_sampling_args


def run_fid_stats(args: argparse.Namespace) -> None:
    """``jit fid-stats``: Inception reference statistics of a dataset, written as an ``.npz``."""
    from ..data.datasets import load_dataset

    weights = inception_weights(args.inception_weights)
    check_data_spec(args.source, "dataset")
    device = resolve_device(args.device)
    dataset = load_dataset(args.source, args.img_size, split=args.split)
    net = InceptionFeatures(weights, device, batch_size=args.batch_size)
    start = time.perf_counter()
    stats = net.reference(dataset, keep_features=args.with_features, num_workers=args.num_workers)
    source = reference_source(args.source, args.split, args.img_size, net.feature_layer)
    path = save_stats(args.out, stats, source=np.array(source))
    print(f"wrote {path}: {stats['count']} images, {net.feature_layer}-d Inception features, "
          f"{time.perf_counter() - start:.1f} s")  # fmt: skip


def add_cli(sub) -> None:
    p = sub.add_parser("eval", help="generate sample sets and compute FID/IS/PR or FD-emoji/accuracy, with sweeps",
                       description="Generate N images per (EMA, CFG) setting in resumable chunks (torchrun shards "
                                   "them over ranks) and compute metrics; writes DIR/<setting>/metrics.json and "
                                   "DIR/sweep.{md,csv,png}. --steps 10,20 --method heun,dpm++2m sweeps the "
                                   "sampler and plots each metric against network evaluations.")  # fmt: skip
    p.add_argument("model_path", help="run folder, checkpoint .pt, exported folder, or official checkpoint .pth")
    p.add_argument("--num", "--num-images", dest="num", type=int, default=None,
                   help="images per setting, class of image i = i %% num_classes (under torchrun spell it "
                        "--num-images: torchrun takes --num for its own --numa-binding)")  # fmt: skip
    p.add_argument("--per-class", type=at_least(1), default=None, help="images per class (N = K x num_classes)")
    p.add_argument("--out", required=True, help="output folder (rerunning the same command resumes)")
    p.add_argument("--cfg", default=None, help="guidance weight(s), comma list for a sweep (default: the model's)")
    p.add_argument("--ema", default=None,
                   help="weights, comma list for a sweep: ema1 (default; an export folder: its own), ema2, raw")
    p.add_argument("--metrics", default="fid,is",
                   help="comma list of fid, is, pr (Inception), fd-emoji, acc (offline classifier), or none "
                        "(default fid,is)")  # fmt: skip
    p.add_argument("--ref-stats", default=None, help="precomputed Inception statistics .npz (mu, sigma)")
    p.add_argument("--ref-dir", default=None, help="reference images: a folder or 'emoji' (default: training data)")
    p.add_argument("--ref-split", default="train", help="split of --ref-dir (default train)")
    p.add_argument("--inception-weights", default=None,
                   help=f"Inception weights file (default: torch-fidelity's cache, {default_inception_path()})")
    p.add_argument("--data", default=None, help="the model's dataset for fd-emoji/acc (default: from the checkpoint)")
    p.add_argument("--classifier", default=None, help="classifier folder for fd-emoji/acc (default: cached/trained)")
    p.add_argument("--classifier-ref-split", default="train", choices=("train", "heldout", "all"),
                   help="real images FD-emoji compares against (default train)")  # fmt: skip
    p.add_argument("--adm-npz", action="store_true", help="also write all samples as one .npz (arr_0) per setting")
    p.add_argument("--chunk-size", type=at_least(1), default=500, help="images per resumable chunk (default 500)")
    p.add_argument("--metric-batch-size", type=at_least(1), default=64, help="images per Inception batch (default 64)")
    p.add_argument("--num-workers", type=at_least(0), default=0, help="data-loading workers for reference images")
    add_sampling_args(p, sweep=True)
    p.set_defaults(func=run_eval)

    s = sub.add_parser("fid-stats", help="Inception reference statistics (mu, sigma) of an image folder or emoji",
                       description="Reference statistics for FID: 2048-d Inception pool features of a dataset, "
                                   "preprocessed exactly like training data (ADM centre crop).")  # fmt: skip
    s.add_argument("source", help="an image folder, a dataset cache, or 'emoji'")
    s.add_argument("--img-size", type=at_least(1), required=True, help="image size the model generates")
    s.add_argument("--out", required=True, help="statistics file to write (.npz)")
    s.add_argument("--split", default="train", help="dataset split (default train)")
    s.add_argument("--inception-weights", default=None, help="Inception weights file (default: torch-fidelity's cache)")
    s.add_argument("--with-features", action="store_true", help="also store the features (for precision/recall)")
    s.add_argument("--batch-size", type=at_least(1), default=64, help="images per batch (default 64)")
    s.add_argument("--num-workers", type=at_least(0), default=0, help="data-loading workers")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda")
    s.set_defaults(func=run_fid_stats)
