"""One way to open a model: a run folder, its ``checkpoints/latest``, a step ``.pt``, an export folder,
an official ``.pth`` or a diffusers-style folder or file (layouts A, B0, B; :mod:`.diffusers_folder`) all
become a :class:`Source`, and ``source.load(weights)`` gives the network and its :class:`ModelInfo`.
Any model family (:mod:`jit_diffusion.models.families`): a pMF training run or export records its family,
and an official pMF ``.pt`` (a plain state dict, :mod:`.pmf_official`) is recognised by its keys.
``jit sample``, ``jit eval``, ``jit convert`` and the Python API use it. Opening a diffusers source logs
one line (logger ``jit_diffusion.formats.loading``, shown by the ``jit`` command) naming the detected layout.

A source reads its file once and builds its network once per device: loading another weight set (``ema1``,
``ema2``, ``raw``) of the same training or official checkpoint swaps the weights into the model already
built, and :meth:`Source.info` gives the settings without building anything.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from ..core.device import resolve_device, same_device
from ..models.config import ModelInfo, parse_model_config
from ..models.families import model_class
from ..models.pretrained import (
    WEIGHTS_NAME,
    build_model,
    check_state_dict,
    info_from_export,
    is_export_folder,
    read_export,
    read_export_weights,
    register_local_opener,
    shapes_of,
)
from .checkpoint import (
    info_from_training,
    is_training_checkpoint,
    read_checkpoint,
    resolve_checkpoint,
    training_family,
    training_weights,
)
from .diffusers_folder import DiffusersFolder, open_diffusers
from .lora import LORA_KEY, is_lora_checkpoint, merged_lora_state
from .official import is_official, official_config, official_info, official_weight_names, official_weights
from .pmf_official import (
    PMF_WEIGHTS,
    check_rope_freqs,
    from_official_keys,
    infer_pmf_config,
    is_pmf_official,
    pmf_official_info,
)

DEFAULT_WEIGHTS = "ema1"
RAW_ALIASES = ("model",)  # older names of the raw (non-EMA) weights
SINGLE_WEIGHT_KINDS = ("export", "diffusers", "pmf-official")  # sources that hold one weight set
CONVERTED_KINDS = ("export", "diffusers")  # single weight sets made from another file
_DESCRIPTIONS = {"export": "export folder", "official": "official checkpoint",
                 "pmf-official": "official pMF checkpoint"}  # fmt: skip
log = logging.getLogger(__name__)


def _canonical(weights: str) -> str:
    """The weight set's name as sources list it: ``model`` -> ``raw``."""
    return "raw" if weights in RAW_ALIASES else weights


