"""The paper's manifold toy experiment (its Figure 2), as ``jit toy``.

A 2-D spiral x_hat is embedded in D dimensions by a fixed random column-orthogonal P (D, 2):
x = P x_hat. A small ReLU MLP is trained on x with the flow-matching v-loss, its output read as
x-, eps- or v-prediction, for several D. Samples from the ODE are mapped back with P^T and compared
with the true spiral. The x-prediction network keeps the spiral at every D; eps- and v-prediction
must output a D-dimensional noise-like quantity through a 256-wide network and break down as D grows.

Distance between generated and true 2-D point sets: the sliced Wasserstein-1 distance (exact 1-D W1
on random projections, averaged), plus the mean distance of each sample to the noise-free curve.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..diffusion.flow import SPACES, FlowMatching, convert
from ..diffusion.sampling import sampling_times, solve
from .report import cell_key, curve_distance, plot_grid, sliced_wasserstein

# the objective's path fields, written flat into the saved configuration
OBJECTIVE_FIELDS = ("p_mean", "p_std", "t_eps", "noise_scale")

# spiral: r = theta for theta uniform in [THETA_START, THETA_END] (one and a half turns), centred and scaled
THETA_START = 1.5 * math.pi
THETA_END = 4.5 * math.pi


@dataclass
class ToyConfig:
    """Everything the toy experiment depends on; ``quick()`` gives a seconds-long smoke version."""

    dims: tuple[int, ...] = (2, 8, 16, 512)
    predictions: tuple[str, ...] = ("x", "eps", "v")
    seed: int = 0
    # model
    hidden: int = 256
    # training (all cells use the v-loss; Adam with a cosine decay of the learning rate to 0)
    steps: int = 2000
    batch_size: int = 128
    lr: float = 2e-3
    t_sampling: str = "uniform"  # "uniform" or "logit_normal" (sigmoid(N(p_mean, p_std^2)), the image recipe)
    # the v-loss and its path (p_mean, p_std, t_eps, noise_scale); each cell sets its own prediction type
    objective: FlowMatching = field(default_factory=lambda: FlowMatching(loss="v", label_drop_prob=0.0))
    data_noise: float = 0.02  # isotropic 2-D Gaussian jitter around the curve, in data units
    # sampling
    sample_method: str = "heun"
    sample_steps: int = 50
    num_samples: int = 4000
    # metrics (generated and fresh true sets both have num_samples points)
    num_projections: int = 1000
    curve_points: int = 4000
    threads: int = 1  # torch threads per worker
    workers: int = 2  # cells trained in parallel processes

    @classmethod
    def quick(cls, **overrides) -> ToyConfig:
        """A tiny configuration that runs the whole grid in a few seconds (tests, smoke runs)."""
        base = cls(steps=20, batch_size=64, num_samples=200, sample_steps=4, num_projections=64, curve_points=500,
                   workers=1)
        return replace(base, **overrides)

    def to_dict(self) -> dict:
        """The configuration as saved in ``toy_metrics.json``: the objective's path fields flat, in place."""
        out = {}
        for f in fields(self):
            if f.name == "objective":
                out.update({name: getattr(self.objective, name) for name in OBJECTIVE_FIELDS})
            else:
                out[f.name] = getattr(self, f.name)
        return out

    def check(self) -> None:
        """One-line errors for values the experiment cannot run with."""
        for p in self.predictions:
            if p not in SPACES:
                raise ValueError(f"prediction must be x, eps or v, got {p!r}")
        if self.t_sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"t_sampling must be uniform or logit_normal, got {self.t_sampling!r}")
        if self.objective.loss != "v":
            raise ValueError(f"the toy experiment trains every cell with the v-loss, got loss {self.objective.loss!r}")
        if min(self.dims) < 2:
            raise ValueError(f"every dimension must be >= 2, got {list(self.dims)}")


# --- data ---------------------------------------------------------------------------------------


def _spiral_raw(theta: np.ndarray) -> np.ndarray:
    return np.stack([theta * np.cos(theta), theta * np.sin(theta)], axis=-1)


def _spiral_normaliser() -> tuple[np.ndarray, float]:
    """Centre and scale that give the curve (theta uniform) zero mean and unit variance per coordinate."""
    u = (np.arange(100_000) + 0.5) / 100_000
    pts = _spiral_raw(_theta_from_uniform(u))
    centre = pts.mean(axis=0)
    scale = float(np.sqrt(((pts - centre) ** 2).mean()))
    return centre, scale


def _theta_from_uniform(u: np.ndarray) -> np.ndarray:
    return THETA_START + u * (THETA_END - THETA_START)


_CENTRE, _SCALE = _spiral_normaliser()


def spiral_curve(n: int = 4000) -> np.ndarray:
    """The noise-free spiral, (n, 2) points at evenly spaced theta (data units)."""
    u = np.linspace(0.0, 1.0, n)
    return ((_spiral_raw(_theta_from_uniform(u)) - _CENTRE) / _SCALE).astype(np.float32)


