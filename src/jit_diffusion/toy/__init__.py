"""The paper's manifold toy experiment (x/eps/v-prediction against the ambient dimension) and its report."""

from ..core.lazy import lazy_exports

_EXPORTS = {
    "ToyConfig": "experiment",
    "run_toy": "experiment",
    "sliced_wasserstein": "report",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
