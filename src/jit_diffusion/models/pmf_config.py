"""Configuration of a pixel MeanFlow (pMF) network (:class:`PMFConfig`), its preset registry and the
public sampling defaults of each preset.

pMF (arXiv 2601.22158) is a one-step pixel-space generator: a ViT with a shared trunk and two heads
(average velocity u, instantaneous velocity v), conditioned by prefix tokens on the time gap h, the
guidance weight omega and the guidance interval. Times here are pMF's own (t = 1 noise, t = 0 image)
wherever the network is concerned; :mod:`pmf_sampling` speaks this project's time (t = 1 clean).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# the prefix token counts, in sequence order (the interval's count is per end: t_min, then t_max)
PREFIX_FIELDS = ("num_class_tokens", "num_cfg_tokens", "num_interval_tokens", "num_time_tokens")


@dataclass
class PMFConfig:
    """Constructor arguments of :class:`~jit_diffusion.pmf_model.PMF` (public names where there are some).

    ``bottleneck_dim`` None: 128 when hidden_size <= 1024, else 256; ``mlp_hidden_dim`` None: int(H * 8/3),
    rounded up to a multiple of 8 when H > 1024. ``v_head`` False builds the network without its v head
    (what released inference checkpoints may hold)."""

    input_size: int = 256
    patch_size: int = 16
    in_channels: int = 3
    hidden_size: int = 768
    depth: int = 16
    num_heads: int = 12
    aux_head_depth: int = 8
    num_classes: int = 1000
    bottleneck_dim: int | None = None
    mlp_hidden_dim: int | None = None
    num_class_tokens: int = 8
    num_cfg_tokens: int = 4
    num_interval_tokens: int = 2
    num_time_tokens: int = 4
    v_head: bool = True

    @property
    def bottleneck(self) -> int:
        """The patch embedding's bottleneck width."""
        if self.bottleneck_dim:
            return int(self.bottleneck_dim)
        return 128 if self.hidden_size <= 1024 else 256

    @property
    def mlp_hidden(self) -> int:
        """The SwiGLU width."""
        if self.mlp_hidden_dim:
            return int(self.mlp_hidden_dim)
        width = int(self.hidden_size * 8 / 3)
        return (width + 7) // 8 * 8 if self.hidden_size > 1024 else width

    @property
    def num_prefix(self) -> int:
        """Prefix tokens in front of the patches: class, omega, t_min, t_max, time gap."""
        return self.num_class_tokens + self.num_cfg_tokens + 2 * self.num_interval_tokens + self.num_time_tokens

    @property
    def grid_size(self) -> int:
        return self.input_size // self.patch_size

    def validate(self) -> None:
        """Raise ValueError with a one-line message when the shape arguments do not fit together."""
        if self.input_size % self.patch_size:
            raise ValueError(f"image size {self.input_size} is not a multiple of the patch size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if (self.hidden_size // self.num_heads) % 4:
            raise ValueError(f"head dim {self.hidden_size // self.num_heads} must be divisible by 4 for 2-D RoPE")
        if not 0 <= self.aux_head_depth <= self.depth:
            raise ValueError(f"aux_head_depth {self.aux_head_depth} must lie in [0, depth={self.depth}]")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        counts = tuple(getattr(self, k) for k in PREFIX_FIELDS)
        if min(counts) < 0 or min(self.num_class_tokens, self.num_time_tokens) < 1:
            raise ValueError(f"prefix tokens (class, omega, interval, gap) {counts}: need >= 1 class and gap "
                             "token and >= 0 of the others")  # fmt: skip

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any], source: str = "pMF config") -> PMFConfig:
        """A validated config from a dict; unknown keys are a one-line error naming ``source``."""
        return validated_config(cls, fields, source, "pMF config")


