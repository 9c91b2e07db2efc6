"""An offline image metric: a small CNN classifier trained on a labelled dataset, and what it measures.

The Inception network behind FID cannot always be downloaded and says little about 32-64 px emoji, so
for the built-in emoji set (and any class-folder dataset) we train a small CNN on the TRAIN split and
use it two ways:

- **FD-<dataset>** (``FD-emoji`` for the emoji set): the Fréchet distance between the classifier's
  penultimate features (256-d) of generated images and of real reference images. The reference is the
  TRAIN split by default (``heldout`` is the other choice for emoji). This is *not* the Inception FID:
  compare it only with other numbers from the same classifier (the cache folder name carries a version).
- **class accuracy**: the share of class-conditional samples the classifier assigns to the class they
  were generated for.

The floor of both is measured by scoring real held-out images (``jit classifier score --data emoji
--split heldout``). The emoji held-out split holds emoji designs the classifier never saw; for a class
folder, every 10th image of each class is kept out of training to report an accuracy. Training is seeded
and deterministic (one CPU thread by default, deterministic kernels), takes a few minutes on a CPU, and
the result is cached as ``model.safetensors`` + ``config.json`` in
``$JIT_CACHE_DIR/classifiers/<data>-<size>px-v1/`` (default cache ``~/.cache/jit-diffusion``), together
with the reference statistics (``reference-<split>.npz``).

Modules: :mod:`.classifier_net` (the network and its files), :mod:`.classifier_train` (data, training,
the cache); this one measures (reference features, :class:`ClassifierMetrics`) and holds the command.
"""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .classifier_net import ClassifierConfig, SmallCNN, class_accuracy, load_classifier, predict, save_classifier
from .classifier_train import (
    augment,
    data_slug,
    dataset_arrays,
    get_classifier,
    load_split,
    metric_name_for,
    train_classifier,
)
from .device import resolve_device
from .errors import at_least
from .fileio import atomic_write_bytes
from .frechet import feature_stats, frechet_distance

# the names scripts and tests import from here
__all__ = ["ACCURACY_KEY", "ClassifierConfig", "ClassifierMetrics", "SmallCNN", "add_cli", "augment", "data_slug",
           "dataset_arrays", "get_classifier", "load_classifier", "metric_name_for", "reference_features",
           "save_classifier", "train_classifier"]  # fmt: skip

ACCURACY_KEY = "class_accuracy"
REFERENCE_SPLITS = ("train", "heldout", "all")


def reference_features(folder: str | Path, model: SmallCNN, config: ClassifierConfig, split: str = "train") -> dict:
    """mu, sigma and count of the classifier features of real ``split`` images, cached in ``folder``."""
    if split not in REFERENCE_SPLITS:
        raise ValueError(f"reference split must be one of {REFERENCE_SPLITS}, got {split!r}")
    path = Path(folder) / f"reference-{split}.npz"
    if path.is_file():
        with np.load(path) as f:
            return {"mu": f["mu"], "sigma": f["sigma"], "count": int(f["count"])}
    images, _ = dataset_arrays(load_split(config.data, config.image_size, split))
    device = next(model.parameters()).device
    mu, sigma = feature_stats(predict(model, images, device=device)[0])
    stats = {"mu": mu, "sigma": sigma, "count": len(images)}
    with contextlib.suppress(OSError):  # a read-only classifier folder: just do not cache
        atomic_write_bytes(path, lambda f: np.savez(f, mu=mu, sigma=sigma, count=np.int64(len(images))))
    return stats


@dataclass
class ClassifierMetrics:
    """FD-<dataset> and class accuracy of image sets against one reference, with one loaded classifier."""

    model: SmallCNN
    config: ClassifierConfig
    folder: Path
    reference: dict
    reference_split: str = "train"
    device: torch.device = torch.device("cpu")

    @classmethod
    def create(
        cls,
        data: str | None,
        image_size: int,
        *,
        classifier: str | Path | None = None,
        reference_split: str = "train",
        device: str | torch.device = "cpu",
        progress: bool = True,
    ) -> ClassifierMetrics:
        """Load ``classifier`` (a folder), or the cached/newly trained one for ``data`` at ``image_size``."""
        device = torch.device(device)
        if classifier is not None:
            model, config = load_classifier(classifier, device)
            folder = Path(classifier).expanduser()
            if config.image_size != image_size:
                raise ValueError(f"classifier {folder} is for {config.image_size} px images, not {image_size} px")
        elif data is None:
            raise ValueError("the classifier metrics need the dataset: pass --data SPEC or --classifier PATH")
        else:
            model, config, folder = get_classifier(data, image_size, device=device, progress=progress)
        reference = reference_features(folder, model, config, reference_split)
        return cls(model, config, folder, reference, reference_split, device)

    @property
    def fd_name(self) -> str:
        return self.config.metric_name

    def extract(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features (N, F) and predicted classes (N,) of uint8 (N, H, W, 3) images."""
        return predict(self.model, images, device=self.device)

    def score(self, features: np.ndarray, predictions: np.ndarray, labels: np.ndarray | None = None) -> dict:
        """``{metric_name: FD}`` plus ``{"class_accuracy": share}`` when the requested labels are given."""
        mu, sigma = feature_stats(features)
        out = {self.fd_name: frechet_distance(mu, sigma, self.reference["mu"], self.reference["sigma"])}
        if labels is not None:
            out[ACCURACY_KEY] = class_accuracy(predictions, labels)
        return out

    def compute(self, images: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
        """FD (and class accuracy when ``labels`` are given) of uint8 (N, H, W, 3) images."""
        return self.score(*self.extract(images), labels)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


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


def _load_npz_samples(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 (N, H, W, 3) images (``arr_0``) and labels (``labels`` or ADM's ``arr_1``) of a samples .npz."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"samples file {path} does not exist")
    with np.load(path) as f:
        if "arr_0" not in f:
            raise ValueError(f"{path} has no arr_0 (expected uint8 images N,H,W,3)")
        images = f["arr_0"]
        labels = f["labels"] if "labels" in f else f["arr_1"] if "arr_1" in f else None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{path}: arr_0 must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    return images, labels


def _cmd_score(args: argparse.Namespace) -> None:
    if bool(args.npz) == bool(args.split):
        raise ValueError("give exactly one of --npz SAMPLES.npz or --split SPLIT (real images of --data)")
    if args.npz:
        images, labels = _load_npz_samples(args.npz)
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
                       description=__doc__.split("\n\n")[0])  # fmt: skip
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
