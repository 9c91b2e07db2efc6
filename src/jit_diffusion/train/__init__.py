"""Training: the run config and flags, data order and draws, optimizer, state, logging, health, the trainer."""

from ..core.lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "config",
    "config_from_args": "flags",
    "Trainer": "trainer",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
