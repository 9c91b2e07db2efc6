"""Sampling: time grids, interval classifier-free guidance, and :func:`sample` over the solvers of
:mod:`jit_diffusion.solvers` (heun, euler, dpm++2m, dpm++3m, unipc).

The ODE dz/dt = v(z, t) runs from t = 0 (noise) to t = 1 (data). Guided rows and unguided rows never
cost more than needed: where the guidance weight is w != 1 the conditional and unconditional rows go
through one batched forward, and where w == 1 (outside the interval, or cfg = 1) the unconditional rows
are not computed at all. The ODE state stays fp32 even when the network runs under bf16 autocast.

Heun and Euler keep the public sampler exactly: a uniform grid and the weight decided at each node.
The other solvers weight each step by the open interval it covers and their grids get a node at each
CFG interval edge, so that guidance switches on exactly at the edge whatever the number of steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .flow import convert
from .solvers import LOG_SNR_METHODS, METHODS, SOLVERS, from_log_snr, log_snr

GRIDS = ("uniform", "shifted", "logsnr")
FINALS = ("ode", "denoise")
DEFAULT_SHIFT = 2.0  # the shifted grid's s when --shift is not given


def time_grid(steps: int, kind: str = "uniform", *, shift: float = DEFAULT_SHIFT, t_eps: float = 0.05,
              edges: Sequence[float] = ()) -> torch.Tensor:  # fmt: skip
    """The steps+1 times from 0 to 1 in fp32, on the CPU (decisions about guidance stay on host).

    ``uniform``: linspace(0, 1) (the public grid); ``shifted``: t' = t / (t + shift (1 - t)) of the uniform
    grid (shift > 1 spends more steps at the noisy end; it moves the log-SNR by -log shift); ``logsnr``:
    t = 0, then uniform in the log-SNR from log(1 / steps^2) to its value at t = 1 (see
    :func:`solvers.log_snr`). Each of ``edges`` becomes a node: the nearest free node moves onto it (a
    node is added only when both neighbours are fixed)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if kind == "uniform":
        values = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float32).tolist()
    elif kind == "shifted":
        if not shift > 0:
            raise ValueError(f"--shift must be > 0, got {shift}")
        values = [u / (u + shift * (1 - u)) for u in (i / steps for i in range(steps + 1))]
    elif kind == "logsnr":
        u_first, u_last = -2 * math.log(steps), log_snr(1.0, t_eps)
        inner = [from_log_snr(u_first + (u_last - u_first) * k / (steps - 1), t_eps) for k in range(steps - 1)]
        values = [0.0, *inner, 1.0] if steps > 1 else [0.0, 1.0]
    else:
        raise ValueError(f"time grid must be one of {GRIDS}, got {kind!r}")
    values[0], values[-1] = 0.0, 1.0
    if edges:
        values = _with_edges(values, edges)
    return torch.tensor(values, dtype=torch.float32)


def _with_edges(values: list[float], edges: Sequence[float]) -> list[float]:
    fixed = {0, len(values) - 1}
    for edge in sorted(float(e) for e in edges):
        if not 0.0 < edge < 1.0:
            continue
        j = next(k for k, v in enumerate(values) if v >= edge)  # values[j - 1] < edge <= values[j]
        if abs(values[j] - edge) < 1e-7 or abs(values[j - 1] - edge) < 1e-7:
            fixed.add(j if abs(values[j] - edge) < 1e-7 else j - 1)
            continue
        free = sorted((k for k in (j - 1, j) if k not in fixed), key=lambda k: abs(values[k] - edge))
        if free:
            values[free[0]] = edge
            fixed.add(free[0])
        else:
            values.insert(j, edge)
            fixed = {k + (k >= j) for k in fixed} | {j}
    return values


def resolve_grid(method: str, grid: str = "auto", shift: float | None = None) -> tuple[str, float]:
    """(grid, shift) for a method: ``auto`` is the method's default grid (``shifted`` when a shift is given)."""
    solver = _solver(method)
    if grid == "auto":
        grid = "shifted" if shift is not None else solver.grid
    if grid not in GRIDS:
        raise ValueError(f"--time-grid must be auto or one of {GRIDS}, got {grid!r}")
    if shift is not None and grid != "shifted":
        raise ValueError(f"--shift applies to the shifted time grid, not {grid!r}")
    return grid, DEFAULT_SHIFT if shift is None else float(shift)


