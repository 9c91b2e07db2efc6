"""Sampling a pMF model in one or a few network evaluations, in this project's time (t = 0 noise, t = 1 image).

The network's own time runs the other way (s = 1 - t), so a guidance interval [a, b] given here reaches
the network as [1 - b, 1 - a]. Step k goes from our t_k to t_(k+1) on a uniform grid; in pMF time from
s = 1 - t_k to r = 1 - t_(k+1), with z <- z - (s - r) u(z, s, h = s - r, omega, interval, y). The guidance
weight omega is an input of the network: one evaluation per step, no unconditional batch.

Starting noise: :func:`jit_diffusion.sampling.image_noise` (image i always gets the same draw for a seed).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def network_interval(interval: Sequence[float]) -> tuple[float, float]:
    """Our-time guidance interval [a, b] -> the network's [t_min, t_max] = [1 - b, 1 - a]."""
    a, b = (float(v) for v in interval)
    if not 0.0 <= a <= b <= 1.0:
        raise ValueError(f"guidance interval must satisfy 0 <= a <= b <= 1 (our time, 1 = clean), got [{a}, {b}]")
    return 1.0 - b, 1.0 - a


def our_interval(t_min: float, t_max: float) -> tuple[float, float]:
    """The network's (pMF-time) interval [t_min, t_max] in our time: [1 - t_max, 1 - t_min]."""
    return 1.0 - float(t_max), 1.0 - float(t_min)


def pmf_times(steps: int) -> torch.Tensor:
    """The steps+1 grid times in pMF time, linspace(1, 0) in fp32 (ours: 1 - these)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float32)


@torch.no_grad()
def sample_pmf(
    model,
    labels: torch.Tensor,
    noise: torch.Tensor,
    steps: int = 1,
    omega: float = 1.0,
    interval: Sequence[float] = (0.0, 1.0),
    *,
    noise_scale: float = 1.0,
) -> torch.Tensor:
    """Images (B, C, H, W), fp32, about [-1, 1], from standard-normal ``noise`` and ``labels`` (B,).

    ``omega`` is the guidance weight the network is conditioned on (the CLI's --cfg), ``interval`` the
    guidance interval in our time; ``steps`` network evaluations."""
    if omega < 1.0:
        raise ValueError(f"the pMF guidance weight omega must be >= 1, got {omega}")
    t_min, t_max = network_interval(interval)
    z = noise.float() * noise_scale
    B, device = z.shape[0], z.device
    labels = labels.to(device)
    rows = lambda value: torch.full((B,), float(value), device=device)  # noqa: E731
    times = pmf_times(steps).tolist()
    for s, r in zip(times[:-1], times[1:]):
        u, _ = model(z, rows(s), rows(s - r), rows(omega), rows(t_min), rows(t_max), labels, heads="u")
        z = z - (s - r) * u.float()  # an average-velocity step in pMF time
    return z
