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
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .device import resolve_device
from .fileio import atomic_write_bytes, save_json
from .frechet import feature_stats, frechet_distance

CLASSIFIER_VERSION = 1
ACCURACY_KEY = "class_accuracy"
REFERENCE_SPLITS = ("train", "heldout", "all")


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------


@dataclass
class ClassifierConfig:
    """What defines a trained classifier (saved as ``config.json`` beside the weights)."""

    data: str
    image_size: int
    class_names: list[str]
    metric_name: str
    widths: tuple[int, ...] = (32, 64, 128, 256)
    stem_stride: int = 1
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    seed: int = 0
    threads: int = 1
    version: int = CLASSIFIER_VERSION
    train_images: int = 0
    heldout_images: int = 0
    train_accuracy: float | None = None
    heldout_accuracy: float | None = None
    train_seconds: float | None = None
    history: list[dict] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def feature_dim(self) -> int:
        return int(self.widths[-1])


def _conv_block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


class SmallCNN(nn.Module):
    """A patchify stem down to 16x16 (s x s conv, stride s), then per width a stride-2 and a plain 3x3
    conv block (BatchNorm, ReLU), global average pool -> penultimate feature (widths[-1]-d) -> linear."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (32, 64, 128, 256), stem_stride: int = 1):
        super().__init__()
        if stem_stride > 1:
            stem = nn.Conv2d(3, widths[0], stem_stride, stride=stem_stride, bias=False)
            layers = [stem, nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True), _conv_block(widths[0], widths[0])]
        else:
            layers = [_conv_block(3, widths[0])]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [_conv_block(c_in, c_out, stride=2), _conv_block(c_out, c_out)]
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1], num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8, or float in [-1, 1] -> penultimate features (B, F)."""
        if x.dtype == torch.uint8:
            x = x.float() / 127.5 - 1.0
        return self.trunk(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, num_classes) logits


def build_classifier(config: ClassifierConfig) -> SmallCNN:
    return SmallCNN(config.num_classes, tuple(config.widths), config.stem_stride)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def data_slug(data: str) -> str:
    """Cache-folder name of a dataset spec: ``emoji``, or a folder's name plus a hash of its path."""
    if data == "emoji":
        return "emoji"
    path = Path(data).expanduser().resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    return f"{path.name or 'data'}-{digest}"


def metric_name_for(data: str) -> str:
    """``FD-emoji`` for the emoji set, ``FD-<folder name>`` for a folder."""
    return "FD-emoji" if data == "emoji" else f"FD-{Path(data).expanduser().resolve().name or 'data'}"


def cache_root() -> Path:
    """``$JIT_CACHE_DIR`` (else ``$XDG_CACHE_HOME/jit-diffusion``, else ``~/.cache/jit-diffusion``)."""
    from .emoji import default_cache_dir

    return default_cache_dir()


def default_classifier_dir(data: str, image_size: int) -> Path:
    return cache_root() / "classifiers" / f"{data_slug(data)}-{image_size}px-v{CLASSIFIER_VERSION}"


def _load_dataset(data: str, image_size: int, split: str):
    from .data import load_dataset

    return load_dataset(data, image_size, split=split)


def dataset_arrays(dataset) -> tuple[np.ndarray, np.ndarray]:
    """All images of a dataset as uint8 (N, H, W, 3) and its labels (N,) int64."""
    images = getattr(dataset, "images", None)
    if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[1] == 3:
        nchw = np.asarray(images)
    else:
        nchw = np.stack([np.asarray(dataset[i][0]) for i in range(len(dataset))]) if len(dataset) else None
    if nchw is None:
        raise ValueError("the dataset is empty")
    return np.ascontiguousarray(nchw.transpose(0, 2, 3, 1)), np.asarray(dataset.labels, dtype=np.int64)


