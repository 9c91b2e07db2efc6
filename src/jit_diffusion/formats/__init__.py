"""Model files: training checkpoints, official checkpoints, diffusers layouts, conversion, and loading any of them."""

from ..core.lazy import lazy_exports

_EXPORTS = {
    "Source": "loading",
    "load_model": "loading",
    "open_source": "loading",
    "latest_checkpoint": "checkpoint",
    "read_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "load_official": "official",
    "save_diffusers": "diffusers_folder",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
