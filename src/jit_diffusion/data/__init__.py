"""Datasets: image folders, the uint8 cache, the built-in emoji set, `load_dataset`."""

from ..core.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "datasets": ("class_grid", "load_dataset"),
    "image_folder": ("CorruptImageError", "ImageFolderDataset"),
    "cache": ("CachedDataset", "write_cache"),
    "emoji": ("EmojiDataset",),
})
