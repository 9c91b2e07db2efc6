"""Editing real images with any model: image-to-image (SDEdit), inpainting, inversion and reconstruction,
noise/class interpolation, and class swaps, on top of the solvers and guidance of :mod:`.sampling`.

Every operation runs the sampling ODE of :func:`sampling.sample` (same solvers, time grids and interval
guidance) on a part of the method's grid: the grid's nodes above a start time t0, with t0 itself as the
first node. The path is the flow's z_t = t x + (1 - t) e (t = 1 clean), so

- ``img2img``: z_t0 = t0 x + (1 - t0) e with t0 = 1 - strength, then solve to t = 1 (strength 1 is plain
  sampling from the same noise, strength 0 returns the input);
- ``inpaint``: at every network evaluation the known pixels are set to t x + (1 - t) e and their velocity
  to x - e (the path's), so the network sees the input noised to that time; the known pixels of the result
  are the input's. With ``resample`` K > 1 (RePaint) each step from t_i to t_(i+1) is taken K times, the
  state re-noised back to t_i along the path in between (fresh noise of the seed and image index);
- ``invert``: the same ODE run backwards, t = 1 -> t0 (the last step into t = 0 is the first-order
  one, z_0 = (z - t D) / (1 - t): the noise prediction); ``reconstruct`` runs it forwards again;
- ``interpolate``: spherical interpolation of noises and linear mixing of class embeddings (one embedding
  table row per frame, swapped in with ``torch.func.functional_call``);
- ``swap``: invert under class A down to t0 = 1 - strength, then solve to t = 1 under class B.

A pMF model (``settings.method == "pmf"``) takes ``img2img`` and ``inpaint`` with its few-step sampler
:func:`pmf_sampling.sample_pmf` started at pMF time 1 - t0 = strength (one evaluation per step).

Images are fp32 (B, 3, H, W) in [-1, 1]; ``noise`` is standard normal (the seed's per-image draw of
:func:`sampling.image_noise`), scaled by the model's ``noise_scale`` here as in :func:`sampling.sample`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch

from ..core import rng
from ..diffusion.generate import PMF_METHOD
from ..diffusion.pmf_sampling import sample_pmf
from ..diffusion.sampling import SOLVERS, GuidedVelocity, guidance_weights, interval_weights, sampling_times, solve

TABLE_NAME = "y_embedder.embedding_table.weight"  # the class table (last row: the null class)


@dataclasses.dataclass(frozen=True)
class ODESettings:
    """How to solve the sampling ODE: :func:`sampling.sample`'s keywords, bundled."""

    method: str = "heun"
    steps: int = 50
    cfg: float = 1.0
    cfg_interval: tuple[float, float] = (0.1, 1.0)
    noise_scale: float = 1.0
    t_eps: float = 0.05
    prediction: str = "x"
    grid: str = "auto"
    shift: float | None = None
    final: str = "ode"

    @classmethod
    def from_info(cls, info, **overrides) -> ODESettings:
        """The settings of a model's :class:`ModelInfo` (its cfg, interval, solver, flow), with overrides
        (a ``None`` override keeps the model's value)."""
        base = cls(method=info.method, steps=info.steps or cls.steps, cfg=info.cfg,
                   cfg_interval=tuple(info.cfg_interval), noise_scale=info.noise_scale,
                   t_eps=info.t_eps, prediction=info.prediction)  # fmt: skip
        return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})

    def times_from(self, t0: float = 0.0) -> torch.Tensor:
        """The method's grid restricted to (t0, 1], with t0 as the first node (fp32, CPU, increasing)."""
        full = sampling_times(self.method, self.steps, grid=self.grid, shift=self.shift, cfg=self.cfg,
                              cfg_interval=self.cfg_interval, t_eps=self.t_eps)  # fmt: skip
        if t0 <= 0.0:
            return full
        start = torch.tensor([t0], dtype=torch.float32)
        return torch.cat([start, full[full > start + 1e-6]])


def check_strength(strength: float) -> float:
    """``strength`` as a float in [0, 1], or a one-line error."""
    if not 0.0 <= float(strength) <= 1.0:
        raise ValueError(f"--strength must be in [0, 1], got {strength}")
    return float(strength)