def sampling_times(method: str, steps: int, *, grid: str = "auto", shift: float | None = None, cfg: float = 1.0,
                   cfg_interval: Sequence[float] = (0.1, 1.0), t_eps: float = 0.05) -> torch.Tensor:  # fmt: skip
    """The grid :func:`sample` integrates on: the method's grid, with a node at each CFG interval edge for
    the solvers with the interval guidance rule."""
    kind, shift = resolve_grid(method, grid, shift)
    check_t_eps(t_eps, method, kind)
    edges = tuple(cfg_interval) if SOLVERS[method].guidance == "interval" and cfg != 1.0 else ()
    return time_grid(steps, kind, shift=shift, t_eps=t_eps, edges=edges)


def check_t_eps(t_eps: float, method: str, grid: str) -> float:
    """``t_eps`` when ``method`` on ``grid`` can use it: 0 <= t_eps < 1, and t_eps > 0 for the solvers and the
    grid that work in the log-SNR (finite only below the knee 1 - t_eps); a one-line ValueError otherwise."""
    user = method if method in LOG_SNR_METHODS else "the logsnr time grid" if grid == "logsnr" else None
    if user is not None and not 0 < t_eps < 1:
        raise ValueError(f"{user} needs 0 < t_eps < 1 (the log-SNR is log((1 - t_eps) / t_eps) at the knee), "
                         f"the model's t_eps is {t_eps:g}: sample with --method heun or euler")  # fmt: skip
    if not 0 <= t_eps < 1:
        raise ValueError(f"t_eps must satisfy 0 <= t_eps < 1, the model's is {t_eps:g}")
    return t_eps


def check_interval(values: Sequence[float], flag: str = "--interval") -> tuple[float, float]:
    """A CFG interval (min, max) with 0 <= min <= max <= 1; a one-line ValueError naming ``flag`` otherwise."""
    try:
        lo, hi = (float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{flag} expects two numbers min,max like 0.1,1.0, got {values!r}") from None
    if not 0 <= lo <= hi <= 1:
        raise ValueError(f"{flag} must satisfy 0 <= min <= max <= 1, got {lo:g},{hi:g}")
    return lo, hi


def network_evaluations(method: str, times: torch.Tensor) -> int:
    """Network evaluations (ODE function evaluations) of ``method`` on the grid ``times``."""
    return _solver(method).evaluations(len(times) - 1)


def _solver(method: str):
    if method not in SOLVERS:
        raise ValueError(f"sampling method must be one of {METHODS}, got {method!r}")
    return SOLVERS[method]


def guidance_weights(times: torch.Tensor, cfg: float, cfg_interval: Sequence[float]) -> list[float]:
    """Guidance weight per time: cfg where lo < t < hi (lo inclusive when lo == 0), else 1."""
    lo, hi = cfg_interval
    inside = (times < hi) & ((lo == 0) | (times > lo))
    return [float(cfg) if bool(flag) else 1.0 for flag in inside]


def interval_weights(times: torch.Tensor, cfg: float, cfg_interval: Sequence[float]) -> list[float]:
    """Guidance weight per time for the interval rule: entry i is the weight of the open interval
    (t_i, t_(i+1)) (cfg where its midpoint lies in (lo, hi)); the last entry repeats the one before."""
    lo, hi = cfg_interval
    values = times.tolist()
    middles = [(a + b) / 2 for a, b in zip(values[:-1], values[1:])]
    weights = [float(cfg) if lo < m < hi else 1.0 for m in middles]
    return weights + weights[-1:]


class GuidedVelocity:
    """v(z, t) of a network with interval CFG; counts network evaluations and rows (NFE)."""

    def __init__(
        self,
        model: Callable,
        labels: torch.Tensor,
        *,
        null_label: int,
        prediction: str = "x",
        t_eps: float = 0.05,
    ):
        self.model = model
        self.labels = labels
        self.null_labels = torch.full_like(labels, null_label)
        self.prediction = prediction
        self.t_eps = t_eps
        self.calls = 0  # network evaluations (one per ODE function evaluation)
        self.rows = 0  # network rows (a guided evaluation costs 2B rows, an unguided one B)

    def __call__(self, z: torch.Tensor, t: torch.Tensor, weight: float) -> torch.Tensor:
        B = z.shape[0]
        t_rows = t.to(z.device).expand(B)  # (B,)
        t4 = t_rows.view(B, 1, 1, 1)
        self.calls += 1
        if weight == 1.0:
            self.rows += B
            out = self.model(z, t_rows, self.labels).float()
            return convert(out, z, t4, self.prediction, "v", self.t_eps)
        self.rows += 2 * B
        out = self.model(torch.cat([z, z]), torch.cat([t_rows, t_rows]), torch.cat([self.labels, self.null_labels]))
        v_cond, v_uncond = convert(out.float(), torch.cat([z, z]), torch.cat([t4, t4]), self.prediction, "v",
                                   self.t_eps).chunk(2)  # fmt: skip
        return v_uncond + weight * (v_cond - v_uncond)  # v = v_u + w (v_c - v_u)


def solve(
    velocity: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor],
    z: torch.Tensor,
    times: torch.Tensor,
    weights: Sequence[float],
    *,
    method: str = "heun",
    t_eps: float = 0.05,
    final: str = "ode",
    progress: bool = False,
    **options,
) -> torch.Tensor:
    """Integrate dz/dt = velocity(z, t, w) over ``times`` with ``method``; ``weights[i]`` is the guidance
    weight of evaluations at ``times[i]``. ``final="denoise"`` returns the last x-prediction instead of
    the last step. ``options`` go to the solver (heun's ``final_euler``)."""
    solver = _solver(method)
    if final not in FINALS:
        raise ValueError(f"--final must be one of {FINALS}, got {final!r}")
    if len(weights) != len(times):
        raise ValueError(f"need one guidance weight per time: {len(weights)} weights for {len(times)} times")
    return solver.fn(velocity, z, times, weights, t_eps=t_eps, denoise=final == "denoise", progress=progress,
                     **options)  # fmt: skip


