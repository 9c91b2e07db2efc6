"""Scoring and reporting the toy experiment: distances between 2-D point sets (sliced Wasserstein-1,
distance to the curve), the figure of every cell and the summary table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def cell_key(prediction: str, dim: int) -> str:
    """Name of a (prediction, D) cell, e.g. ``x_D512``."""
    return f"{prediction}_D{dim}"


# --- distances ----------------------------------------------------------------------------------


def wasserstein_1d(a: np.ndarray, b: np.ndarray) -> float:
    """Exact W1 between two 1-D empirical distributions: the integral of |F_a - F_b|."""
    a, b = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))
    if a.shape == b.shape:
        return float(np.abs(a - b).mean())
    grid = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(a, grid[:-1], side="right") / a.size
    cdf_b = np.searchsorted(b, grid[:-1], side="right") / b.size
    return float(np.sum(np.abs(cdf_a - cdf_b) * np.diff(grid)))


def projection_directions(num: int, dim: int = 2, seed: int = 0) -> np.ndarray:
    """``num`` random unit vectors (num, dim), uniform on the sphere, from a fixed seed."""
    directions = np.random.default_rng(seed).standard_normal((num, dim))
    return directions / np.linalg.norm(directions, axis=1, keepdims=True)


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, num_projections: int = 1000, seed: int = 0) -> float:
    """Sliced Wasserstein-1: mean over random unit directions w of W1(a w, b w); a (n, d), b (m, d)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    directions = projection_directions(num_projections, a.shape[1], seed)
    proj_a, proj_b = a @ directions.T, b @ directions.T  # (n, K), (m, K)
    if a.shape[0] == b.shape[0]:
        return float(np.abs(np.sort(proj_a, axis=0) - np.sort(proj_b, axis=0)).mean())
    return float(np.mean([wasserstein_1d(proj_a[:, k], proj_b[:, k]) for k in range(num_projections)]))


def curve_distance(points: np.ndarray, curve: np.ndarray, chunk: int = 1024) -> float:
    """Mean Euclidean distance from each point (n, 2) to the nearest vertex of a dense curve (m, 2)."""
    points, curve = np.asarray(points, np.float64), np.asarray(curve, np.float64)
    nearest = [np.sqrt(((p[:, None, :] - curve[None]) ** 2).sum(-1)).min(1) for p in np.split(
        points, range(chunk, len(points), chunk))]  # fmt: skip
    return float(np.concatenate(nearest).mean()) if nearest else float("nan")


# --- figure and table ---------------------------------------------------------------------------


_ROW_TITLES = {"x": "x-prediction", "eps": "ε-prediction", "v": "v-prediction"}


def plot_grid(samples: dict[str, np.ndarray], curve: np.ndarray, predictions: Sequence[str], dims: Sequence[int],
              cells: dict[str, dict], path: str | Path) -> None:
    """Rows: prediction types; columns: D. Each panel: projected samples (dots) over the true curve (line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(predictions), len(dims)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    limit = 1.35 * float(np.abs(curve).max())
    for r, prediction in enumerate(predictions):
        for c, dim in enumerate(dims):
            ax = axes[r][c]
            key = cell_key(prediction, dim)
            ax.plot(curve[:, 0], curve[:, 1], color="0.55", lw=1.0, zorder=1)
            pts = samples[key]
            ax.scatter(pts[:, 0], pts[:, 1], s=1.5, color="tab:orange" if prediction == "x" else "tab:blue",
                       alpha=0.5, linewidths=0, zorder=2)
            ax.set_xlim(-limit, limit)
            ax.set_ylim(-limit, limit)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            label = f"SW1 {cells[key]['sw1']:.3f}"
            outside = float((~(np.abs(pts) <= limit).all(axis=1)).mean())  # off-panel or non-finite
            if outside > 0.01:
                label += f", {outside:.1%} off-panel"
            ax.text(0.03, 0.03, label, transform=ax.transAxes, fontsize=7, color="0.25")
            if r == 0:
                ax.set_title(f"D = {dim}", fontsize=11)
            if c == 0:
                ax.set_ylabel(_ROW_TITLES[prediction], fontsize=11)
    fig.suptitle("Toy manifold: 2-D spiral embedded in D dims, v-loss, samples projected by P$^T$", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def format_table(metrics: dict) -> str:
    """A plain-text table of sw1 / curve distance per cell plus the high-D / low-D ratios."""
    cfg = metrics["config"]
    dims, predictions = cfg["dims"], cfg["predictions"]
    lines = ["sliced W1 (curve distance) between generated and true 2-D samples; lower is better",
             f"{'pred':<5}" + "".join(f"{'D=' + str(d):>19}" for d in dims)
             + f"  D={max(dims)} / D={min(dims)}"]
    for p in predictions:
        row = f"{p:<5}"
        for d in dims:
            cell = metrics["cells"][cell_key(p, d)]
            row += f"{cell['sw1']:>10.4f} ({cell['curve_dist']:6.3f})"
        sw1_ratio, curve_ratio = metrics["ratios"][p].values()
        lines.append(row + f"  {sw1_ratio:7.1f}x ({curve_ratio:.1f}x)")
    ref = metrics["reference"]
    lines.append(f"two independent true sets: sw1 {ref['sw1']:.4f}, curve distance {ref['curve_dist']:.4f}")
    lines.append(f"train {metrics['train_s_total']:.1f}s, sample {metrics['sample_s_total']:.1f}s, "
                 f"wall {metrics['wall_s']:.1f}s ({cfg['workers']} workers x {cfg['threads']} threads)")
    return "\n".join(lines)