def _weights(settings: ODESettings, times: torch.Tensor) -> list[float]:
    rule = guidance_weights if SOLVERS[settings.method].guidance == "node" else interval_weights
    return rule(times, settings.cfg, settings.cfg_interval)


def _velocity(model, labels: torch.Tensor, settings: ODESettings, z: torch.Tensor, null_label) -> GuidedVelocity:
    null = model.num_classes if null_label is None else null_label
    return GuidedVelocity(model, labels.to(z.device), null_label=null, prediction=settings.prediction,
                          t_eps=settings.t_eps)  # fmt: skip


def integrate(model, z: torch.Tensor, labels: torch.Tensor, times: torch.Tensor, settings: ODESettings, *,
              null_label: int | None = None, wrap=None, final: str | None = None,
              **options) -> torch.Tensor:  # fmt: skip
    """Solve the guided ODE from ``z`` at ``times[0]`` along increasing ``times`` (as :func:`sampling.sample`
    does from t = 0). ``wrap(velocity)`` may replace the velocity (inpainting); ``options`` go to the solver."""
    if len(times) < 2:
        return z
    velocity = _velocity(model, labels, settings, z, null_label)
    velocity = wrap(velocity) if wrap is not None else velocity
    return solve(velocity, z, times, _weights(settings, times), method=settings.method, t_eps=settings.t_eps,
                 final=settings.final if final is None else final, **options)  # fmt: skip


def integrate_back(model, x: torch.Tensor, labels: torch.Tensor, times: torch.Tensor, settings: ODESettings, *,
                   null_label: int | None = None) -> torch.Tensor:  # fmt: skip
    """Solve the ODE backwards from the image ``x`` at t = 1 down to ``times[0]`` through the nodes of the
    increasing grid ``times``. A step into t = 0 is first order: z_0 = z_t - t v = (z_t - t D) / (1 - t)."""
    back = times.flip(0)
    weights = _weights(settings, back)
    stop = len(back) - 1 if float(back[-1]) == 0.0 else len(back)  # index after the last node solved to
    options = {"final_euler": False} if settings.method == "heun" else {}
    velocity = _velocity(model, labels, settings, x, null_label)
    z = x.float()
    if stop >= 2:
        z = solve(velocity, z, back[:stop], weights[:stop], method=settings.method, t_eps=settings.t_eps, **options)
    if stop < len(back):
        t = back[stop - 1]
        z = z + (back[stop] - t) * velocity(z, t, weights[stop - 1])  # Euler into t = 0: the noise prediction
    return z


def noised(x: torch.Tensor, noise: torch.Tensor, t0: float, noise_scale: float) -> torch.Tensor:
    """z_t0 = t0 x + (1 - t0) s e: the flow's path at t0 (s the noise scale)."""
    return t0 * x.float() + (1.0 - t0) * (noise.float() * noise_scale)


@torch.no_grad()
def img2img(model, x: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor, settings: ODESettings, *,
            strength: float) -> torch.Tensor:  # fmt: skip
    """SDEdit: noise the images to t0 = 1 - strength with ``noise``, then solve to t = 1 (a pMF model: its
    steps from t0)."""
    if settings.method == PMF_METHOD:
        return _pmf(model, x.to(noise.device), labels, noise, settings, check_strength(strength))
    t0 = 1.0 - check_strength(strength)
    times = settings.times_from(t0)
    z = noised(x.to(noise.device), noise, float(times[0]), settings.noise_scale)
    return integrate(model, z, labels, times, settings)


class KnownPixels:
    """Inpainting's velocity: the pixels where ``keep`` is True follow the input's path t x + (1 - t) s e
    (the network sees them noised to its time; their velocity is x - s e), the others the network's."""

    def __init__(self, velocity, x: torch.Tensor, noise: torch.Tensor, keep: torch.Tensor):
        self.velocity, self.x, self.noise, self.keep = velocity, x, noise, keep

    def __call__(self, z: torch.Tensor, t: torch.Tensor, weight: float) -> torch.Tensor:
        time = float(t)
        known = time * self.x + (1.0 - time) * self.noise
        v = self.velocity(torch.where(self.keep, known, z), t, weight)
        return torch.where(self.keep, self.x - self.noise, v)


