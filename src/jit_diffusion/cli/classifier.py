"""``jit classifier {train,score}``: the small CNN behind the offline FD-<dataset> and class-accuracy metrics."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.device import resolve_device
from ..core.errors import at_least
from ..evaluation.classifier import (
    ACCURACY_KEY,
    REFERENCE_SPLITS,
    ClassifierConfig,
    ClassifierMetrics,
    dataset_arrays,
    get_classifier,
    load_npz_samples,
    load_split,
)
from ..evaluation.classifier import __doc__ as CLASSIFIER_DOC


def _print_config(config: ClassifierConfig, folder: Path) -> None:
    held = "n/a" if config.heldout_accuracy is None else f"{config.heldout_accuracy:.2%}"
    train = "n/a" if config.train_accuracy is None else f"{config.train_accuracy:.2%}"
    print(f"classifier {folder}")
    print(f"  data {config.data!r} at {config.image_size} px, {config.num_classes} classes, "
          f"metric {config.metric_name}")  # fmt: skip
    print(f"  trained on {config.train_images} images for {config.epochs} epochs (seed {config.seed}, "
          f"{config.threads} threads) in {config.train_seconds} s")  # fmt: skip
    print(f"  accuracy: train {train}, held-out {held} ({config.heldout_images} images)")


def _cmd_train(args: argparse.Namespace) -> None:
    model, config, folder = get_classifier(
        args.data, args.img_size, folder=args.out, retrain=args.force, device=resolve_device(args.device),
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, threads=args.threads,
    )  # fmt: skip
    _print_config(config, folder)


def _cmd_score(args: argparse.Namespace) -> None:
    if bool(args.npz) == bool(args.split):
        raise ValueError("give exactly one of --npz SAMPLES.npz or --split SPLIT (real images of --data)")
    if args.npz:
        images, labels = load_npz_samples(args.npz)
        size, what = images.shape[1], args.npz
    else:
        size = args.img_size
        images, labels = dataset_arrays(load_split(args.data, size, args.split))
        what = f"{args.data}/{args.split} (real images)"
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be square, got {images.shape[1]}x{images.shape[2]}")
    metrics = ClassifierMetrics.create(args.data, size, classifier=args.classifier, reference_split=args.ref_split,
                                       device=resolve_device(args.device))  # fmt: skip
    result = metrics.compute(images, labels)
    print(f"{what}: {len(images)} images at {size} px vs {metrics.config.data}/{args.ref_split} "
          f"({metrics.reference['count']} images), classifier {metrics.folder}")  # fmt: skip
    print(f"  {metrics.fd_name} {result[metrics.fd_name]:.4f}")
    if ACCURACY_KEY in result:
        print(f"  class accuracy {result[ACCURACY_KEY]:.2%}")
    else:
        print("  class accuracy n/a (the samples have no labels)")


def add_cli(sub) -> None:
    p = sub.add_parser("classifier", help="the small CNN behind the offline FD-emoji and class-accuracy metrics",
                       description=CLASSIFIER_DOC.split("\n\n")[0])  # fmt: skip
    actions = p.add_subparsers(dest="classifier_command", metavar="ACTION", required=True)

    t = actions.add_parser("train", help="train (or show the cached) classifier for a dataset and image size")
    t.add_argument("--data", default="emoji", help="'emoji' (default) or a class-folder dataset")
    t.add_argument("--img-size", type=at_least(1), required=True, help="image side in pixels")
    t.add_argument("--out", default=None, help="classifier folder (default: the cache, $JIT_CACHE_DIR/classifiers/)")
    t.add_argument("--epochs", type=at_least(1), default=30, help="training epochs (default 30)")
    t.add_argument("--batch-size", type=at_least(1), default=32, help="batch size (default 32)")
    t.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (default 2e-3)")
    t.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    t.add_argument("--threads", type=at_least(1), default=1,
                   help="CPU threads (default 1); the weights are bitwise reproducible for a fixed count")  # fmt: skip
    t.add_argument("--device", default="cpu", help="cpu (default, reproducible), cuda, auto")
    t.add_argument("--force", action="store_true", help="retrain even if the classifier is cached")
    t.set_defaults(func=_cmd_train)

    s = actions.add_parser("score", help="FD and class accuracy of a samples .npz or of real images")
    s.add_argument("--npz", default=None, help="samples .npz: arr_0 uint8 (N,H,W,3), labels in 'labels' or arr_1")
    s.add_argument("--split", default=None, help="score real images of this split of --data instead (e.g. heldout)")
    s.add_argument("--data", default="emoji", help="dataset of the classifier and reference (default emoji)")
    s.add_argument("--img-size", type=at_least(1), default=64, help="image size for --split (default 64)")
    s.add_argument("--classifier", default=None, help="classifier folder (default: cached/trained for --data)")
    s.add_argument("--ref-split", default="train", choices=REFERENCE_SPLITS,
                   help="real images the FD is measured against (default train)")  # fmt: skip
    s.add_argument("--device", default="auto", help="auto, cpu, cuda")
    s.set_defaults(func=_cmd_score)

