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
the cache); this one measures (reference features, :class:`ClassifierMetrics`); ``jit classifier`` is
:mod:`jit_diffusion.cli.classifier`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.fileio import atomic_write_bytes
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
from .frechet import feature_stats, frechet_distance

# the names scripts and tests import from here
__all__ = ["ACCURACY_KEY", "ClassifierConfig", "ClassifierMetrics", "SmallCNN", "augment", "data_slug",
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


def load_npz_samples(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
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
