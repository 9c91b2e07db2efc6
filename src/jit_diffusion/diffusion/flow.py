"""Flow-matching math: the noising path, the x / eps / v parameterisations and the training loss.

Path: z_t = t x + (1 - t) e with e ~ N(0, noise_scale^2 I), t = 0 pure noise, t = 1 clean.
Velocity: v = dz/dt = x - e = (x - z_t) / (1 - t).
Every division by (1 - t) uses (1 - t).clamp_min(t_eps); divisions by t (eps-prediction) use
t.clamp_min(t_eps) as well, the symmetric guard for the other end of the path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core import rng

SPACES = ("x", "eps", "v")


def _check_space(name: str, value: str) -> None:
    if value not in SPACES:
        raise ValueError(f"{name} must be one of {SPACES}, got {value!r}")


def _broadcast_t(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) or (B,1,1,1) time -> (B,1,...,1) matching ``like``'s rank."""
    return t.reshape(-1, *([1] * (like.ndim - 1))) if t.ndim != like.ndim else t


def one_minus_t(t: torch.Tensor, t_eps: float) -> torch.Tensor:
    """(1 - t) clamped from below by t_eps."""
    return (1 - t).clamp_min(t_eps)


# --- named conversions (z is the noisy input, t broadcast to z's shape) -------------------------


def x_to_eps(x: torch.Tensor, z: torch.Tensor, t: torch.Tensor, t_eps: float) -> torch.Tensor:
    """eps = (z - t x) / (1 - t)."""
    return (z - t * x) / one_minus_t(t, t_eps)


def x_to_velocity(x: torch.Tensor, z: torch.Tensor, t: torch.Tensor, t_eps: float) -> torch.Tensor:
    """v = (x - z) / (1 - t)."""
    return (x - z) / one_minus_t(t, t_eps)


def eps_to_x(eps: torch.Tensor, z: torch.Tensor, t: torch.Tensor, t_eps: float) -> torch.Tensor:
    """x = (z - (1 - t) eps) / t."""
    return (z - (1 - t) * eps) / t.clamp_min(t_eps)


def eps_to_velocity(eps: torch.Tensor, z: torch.Tensor, t: torch.Tensor, t_eps: float) -> torch.Tensor:
    """v = (z - eps) / t."""
    return (z - eps) / t.clamp_min(t_eps)


def velocity_to_x(v: torch.Tensor, z: torch.Tensor, t: torch.Tensor, t_eps: float = 0.0) -> torch.Tensor:
    """x = (1 - t) v + z."""
    return (1 - t) * v + z


def velocity_to_eps(v: torch.Tensor, z: torch.Tensor, t: torch.Tensor, t_eps: float = 0.0) -> torch.Tensor:
    """eps = z - t v."""
    return z - t * v


def identity(out: torch.Tensor, z: torch.Tensor, t: torch.Tensor, t_eps: float = 0.0) -> torch.Tensor:
    return out


_CONVERT = {
    ("x", "x"): identity,
    ("x", "eps"): x_to_eps,
    ("x", "v"): x_to_velocity,
    ("eps", "x"): eps_to_x,
    ("eps", "eps"): identity,
    ("eps", "v"): eps_to_velocity,
    ("v", "x"): velocity_to_x,
    ("v", "eps"): velocity_to_eps,
    ("v", "v"): identity,
}


def convert(out: torch.Tensor, z: torch.Tensor, t: torch.Tensor, src: str, dst: str, t_eps: float) -> torch.Tensor:
    """Re-express a network output given in space ``src`` in space ``dst`` (x, eps or v)."""
    _check_space("src", src)
    _check_space("dst", dst)
    return _CONVERT[(src, dst)](out, z, _broadcast_t(t, z), t_eps)


def logit_normal(normal: torch.Tensor, p_mean: float, p_std: float) -> torch.Tensor:
    """t = sigmoid(p_mean + p_std * n) for standard-normal draws n."""
    return torch.sigmoid(normal * p_std + p_mean)


