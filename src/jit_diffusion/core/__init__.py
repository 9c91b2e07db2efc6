"""Errors, file IO, device and precision, counter-based rng, images, distributed and FSDP: no model knowledge."""

from .lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "errors": ("UserError",),
    "fileio": ("atomic_folder", "atomic_write_bytes", "atomic_write_path", "atomic_write_text", "read_json_object",
               "safe_torch_load", "save_json"),
    "device": ("autocast_context", "check_precision", "resolve_device"),
    "images": ("make_grid", "save_grid", "save_npz", "save_png_folder", "to_uint8"),
})
