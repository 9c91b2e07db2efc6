"""The networks: configs and the preset registries, layers, the JiT and pMF models, their families, the export
format, FLOP counts."""

from ..core.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "config": ("FAMILY_SPECS", "PRESETS", "JiTConfig", "ModelInfo", "find_preset", "preset_config", "preset_name"),
    "pmf_config": ("PMF_DEFAULTS", "PMF_PRESETS", "PMFConfig", "pmf_preset_config"),
    "jit": ("JiT", "create_model"),
    "pmf": ("PMF", "create_pmf_model"),
    "families": ("MODEL_CLASSES", "build_network", "family_of_model", "model_class"),
    "pretrained": ("load_pretrained", "save_pretrained"),
    "flops": ("forward_macs", "train_flops_per_image"),
})
