"""The model families and their networks: ``jit`` (:class:`~.jit.JiT`) and ``pmf`` (:class:`~.pmf.PMF`).

:data:`~.config.FAMILY_SPECS` holds what layers below the networks need (config class, preset lookup,
sampler defaults); this module adds the network class, so a loader builds any family's model from
(family, config) without knowing the families. A new family: its spec in ``config``, its class here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch import nn

from .config import FAMILY_SPECS, FamilySpec, config_family, family_spec, parse_model_config
from .jit import JiT
from .pmf import PMF

MODEL_CLASSES: dict[str, type[nn.Module]] = {"jit": JiT, "pmf": PMF}
assert set(MODEL_CLASSES) == set(FAMILY_SPECS), "every family needs a network class"

__all__ = ["MODEL_CLASSES", "build_network", "family_of_model", "family_of_preset", "model_class"]


def model_class(family: str | None) -> type[nn.Module]:
    """The network class of ``family`` (None: ``jit``)."""
    return MODEL_CLASSES[family_spec(family).name]


def family_of_model(model: nn.Module) -> FamilySpec:
    """The family of a network (through torch.compile / DDP wrappers)."""
    inner = getattr(getattr(model, "_orig_mod", model), "module", getattr(model, "_orig_mod", model))
    return config_family(getattr(inner, "config", None))


def family_of_preset(name: str) -> str:
    """``pmf`` for a preset named ``pMF-...``, else ``jit``."""
    return "pmf" if str(name).startswith("pMF-") else "jit"


def build_network(family: str | None, config: Any | Mapping[str, Any]) -> nn.Module:
    """A freshly initialised network of ``family`` from its config object or a dict of its fields."""
    if isinstance(config, Mapping):
        config = parse_model_config(config, family)
    return model_class(family)(**dataclasses.asdict(config))