def sample_t(
    n: int, p_mean: float = -0.8, p_std: float = 0.8, *, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """Logit-normal times: sigmoid(N(p_mean, p_std^2)), shape (n,)."""
    return logit_normal(torch.randn(n, generator=generator, device=device), p_mean, p_std)


def drop_labels(
    y: torch.Tensor,
    prob: float,
    null_label: int,
    *,
    generator: torch.Generator | None = None,
    uniform: torch.Tensor | None = None,
) -> torch.Tensor:
    """Replace each label by ``null_label`` with probability ``prob`` (classifier-free guidance).

    ``uniform`` (B,) U(0, 1) draws may be given; otherwise they come from ``generator``."""
    if prob <= 0:
        return y
    if uniform is None:
        uniform = torch.rand(y.shape[0], generator=generator, device=y.device)
    return torch.where(uniform < prob, torch.full_like(y, null_label), y)


@dataclass
class FlowMatching:
    """Training objective: network output read as ``prediction``, squared error measured in ``loss``.

    Default x-prediction + v-loss. ``noise_scale`` multiplies unit-variance noise; ``t_eps`` guards
    the divisions; ``label_drop_prob`` drops labels to the null class (index ``num_classes``).
    """

    prediction: str = "x"
    loss: str = "v"
    p_mean: float = -0.8
    p_std: float = 0.8
    t_eps: float = 0.05
    noise_scale: float = 1.0
    label_drop_prob: float = 0.1

    def __post_init__(self):
        _check_space("prediction", self.prediction)
        _check_space("loss", self.loss)

    def counter_draws(
        self, y: torch.Tensor, sample_shape: tuple[int, ...], null_label: int, seed: int, step: int,
        positions: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The draws of a training step from the counter-based RNG (see :mod:`rng`): labels after
        dropout, t (B,) and unit noise (B, *sample_shape), each a function of (seed, step, position)."""
        if self.label_drop_prob > 0:
            uniform = rng.uniform(seed, step, rng.STREAM_LABEL_DROP, positions)[:, 0]  # (B,)
            y = drop_labels(y, self.label_drop_prob, null_label, uniform=uniform)
        t = logit_normal(rng.normal(seed, step, rng.STREAM_TIME, positions, 1)[:, 0], self.p_mean, self.p_std)
        numel = math.prod(sample_shape)
        noise = rng.normal(seed, step, rng.STREAM_NOISE, positions, numel).view(-1, *sample_shape)
        return y, t, noise

    def targets(self, x: torch.Tensor, noise: torch.Tensor, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The regression target in the loss space; noise is already scaled by noise_scale."""
        if self.loss == "x":
            return x
        if self.loss == "eps":
            return noise
        return x_to_velocity(x, z, t, self.t_eps)  # v = (x - z) / (1 - t), as the reference computes it

    def __call__(
        self,
        model,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        label_dropout: bool = True,
        null_label: int | None = None,
        reduce: bool = True,
    ) -> torch.Tensor:
        """Mean loss over pixels then batch. ``t`` (B,) and unit ``noise`` may be given explicitly;
        otherwise they are drawn from ``generator`` in the reference order: label dropout, t, noise.
        ``label_dropout=False`` disables label dropout (evaluation)."""
        B = x.shape[0]
        if label_dropout and self.label_drop_prob > 0:
            null_label = model.num_classes if null_label is None else null_label
            y = drop_labels(y, self.label_drop_prob, null_label, generator=generator)
        if t is None:
            t = sample_t(B, self.p_mean, self.p_std, generator=generator, device=x.device)
        if noise is None:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        t4 = _broadcast_t(t, x)  # (B, 1, 1, 1)
        e = noise * self.noise_scale
        z = t4 * x + (1 - t4) * e
        out = model(z, t4.flatten(), y).float()
        pred = convert(out, z, t4, self.prediction, self.loss, self.t_eps)
        err = (pred - self.targets(x, e, z, t4)) ** 2
        per_sample = err.mean(dim=tuple(range(1, x.ndim)))  # (B,)
        return per_sample.mean() if reduce else per_sample
