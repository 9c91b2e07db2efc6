"""The small CNN behind the offline metrics: its configuration, the network, predictions and its files
(``model.safetensors`` + ``config.json`` in a folder)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.fileio import atomic_write_bytes, save_json

CLASSIFIER_VERSION = 1


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
    """A fresh network of the shape ``config`` describes."""
    return SmallCNN(config.num_classes, tuple(config.widths), config.stem_stride)


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