def sample_spiral(n: int, generator: torch.Generator, data_noise: float = 0.02) -> torch.Tensor:
    """Random points on the spiral plus N(0, data_noise^2) jitter, (n, 2) float32."""
    u = torch.rand(n, generator=generator, dtype=torch.float64).numpy()
    pts = (_spiral_raw(_theta_from_uniform(u)) - _CENTRE) / _SCALE
    jitter = torch.randn(n, 2, generator=generator, dtype=torch.float64).numpy() * data_noise
    return torch.from_numpy(pts + jitter).float()


def random_embedding(dim: int, seed: int = 0) -> torch.Tensor:
    """Column-orthogonal P (dim, 2) from the QR of a seeded Gaussian matrix: P^T P = I."""
    if dim < 2:
        raise ValueError(f"the embedding dimension must be >= 2, got {dim}")
    g = torch.Generator().manual_seed(seed * 100_003 + dim)
    q, r = torch.linalg.qr(torch.randn(dim, 2, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # unique sign convention
    return q.float()


# --- model --------------------------------------------------------------------------------------


class ToyMLP(nn.Module):
    """5-layer ReLU MLP: 5 Linear layers, (D + 1) -> 256 -> 256 -> 256 -> 256 -> D, ReLU after the first four.

    The input is z (B, D) with the scalar time t concatenated as one extra feature (no embedding);
    the output (B, D) is read as x, eps or v by the caller. Labels are ignored (unconditional).
    """

    num_classes = 0

    def __init__(self, dim: int, hidden: int = 256):
        super().__init__()
        self.dim = dim
        widths = [dim + 1, hidden, hidden, hidden, hidden, dim]
        layers: list[nn.Module] = []
        for i in range(5):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            if i < 4:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        t_col = t.reshape(-1, 1).to(z.dtype).expand(z.shape[0], 1)  # (B, 1)
        return self.net(torch.cat([z, t_col], dim=1))  # (B, D)


# --- one cell: train, sample --------------------------------------------------------------------


def _cell_seed(seed: int, dim: int) -> int:
    return seed * 1_000_003 + dim  # same init and data stream for every prediction type at one D


def train_cell(cfg: ToyConfig, prediction: str, dim: int, embedding: torch.Tensor) -> tuple[ToyMLP, list[float]]:
    """Train one MLP on the embedded spiral with the v-loss; returns the model and the loss curve."""
    torch.manual_seed(_cell_seed(cfg.seed, dim))
    model = ToyMLP(dim, cfg.hidden)
    objective = replace(cfg.objective, prediction=prediction)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.steps, 1))
    gen = torch.Generator().manual_seed(_cell_seed(cfg.seed, dim) + 1)
    labels = torch.zeros(cfg.batch_size, dtype=torch.long)
    losses = []
    for _ in range(cfg.steps):
        x = sample_spiral(cfg.batch_size, gen, cfg.data_noise) @ embedding.T  # (B, D) = x_hat P^T
        t = None
        if cfg.t_sampling == "uniform":
            t = torch.rand(cfg.batch_size, generator=gen)
        loss = objective(model, x, labels, t=t, generator=gen, label_dropout=False)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return model, losses


@torch.no_grad()
def generate(model: ToyMLP, cfg: ToyConfig, prediction: str, num: int, seed: int) -> torch.Tensor:
    """Integrate the learned ODE from z = noise_scale * N(0, I) at t = 0 to t = 1; returns (num, D)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(num, model.dim, generator=gen) * cfg.objective.noise_scale
    times = sampling_times(cfg.sample_method, cfg.sample_steps, t_eps=cfg.objective.t_eps)  # uniform for heun

    def velocity(z_t: torch.Tensor, t: torch.Tensor, weight: float) -> torch.Tensor:
        t_rows = t.expand(z_t.shape[0])  # (B,)
        out = model(z_t, t_rows)
        return convert(out, z_t, t_rows, prediction, "v", cfg.objective.t_eps)

    return solve(velocity, z, times, [1.0] * len(times), method=cfg.sample_method, t_eps=cfg.objective.t_eps)


# --- the grid -----------------------------------------------------------------------------------


def run_cell(cfg: ToyConfig, prediction: str, dim: int) -> dict:
    """Train and sample one (prediction, D) cell with ``cfg.threads`` torch threads.

    Returns the samples projected back to 2-D by P^T (N, 2), the loss curve and the timings."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        embedding = random_embedding(dim, cfg.seed)
        t0 = time.perf_counter()
        model, losses = train_cell(cfg, prediction, dim, embedding)
        t1 = time.perf_counter()
        generated = generate(model.eval(), cfg, prediction, cfg.num_samples, seed=_cell_seed(cfg.seed, dim) + 2)
        t2 = time.perf_counter()
    finally:
        torch.set_num_threads(previous_threads)
    projected = (generated @ embedding).numpy().astype(np.float32)  # (N, 2) = samples P
    return {"samples": projected, "losses": losses, "train_s": t1 - t0, "sample_s": t2 - t1}


