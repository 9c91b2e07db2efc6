"""Model files: training checkpoints, official checkpoints, diffusers layouts, conversion, and loading any of them."""

from ..core.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "loading": ("Source", "load_model", "open_source"),
    "checkpoint": ("latest_checkpoint", "read_checkpoint", "save_checkpoint"),
    "official": ("load_official",),
    "diffusers_folder": ("save_diffusers",),
})
