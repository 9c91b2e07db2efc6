"""The diffusion maths around a network: the flow path and loss, ODE solvers, sampling, EMA, batched generation."""

from ..core.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "flow": ("FlowMatching",),
    "solvers": ("METHODS", "SOLVERS"),
    "sampling": ("GuidedVelocity", "image_noise", "sample", "solve", "time_grid"),
    "ema": ("EMA",),
})
