"""jit-diffusion: pixel-space diffusion with plain image Transformers (JiT).

The Python API of the README: build (``create_model``, ``JiT``, ``PRESETS``), open any model source
(``load_model``, ``open_source``, ``JiT.from_pretrained``), sample (``sample``, ``generate``, the solver
names ``METHODS``). The packages below, lowest layer first: core, models, diffusion, formats, data,
train, evaluation, toy; cli on top (docs/architecture.md).
"""

from .core.lazy import lazy_exports
from .formats import loading  # noqa: F401  (lets JiT.from_pretrained open run folders and checkpoints)
from .formats.loading import load_model, open_source
from .models.config import PRESETS, JiTConfig, ModelInfo, preset_config
from .models.jit import JiT, create_model

__version__ = "0.1.0"

# imported on first use
_LAZY, __getattr__ = lazy_exports(__name__, {
    "diffusion.generate": ("generate",),
    "diffusion.sampling": ("sample",),
    "diffusion.solvers": ("METHODS", "SOLVERS"),
    "data.datasets": ("load_dataset",),
    "train.config": ("TrainConfig",),
    "train.trainer": ("Trainer",),
})
__all__ = ["JiT", "JiTConfig", "ModelInfo", "PRESETS", "create_model", "load_model", "open_source", "preset_config",
           "__version__", *_LAZY]  # fmt: skip