def run_cells(cfg: ToyConfig, keys: list[tuple[str, int]]):
    """Yield (prediction, dim, result) for every cell, in worker processes when ``cfg.workers > 1``."""
    if cfg.workers <= 1:
        for prediction, dim in keys:
            yield prediction, dim, run_cell(cfg, prediction, dim)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    order = sorted(keys, key=lambda k: -k[1])  # the largest D cells first: they take longest
    with ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_cell, cfg, prediction, dim): (prediction, dim) for prediction, dim in order}
        for future in as_completed(futures):
            yield (*futures[future], future.result())


def _score_cell(prediction: str, dim: int, result: dict, sw, true_points: np.ndarray, curve: np.ndarray) -> dict:
    """Distances of a cell's finite samples to a fresh true set (``sw``) and to the curve, its final loss
    (mean of the last 5% of steps) and timings."""
    projected, losses = result["samples"], result["losses"]
    finite = np.isfinite(projected).all(axis=1)
    tail = losses[-max(1, len(losses) // 20):]
    return {
        "prediction": prediction,
        "dim": dim,
        "sw1": sw(projected[finite], true_points) if finite.any() else float("nan"),
        "curve_dist": curve_distance(projected[finite], curve),
        "finite_fraction": float(finite.mean()),
        "final_loss": float(np.mean(tail)) if tail else float("nan"),
        "train_s": result["train_s"],
        "sample_s": result["sample_s"],
    }


def _ratios(cfg: ToyConfig, cells: dict[str, dict]) -> dict[str, dict]:
    """Per prediction type, the distances at the largest D over those at the smallest."""
    lo, hi = min(cfg.dims), max(cfg.dims)
    ratios = {}
    for prediction in cfg.predictions:
        a, b = cells[cell_key(prediction, hi)], cells[cell_key(prediction, lo)]
        ratios[prediction] = {f"sw1_D{hi}_over_D{lo}": a["sw1"] / b["sw1"],
                              f"curve_dist_D{hi}_over_D{lo}": a["curve_dist"] / b["curve_dist"]}  # fmt: skip
    return ratios


def run_toy(cfg: ToyConfig, out_dir: str | Path, *, log=print) -> dict:
    """Train and sample every (prediction, D) cell; write toy.png, toy_samples.npz, toy_metrics.json.

    With ``cfg.workers > 1`` the cells run in spawned processes, so a calling script needs the usual
    ``if __name__ == "__main__":`` guard (the ``jit`` command has it)."""
    cfg.check()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    curve = spiral_curve(cfg.curve_points)
    eval_gen = torch.Generator().manual_seed(cfg.seed * 7919 + 17)
    true_points = sample_spiral(cfg.num_samples, eval_gen, cfg.data_noise).numpy()  # fresh reference set
    true_points_2 = sample_spiral(cfg.num_samples, eval_gen, cfg.data_noise).numpy()  # sampling-noise level
    sw = lambda a, b: sliced_wasserstein(a, b, cfg.num_projections, seed=cfg.seed)
    reference = {"sw1": sw(true_points_2, true_points), "curve_dist": curve_distance(true_points_2, curve)}
    samples: dict[str, np.ndarray] = {}
    cells: dict[str, dict] = {}
    keys = [(prediction, dim) for dim in cfg.dims for prediction in cfg.predictions]
    for prediction, dim, result in run_cells(cfg, keys):
        key = cell_key(prediction, dim)
        samples[key] = result["samples"]
        cells[key] = cell = _score_cell(prediction, dim, result, sw, true_points, curve)
        log(f"  {key:<9} sw1 {cell['sw1']:.4f}  curve {cell['curve_dist']:.4f}  "
            f"loss {cell['final_loss']:.4f}  train {cell['train_s']:.1f}s  sample {cell['sample_s']:.2f}s")
    cells = {cell_key(p, d): cells[cell_key(p, d)] for p, d in keys}  # grid order, whatever finished first
    metrics = {
        "distance": "sw1 = sliced Wasserstein-1 between projected samples and fresh true samples "
        f"({cfg.num_projections} random directions, seed {cfg.seed}); curve_dist = mean distance of each "
        "projected sample to the nearest point of the noise-free curve",
        "reference": reference,  # the same distances between two independent true sets: the sampling-noise level
        "cells": cells,
        "ratios": _ratios(cfg, cells),
        "train_s_total": sum(c["train_s"] for c in cells.values()),
        "sample_s_total": sum(c["sample_s"] for c in cells.values()),
        "config": cfg.to_dict(),
    }
    np.savez(out_dir / "toy_samples.npz", curve=curve, true_samples=true_points, dims=np.array(cfg.dims),
             predictions=np.array(cfg.predictions), **samples)
    plot_grid(samples, curve, cfg.predictions, cfg.dims, cells, out_dir / "toy.png")
    metrics["wall_s"] = time.perf_counter() - start
    (out_dir / "toy_metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
