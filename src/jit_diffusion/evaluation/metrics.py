"""Metrics of a sample set: the Inception ones (FID, IS, precision/recall) and the streaming scorer that
also feeds an offline classifier (FD-<dataset>, class accuracy), plus Inception reference statistics.

Inception metrics use torch-fidelity's Inception-v3 (the TF-FID port behind the paper's numbers): FID
from the 2048-d pool features (the Fréchet distance of :mod:`jit_diffusion.frechet`), IS from its
logits, precision/recall with k = 3 neighbours on the same pool features. The weights come from
torch-fidelity's download cache or an explicit file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..core.fileio import atomic_write_bytes
from .frechet import StatsAccumulator, feature_stats, frechet_distance

INCEPTION_METRICS = ("fid", "is", "pr")
CLASSIFIER_METRICS = ("fd-emoji", "acc")
FID_FEATURE_LAYER = "2048"  # torch-fidelity's pool features; lower layers (64, 192, 768) exist too
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)


def parse_metrics(text: str) -> list[str]:
    """``"fid,is,fd-emoji,acc"`` -> names; ``fd`` and any ``fd-<data>`` mean the classifier FD; ``none`` -> []."""
    names = [m.strip().lower() for m in text.split(",") if m.strip()]
    if names == ["none"]:
        return []
    out = []
    for name in names:
        if name == "fd" or name.startswith("fd-"):
            name = "fd-emoji"
        if name not in INCEPTION_METRICS + CLASSIFIER_METRICS:
            raise ValueError(f"unknown metric {name!r}: choose from fid, is, pr, fd-emoji (or fd-<data>), acc, none")
        if name not in out:
            out.append(name)
    return out


def needs_inception(metrics: Sequence[str]) -> bool:
    """Whether any of ``metrics`` is computed with the Inception network."""
    return any(m in INCEPTION_METRICS for m in metrics)


def needs_classifier(metrics: Sequence[str]) -> bool:
    """Whether any of ``metrics`` is computed with the offline classifier."""
    return any(m in CLASSIFIER_METRICS for m in metrics)


# --------------------------------------------------------------------------------------------
# The Inception network (torch-fidelity)
# --------------------------------------------------------------------------------------------


def default_inception_path() -> Path:
    """Where torch-fidelity caches the Inception weights it downloads (torch hub's checkpoints folder)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_URL.rsplit("/", 1)[1]


def inception_weights(path: str | os.PathLike | None = None) -> Path:
    """The Inception weights file: ``path`` if given, else torch-fidelity's cached download; else a clear error."""
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--inception-weights {path} does not exist")
        return path
    cached = default_inception_path()
    if cached.is_file():
        return cached
    raise FileNotFoundError(
        f"Inception weights not found at {cached}: download {INCEPTION_WEIGHTS_URL} there (torch-fidelity does "
        "so on first use when online) or pass --inception-weights PATH; offline, use --metrics fd-emoji,acc"
    )


class UInt8Images(Dataset):
    """Images as uint8 (3, H, W) tensors (what torch-fidelity's extractors read) from uint8 (N, H, W, 3)
    arrays or from a dataset of ``(image, label)`` items."""

    def __init__(self, source: np.ndarray | Dataset):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> torch.Tensor:
        if isinstance(self.source, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(self.source[index].transpose(2, 0, 1)))
        item = self.source[index]
        return item[0] if isinstance(item, (tuple, list)) else item


def _uint8_batches(images: np.ndarray | Dataset, batch_size: int, num_workers: int = 0) -> Iterator[torch.Tensor]:
    """uint8 (B, 3, H, W) batches of an (N, H, W, 3) array or a dataset."""
    if isinstance(images, np.ndarray):
        for lo in range(0, len(images), batch_size):
            yield torch.from_numpy(np.ascontiguousarray(images[lo : lo + batch_size])).permute(0, 3, 1, 2)
        return
    yield from DataLoader(UInt8Images(images), batch_size=batch_size, num_workers=num_workers)


@dataclass
class InceptionFeatures:
    """torch-fidelity's Inception-v3 returning the FID layer's features and the IS logits."""

    weights: Path
    device: torch.device = torch.device("cpu")
    feature_layer: str | None = None  # default FID_FEATURE_LAYER
    batch_size: int = 64

    def __post_init__(self) -> None:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.feature_layer = self.feature_layer or FID_FEATURE_LAYER
        self.layers = [self.feature_layer, "logits_unbiased"]
        self.net = FeatureExtractorInceptionV3(
            "inception-v3-compat", self.layers, feature_extractor_weights_path=str(self.weights)
        ).to(self.device)

    @torch.no_grad()
    def batches(self, images: np.ndarray | Dataset, num_workers: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Per batch: {"features": (B, D), "logits": (B, 1008)} float32 on the CPU."""
        for batch in _uint8_batches(images, self.batch_size, num_workers):
            feats, logits = self.net(batch.to(self.device))
            yield {"features": feats.float().cpu(), "logits": logits.float().cpu()}

    def __call__(self, images: np.ndarray | Dataset, num_workers: int = 0) -> dict[str, torch.Tensor]:
        parts = list(self.batches(images, num_workers))
        if not parts:
            raise ValueError("no images to extract features from")
        return _concat(parts)

    def reference(self, images: np.ndarray | Dataset, keep_features: bool = False, num_workers: int = 0) -> dict:
        """{"mu", "sigma", "count"[, "features"]} of a (possibly large) reference set, streamed."""
        acc, kept = StatsAccumulator(), []
        for out in self.batches(images, num_workers):
            acc.update(out["features"].numpy())
            if keep_features:
                kept.append(out["features"].numpy())
        mu, sigma = acc.stats()
        stats = {"mu": mu, "sigma": sigma, "count": acc.count}
        if keep_features:
            stats["features"] = np.concatenate(kept)
        return stats


def _concat(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def inception_scores(
    features: dict[str, torch.Tensor], reference: dict, metrics: Sequence[str], device: torch.device | str = "cpu"
) -> dict[str, float]:
    """FID / IS / precision-recall of generated ``features`` (from :class:`InceptionFeatures`) against
    ``reference`` (``mu``, ``sigma``; ``features`` too for precision/recall)."""
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    out: dict[str, float] = {}
    feats = features["features"]
    if "fid" in metrics:
        mu, sigma = feature_stats(feats)
        out["FID"] = frechet_distance(mu, sigma, reference["mu"], reference["sigma"])
    if "is" in metrics:
        isc = isc_features_to_metric(features["logits"], splits=min(10, len(feats)), shuffle=True, rng_seed=2020)
        out["IS"], out["IS_std"] = isc["inception_score_mean"], isc["inception_score_std"]
    if "pr" in metrics:
        if reference.get("features") is None:
            raise ValueError("precision/recall need reference features: use --ref-dir or fid-stats --with-features")
        real = torch.as_tensor(np.asarray(reference["features"]), dtype=torch.float32, device=device)
        prc = prc_features_to_metric(feats.to(device), real, prc_neighborhood=3, prc_batch_size=10000,
                                     save_cpu_ram=True, verbose=False)  # fmt: skip
        out["precision"], out["recall"] = prc["precision"], prc["recall"]
    return out


# --------------------------------------------------------------------------------------------
# Reference statistics
# --------------------------------------------------------------------------------------------


def save_stats(path: str | Path, stats: dict, **extra) -> Path:
    """Write reference statistics (``mu``, ``sigma``, ``count`` [, ``features``]) as an ``.npz``, atomically."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.asarray(v) for k, v in {**stats, **extra}.items() if v is not None}
    atomic_write_bytes(path, lambda f: np.savez(f, **arrays))
    return path


def load_stats(path: str | Path) -> dict:
    """Read reference statistics: ``mu`` and ``sigma`` (ADM/torch-fidelity layout), optional ``features``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"reference statistics {path} do not exist")
    with np.load(path, allow_pickle=False) as f:
        if "mu" not in f or "sigma" not in f:
            raise ValueError(f"{path} holds no 'mu'/'sigma' arrays (make one with `jit fid-stats`)")
        out = {"mu": f["mu"].astype(np.float64), "sigma": f["sigma"].astype(np.float64)}
        out["count"] = int(f["count"]) if "count" in f else None
        out["features"] = f["features"] if "features" in f else None
        out["source"] = str(f["source"]) if "source" in f else str(path)
    return out


def reference_source(spec: str, split: str, image_size: int, feature_layer: str) -> str:
    """What a set of reference statistics was computed from: ``<data>:<split>:<size>px:<layer>``."""
    data = spec if spec == "emoji" else str(Path(spec).expanduser().resolve())
    return f"{data}:{split}:{image_size}px:{feature_layer}"


def dataset_reference(
    net: InceptionFeatures,
    spec: str,
    split: str,
    image_size: int,
    cache: Path,
    need_features: bool,
    num_workers: int = 0,
) -> dict:
    """Inception statistics of a dataset preprocessed like training data, cached in ``cache`` (reused while
    it was made from the same source and holds the features when they are needed)."""
    from ..data.datasets import load_dataset

    source = reference_source(spec, split, image_size, net.feature_layer)
    if cache.is_file():
        stats = load_stats(cache)
        if stats["source"] == source and (stats["features"] is not None or not need_features):
            return stats
    print(f"computing Inception reference statistics of {source}")
    dataset = load_dataset(spec, image_size, split=split)
    stats = net.reference(dataset, keep_features=need_features, num_workers=num_workers)
    save_stats(cache, stats, source=np.array(source))
    stats["source"] = source
    return stats


# --------------------------------------------------------------------------------------------
# Scoring a sample set
# --------------------------------------------------------------------------------------------


@dataclass
class Scorer:
    """Everything needed to score sample sets: the requested ``metrics``, the Inception network and its
    ``reference`` (when an Inception metric is asked for), and a classifier (``ClassifierMetrics``) for
    FD-<dataset> / class accuracy."""

    metrics: Sequence[str]
    inception: InceptionFeatures | None = None
    reference: dict | None = None
    classifier: object | None = None
    device: torch.device | str = "cpu"

    def score(self, chunks: Iterable[tuple[np.ndarray, np.ndarray]], conditional: bool) -> dict[str, float]:
        """All requested metrics of a sample set given as (uint8 (n, H, W, 3), labels (n,)) chunks, streamed."""
        inception_parts, classifier_parts, all_labels = [], [], []
        for images, labels in chunks:
            all_labels.append(labels)
            if self.inception is not None:
                inception_parts.append(self.inception(images))
            if self.classifier is not None:
                classifier_parts.append(self.classifier.extract(images))
        result: dict[str, float] = {}
        if self.inception is not None:
            result.update(inception_scores(_concat(inception_parts), self.reference, self.metrics, self.device))
        if self.classifier is not None:
            labels = np.concatenate(all_labels) if "acc" in self.metrics and conditional else None
            features = np.concatenate([f for f, _ in classifier_parts])
            predictions = np.concatenate([p for _, p in classifier_parts])
            scores = self.classifier.score(features, predictions, labels)
            if "fd-emoji" not in self.metrics:
                del scores[self.classifier.fd_name]
            result.update(scores)
        return result