def validated_config(cls, fields: Mapping[str, Any], source: str, what: str):
    """``cls(**fields)`` validated (JiT and pMF configs); unknown keys are a one-line ValueError naming
    ``source`` and listing the known ``what`` fields."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"{source}: unknown {what} field(s) {unknown}; known: {sorted(known)}")
    config = cls(**fields)
    config.validate()
    return config


def config_of_preset(cls, presets: Mapping[str, Mapping], name: str, overrides: Mapping[str, Any], kind: str,
                     arguments: str):  # fmt: skip
    """``cls`` from preset ``name`` with ``overrides`` (JiT and pMF); an unknown preset or override is a
    one-line ValueError ("unknown {kind} preset ...", "unknown {arguments} argument(s) ...")."""
    if name not in presets:
        raise ValueError(f"unknown {kind} preset {name!r}; choose one of: {', '.join(presets)}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown {arguments} argument(s) {sorted(unknown)}; known: {sorted(known)}")
    return cls.from_dict({**presets[name], **overrides}, source=f"preset {name}")


@dataclass(frozen=True)
class PMFDefaults:
    """Public sampling defaults of a preset: noise scale, omega and guidance interval in pMF time."""

    noise_scale: float = 1.0
    omega: float = 1.0
    interval: tuple[float, float] = (0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Presets: B/L/H as the public code (256 px at /16, 512 at /32); Ti/S small ones for CPU work, with
# JiT's Ti/S widths and an 8x8 token grid (32 px at patch 4, 64 at 8, 128 at 16). Ti has 8 prefix tokens
# (class 4, one each for omega, t_min, t_max and the gap), like JiT-Ti's 8 in-context tokens: with the
# public 20, a Ti/8 at 32 px would spend more than half its tokens on the prefix (results.md section 8).
# ---------------------------------------------------------------------------------------------

_TI_PREFIX = dict(num_class_tokens=4, num_cfg_tokens=1, num_interval_tokens=1, num_time_tokens=1)
_FAMILIES = {
    # name: depth, hidden, heads, aux head depth (Ti: JiT-Ti's bottleneck of 64)
    "Ti": dict(depth=6, hidden_size=192, num_heads=3, aux_head_depth=2, bottleneck_dim=64, **_TI_PREFIX),
    "S": dict(depth=12, hidden_size=384, num_heads=6, aux_head_depth=4),
    "B": dict(depth=16, hidden_size=768, num_heads=12, aux_head_depth=8),
    "L": dict(depth=32, hidden_size=1024, num_heads=16, aux_head_depth=8),
    "H": dict(depth=48, hidden_size=1280, num_heads=16, aux_head_depth=8),
}
_SIZES = {("Ti", 4): 32, ("Ti", 8): 64, ("Ti", 16): 128, ("S", 4): 32, ("S", 8): 64, ("S", 16): 128}
_NOISE = {"B/16": 1.0, "B/32": 2.0, "L/16": 1.0, "L/32": 4.0, "H/16": 2.0, "H/32": 4.0}
# public eval settings (omega, interval in pMF time); H/16 and H/32 have none published: B/16's
_GUIDANCE = {"B/16": (8.5, (0.1, 0.7)), "B/32": (6.5, (0.1, 0.7)), "L/16": (7.0, (0.2, 0.7)),
             "L/32": (7.5, (0.2, 0.6))}  # fmt: skip

PMF_PRESETS: dict[str, dict] = {}
PMF_DEFAULTS: dict[str, PMFDefaults] = {}
for _family, _arch in _FAMILIES.items():
    for _patch in (4, 8, 16) if _family in ("Ti", "S") else (16, 32):
        _key = f"{_family}/{_patch}"
        _size = _SIZES.get((_family, _patch), 256 if _patch == 16 else 512)
        PMF_PRESETS[f"pMF-{_key}"] = dict(_arch, patch_size=_patch, input_size=_size)
        _omega, _interval = _GUIDANCE.get(_key, _GUIDANCE["B/16"])
        PMF_DEFAULTS[f"pMF-{_key}"] = PMFDefaults(_NOISE.get(_key, 1.0), _omega, _interval)


def pmf_preset_config(name: str, **overrides) -> PMFConfig:
    """The :class:`PMFConfig` of a preset with ``overrides`` applied (e.g. input_size, num_classes)."""
    return config_of_preset(PMFConfig, PMF_PRESETS, name, overrides, "pMF", "pMF model")


def find_pmf_preset(config: PMFConfig) -> str | None:
    """The preset whose architecture equals ``config`` (image size, classes and v head aside), or None."""
    keys = ("depth", "hidden_size", "num_heads", "aux_head_depth", "patch_size")
    for name, preset in PMF_PRESETS.items():
        candidate = PMFConfig(**{**preset, "input_size": config.input_size})
        same_arch = all(getattr(config, k) == preset[k] for k in keys)
        if same_arch and (config.bottleneck, config.mlp_hidden) == (candidate.bottleneck, candidate.mlp_hidden):
            if all(getattr(config, k) == getattr(candidate, k) for k in PREFIX_FIELDS) and config.in_channels == 3:
                return name
    return None
