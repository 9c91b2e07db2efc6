"""The networks: configs and the preset registry, layers, the JiT model, the export format, FLOP counts."""

from ..core.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "config": ("PRESETS", "JiTConfig", "ModelInfo", "find_preset", "preset_config"),
    "jit": ("JiT", "create_model"),
    "pretrained": ("load_pretrained", "save_pretrained"),
    "flops": ("forward_macs", "train_flops_per_image"),
})
