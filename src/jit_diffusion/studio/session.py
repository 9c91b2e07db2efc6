"""What the studio's pages ask of a model, without any web code: the settings of one request, the NFE
they cost, and the grid they make (through :func:`generate.generate`, so image i of a seed always gets
the same noise, and two settings with one seed compare on the same noise)."""

from __future__ import annotations

import dataclasses
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np

from ..core.device import resolve_device
from ..core.errors import UserError
from ..core.images import save_grid
from ..diffusion.generate import FAMILY_SAMPLERS, evaluations, generate, parse_interval
from ..formats.loading import open_source
from .limits import Limits

GRID_COLUMNS = 8  # images per grid row
KEEP_GRIDS = 64  # the newest grids kept in out_dir (the page holds its own copies)
TILE = 128  # small images are shown (and saved) upscaled to at least this many pixels, nearest-neighbour
DEFAULT_STEPS = 50


@dataclasses.dataclass(frozen=True)
class Settings:
    """One request: ``label`` is a class index (ignored by unconditional models); ``weights`` a weight set
    of the source (None: its default)."""

    label: int = 0
    cfg: float = 1.0
    interval: tuple[float, float] = (0.1, 1.0)
    method: str = "heun"
    steps: int = DEFAULT_STEPS
    seed: int = 0
    count: int = 8
    weights: str | None = None


@dataclasses.dataclass(frozen=True)
class Result:
    """A request's images (uint8 (N, H, W, 3)), its PNG grid, the sampling time and the network
    evaluations per image that sampling counted."""

    images: np.ndarray
    grid: Path
    seconds: float
    nfe: int

    def summary(self) -> str:
        return f"{len(self.images)} images in {self.seconds:.2f} s, NFE {self.nfe}"


class Studio:
    """A model source opened once for the studio's requests (the network is built on the first one)."""

    def __init__(self, path: str | Path, *, device: str = "auto", limits: Limits | None = None,
                 out_dir: str | Path | None = None):  # fmt: skip
        self.source = open_source(path)
        self.path = Path(path)
        self.device = resolve_device(device)
        self.info = self.source.info()
        self.limits = limits or Limits()
        self.out_dir = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="jit-studio-"))
        self._numbers = itertools.count(1)
        self._network = None
        self._loaded: str | None = None  # the weight set now in the network

    @property
    def class_names(self) -> list[str]:
        """A name per class (``class k`` where the model has none); empty for an unconditional model."""
        names = list(self.info.class_names)
        return [names[k] if k < len(names) and names[k] else f"class {k}" for k in range(self.info.num_classes)]

    @property
    def weight_names(self) -> list[str]:
        return list(self.source.weight_names)

    @property
    def methods(self) -> tuple[str, ...]:
        """The samplers of the model's family (the ODE solvers for JiT, ``pmf`` for pMF)."""
        return FAMILY_SAMPLERS[self.info.family].methods

    def defaults(self) -> Settings:
        """The model's own sampling settings (guidance, interval, solver, steps)."""
        return Settings(cfg=self.info.cfg, interval=tuple(self.info.cfg_interval), method=self.info.method,
                        steps=self.info.steps or DEFAULT_STEPS, weights=self.source.default_weights)  # fmt: skip

    def check(self, settings: Settings) -> Settings:
        """``settings`` with whole numbers and a known label, solver and weight set; a UserError otherwise."""
        if settings.method not in self.methods:
            raise UserError(f"solver must be one of {', '.join(self.methods)}, got {settings.method!r}")
        lo, hi = parse_interval(f"{float(settings.interval[0])},{float(settings.interval[1])}")
        if self.info.num_classes and settings.label is None:
            raise UserError("pick a class")
        label = int(settings.label or 0)
        if self.info.num_classes and not 0 <= label < self.info.num_classes:
            raise UserError(f"class {label} is out of range 0..{self.info.num_classes - 1}")
        weights = settings.weights or self.source.default_weights
        if weights not in self.weight_names:
            raise UserError(f"weights {weights!r} are not in this model; choose from {self.weight_names}")
        cfg = float(settings.cfg) if self.info.num_classes else 1.0
        return dataclasses.replace(settings, label=label, cfg=cfg, interval=(lo, hi), weights=weights,
                                   steps=self.limits.steps(settings.steps), seed=int(settings.seed or 0),
                                   count=self.limits.images(settings.count))  # fmt: skip

    def nfe(self, method: str, steps, cfg: float, interval) -> int:
        """Network evaluations per image for these settings (the sampler's own grid and count)."""
        steps = self.limits.steps(steps)
        cfg = float(cfg) if self.info.num_classes else 1.0
        return evaluations(self.info.family, method, steps, cfg=cfg, cfg_interval=tuple(interval),
                           t_eps=self.info.t_eps)  # fmt: skip

    def run(self, settings: Settings) -> Result:
        """Sample ``settings.count`` images of one class and write their grid."""
        s = self.check(settings)
        model = self.model(s.weights)
        counted = []
        start = time.perf_counter()
        images = generate(model, [s.label] * s.count, image_size=self.info.image_size, seed=s.seed,
                          device=self.device, method=s.method, steps=s.steps, cfg=s.cfg, cfg_interval=s.interval,
                          noise_scale=self.info.noise_scale, t_eps=self.info.t_eps, prediction=self.info.prediction,
                          velocity_hook=counted.append, family=self.info.family)  # fmt: skip
        seconds = time.perf_counter() - start
        nfe = counted[0].calls if counted else self.nfe(s.method, s.steps, s.cfg, s.interval)  # pMF counts none
        return self.result(images, f"{s.method}-{s.steps}", seconds, nfe)

    def result(self, images: np.ndarray, tag: str, seconds: float, nfe: int, columns: int = GRID_COLUMNS) -> Result:
        """Write the grid of uint8 ``images`` (the newest KEEP_GRIDS are kept) and wrap it as a :class:`Result`."""
        name = f"{next(self._numbers):04d}-{tag}.png"
        grid = save_grid(images, self.out_dir / name, nrow=min(len(images), columns),
                         upscale=max(1, TILE // self.info.image_size))  # fmt: skip
        for old in sorted(self.out_dir.glob("*.png"))[:-KEEP_GRIDS]:
            old.unlink(missing_ok=True)
        return Result(images=images, grid=grid, seconds=seconds, nfe=nfe)

    def compare(self, a: Settings, b: Settings) -> tuple[Result, Result]:
        """Two settings on the same noise: ``b`` takes ``a``'s class, seed and count."""
        b = dataclasses.replace(b, label=a.label, seed=a.seed, count=a.count)
        a, b = self.check(a), self.check(b)  # both checked before any work
        return self.run(a), self.run(b)

    def model(self, weights: str):
        """The network holding ``weights`` (built on first use)."""
        if self._loaded != weights:  # another weight set of a training checkpoint is swapped in place
            self._network, _ = self.source.load(weights, self.device)
            self._loaded = weights
        return self._network