def _training_splits(data: str, image_size: int):
    """(train images, train labels, heldout images, heldout labels, class names).

    The emoji set has a held-out split; for a folder every 10th image of each class is held out from
    training so that an accuracy on unseen images can be reported.
    """
    train = _load_dataset(data, image_size, "train")
    if train.num_classes < 2:
        raise ValueError(f"dataset {data!r} has {train.num_classes} classes: the classifier needs class subfolders")
    images, labels = dataset_arrays(train)
    if data == "emoji":
        held_images, held_labels = dataset_arrays(_load_dataset(data, image_size, "heldout"))
        return images, labels, held_images, held_labels, list(train.class_names)
    held = np.zeros(len(labels), dtype=bool)
    for c in range(train.num_classes):
        members = np.flatnonzero(labels == c)
        held[members[9::10]] = True
    return images[~held], labels[~held], images[held], labels[held], list(train.class_names)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable 3x3 Gaussian blur of (B, C, H, W), edges replicated."""
    k = torch.exp(-torch.tensor([1.0, 0.0, 1.0]) / (2 * sigma**2))
    k = (k / k.sum()).to(x)
    c = x.shape[1]
    x = F.pad(x, (1, 1, 1, 1), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, 3).expand(c, 1, 1, 3), groups=c)
    return F.conv2d(x, k.view(1, 1, 3, 1).expand(c, 1, 3, 1), groups=c)


def augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Light augmentation of uint8 (B, 3, H, W) -> float in [-1, 1]: horizontal flip, zoom by 0.85-1.15,
    a shift of up to 1/16 of the side (edges replicated), a mild blur for 30% of images and Gaussian
    noise of std <= 0.06."""
    x = images.float() / 127.5 - 1.0
    B = x.shape[0]
    flip = torch.where(torch.rand(B, generator=gen) < 0.5, -1.0, 1.0)
    zoom = 1.0 / (0.85 + 0.3 * torch.rand(B, generator=gen))  # sampling-grid scale = 1 / zoom
    shift = (torch.rand(B, 2, generator=gen) * 2 - 1) * 0.125  # normalised coordinates: 0.125 = 1/16 side
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = zoom * flip, zoom, shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    blur = torch.rand(B, generator=gen) < 0.3
    x = torch.where(blur.view(B, 1, 1, 1), _blur(x, 0.8), x)
    noise_std = torch.rand(B, 1, 1, 1, generator=gen) * 0.06
    return x + noise_std * torch.randn(x.shape, generator=gen)


@contextlib.contextmanager
def deterministic(threads: int):
    """Fixed CPU thread count and deterministic kernels inside the block; restored afterwards."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)


@torch.no_grad()
def predict(
    model: SmallCNN, images: np.ndarray, batch_size: int = 256, device: torch.device | str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features (N, F) float64 and predicted classes (N,) of uint8 (N, H, W, 3) images."""
    model.eval()
    feats, preds = [], []
    for lo in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[lo : lo + batch_size])).permute(0, 3, 1, 2).to(device)
        f = model.features(batch)  # (B, F)
        feats.append(f.double().cpu().numpy())
        preds.append(model.head(f).argmax(dim=1).cpu().numpy())
    if not feats:
        return np.zeros((0, model.head.in_features)), np.zeros(0, dtype=np.int64)
    return np.concatenate(feats), np.concatenate(preds).astype(np.int64)


