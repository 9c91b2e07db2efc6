"""Sampling a pMF model in one or a few network evaluations, in this project's time (t = 0 noise, t = 1 image).

The network's own time runs the other way (s = 1 - t), so a guidance interval [a, b] given here reaches
the network as [1 - b, 1 - a]. Step k goes from our t_k to t_(k+1) on a uniform grid; in pMF time from
s = 1 - t_k to r = 1 - t_(k+1), with z <- z - (s - r) u(z, s, h = s - r, omega, interval, y). The guidance
weight omega is an input of the network: one evaluation per step, no unconditional batch.

Starting noise: :func:`jit_diffusion.sampling.image_noise` (image i always gets the same draw for a seed).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

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


def pmf_times(steps: int, start: float = 1.0) -> torch.Tensor:
    """The steps+1 grid times in pMF time, linspace(start, 0) in fp32 (ours: 1 - these)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 <= start <= 1.0:
        raise ValueError(f"the pMF start time must be in [0, 1] (1 = pure noise), got {start}")
    return torch.linspace(float(start), 0.0, steps + 1, dtype=torch.float32)


def check_guidance_tokens(omega: float, model_config: Mapping) -> None:
    """A one-line ValueError when ``omega`` != 1 is asked of a network (its config as a dict) without the
    omega or interval tokens (trained with --cfg-max 0 --prefix-tokens C,0,0,G): they would be ignored."""
    if omega != 1.0 and 0 in (model_config.get("num_cfg_tokens"), model_config.get("num_interval_tokens")):
        raise ValueError(f"--cfg {omega:g}: this pMF network has no omega and interval tokens (trained without "
                         "guidance); sample it with --cfg 1")  # fmt: skip


def check_class_scale(scale: float, flag: str = "--class-scale") -> None:
    """A one-line ValueError unless the class scale is a finite number >= 0 (1: off, 0: the mean class)."""
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"{flag} must be a number >= 0 (1 = off), got {scale:g}")


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
    start: float = 1.0,
    image: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
    class_scale: float = 1.0,
) -> torch.Tensor:
    """Images (B, C, H, W), fp32, about [-1, 1], from standard-normal ``noise`` and ``labels`` (B,).

    ``omega`` is the guidance weight the network is conditioned on (the CLI's --cfg), ``interval`` the
    guidance interval in our time; ``steps`` network evaluations. Editing: from pMF time ``start`` < 1 the
    state starts on the path (1 - start) image + start noise (image-to-image; start 0 returns it with no
    evaluation), and where ``keep`` is True the state is put back on that path before every step (inpainting).
    ``class_scale`` S moves each class embedding e away from the classes' mean m, m + S (e - m): a stronger
    class at no extra evaluation (1: off; see :meth:`PMF.class_condition`)."""
    if omega < 1.0:
        raise ValueError(f"the pMF guidance weight omega must be >= 1, got {omega}")
    check_class_scale(class_scale)
    config = getattr(model, "config", None)  # a torch.compile wrapper passes the attribute through
    check_guidance_tokens(omega, vars(config) if dataclasses.is_dataclass(config) else {})
    t_min, t_max = network_interval(interval)
    times = pmf_times(steps, start).tolist()
    scaled = noise.float() * noise_scale
    if image is None and (start < 1.0 or keep is not None):
        raise ValueError("sample_pmf: a start time below 1 or kept pixels need the image")
    path = lambda s: scaled if image is None else (1.0 - s) * image.float() + s * scaled  # noqa: E731  z_s, pMF time
    z = scaled if start == 1.0 else path(start)
    B, device = z.shape[0], z.device
    labels = labels.to(device)
    rows = lambda value: torch.full((B,), float(value), device=device)  # noqa: E731
    for s, r in zip(times[:-1], times[1:]) if start > 0 else ():
        z = z if keep is None else torch.where(keep, path(s), z)
        u, _ = model(z, rows(s), rows(s - r), rows(omega), rows(t_min), rows(t_max), labels, heads="u",
                     class_scale=class_scale)  # fmt: skip
        z = z - (s - r) * u.float()  # an average-velocity step in pMF time
    return z