@torch.no_grad()
def sample(
    model,
    noise: torch.Tensor,
    labels: torch.Tensor,
    *,
    method: str = "heun",
    steps: int = 50,
    cfg: float = 1.0,
    cfg_interval: Sequence[float] = (0.1, 1.0),
    noise_scale: float = 1.0,
    t_eps: float = 0.05,
    prediction: str = "x",
    grid: str = "auto",
    shift: float | None = None,
    final: str = "ode",
    progress: bool = False,
    null_label: int | None = None,
    velocity_hook: Callable[[GuidedVelocity], None] | None = None,
) -> torch.Tensor:
    """Generate images from standard-normal ``noise`` (B, 3, H, W) and ``labels`` (B,).

    Returns the final ODE state (fp32, data scale, about [-1, 1]), or the last x-prediction with
    ``final="denoise"``. ``grid``/``shift`` choose the time grid (:func:`sampling_times`; ``auto`` is the
    method's default). ``null_label`` defaults to ``model.num_classes``; ``velocity_hook`` receives the
    :class:`GuidedVelocity` (e.g. to read NFE).
    """
    solver = _solver(method)
    if null_label is None:
        null_label = model.num_classes
    z = noise.float() * noise_scale
    times = sampling_times(method, steps, grid=grid, shift=shift, cfg=cfg, cfg_interval=cfg_interval, t_eps=t_eps)
    rule = guidance_weights if solver.guidance == "node" else interval_weights
    velocity = GuidedVelocity(model, labels.to(z.device), null_label=null_label, prediction=prediction, t_eps=t_eps)
    if velocity_hook is not None:
        velocity_hook(velocity)
    return solve(velocity, z, times, rule(times, cfg, cfg_interval), method=method, t_eps=t_eps, final=final,
                 progress=progress)  # fmt: skip


def image_noise(indices: Sequence[int], shape: Sequence[int], seed: int) -> torch.Tensor:
    """Standard-normal starting noise (B, *shape): image ``i`` always gets the same draw for a seed,
    whatever the batch, chunk or rank it lands in."""
    out = torch.empty(len(indices), *shape)
    gen = torch.Generator()
    for row, index in enumerate(indices):
        gen.manual_seed((int(seed) * 1_000_003 + int(index)) % (2**63))
        out[row] = torch.randn(*shape, generator=gen)
    return out
