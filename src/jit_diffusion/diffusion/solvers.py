"""ODE solvers for the sampling ODE: one function per method, one shared signature, one registry.

Every solver is ``fn(velocity, z, times, weights, *, t_eps, denoise, progress) -> z``: ``velocity(z, t, w)``
is the (guided) velocity, ``times`` the increasing grid from 0 to 1 (fp32 CPU tensor), ``weights[i]`` the
guidance weight of the evaluations made at ``times[i]``, ``denoise`` returns the last x-prediction instead
of the last ODE step. Coefficients are computed in float64 on the host; the state ``z`` stays fp32.

The ODE is the public sampler's: dz/dt = v = (D - z) / c(t), with D the x-prediction and
c(t) = max(1 - t, t_eps). With phi(t) = int dt / c(t) (-log(1 - t), then linear in t past 1 - t_eps)
it is dz/dphi = D - z, so for constant D a step from s to t is exact:
    z_t = E z_s + (1 - E) D,    E = exp(-(phi(t) - phi(s)))    [(1 - t) / (1 - s) below 1 - t_eps].
The exponential solvers (dpm++2m, dpm++3m, unipc) use that step with D interpolated in the log-SNR
u = lambda = log(t / (1 - t)), continued linearly in t past 1 - t_eps (so u is C^1 and u(1) finite).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

Velocity = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


# --- the time variables -------------------------------------------------------------------------


def noise_level(t: float, t_eps: float) -> float:
    """c(t) = max(1 - t, t_eps), the denominator of v = (D - z) / c."""
    return max(1.0 - t, t_eps)


def log_snr(t: float, t_eps: float) -> float:
    """u(t) = log(t / (1 - t)) up to the knee 1 - t_eps, then continued linearly (C^1); u(0) = -inf."""
    knee = 1.0 - t_eps
    if t <= 0.0:
        return -math.inf
    if t <= knee:
        return math.log(t) - math.log1p(-t)
    return math.log(knee / t_eps) + (t - knee) / (knee * t_eps)  # du/dt = 1 / (t (1 - t)) at the knee


def from_log_snr(u: float, t_eps: float) -> float:
    """The inverse of :func:`log_snr`."""
    knee = 1.0 - t_eps
    u_knee = math.log(knee / t_eps)
    if u <= u_knee:
        return 1.0 / (1.0 + math.exp(-u))
    return knee + (u - u_knee) * knee * t_eps


def _phi(t: float, t_eps: float) -> float:
    knee = 1.0 - t_eps
    return -math.log1p(-t) if t <= knee else -math.log(t_eps) + (t - knee) / t_eps


def decay(s: float, t: float, t_eps: float) -> float:
    """E = exp(-(phi(t) - phi(s))): the weight of z_s in the exact step from s to t."""
    knee = 1.0 - t_eps
    if t <= knee and s <= knee:  # (either order: backward steps, t < s, run inversions)
        return (1.0 - t) / (1.0 - s)
    return math.exp(_phi(s, t_eps) - _phi(t, t_eps))


def _kernel_moment(k: int, h: float) -> float:
    """J_k(h) = int_0^h exp(-(h - r)) r^k dr (series for small h, where the closed forms cancel)."""
    if math.isinf(h):
        return math.inf if k else 1.0
    if h < 1.0:  # J_k = k! h^(k+1) sum_n (-h)^n / (n + k + 1)!
        return math.factorial(k) * sum((-h) ** n * h ** (k + 1) / math.factorial(n + k + 1) for n in range(25))
    moment = -math.expm1(-h)
    for j in range(1, k + 1):
        moment = h**j - j * moment  # J_j = h^j - j J_(j-1), by parts
    return moment


def step_moments(s: float, t: float, t_eps: float, order: int) -> list[float]:
    """c_k = int_s^t exp(-(phi(t) - phi(r))) (u(r) - u(s))^k dphi(r) for k < order (c_0 = 1 - E).

    Below the knee c_k = t J_k(u_t - u_s); past it c_k = knee^-k J_k(phi_t - phi_s); a step across the
    knee is the sum of both parts."""
    knee = 1.0 - t_eps
    out = [1.0 - decay(s, t, t_eps)]
    if order == 1:
        return out
    h_a = log_snr(min(t, knee), t_eps) - log_snr(s, t_eps) if s < knee else 0.0
    h_b = _phi(t, t_eps) - _phi(max(s, knee), t_eps) if t > knee else 0.0
    for k in range(1, order):
        part_a = math.exp(-h_b) * min(t, knee) * _kernel_moment(k, h_a) if s < knee else 0.0
        part_b = sum(math.comb(k, j) * h_a ** (k - j) * knee**-j * _kernel_moment(j, h_b) for j in range(k + 1))
        out.append(part_a + (part_b if h_b > 0 else 0.0))
    return out


def _polynomial(center: float, points: Sequence[tuple[float, torch.Tensor]]) -> list[torch.Tensor]:
    """Coefficients a_k of the polynomial sum_k a_k (u - center)^k through up to 3 points (u_j, D_j)."""
    (u0, f0), rest = points[0], points[1:]
    if not rest:
        return [f0]
    d0 = u0 - center
    (u1, f1) = rest[0]
    f01 = (f1 - f0) / (u1 - u0)  # Newton divided differences
    if len(rest) == 1:
        return [f0 - d0 * f01, f01]
    (u2, f2) = rest[1]
    f012 = ((f2 - f1) / (u2 - u1) - f01) / (u2 - u0)
    d1 = u1 - center
    return [f0 - d0 * f01 + d0 * d1 * f012, f01 - (d0 + d1) * f012, f012]


# --- the solvers ----------------------------------------------------------------------------------


def _progress(times: torch.Tensor, name: str, progress: bool):
    steps = len(times) - 1
    return tqdm(range(steps), disable=not progress, desc=f"{name}-{steps}", leave=False)


def _x_prediction(velocity: Velocity, z: torch.Tensor, t: float, t_node: torch.Tensor, w: float, t_eps: float):
    return z + noise_level(t, t_eps) * velocity(z, t_node, w)  # D = z + c(t) v


def euler(velocity: Velocity, z: torch.Tensor, times: torch.Tensor, weights: Sequence[float], *,
          t_eps: float = 0.05, denoise: bool = False, progress: bool = False) -> torch.Tensor:  # fmt: skip
    """Euler: z += dt v(z, t). One evaluation per step."""
    steps = len(times) - 1
    for i in _progress(times, "euler", progress):
        dt = times[i + 1] - times[i]  # 0-d fp32 CPU tensor, as the reference computes it
        v = velocity(z, times[i], weights[i])
        if denoise and i == steps - 1:
            return z + noise_level(float(times[i]), t_eps) * v
        z = z + dt * v
    return z


def heun(velocity: Velocity, z: torch.Tensor, times: torch.Tensor, weights: Sequence[float], *,
         t_eps: float = 0.05, denoise: bool = False, progress: bool = False,
         final_euler: bool = True) -> torch.Tensor:  # fmt: skip
    """Heun (the public sampler): z += dt (v(z, t) + v(z + dt v, t + dt)) / 2, with a plain Euler step on
    the last interval when ``final_euler`` (2 steps - 1 evaluations)."""
    steps = len(times) - 1
    for i in _progress(times, "heun", progress):
        t, t_next = times[i], times[i + 1]
        dt = t_next - t
        v = velocity(z, t, weights[i])
        if denoise and i == steps - 1:
            return z + noise_level(float(t), t_eps) * v
        if final_euler and i == steps - 1:
            z = z + dt * v
        else:
            z_euler = z + dt * v
            v_next = velocity(z_euler, t_next, weights[i + 1])
            z = z + dt * (0.5 * (v + v_next))
    return z


def dpmpp_2m(velocity: Velocity, z: torch.Tensor, times: torch.Tensor, weights: Sequence[float], *,
             t_eps: float = 0.05, denoise: bool = False, progress: bool = False) -> torch.Tensor:  # fmt: skip
    """DPM-Solver++(2M): z' = E z + (1 - E) ((1 + 1/(2r)) D_i - D_(i-1) / (2r)), r = h_(i-1) / h_i, h the
    log-SNR step; first-order where there is no history (the first steps, a change of guidance weight)."""
    steps = len(times) - 1
    previous = None  # (u, D, w) of the last node
    for i in _progress(times, "dpm++2m", progress):
        s, t = float(times[i]), float(times[i + 1])
        x_pred = _x_prediction(velocity, z, s, times[i], weights[i], t_eps)
        if denoise and i == steps - 1:
            return x_pred
        u_s, target = log_snr(s, t_eps), x_pred
        if previous is not None and previous[2] == weights[i] and math.isfinite(previous[0]):
            half_inv_ratio = (log_snr(t, t_eps) - u_s) / (2 * (u_s - previous[0]))  # 1 / (2r)
            target = x_pred + half_inv_ratio * (x_pred - previous[1])
        E = decay(s, t, t_eps)
        z = E * z + (1 - E) * target
        previous = (u_s, x_pred, weights[i])
    return z


def dpmpp_3m(velocity: Velocity, z: torch.Tensor, times: torch.Tensor, weights: Sequence[float], *,
             t_eps: float = 0.05, denoise: bool = False, progress: bool = False) -> torch.Tensor:  # fmt: skip
    """DPM-Solver++(3M): D extrapolated by the quadratic in u through the last three x-predictions and
    integrated exactly, z' = E z + sum_k c_k a_k (lower order until three predictions share a weight)."""
    steps = len(times) - 1
    history: list[tuple[float, torch.Tensor]] = []  # (u, D), newest first, all under weight ``history_w``
    history_w = None
    for i in _progress(times, "dpm++3m", progress):
        s, t = float(times[i]), float(times[i + 1])
        x_pred = _x_prediction(velocity, z, s, times[i], weights[i], t_eps)
        if denoise and i == steps - 1:
            return x_pred
        if weights[i] != history_w:
            history, history_w = [], weights[i]
        u_s = log_snr(s, t_eps)
        if math.isfinite(u_s):  # t = 0 (u = -inf) starts no history
            history = [(u_s, x_pred), *history][:3]
        coefficients = _polynomial(u_s, history) if history else [x_pred]  # D(u) ~ sum_k a_k (u - u_s)^k
        moments = step_moments(s, t, t_eps, len(coefficients))
        z = decay(s, t, t_eps) * z + sum(c * a for c, a in zip(moments, coefficients))
    return z