def _pmf(model, x: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor, settings: ODESettings, strength: float,
         keep: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """A pMF model's steps from our t0 = 1 - strength, i.e. its own time s = strength (cfg: omega)."""
    return sample_pmf(model, labels, noise, settings.steps, settings.cfg, settings.cfg_interval,
                      noise_scale=settings.noise_scale, start=strength, image=x, keep=keep)  # fmt: skip


def check_resample(resample: int) -> int:
    """``resample`` as an int >= 1, or a one-line error."""
    if int(resample) != resample or resample < 1:
        raise ValueError(f"--resample must be an integer >= 1, got {resample}")
    return int(resample)


def jump_noise(seed: int, indices: torch.Tensor, step: int, jump: int, shape: Sequence[int]) -> torch.Tensor:
    """Standard-normal (B, *shape) fresh noise of jump ``jump`` after step ``step``: a pure function of the
    seed and each image's index (``indices``, B, on the device wanted), whatever the batch."""
    key = (int(step) << 16) | int(jump)  # step and jump in one counter
    return rng.normal(seed, key, rng.STREAM_RESAMPLE, indices, math.prod(shape)).view(len(indices), *shape)


def jump_back(z: torch.Tensor, s: float, t: float, fresh: torch.Tensor, noise_scale: float) -> torch.Tensor:
    """Re-noise ``z`` from time s back to t < s along the path z_t = t x + (1 - t) sigma e."""
    # z_t = (t / s) z_s + sigma sqrt((1 - t)^2 - (t (1 - s) / s)^2) e' keeps z_t = t x + (1 - t) sigma e in law
    spread = math.sqrt(max(0.0, (1.0 - t) ** 2 - (t * (1.0 - s) / s) ** 2))
    return (t / s) * z + (noise_scale * spread) * fresh.float()


@torch.no_grad()
def inpaint(model, x: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor,
            settings: ODESettings, *, strength: float = 1.0, resample: int = 1, seed: int = 0,
            indices: Sequence[int] | None = None) -> torch.Tensor:  # fmt: skip
    """Regenerate the pixels where ``mask`` (bool, broadcastable to x; True = regenerate) is set, keeping
    the others: they are the input's exactly in the result. ``strength`` < 1 starts from the noised input.
    ``resample`` K > 1: each step K times, jumping back with fresh noise of ``seed`` and the images'
    ``indices`` (default 0..B-1) in between (JiT models)."""
    strength, resample = check_strength(strength), check_resample(resample)
    t0 = 1.0 - strength
    x = x.float().to(noise.device)
    keep = ~mask.to(noise.device).bool().expand_as(x)
    if settings.method == PMF_METHOD:
        if resample != 1:
            raise ValueError("--resample applies to JiT models (the ODE); a pMF model inpaints with --resample 1")
        return torch.where(keep, x, _pmf(model, x, labels, noise, settings, strength, keep))
    times = settings.times_from(t0)
    z = noised(x, noise, float(times[0]), settings.noise_scale)
    scaled = noise.float() * settings.noise_scale
    wrap = lambda v: KnownPixels(v, x, scaled, keep)  # noqa: E731
    if resample == 1:
        out = integrate(model, z, labels, times, settings, wrap=wrap)
    else:
        indices = torch.as_tensor(range(len(x)) if indices is None else list(indices), device=x.device)
        jumps = lambda i, j: jump_noise(seed, indices, i, j, x.shape[1:])  # noqa: E731
        out = _resampled(model, z, labels, times, settings, wrap, resample, jumps,
                         lambda t: noised(x, noise, t, settings.noise_scale), keep)  # fmt: skip
    return torch.where(keep, x, out)


def _resampled(model, z, labels, times, settings: ODESettings, wrap, resample: int, jumps, known, keep):
    """RePaint: each step t_i -> t_(i+1) taken ``resample`` times, the result re-noised back to t_i (fresh
    noise ``jumps(i, j)``, the known pixels ``known(t_i)``) before each retake. A multistep solver starts
    afresh at every step (the jumps break its history); heun takes a Heun step except into t = 1."""
    last = len(times) - 2
    for i in range(last + 1):
        step = times[i : i + 2]
        t, t_next = float(times[i]), float(times[i + 1])
        options = {"final_euler": False} if settings.method == "heun" and i < last else {}
        final = settings.final if i == last else "ode"
        for j in range(resample):
            z_next = integrate(model, z, labels, step, settings, wrap=wrap, final=final, **options)
            if j < resample - 1:
                z = torch.where(keep, known(t), jump_back(z_next, t_next, t, jumps(i, j), settings.noise_scale))
        z = z_next
    return z


@torch.no_grad()
def invert(model, x: torch.Tensor, labels: torch.Tensor, settings: ODESettings, *, t0: float = 0.0) -> torch.Tensor:
    """The deterministic ODE run backwards from the images to t0; at t0 = 0 the result is in units of the
    standard-normal noise (divided by the noise scale), ready for :func:`sampling.sample`."""
    z = integrate_back(model, x.float(), labels, settings.times_from(t0), settings)
    return z / settings.noise_scale if t0 <= 0.0 else z


@torch.no_grad()
def reconstruct(model, x: torch.Tensor, labels: torch.Tensor,
                settings: ODESettings) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(noise, images): the inverted noise and the images sampled back from it with the same settings."""
    noise = invert(model, x, labels, settings)
    z = noise * settings.noise_scale
    return noise, integrate(model, z, labels, settings.times_from(0.0), settings)


@torch.no_grad()
def swap(model, x: torch.Tensor, source: torch.Tensor, target: torch.Tensor, settings: ODESettings, *,
         strength: float, invert_cfg: float = 1.0) -> torch.Tensor:  # fmt: skip
    """Re-render images of the classes ``source`` as ``target``: invert under ``source`` (guidance
    ``invert_cfg``) down to t0 = 1 - strength, then solve to t = 1 under ``target``."""
    t0 = 1.0 - check_strength(strength)
    times = settings.times_from(t0)
    z = integrate_back(model, x.float(), source, times, dataclasses.replace(settings, cfg=invert_cfg))
    return integrate(model, z, target, times, settings)


def slerp(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """Spherical interpolation of two noises (each flattened): alpha 0 gives a, 1 gives b (linear when
    they are parallel)."""
    cos = float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))
    theta = math.acos(max(-1.0, min(1.0, cos)))
    if theta < 1e-6:
        return (1.0 - alpha) * a + alpha * b
    return math.sin((1.0 - alpha) * theta) / math.sin(theta) * a + math.sin(alpha * theta) / math.sin(theta) * b


class MixedClasses:
    """A model whose class ``k`` is the row ``k`` of ``table`` (K rows, then the null row at index K):
    the network called with its class table swapped for ``table``."""

    def __init__(self, model, table: torch.Tensor):
        self.model, self.table = model, table
        self.num_classes = len(table) - 1

    def __call__(self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(self.model, {TABLE_NAME: self.table}, (z, t, y), strict=False)


def mixed_table(model, start: int, end: int, alphas: Sequence[float]) -> torch.Tensor:
    """Rows (1 - a) E[start] + a E[end] per alpha, then the null row (class index ``num_classes`` of the
    model is its null class: the unconditional end)."""
    table = model.get_parameter(TABLE_NAME).detach()
    rows = [(1.0 - a) * table[start] + a * table[end] for a in alphas]
    return torch.stack([*rows, table[model.num_classes]])


@torch.no_grad()
def interpolate(model, classes: tuple[int, int], noises: tuple[torch.Tensor, torch.Tensor], frames: int,
                settings: ODESettings) -> torch.Tensor:  # fmt: skip
    """``frames`` images from (class, noise) = (classes[0], noises[0]) to (classes[1], noises[1]): the noise
    interpolated spherically, the class embedding linearly (``model.num_classes`` = the null class)."""
    if frames < 2:
        raise ValueError(f"--frames must be >= 2, got {frames}")
    alphas = [k / (frames - 1) for k in range(frames)]
    z = torch.stack([slerp(noises[0].float(), noises[1].float(), a) for a in alphas]) * settings.noise_scale
    labels = torch.arange(frames, device=z.device)
    if model.num_classes == 0:
        mixed = model
        labels = torch.zeros(frames, dtype=torch.long, device=z.device)
    else:
        mixed = MixedClasses(model, mixed_table(model, classes[0], classes[1], alphas))
    return integrate(mixed, z, labels, settings.times_from(0.0), settings, null_label=mixed.num_classes)
