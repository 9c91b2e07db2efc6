"""The diffusion maths around a network: the flow path and loss, ODE solvers, sampling, EMA, batched generation."""

from ..core.lazy import lazy_exports

_EXPORTS = {
    "FlowMatching": "flow",
    "METHODS": "solvers",
    "SOLVERS": "solvers",
    "GuidedVelocity": "sampling",
    "image_noise": "sampling",
    "sample": "sampling",
    "solve": "sampling",
    "time_grid": "sampling",
    "EMA": "ema",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
