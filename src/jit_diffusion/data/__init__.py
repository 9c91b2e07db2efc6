"""Datasets: image folders, the uint8 cache, the built-in emoji set, `load_dataset`."""

from ..core.lazy import lazy_exports

_EXPORTS = {
    "class_grid": "datasets",
    "load_dataset": "datasets",
    "CorruptImageError": "image_folder",
    "ImageFolderDataset": "image_folder",
    "CachedDataset": "cache",
    "write_cache": "cache",
    "EmojiDataset": "emoji",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
