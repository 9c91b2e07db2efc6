"""Fréchet distance between Gaussian fits of feature sets (FID and FD-<dataset>), and streaming statistics."""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import torch


def feature_stats(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features (N, D), in float64 (covariance with N - 1)."""
    x = features.detach().cpu().numpy() if torch.is_tensor(features) else np.asarray(features)
    x = x.astype(np.float64, copy=False)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"feature statistics need at least 2 feature vectors (N, D), got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Fréchet distance of two Gaussians: |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64.

    When the product S1 S2 is singular and its square root not finite, ``eps`` is added to both
    diagonals; small imaginary parts of the square root (numerical noise) are dropped.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(
            f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}"
        )
    diff = mu1 - mu2
    with warnings.catch_warnings():  # singular products are expected when N < D; handled below
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(len(mu1)) * eps
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imaginary = np.abs(np.diagonal(covmean).imag).max()
        if imaginary > 1e-3 * max(1.0, np.abs(np.diagonal(covmean).real).max()):
            raise ValueError(f"the matrix square root has a large imaginary component ({imaginary:.3g})")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


class StatsAccumulator:
    """Streaming mean and covariance of feature batches (float64, shifted by the first batch's mean)."""

    def __init__(self) -> None:
        self.count = 0
        self.shift: np.ndarray | None = None
        self.sum: np.ndarray | None = None
        self.outer: np.ndarray | None = None

    def update(self, features: np.ndarray) -> None:
        x = np.asarray(features, dtype=np.float64)
        if self.shift is None:
            self.shift = x.mean(axis=0)
            self.sum = np.zeros_like(self.shift)
            self.outer = np.zeros((len(self.shift), len(self.shift)))
        x = x - self.shift
        self.count += len(x)
        self.sum += x.sum(axis=0)
        self.outer += x.T @ x

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        if self.count < 2:
            raise ValueError(f"feature statistics need at least 2 images, got {self.count}")
        mean = self.sum / self.count
        sigma = (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)
        return self.shift + mean, sigma
