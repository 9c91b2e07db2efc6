"""Editing real images with any model on its sampling ODE: img2img, inpainting, inversion, interpolation, swaps."""

from ..core.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "inputs": ("box_mask", "load_inputs", "load_mask"),
    "operations": ("ODESettings", "img2img", "inpaint", "interpolate", "invert", "reconstruct", "swap"),
})
