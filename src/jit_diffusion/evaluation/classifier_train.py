"""Training the offline-metric classifier: its data (a labelled dataset's TRAIN split, with a held-out
part), light augmentation, a seeded deterministic loop, and the cache that trains once per dataset
and image size (``$JIT_CACHE_DIR/classifiers/<data>-<size>px-v1/``)."""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .classifier_net import (
    CLASSIFIER_VERSION,
    ClassifierConfig,
    SmallCNN,
    build_classifier,
    class_accuracy,
    load_classifier,
    predict,
    save_classifier,
)

# --------------------------------------------------------------------------------------------
# Data and the cache
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
    from ..data.emoji import default_cache_dir

    return default_cache_dir()


def default_classifier_dir(data: str, image_size: int) -> Path:
    """The cache folder of the classifier for ``data`` at ``image_size`` px."""
    return cache_root() / "classifiers" / f"{data_slug(data)}-{image_size}px-v{CLASSIFIER_VERSION}"


def load_split(data: str, image_size: int, split: str):
    """The ``split`` of dataset ``data`` at ``image_size`` (see :func:`jit_diffusion.data.datasets.load_dataset`)."""
    from ..data.datasets import load_dataset

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


def training_splits(data: str, image_size: int):
    """(train images, train labels, heldout images, heldout labels, class names).

    The emoji set has a held-out split; for a folder every 10th image of each class is held out from
    training so that an accuracy on unseen images can be reported.
    """
    train = load_split(data, image_size, "train")
    if train.num_classes < 2:
        raise ValueError(f"dataset {data!r} has {train.num_classes} classes: the classifier needs class subfolders")
    images, labels = dataset_arrays(train)
    if data == "emoji":
        held_images, held_labels = dataset_arrays(load_split(data, image_size, "heldout"))
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


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Learning-rate multiplier: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    return (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * step / total))


def _epoch_batches(x_all: torch.Tensor, y_all: torch.Tensor, batch_size: int, steps: int, gen: torch.Generator):
    """``steps`` full batches of a fresh permutation: augmented images (B, 3, H, W) in [-1, 1] and labels (B,)."""
    order = torch.randperm(len(y_all), generator=gen)
    for k in range(steps):
        idx = order[k * batch_size : (k + 1) * batch_size]
        yield augment(x_all[idx], gen), y_all[idx]


def _fit(model: SmallCNN, config: ClassifierConfig, train, heldout, device: torch.device, progress: bool) -> None:
    """AdamW on label-smoothed cross-entropy for ``config.epochs``; an entry per epoch in ``config.history``."""
    images, labels = train
    held_images, held_labels = heldout
    gen = torch.Generator().manual_seed(config.seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) uint8
    y_all = torch.from_numpy(labels)
    steps_per_epoch = max(1, len(y_all) // config.batch_size)  # full batches only (BatchNorm needs > 1 image)
    total, step = config.epochs * steps_per_epoch, 0
    for epoch in range(config.epochs):
        model.train()
        loss_sum = 0.0
        for x, y in _epoch_batches(x_all, y_all, config.batch_size, steps_per_epoch, gen):
            for group in opt.param_groups:
                group["lr"] = config.lr * lr_factor(step, steps_per_epoch, total)
            loss = F.cross_entropy(model(x.to(device)), y.to(device), label_smoothing=config.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach().item() * len(y)
            step += 1
        seen = min(len(y_all), steps_per_epoch * config.batch_size)
        entry = {"epoch": epoch + 1, "loss": round(loss_sum / seen, 5)}
        if len(held_labels) and (epoch + 1 == config.epochs or (epoch + 1) % 5 == 0):
            entry["heldout_accuracy"] = class_accuracy(predict(model, held_images, device=device)[1], held_labels)
        config.history.append(entry)
        if progress:
            print("classifier " + " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in entry.items()), flush=True)  # fmt: skip


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
    images, labels, held_images, held_labels, class_names = training_splits(data, image_size)
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
        _fit(model, config, (images, labels), (held_images, held_labels), device, progress)
        model = model.cpu().eval()
        config.train_accuracy = class_accuracy(predict(model, images)[1], labels)
        if len(held_labels):
            config.heldout_accuracy = class_accuracy(predict(model, held_images)[1], held_labels)
    config.train_seconds = round(time.perf_counter() - start, 2)
    return model, config


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
