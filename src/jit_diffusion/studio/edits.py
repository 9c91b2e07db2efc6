"""The Edit tab's requests, without web code: an uploaded image through the editing operations
(:mod:`jit_diffusion.editing`: image-to-image, inpainting under a painted or uploaded mask) and a strip between
two classes. JiT models run the sampling ODE, pMF models their few-step sampler (no interpolation strip)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..core.device import autocast_context
from ..core.errors import UserError
from ..core.images import to_uint8
from ..diffusion.generate import PMF_METHOD
from ..diffusion.sampling import image_noise, network_evaluations
from ..editing.inputs import load_inputs, load_mask, mask_from_gray, to_unit
from ..editing.operations import ODESettings, check_strength, img2img, inpaint, interpolate
from .session import Result, Settings, Studio


class Editor:
    """Edits on ``studio``'s model; every request is checked (caps, upload size) before any work."""

    def __init__(self, studio: Studio):
        self.studio = studio
        self.size = studio.info.image_size

    def _check(self, settings: Settings) -> Settings:
        return self.studio.check(dataclasses.replace(settings, count=1))  # one image per upload

    def _upload(self, path, what: str) -> Path:
        if not path:
            raise UserError(f"upload {what} first")
        path = Path(path)
        self.studio.limits.upload(path.stat().st_size, what)
        return path

    def _ode(self, s: Settings) -> ODESettings:
        return ODESettings.from_info(self.studio.info, method=s.method, steps=s.steps, cfg=s.cfg,
                                     cfg_interval=tuple(s.interval))  # fmt: skip

    def _evaluations(self, s: Settings, ode: ODESettings, t0: float) -> int:
        """Network evaluations per image from t0 to 1 (pMF: one per step, none when it starts at t0 = 1)."""
        if s.method == PMF_METHOD:
            return s.steps if t0 < 1.0 else 0
        return network_evaluations(s.method, ode.times_from(t0))

    def _mask(self, image: Path, mask, strokes: Sequence) -> torch.Tensor:
        """The painted strokes (any layer pixel not transparent) when there are any, else the uploaded mask."""
        painted = painted_mask(strokes, image)
        if painted is not None:
            keep_out = mask_from_gray(painted, self.size)
        elif mask:
            keep_out = load_mask(self._upload(mask, "a mask"), self.size)
        else:
            raise UserError("paint over the part to regenerate (or upload a mask) first")
        if not keep_out.any():
            raise UserError("the mask is empty: paint over the part to regenerate (white = regenerate)")
        return keep_out

    def _run(self, s: Settings, tag: str, nfe: int, operation) -> Result:
        model = self.studio.model(s.weights)
        device = self.studio.device
        start = time.perf_counter()
        with autocast_context(device, "auto"):
            out = operation(model, device)
        return self.studio.result(to_uint8(out), tag, time.perf_counter() - start, nfe)

    def img2img(self, image, settings: Settings, strength: float) -> Result:
        """The uploaded image noised to t0 = 1 - strength and solved back under ``settings``' class."""
        s, strength = self._check(settings), check_strength(strength)
        x = to_unit(load_inputs(self._upload(image, "an image"), self.size)[0][:1])
        ode = self._ode(s)
        noise = image_noise([0], (3, self.size, self.size), s.seed)

        def operation(model, device):
            labels = torch.tensor([s.label], device=device)
            return img2img(model, x.to(device), labels, noise.to(device), ode, strength=strength)

        return self._run(s, f"img2img-{strength:g}", self._evaluations(s, ode, 1.0 - strength), operation)

    def inpaint(self, image, mask, settings: Settings, strokes: Sequence = ()) -> Result:
        """The painted ``strokes`` (RGBA layers over the image) or else the white part of the uploaded ``mask``
        regenerated under ``settings``' class; the other pixels kept exactly."""
        s = self._check(settings)
        image = self._upload(image, "an image")
        x = to_unit(load_inputs(image, self.size)[0][:1])
        keep_out = self._mask(image, mask, strokes)
        ode = self._ode(s)
        noise = image_noise([0], (3, self.size, self.size), s.seed)

        def operation(model, device):
            labels = torch.tensor([s.label], device=device)
            return inpaint(model, x.to(device), keep_out.to(device), labels, noise.to(device), ode)

        return self._run(s, "inpaint", self._evaluations(s, ode, 0.0), operation)

    def interpolate(self, settings: Settings, to_label, frames) -> Result:
        """``frames`` images from ``settings``' class to ``to_label`` on one noise (the class embedding mixed)."""
        s = self._check(settings)
        if s.method == PMF_METHOD:
            raise UserError("the interpolation strip runs the sampling ODE of JiT models; a pMF model has none")
        frames = self.studio.limits.images(frames)
        if frames < 2:
            raise UserError(f"an interpolation strip needs at least 2 frames, got {frames}")
        end = self._check(dataclasses.replace(s, label=to_label)).label
        ode = self._ode(s)
        noise = image_noise([0], (3, self.size, self.size), s.seed)[0]

        def operation(model, device):
            return interpolate(model, (s.label, end), (noise.to(device), noise.to(device)), frames, ode)

        return self._run(s, "interpolate", self._evaluations(s, ode, 0.0), operation)


def painted_mask(strokes: Sequence, image: Path) -> Image.Image | None:
    """The union of painted layers (image files, RGBA; alpha > 0 = painted) as a gray mask the size of
    ``image`` (255 = regenerate, layers resized nearest-neighbour), or None when nothing is painted."""
    painted = None
    with Image.open(image) as picture:
        size = picture.size
    for layer in strokes or ():
        if layer is None:
            continue
        with Image.open(layer) as drawn:
            alpha = np.asarray(drawn.convert("RGBA").resize(size, Image.NEAREST))[..., 3] > 0
        painted = alpha if painted is None else painted | alpha
    if painted is None or not painted.any():
        return None
    return Image.fromarray(painted.astype(np.uint8) * 255, "L")
