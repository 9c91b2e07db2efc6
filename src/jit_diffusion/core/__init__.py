"""Errors, file IO, device and precision, counter-based rng, images, distributed and FSDP: no model knowledge."""

from .lazy import lazy_exports

_EXPORTS = {
    "UserError": "errors",
    "atomic_folder": "fileio",
    "atomic_write_bytes": "fileio",
    "atomic_write_path": "fileio",
    "atomic_write_text": "fileio",
    "read_json_object": "fileio",
    "safe_torch_load": "fileio",
    "save_json": "fileio",
    "autocast_context": "device",
    "check_precision": "device",
    "resolve_device": "device",
    "make_grid": "images",
    "save_grid": "images",
    "save_npz": "images",
    "save_png_folder": "images",
    "to_uint8": "images",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