def unipc(velocity: Velocity, z: torch.Tensor, times: torch.Tensor, weights: Sequence[float], *,
          t_eps: float = 0.05, denoise: bool = False, progress: bool = False) -> torch.Tensor:  # fmt: skip
    """UniPC (bh2, order 2): the DPM-Solver++(2M) predictor, then a corrector that re-takes the step with
    the next node's x-prediction (evaluated at the predicted state, so no extra cost): the quadratic through
    D_(i-1), D_i, D_(i+1) integrated exactly, or (1 - E)(D_i + D_(i+1)) / 2 without history."""
    steps = len(times) - 1
    x_pred = _x_prediction(velocity, z, float(times[0]), times[0], weights[0], t_eps)
    previous = None  # (u, D) of the node before the current one, under the current weight
    for i in _progress(times, "unipc", progress):
        s, t = float(times[i]), float(times[i + 1])
        if denoise and i == steps - 1:
            return x_pred
        u_s, u_t, E = log_snr(s, t_eps), log_snr(t, t_eps), decay(s, t, t_eps)
        target = x_pred
        if previous is not None:
            target = x_pred + (u_t - u_s) / (2 * (u_s - previous[0])) * (x_pred - previous[1])
        z_pred = E * z + (1 - E) * target
        if i == steps - 1:
            return z_pred  # no evaluation at t = 1, so no correction
        x_next = _x_prediction(velocity, z_pred, t, times[i + 1], weights[i + 1], t_eps)
        if weights[i + 1] != weights[i]:  # x_next is guided differently: keep the prediction, restart
            z, previous = z_pred, None
        elif previous is None:
            z = E * z + (1 - E) * (0.5 * (x_pred + x_next))
        else:
            coefficients = _polynomial(u_s, [(u_s, x_pred), (u_t, x_next), previous])
            z = E * z + sum(c * a for c, a in zip(step_moments(s, t, t_eps, 3), coefficients))
        if weights[i + 1] == weights[i]:
            previous = (u_s, x_pred) if math.isfinite(u_s) else None
        x_pred = x_next
    return z


# --- the registry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Solver:
    """A sampling method: its function, network evaluations per run, guidance rule and default time grid.

    ``guidance``: ``node`` decides the weight at each node (the public rule: cfg where lo < t < hi);
    ``interval`` gives each step the weight of the open interval it covers (grids get nodes at the edges)."""

    fn: Callable[..., torch.Tensor]
    evaluations: Callable[[int], int]
    guidance: str
    grid: str


SOLVERS: dict[str, Solver] = {
    "heun": Solver(heun, lambda steps: 2 * steps - 1, "node", "uniform"),
    "euler": Solver(euler, lambda steps: steps, "node", "uniform"),
    "dpm++2m": Solver(dpmpp_2m, lambda steps: steps, "interval", "shifted"),
    "dpm++3m": Solver(dpmpp_3m, lambda steps: steps, "interval", "logsnr"),
    "unipc": Solver(unipc, lambda steps: steps, "interval", "shifted"),
}
METHODS = tuple(SOLVERS)
LOG_SNR_METHODS = ("dpm++2m", "dpm++3m", "unipc")  # work in u = log_snr(t, t_eps): need 0 < t_eps < 1
