"""The networks: configs and the preset registry, layers, the JiT model, the export format, FLOP counts."""

from ..core.lazy import lazy_exports

_EXPORTS = {
    "PRESETS": "config",
    "JiTConfig": "config",
    "ModelInfo": "config",
    "find_preset": "config",
    "preset_config": "config",
    "JiT": "jit",
    "create_model": "jit",
    "load_pretrained": "pretrained",
    "save_pretrained": "pretrained",
    "forward_macs": "flops",
    "train_flops_per_image": "flops",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
