"""Preview sample grids during training: EMA weights, fixed noise, one row per class."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import torch

from ..core.device import autocast_context
from ..core.distributed import DistInfo
from ..core.images import make_grid, save_grid, to_uint8
from ..core.parallel import full_tensor
from ..diffusion.ema import EMA
from ..diffusion.pmf_sampling import sample_pmf
from ..diffusion.sampling import image_noise, sample
from ..models.jit import JiT
from .config import TrainConfig

MAX_ROWS = 16  # classes shown in a grid
NOISE_SEED = 1234  # the same starting noise at every step, so grids are comparable over a run


class PreviewGrid:
    """Writes ``samples/step_XXXXXXXX.png`` (rank 0) from the first EMA; collective under FSDP. A pMF run
    samples with :func:`sample_pmf` (``sample_steps`` steps at omega ``sample_cfg``, ``sample_interval``)."""

    def __init__(self, cfg: TrainConfig, raw_model: JiT, ema: EMA, dist: DistInfo, sharded: bool, run_dir: Path):
        self.cfg, self.raw_model, self.ema, self.dist, self.sharded = cfg, raw_model, ema, dist, sharded
        self.folder = run_dir / "samples"
        self._sampling_model: JiT | None = None  # FSDP: an unsharded copy that receives the EMA weights

    def _ema_model(self, name: str):
        """A context giving a model that holds EMA ``name`` (rank 0 only; collective under FSDP)."""
        if not self.sharded:
            return self.ema.applied(self.raw_model, name) if self.dist.is_main else None
        weights = {k: full_tensor(v) for k, v in self.ema.weights(name).items()}  # all-gather on every rank
        if not self.dist.is_main:
            return None
        if self._sampling_model is None:
            network = type(self.raw_model)  # JiT or PMF
            self._sampling_model = network(**dataclasses.asdict(self.raw_model.config)).to(self.dist.device)
        self._sampling_model.load_state_dict(weights, strict=True)
        return contextlib.nullcontext(self._sampling_model)

    def _labels(self) -> tuple[torch.Tensor, int]:
        """(labels (rows * per_class,), per_class): the first classes, or 64 unconditional samples."""
        num_classes = self.raw_model.num_classes
        classes = list(range(min(num_classes, MAX_ROWS))) if num_classes else [0]
        per_class = self.cfg.sample_per_class if num_classes else 64
        labels = torch.tensor([c for c in classes for _ in range(per_class)], device=self.dist.device)
        return labels, per_class

    def write(self, step: int, writer=None) -> Path | None:
        """Sample the grid of ``step``; returns its path on rank 0 (None elsewhere)."""
        cfg, device = self.cfg, self.dist.device
        context = self._ema_model(self.ema.names[0] if self.ema.names else "raw")
        if context is None:
            return None
        labels, per_class = self._labels()
        size = self.raw_model.config.input_size
        noise = image_noise(range(len(labels)), (3, size, size), seed=NOISE_SEED).to(device)
        guidance = cfg.sample_cfg if self.raw_model.num_classes else 1.0
        with context as model, autocast_context(device, cfg.precision):
            was_training = model.training
            model.eval()
            if cfg.family == "pmf":  # one network evaluation per step, omega an input
                images = sample_pmf(model, labels, noise, steps=cfg.sample_steps, omega=cfg.sample_cfg,
                                    interval=cfg.sample_interval, noise_scale=cfg.noise_scale)  # fmt: skip
            else:
                images = sample(model, noise, labels, method=cfg.sample_method, steps=cfg.sample_steps,
                                cfg=guidance, cfg_interval=cfg.sample_interval, noise_scale=cfg.noise_scale,
                                t_eps=cfg.t_eps, prediction=cfg.prediction)  # fmt: skip
            model.train(was_training)
        uint8 = to_uint8(images)
        path = save_grid(uint8, self.folder / f"step_{step:08d}.png", nrow=per_class, upscale=max(1, 64 // size))
        if writer is not None:
            writer.add_image("samples/ema", make_grid(uint8, per_class), step, dataformats="HWC")
        return path
