"""Training: the run config and flags, data order and draws, optimizer, state, logging, health, the trainer."""

from ..core.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "config": ("TrainConfig",),
    "flags": ("config_from_args",),
    "trainer": ("Trainer",),
})
