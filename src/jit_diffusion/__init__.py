"""jit-diffusion: pixel-space diffusion with plain image Transformers (JiT)."""

from .formats import loading  # noqa: F401  (lets JiT.from_pretrained open run folders and checkpoints)
from .models.config import PRESETS, JiTConfig, preset_config
from .models.jit import JiT, create_model

__version__ = "0.1.0"
__all__ = ["JiT", "JiTConfig", "PRESETS", "create_model", "preset_config", "__version__"]
