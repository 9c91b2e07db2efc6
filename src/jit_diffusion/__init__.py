"""jit-diffusion: pixel-space diffusion with plain image Transformers (JiT)."""

from .model import PRESETS, JiT, JiTConfig, create_model, preset_config

__version__ = "0.1.0"
__all__ = ["JiT", "JiTConfig", "PRESETS", "create_model", "preset_config", "__version__"]