def class_accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Share of predictions equal to the labels."""
    if len(labels) == 0:
        raise ValueError("class accuracy of an empty set")
    return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


def train_classifier(
    data: str,
    image_size: int,
    *,
    epochs: int = 30,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    threads: int = 1,
    widths: tuple[int, ...] = (32, 64, 128, 256),
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[SmallCNN, ClassifierConfig]:
    """Train the classifier on ``data``'s TRAIN split; bitwise reproducible for the same seed, thread
    count and machine. Returns the model (eval mode, on CPU) and its config with accuracies filled in."""
    device = torch.device(device)
    images, labels, held_images, held_labels, class_names = _training_splits(data, image_size)
    config = ClassifierConfig(
        data=data, image_size=image_size, class_names=class_names, metric_name=metric_name_for(data),
        widths=tuple(widths), stem_stride=max(1, image_size // 16), epochs=epochs,
        batch_size=batch_size, lr=lr, seed=seed, threads=threads, train_images=len(labels),
        heldout_images=len(held_labels),
    )  # fmt: skip
    start = time.perf_counter()
    with deterministic(threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_classifier(config).to(device)
        gen = torch.Generator().manual_seed(seed + 1)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=config.weight_decay)
        x_all = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) uint8
        y_all = torch.from_numpy(labels)
        steps_per_epoch = max(1, len(y_all) // batch_size)  # full batches only (BatchNorm needs > 1 image)
        total, warmup = epochs * steps_per_epoch, steps_per_epoch
        step = 0
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(y_all), generator=gen)
            loss_sum = 0.0
            for k in range(steps_per_epoch):
                idx = order[k * batch_size : (k + 1) * batch_size]
                x = augment(x_all[idx], gen).to(device)
                y = y_all[idx].to(device)
                # linear warm-up for one epoch, then cosine decay to 0
                frac = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * step / total))
                for group in opt.param_groups:
                    group["lr"] = lr * frac
                loss = F.cross_entropy(model(x), y, label_smoothing=config.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach().item() * len(idx)
                step += 1
            entry = {"epoch": epoch + 1, "loss": round(loss_sum / min(len(y_all), steps_per_epoch * batch_size), 5)}
            if len(held_labels) and (epoch + 1 == epochs or (epoch + 1) % 5 == 0):
                entry["heldout_accuracy"] = class_accuracy(predict(model, held_images, device=device)[1], held_labels)
            config.history.append(entry)
            if progress:
                print("classifier " + " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                               for k, v in entry.items()), flush=True)  # fmt: skip
        model = model.cpu().eval()
        config.train_accuracy = class_accuracy(predict(model, images)[1], labels)
        if len(held_labels):
            config.heldout_accuracy = class_accuracy(predict(model, held_images)[1], held_labels)
    config.train_seconds = round(time.perf_counter() - start, 2)
    return model, config


# --------------------------------------------------------------------------------------------
# Saving, loading, the cache
# --------------------------------------------------------------------------------------------


def save_classifier(model: SmallCNN, config: ClassifierConfig, folder: str | Path) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``folder`` (atomically, weights first)."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    blob = save(state, metadata={"format": "jit-diffusion-classifier", "version": str(config.version)})
    for stale in folder.glob("reference-*.npz"):  # features of the previous weights
        stale.unlink()
    atomic_write_bytes(folder / "model.safetensors", lambda f: f.write(blob))
    save_json(folder / "config.json", dataclasses.asdict(config))
    return folder


def load_classifier(folder: str | Path, device: str | torch.device = "cpu") -> tuple[SmallCNN, ClassifierConfig]:
    """Open a classifier folder (``config.json`` + ``model.safetensors``)."""
    from safetensors.torch import load_file

    folder = Path(folder).expanduser()
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"no classifier in {folder} (expected config.json and model.safetensors)")
    raw = json.loads((folder / "config.json").read_text())
    known = {f.name for f in dataclasses.fields(ClassifierConfig)}
    config = ClassifierConfig(**{k: v for k, v in raw.items() if k in known})
    config.widths = tuple(config.widths)
    if config.version != CLASSIFIER_VERSION:
        raise ValueError(f"classifier {folder} is version {config.version}; this code reads {CLASSIFIER_VERSION}")
    model = build_classifier(config)
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    return model.to(device).eval(), config


def get_classifier(
    data: str,
    image_size: int,
    *,
    folder: str | Path | None = None,
    retrain: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
    **train_kwargs,
) -> tuple[SmallCNN, ClassifierConfig, Path]:
    """The cached classifier for (data, image_size), trained and saved first when missing (or ``retrain``).

    ``folder`` overrides the cache location. Returns (model, config, folder).
    """
    folder = Path(folder).expanduser() if folder else default_classifier_dir(data, image_size)
    if not retrain and (folder / "model.safetensors").is_file():
        model, config = load_classifier(folder, device)
        if config.image_size != image_size:
            raise ValueError(f"classifier {folder} is for {config.image_size} px images, not {image_size} px")
        return model, config, folder
    if progress:
        print(f"training the {metric_name_for(data)} classifier on {data!r} at {image_size} px -> {folder}")
    model, config = train_classifier(data, image_size, progress=progress, **train_kwargs)
    save_classifier(model, config, folder)
    return model.to(device), config, folder


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


def reference_features(folder: str | Path, model: SmallCNN, config: ClassifierConfig, split: str = "train") -> dict:
    """mu, sigma and count of the classifier features of real ``split`` images, cached in ``folder``."""
    if split not in REFERENCE_SPLITS:
        raise ValueError(f"reference split must be one of {REFERENCE_SPLITS}, got {split!r}")
    path = Path(folder) / f"reference-{split}.npz"
    if path.is_file():
        with np.load(path) as f:
            return {"mu": f["mu"], "sigma": f["sigma"], "count": int(f["count"])}
    images, _ = dataset_arrays(_load_dataset(config.data, config.image_size, split))
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
        images, labels = dataset_arrays(_load_dataset(args.data, size, args.split))
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
    t.add_argument("--img-size", type=int, required=True, help="image side in pixels")
    t.add_argument("--out", default=None, help="classifier folder (default: the cache, $JIT_CACHE_DIR/classifiers/)")
    t.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    t.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    t.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (default 2e-3)")
    t.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    t.add_argument("--threads", type=int, default=1,
                   help="CPU threads (default 1); the weights are bitwise reproducible for a fixed count")  # fmt: skip
    t.add_argument("--device", default="cpu", help="cpu (default, reproducible), cuda, auto")
    t.add_argument("--force", action="store_true", help="retrain even if the classifier is cached")
    t.set_defaults(func=_cmd_train)

    s = actions.add_parser("score", help="FD and class accuracy of a samples .npz or of real images")
    s.add_argument("--npz", default=None, help="samples .npz: arr_0 uint8 (N,H,W,3), labels in 'labels' or arr_1")
    s.add_argument("--split", default=None, help="score real images of this split of --data instead (e.g. heldout)")
    s.add_argument("--data", default="emoji", help="dataset of the classifier and reference (default emoji)")
    s.add_argument("--img-size", type=int, default=64, help="image size for --split (default 64)")
    s.add_argument("--classifier", default=None, help="classifier folder (default: cached/trained for --data)")
    s.add_argument("--ref-split", default="train", choices=REFERENCE_SPLITS,
                   help="real images the FD is measured against (default train)")  # fmt: skip
    s.add_argument("--device", default="auto", help="auto, cpu, cuda")
    s.set_defaults(func=_cmd_score)