class Source:
    """A model source opened once. ``kind`` is ``export``, ``diffusers``, ``training``, ``official`` (JiT) or
    ``pmf-official``; ``family`` is the network's (``jit`` or ``pmf``).

    ``weight_names`` lists the weight sets it holds; ``default_weights`` is the one used when none is
    asked for (``ema1``, or an export's own); ``data`` is the dataset a training checkpoint records.
    """

    def __init__(self, path: str | Path, *, in_context_start: int | None = None):
        self.path = Path(path).expanduser()
        self.in_context_start = in_context_start
        self._ckpt: dict[str, Any] | None = None
        self._config: Any = None  # the architecture (the family's config object), found once
        self._model: torch.nn.Module | None = None  # built on the first load, reused by later ones on the device
        self._lora_base: dict[str, torch.Tensor] | None = None  # a LoRA run's base weights, read once
        self.family, self.lora = "jit", None
        self.diffusers: DiffusersFolder | None = None
        if self.path.name == WEIGHTS_NAME and is_export_folder(self.path.parent):  # the export's weights file
            self.path = self.path.parent
        if is_export_folder(self.path):
            self.kind, self.file = "export", self.path
            self.export_config, self._config = read_export(self.path)
            self.family = self.export_config["family"]
            self.weight_names = [str(self.export_config.get("weights") or DEFAULT_WEIGHTS)]
            return
        self.diffusers = open_diffusers(self.path)
        if self.diffusers is not None:
            self.kind, self.file, self._config = "diffusers", self.path, self.diffusers.config
            self.weight_names = [self.diffusers.weights]
            log.info(self.diffusers.describe())
            return
        self.file = resolve_checkpoint(self.path)
        self._ckpt = read_checkpoint(self.file)
        if is_official(self._ckpt):
            self.kind, self.weight_names = "official", official_weight_names(self._ckpt)
        elif is_pmf_official(self._ckpt):
            self.kind, self.family, self.weight_names = "pmf-official", "pmf", [PMF_WEIGHTS]
        elif is_training_checkpoint(self._ckpt):
            self.kind, self.family = "training", training_family(self._ckpt)
            self.weight_names = ["raw", *self._ckpt.get("ema", {})]
            self.lora = self._ckpt[LORA_KEY] if is_lora_checkpoint(self._ckpt) else None
        else:
            found = sorted(str(k) for k in self._ckpt)[:8]
            raise ValueError(f"{self.file} is neither an official JiT or pMF checkpoint nor a jit-diffusion "
                             f"training checkpoint nor an export folder (keys {found})")  # fmt: skip

    @property
    def default_weights(self) -> str:
        return self.weight_names[0] if self.kind in SINGLE_WEIGHT_KINDS else DEFAULT_WEIGHTS

    def describe(self) -> str:
        """What the source is, in a few words (for diffusers sources: the layout, files and dtype)."""
        if self.diffusers is not None:
            return self.diffusers.summary()
        what = _DESCRIPTIONS.get(self.kind, "LoRA training checkpoint" if self.lora else "training checkpoint")
        return what if self.family == "jit" or self.kind != "training" else f"{self.family} training checkpoint"

    @property
    def data(self) -> str | None:
        """The dataset spec the model was trained on, when a training checkpoint records it."""
        return self._ckpt.get("config", {}).get("data") if self.kind == "training" else None

    def check(self, names: list[str]) -> None:
        """Fail now, not after hours of sampling, when a requested weight set is missing."""
        missing = [n for n in names if _canonical(n) not in self.weight_names]
        if missing:
            single = self.kind in SINGLE_WEIGHT_KINDS
            detail = f"holds only its {self.weight_names[0]} weights" if single else f"has no weights {missing}"
            raise ValueError(f"{self.path} {detail}; choose from {self.weight_names}"
                             + ("; convert the original checkpoint instead" if self.kind in CONVERTED_KINDS else ""))

    def _weights(self, weights: str | None) -> str:
        weights = _canonical(weights or self.default_weights)
        self.check([weights])
        return weights

    def _model_config(self, weights: str) -> Any:
        """The architecture (of an official checkpoint: inferred from the first weight set asked for)."""
        if self._config is None and self.kind == "official":
            self._config = official_config(self._ckpt, self.file, weights, self.in_context_start)
        elif self._config is None and self.kind == "pmf-official":
            self._config = infer_pmf_config(shapes_of(from_official_keys(self._ckpt)), self.file)
        elif self._config is None:
            self._config = parse_model_config(self._ckpt["model_config"], self.family, source=str(self.file))
        return self._config

    def info(self, weights: str | None = None) -> ModelInfo:
        """The :class:`ModelInfo` of ``weights`` (default: :attr:`default_weights`), without building the network."""
        weights = self._weights(weights)
        config = self._model_config(weights)
        if self.kind == "export":
            return info_from_export(self.export_config, str(self.path))
        if self.diffusers is not None:
            return self.diffusers.info()
        if self.kind == "official":
            return official_info(self._ckpt, self.file, config, weights)
        if self.kind == "pmf-official":
            return pmf_official_info(config, self.file)
        info = info_from_training(self._ckpt, str(self.file), weights)
        return dataclasses.replace(info, model_config=dataclasses.asdict(config))

    def _state_dict(self, weights: str) -> dict[str, torch.Tensor]:
        if self.kind == "export":
            return read_export_weights(self.path, model_class(self.family), self._config)  # keys checked first
        if self.diffusers is not None:
            return self.diffusers.state_dict()  # keys checked when opened
        if self.kind == "official":
            return official_weights(self._ckpt, weights, self.file)
        if self.kind == "pmf-official":
            return from_official_keys(self._ckpt)
        if self.lora:
            return merged_lora_state(self._ckpt, weights, self._base_state(), self.file)
        return training_weights(self._ckpt, weights)

    def _base_state(self) -> dict[str, torch.Tensor]:
        """A LoRA run's base weights, from the file and weight set its checkpoint records."""
        if self._lora_base is None:
            base = self.lora["base"]
            try:
                model, _ = open_source(base["file"]).load(base["weights"], "cpu")
            except (ValueError, FileNotFoundError) as err:
                raise ValueError(f"{self.file}: its LoRA base cannot be loaded ({err})") from None
            self._lora_base = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return self._lora_base

    def _built_for(self, device: torch.device) -> bool:
        """Whether the model built earlier can serve a load on ``device`` (still there, still fp32)."""
        if self._model is None:
            return False
        param = next(self._model.parameters())
        return param.dtype == torch.float32 and same_device(param.device, device)

    def load(
        self, weights: str | None = None, device: str | torch.device = "cpu"
    ) -> tuple[torch.nn.Module, ModelInfo]:
        """The network of the source's family (eval mode, on ``device``; ``auto`` picks CUDA when available)
        with ``weights``. A pMF network keeps its v head when the file has one; sampling never runs it.

        The network is built once per device and every load returns that same object: another weight set
        of this source is copied into it (a compiled model stays compiled), and a load on another device
        builds it there."""
        weights = self._weights(weights)
        info = self.info(weights)
        device = resolve_device(device)
        if not self._built_for(device):
            state = self._state_dict(weights)
            check = self.kind not in CONVERTED_KINDS  # those checked their keys when opened
            self._model = build_model(model_class(self.family), self._config, state, device, self.file, check=check)
            if self.kind == "pmf-official":
                check_rope_freqs(self._ckpt, self._model, self.file)
        elif self.kind not in SINGLE_WEIGHT_KINDS:  # another weight set: swapped into the model in place
            state = self._state_dict(weights)
            check_state_dict(shapes_of(self._model.state_dict()), shapes_of(state), self.file)
            self._model.load_state_dict(state, strict=True)
        return self._model.eval(), info


def open_source(path: str | Path, *, in_context_start: int | None = None) -> Source:
    """Open a run folder, ``checkpoints/latest``, a training ``.pt``, an export folder, an official ``.pth``
    (JiT) or ``.pt`` (pMF), or a diffusers pipeline folder, its ``transformer/`` folder, a
    ``diffusion_pytorch_model.safetensors`` (beside its ``config.json``) or a sharded ``.safetensors.index.json``."""
    return Source(path, in_context_start=in_context_start)


def load_model(
    path: str | Path, weights: str | None = None, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, ModelInfo]:
    """Open any model source for inference: ``weights`` picks ``ema1`` (default), ``ema2`` or ``raw``.

    Returns the model (a ``JiT`` or a ``PMF``, as ``info.family`` says) in eval mode on ``device``
    (``auto``: CUDA when available) and a :class:`ModelInfo`.
    """
    return open_source(path).load(weights, device)


register_local_opener(load_model)  # JiT.from_pretrained opens local sources through this module
