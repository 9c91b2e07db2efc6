"""The paper's manifold toy experiment (x/eps/v-prediction against the ambient dimension) and its report."""

from ..core.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "experiment": ("ToyConfig", "run_toy"),
    "report": ("sliced_wasserstein",),
})
