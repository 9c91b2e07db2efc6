"""Configuration of a JiT network (:class:`JiTConfig`), the preset registry, the model families' configs
and sampler defaults (:data:`FAMILY_SPECS`), and :class:`ModelInfo`, what a sampler needs to know about a
trained model beside its weights."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .pmf_config import PMFConfig, config_of_preset, find_pmf_preset, validated_config


@dataclass
class JiTConfig:
    """Constructor arguments of :class:`~jit_diffusion.models.jit.JiT`, with the public names."""

    input_size: int = 256
    patch_size: int = 16
    in_channels: int = 3
    hidden_size: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    attn_drop: float = 0.0
    proj_drop: float = 0.0
    num_classes: int = 1000
    bottleneck_dim: int | None = 128
    in_context_len: int = 32
    in_context_start: int = 4

    def validate(self) -> None:
        """Raise ValueError with a one-line message when the shape arguments do not fit together."""
        if self.input_size % self.patch_size:
            raise ValueError(
                f"image size {self.input_size} is not a multiple of the patch size {self.patch_size}"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if (self.hidden_size // self.num_heads) % 4:
            raise ValueError(f"head dim {self.hidden_size // self.num_heads} must be divisible by 4 for 2-D RoPE")
        if self.in_context_len and not 0 <= self.in_context_start < self.depth:
            raise ValueError(f"in_context_start {self.in_context_start} must lie in [0, depth={self.depth})")

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any], source: str = "model config") -> JiTConfig:
        """A validated config from a dict; unknown keys are a one-line error naming ``source``."""
        return validated_config(cls, fields, source, "model_config")


# ---------------------------------------------------------------------------------------------
# Presets. Official ones follow the public code; Ti/S are small presets for CPU work and tests.
# Small presets default to an 8x8 token grid (32 px at patch 4, 64 at 8, 128 at 16).
# ---------------------------------------------------------------------------------------------

_FAMILIES = {
    # name: depth, hidden, heads, bottleneck, in-context len, in-context start
    "Ti": dict(depth=6, hidden_size=192, num_heads=3, bottleneck_dim=64, in_context_len=8, in_context_start=2),
    "S": dict(depth=12, hidden_size=384, num_heads=6, bottleneck_dim=128, in_context_len=16, in_context_start=4),
    "B": dict(depth=12, hidden_size=768, num_heads=12, bottleneck_dim=128, in_context_len=32, in_context_start=4),
    "L": dict(depth=24, hidden_size=1024, num_heads=16, bottleneck_dim=128, in_context_len=32, in_context_start=8),
    "H": dict(depth=32, hidden_size=1280, num_heads=16, bottleneck_dim=256, in_context_len=32, in_context_start=10),
    "G": dict(depth=40, hidden_size=1664, num_heads=16, bottleneck_dim=256, in_context_len=32, in_context_start=10),
}
_PATCHES = {"Ti": (4, 8, 16), "S": (4, 8, 16), "B": (16, 32), "L": (16, 32), "H": (16, 32), "G": (16, 32)}
_DEFAULT_SIZE = {4: 32, 8: 64, 16: 256, 32: 512}
ARCH_KEYS = ("depth", "hidden_size", "num_heads", "bottleneck_dim", "in_context_len")

PRESETS: dict[str, dict] = {}
for _family, _arch in _FAMILIES.items():
    for _patch in _PATCHES[_family]:
        _size = 128 if _family in ("Ti", "S") and _patch == 16 else _DEFAULT_SIZE[_patch]
        PRESETS[f"JiT-{_family}/{_patch}"] = dict(_arch, patch_size=_patch, input_size=_size)


def preset_config(name: str, **overrides) -> JiTConfig:
    """The :class:`JiTConfig` of a preset with ``overrides`` applied (e.g. input_size, num_classes)."""
    return config_of_preset(JiTConfig, PRESETS, name, overrides, "model", "model")


def find_preset(config: JiTConfig | Mapping[str, Any]) -> str | None:
    """The preset whose architecture equals ``config`` (image size, classes and dropout aside), or None."""
    cfg = dataclasses.asdict(config) if isinstance(config, JiTConfig) else dict(config)
    if cfg.get("in_channels", 3) != 3 or float(cfg.get("mlp_ratio", 4.0)) != 4.0:
        return None
    keys = (*ARCH_KEYS, "patch_size", "in_context_start")
    for name, preset in PRESETS.items():
        if all(cfg.get(k) == preset[k] for k in keys):
            return name
    return None


# ---------------------------------------------------------------------------------------------
# Model families: each its config class, preset lookup and sampler defaults (the network classes
# are added by :mod:`.families`)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FamilySpec:
    """What the layers below the networks know of a family: its config class, how to name its preset, its
    sampler(s) (``methods`` None: any ODE solver of :mod:`jit_diffusion.diffusion.solvers`) and defaults."""

    name: str
    config_cls: type
    find_preset: Any
    method: str
    methods: tuple[str, ...] | None = None
    steps: int | None = None  # the model's default step count (None: the CLI's, 50)


DEFAULT_FAMILY = "jit"
FAMILY_SPECS = {
    "jit": FamilySpec("jit", JiTConfig, find_preset, method="heun"),
    "pmf": FamilySpec("pmf", PMFConfig, find_pmf_preset, method="pmf", methods=("pmf",), steps=1),
}


def family_spec(family: str | None, source: str = "model") -> FamilySpec:
    """The :class:`FamilySpec` of ``family`` (None: ``jit``, what files without a family record hold)."""
    name = DEFAULT_FAMILY if family is None else str(family)
    if name not in FAMILY_SPECS:
        raise ValueError(f"{source}: unknown model family {name!r}; known: {', '.join(FAMILY_SPECS)}")
    return FAMILY_SPECS[name]


def config_family(config: Any) -> FamilySpec:
    """The family of a config object (a :class:`JiTConfig`, :class:`PMFConfig`, ...)."""
    for spec in FAMILY_SPECS.values():
        if isinstance(config, spec.config_cls):
            return spec
    raise TypeError(f"expected a model config ({', '.join(s.config_cls.__name__ for s in FAMILY_SPECS.values())}), "
                    f"got {type(config).__name__}")  # fmt: skip


def parse_model_config(fields: Mapping[str, Any], family: str | None = None, source: str = "model config") -> Any:
    """The validated config object of ``family`` from a dict of its fields (one-line errors naming ``source``)."""
    return family_spec(family, source).config_cls.from_dict(fields, source=source)


def preset_name(config: Any) -> str | None:
    """The preset (of the config's family) whose architecture ``config`` has, or None."""
    return config_family(config).find_preset(config)


# ---------------------------------------------------------------------------------------------
# What a sampler needs beside the weights
# ---------------------------------------------------------------------------------------------


@dataclass
class ModelInfo:
    """A trained model's settings: its family and config, class names, flow and default sampling settings
    (guidance, interval in our time, sampler ``method``, default ``steps``), origin.

    For a pMF model ``cfg`` is the guidance weight omega the network is conditioned on, ``cfg_interval``
    the guidance interval in our time (t = 1 clean) and ``method`` always ``pmf``.
    Build it with :meth:`create`, which fills the defaults in one place."""

    model_config: dict
    class_names: list[str]
    prediction: str = "x"
    noise_scale: float = 1.0
    t_eps: float = 0.05
    cfg: float = 1.0
    cfg_interval: tuple[float, float] = (0.1, 1.0)
    source: str = ""
    weights: str = "ema1"
    step: int | None = None
    method: str = "heun"
    family: str = DEFAULT_FAMILY
    steps: int | None = None

    @property
    def num_classes(self) -> int:
        return int(self.model_config["num_classes"])

    @property
    def image_size(self) -> int:
        return int(self.model_config["input_size"])

    @classmethod
    def create(
        cls,
        model_config: Any,
        class_names: Sequence[str] | None = None,
        *,
        prediction: str | None = None,
        noise_scale: float | None = None,
        t_eps: float | None = None,
        cfg: float | None = None,
        cfg_interval: Sequence[float] | None = None,
        source: str = "",
        weights: str | None = None,
        step: int | None = None,
        method: str | None = None,
        family: str | None = None,
        steps: int | None = None,
    ) -> ModelInfo:
        """A ModelInfo with defaults for every setting given as None; class names default to "0", "1", ...
        ``family`` defaults to the config object's (``jit`` for a dict); a family with one sampler (pMF)
        always gets it, whatever ``method`` says, and its default ``steps``.

        Raises ValueError when the number of class names is not the model's number of classes.
        """
        is_object = dataclasses.is_dataclass(model_config) and not isinstance(model_config, type)
        spec = family_spec(family, source or "model") if family or not is_object else config_family(model_config)
        config = dataclasses.asdict(model_config) if is_object else dict(model_config)
        num_classes = int(config["num_classes"])
        names = [str(n) for n in class_names or []] or [str(i) for i in range(num_classes)]
        if len(names) != num_classes:
            raise ValueError(f"{source or 'model'}: {len(names)} class names for a model with {num_classes} classes")
        defaults = cls(model_config=config, class_names=names)
        pick = lambda value, default: default if value is None else value  # noqa: E731
        return cls(
            model_config=config,
            class_names=names,
            prediction=str(pick(prediction, defaults.prediction)),
            noise_scale=float(pick(noise_scale, defaults.noise_scale)),
            t_eps=float(pick(t_eps, defaults.t_eps)),
            cfg=float(pick(cfg, defaults.cfg)),
            cfg_interval=tuple(float(v) for v in pick(cfg_interval, defaults.cfg_interval)),
            source=source,
            weights=str(pick(weights, defaults.weights)),
            step=None if step is None else int(step),
            method=spec.method if spec.methods is not None or method is None else str(method),
            family=spec.name,
            steps=int(pick(steps, spec.steps)) if pick(steps, spec.steps) is not None else None,
        )
