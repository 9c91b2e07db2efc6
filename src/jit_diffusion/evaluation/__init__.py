"""Evaluation: Inception metrics, Frechet distance, the sample store, sweeps, the small classifier, `jit eval`."""

from ..core.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "frechet": ("feature_stats", "frechet_distance"),
    "metrics": ("InceptionFeatures", "Scorer"),
    "sweep": ("Setting",),
    "classifier": ("ClassifierMetrics",),
    "evaluate": ("run_eval",),
})
