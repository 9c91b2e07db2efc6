"""ODE samplers (Euler, Heun with a final Euler step) with interval classifier-free guidance.

The ODE dz/dt = v(z, t) runs from t = 0 (noise) to t = 1 (data) on a uniform grid. Guided rows
and unguided rows never cost more than needed: where the guidance weight is w != 1 the
conditional and unconditional rows go through one batched forward, and where w == 1 (outside the
interval, or cfg = 1) the unconditional rows are not computed at all. The ODE state stays fp32
even when the network runs under bf16 autocast.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .flow import convert

METHODS = ("heun", "euler")


def time_grid(steps: int) -> torch.Tensor:
    """The steps+1 times linspace(0, 1) in fp32, on the CPU (decisions about guidance stay on host)."""
    return torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float32)


def guidance_weights(times: torch.Tensor, cfg: float, cfg_interval: Sequence[float]) -> list[float]:
    """Guidance weight per time: cfg where lo < t < hi (lo inclusive when lo == 0), else 1."""
    lo, hi = cfg_interval
    inside = (times < hi) & ((lo == 0) | (times > lo))
    return [float(cfg) if bool(flag) else 1.0 for flag in inside]


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
    final_euler: bool = True,
    progress: bool = False,
) -> torch.Tensor:
    """Integrate dz/dt = velocity(z, t, w) over ``times``.

    Heun takes a plain Euler step on the last interval when ``final_euler`` (the reference
    sampler does, which saves the evaluation at t = 1 where x-prediction is exact anyway)."""
    if method not in METHODS:
        raise ValueError(f"sampling method must be one of {METHODS}, got {method!r}")
    steps = len(times) - 1
    for i in tqdm(range(steps), disable=not progress, desc=f"{method}-{steps}", leave=False):
        t, t_next = times[i], times[i + 1]
        dt = t_next - t  # 0-d fp32 CPU tensor, as the reference computes it
        v = velocity(z, t, weights[i])
        if method == "euler" or (final_euler and i == steps - 1):
            z = z + dt * v
        else:
            z_euler = z + dt * v
            v_next = velocity(z_euler, t_next, weights[i + 1])
            z = z + dt * (0.5 * (v + v_next))
    return z


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
    progress: bool = False,
    null_label: int | None = None,
    velocity_hook: Callable[[GuidedVelocity], None] | None = None,
) -> torch.Tensor:
    """Generate images from standard-normal ``noise`` (B, 3, H, W) and ``labels`` (B,).

    Returns the final ODE state (fp32, data scale, about [-1, 1]). ``null_label`` defaults to
    ``model.num_classes``; ``velocity_hook`` receives the :class:`GuidedVelocity` (e.g. to read NFE).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if null_label is None:
        null_label = model.num_classes
    z = noise.float() * noise_scale
    times = time_grid(steps)
    velocity = GuidedVelocity(model, labels.to(z.device), null_label=null_label, prediction=prediction, t_eps=t_eps)
    if velocity_hook is not None:
        velocity_hook(velocity)
    return solve(velocity, z, times, guidance_weights(times, cfg, cfg_interval), method=method, progress=progress)


def image_noise(indices: Sequence[int], shape: Sequence[int], seed: int) -> torch.Tensor:
    """Standard-normal starting noise (B, *shape): image ``i`` always gets the same draw for a seed,
    whatever the batch, chunk or rank it lands in."""
    out = torch.empty(len(indices), *shape)
    gen = torch.Generator()
    for row, index in enumerate(indices):
        gen.manual_seed((int(seed) * 1_000_003 + int(index)) % (2**63))
        out[row] = torch.randn(*shape, generator=gen)
    return out
