"""Evaluation: Inception metrics, Frechet distance, the sample store, sweeps, the small classifier, `jit eval`."""

from ..core.lazy import lazy_exports

_EXPORTS = {
    "feature_stats": "frechet",
    "frechet_distance": "frechet",
    "InceptionFeatures": "metrics",
    "Scorer": "metrics",
    "Setting": "sweep",
    "ClassifierMetrics": "classifier",
    "run_eval": "evaluate",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
