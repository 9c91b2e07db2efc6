"""The Edit tab's requests, without web code: an uploaded image through the editing operations
(:mod:`jit_diffusion.editing`: image-to-image, inpainting under a mask) and a strip between two classes."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from ..core.device import autocast_context
from ..core.errors import UserError
from ..core.images import to_uint8
from ..diffusion.sampling import image_noise, network_evaluations
from ..editing.inputs import load_inputs, load_mask, to_unit
from ..editing.operations import ODESettings, check_strength, img2img, inpaint, interpolate
from .session import Result, Settings, Studio


class Editor:
    """Edits on ``studio``'s model; every request is checked (caps, upload size) before any work."""

    def __init__(self, studio: Studio):
        self.studio = studio
        self.size = studio.info.image_size

    def _check(self, settings: Settings) -> Settings:
        if self.studio.info.family != "jit":
            raise UserError(f"editing here runs the sampling ODE of JiT models; this is a {self.studio.info.family} "
                            f"model")  # fmt: skip
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

    def _run(self, s: Settings, tag: str, times: torch.Tensor, operation) -> Result:
        model = self.studio.model(s.weights)
        device = self.studio.device
        start = time.perf_counter()
        with autocast_context(device, "auto"):
            out = operation(model, device)
        nfe = network_evaluations(s.method, times)
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

        return self._run(s, f"img2img-{strength:g}", ode.times_from(1.0 - strength), operation)

    def inpaint(self, image, mask, settings: Settings) -> Result:
        """The white part of ``mask`` regenerated under ``settings``' class; the other pixels kept exactly."""
        s = self._check(settings)
        x = to_unit(load_inputs(self._upload(image, "an image"), self.size)[0][:1])
        keep_out = load_mask(self._upload(mask, "a mask"), self.size)
        ode = self._ode(s)
        noise = image_noise([0], (3, self.size, self.size), s.seed)

        def operation(model, device):
            labels = torch.tensor([s.label], device=device)
            return inpaint(model, x.to(device), keep_out.to(device), labels, noise.to(device), ode)

        return self._run(s, "inpaint", ode.times_from(0.0), operation)

    def interpolate(self, settings: Settings, to_label, frames) -> Result:
        """``frames`` images from ``settings``' class to ``to_label`` on one noise (the class embedding mixed)."""
        s = self._check(settings)
        frames = self.studio.limits.images(frames)
        if frames < 2:
            raise UserError(f"an interpolation strip needs at least 2 frames, got {frames}")
        end = self._check(dataclasses.replace(s, label=to_label)).label
        ode = self._ode(s)
        noise = image_noise([0], (3, self.size, self.size), s.seed)[0]

        def operation(model, device):
            return interpolate(model, (s.label, end), (noise.to(device), noise.to(device)), frames, ode)

        return self._run(s, "interpolate", ode.times_from(0.0), operation)
