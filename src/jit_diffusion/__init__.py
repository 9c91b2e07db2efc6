"""jit-diffusion: pixel-space diffusion with plain image Transformers (JiT)."""

from . import loading  # noqa: F401  (lets JiT.from_pretrained open run folders and checkpoints)
from .config import PRESETS, JiTConfig, preset_config
from .model import JiT, create_model

__version__ = "0.1.0"
__all__ = ["JiT", "JiTConfig", "PRESETS", "create_model", "preset_config", "__version__"]
