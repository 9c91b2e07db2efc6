"""Official JiT checkpoints: the authors' ``checkpoint-*.pth`` files.

They hold ``model``, ``model_ema1`` and ``model_ema2`` state dicts with a ``net.`` prefix, the optimizer,
the epoch and the training ``args`` (an ``argparse.Namespace``). They are read with the safe loader
(:func:`fileio.safe_torch_load`), so loading never runs pickled code. The architecture comes from
``args.model`` when it names a preset, else it is inferred from the tensor shapes.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..core.fileio import safe_torch_load
from ..models.config import ARCH_KEYS, PRESETS, JiTConfig, ModelInfo, find_preset, preset_config
from ..models.jit import JiT
from ..models.pretrained import Shapes, build_model, check_state_dict, config_shapes

WEIGHT_CHOICES = ("ema1", "ema2", "raw")
OFFICIAL_KEYS = {"ema1": "model_ema1", "ema2": "model_ema2", "raw": "model"}


def _mlp_ratio(mlp_hidden: int, hidden: int) -> float | None:
    for ratio in (4.0, round(mlp_hidden * 1.5 / hidden, 6), (mlp_hidden + 0.5) * 1.5 / hidden):
        if int(ratio * hidden * 2 / 3) == mlp_hidden:
            return ratio
    return None


def _shape_fields(shapes: Shapes, source: str | Path) -> dict[str, Any]:
    """The architecture fields visible in the weights (all but in_context_start and dropout)."""

    def need(key: str) -> tuple[int, ...]:
        if key not in shapes:
            raise ValueError(f"{source}: cannot infer the JiT architecture: no {key!r} tensor (not a JiT state dict?)")
        return tuple(shapes[key])

    _, num_patches, hidden = need("pos_embed")
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise ValueError(f"{source}: pos_embed has {num_patches} tokens, not a square grid")
    if "x_embedder.proj1.weight" in shapes:
        bottleneck, in_channels, patch, _ = need("x_embedder.proj1.weight")
    else:
        _, in_channels, patch, _ = need("x_embedder.proj.weight")
        bottleneck = None
    block_ids = {int(m.group(1)) for k in shapes if (m := re.match(r"blocks\.(\d+)\.", k))}
    head_dim = need("blocks.0.attn.q_norm.weight")[0]
    mlp_hidden = need("blocks.0.mlp.w3.weight")[1]
    mlp_ratio = _mlp_ratio(mlp_hidden, hidden)
    if mlp_ratio is None:
        raise ValueError(f"{source}: no mlp_ratio gives a SwiGLU width of {mlp_hidden} at hidden size {hidden}")
    return dict(
        input_size=grid * patch, patch_size=patch, in_channels=in_channels, hidden_size=hidden,
        depth=max(block_ids) + 1 if block_ids else 0, num_heads=hidden // head_dim, mlp_ratio=mlp_ratio,
        bottleneck_dim=bottleneck, num_classes=need("y_embedder.embedding_table.weight")[0] - 1,
        in_context_len=tuple(shapes["in_context_posemb"])[1] if "in_context_posemb" in shapes else 0,
    )  # fmt: skip


def infer_config(
    shapes: Shapes,
    *,
    model_name: str | None = None,
    in_context_start: int | None = None,
    source: str | Path = "state dict",
    **extra: Any,
) -> tuple[JiTConfig, str | None]:
    """Reconstruct the :class:`JiTConfig` of a state dict (keys without ``net.``) and its preset name.

    ``model_name`` (e.g. ``args.model``) picks the architecture when it is a known preset; otherwise it is
    read off the shapes. The image size and class count always come from the shapes (``pos_embed`` and
    the label table). ``in_context_start`` is not visible in the weights: it comes from the argument,
    else the matching preset family; a non-preset architecture with in-context tokens needs the argument.
    ``extra`` sets other fields (e.g. dropout). The result is checked against every key and shape.
    """
    fields = _shape_fields(shapes, source)
    sized = dict(input_size=fields["input_size"], num_classes=fields["num_classes"], **extra)
    if model_name in PRESETS:
        if in_context_start is not None:
            sized["in_context_start"] = in_context_start
        config = preset_config(model_name, **sized)
    else:
        family = [p for p in PRESETS.values() if all(p[k] == fields[k] for k in ARCH_KEYS)]
        if in_context_start is None:
            if family and fields["mlp_ratio"] == 4.0:
                in_context_start = family[0]["in_context_start"]
            elif fields["in_context_len"] == 0:
                in_context_start = 0
            else:
                raise ValueError(
                    f"{source}: depth {fields['depth']}, width {fields['hidden_size']} is no preset, and "
                    f"in_context_start is not stored in the weights; pass it (jit convert --in-context-start N)"
                )
        config = JiTConfig.from_dict({**fields, **extra, "in_context_start": in_context_start}, source=str(source))
    check_state_dict(config_shapes(JiT, config), shapes, source)
    return config, find_preset(config)


def is_official(ckpt: Mapping[str, Any]) -> bool:
    """Whether a loaded checkpoint dict has the official layout (EMA state dicts, no model_config)."""
    return any(isinstance(ckpt.get(k), Mapping) for k in OFFICIAL_KEYS.values()) and "model_config" not in ckpt


def official_weight_names(ckpt: Mapping[str, Any]) -> list[str]:
    """The weight sets present in an official checkpoint (ema1, ema2, raw)."""
    return [w for w, k in OFFICIAL_KEYS.items() if isinstance(ckpt.get(k), Mapping)]


def _args_dict(args: Any) -> dict[str, Any]:
    if isinstance(args, argparse.Namespace):
        return vars(args)
    return dict(args) if isinstance(args, Mapping) else {}


def _number(args: Mapping[str, Any], key: str, default: float) -> float:
    value = args.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def official_weights(ckpt: Mapping[str, Any], weights: str, source: str | Path) -> dict[str, torch.Tensor]:
    """The ``ema1``/``ema2``/``raw`` state dict of an official checkpoint, with ``net.`` stripped."""
    if weights not in OFFICIAL_KEYS:
        raise ValueError(f"unknown weights {weights!r}; choose one of {list(WEIGHT_CHOICES)}")
    state = ckpt.get(OFFICIAL_KEYS[weights])
    if not isinstance(state, Mapping):
        present = official_weight_names(ckpt)
        raise ValueError(f"{source} has no {OFFICIAL_KEYS[weights]!r} weights ({weights}); it has {present}")
    if any(k.startswith("net.") for k in state):  # the denoiser wraps the network as `net`
        return {k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")}
    return dict(state)


def official_config(
    ckpt: Mapping[str, Any], path: Path, weights: str = "ema1", in_context_start: int | None = None
) -> JiTConfig:
    """The :class:`JiTConfig` of an official checkpoint dict, inferred from its ``weights`` state dict and
    ``args`` (checked against every key and shape of that state dict)."""
    args = _args_dict(ckpt.get("args"))
    dropout = {"attn_drop": _number(args, "attn_dropout", 0.0), "proj_drop": _number(args, "proj_dropout", 0.0)}
    name = args.get("model") if isinstance(args.get("model"), str) else None
    shapes = {k: tuple(v.shape) for k, v in official_weights(ckpt, weights, path).items()}
    config, _ = infer_config(shapes, model_name=name, in_context_start=in_context_start, source=path, **dropout)
    return config


def official_info(ckpt: Mapping[str, Any], path: Path, config: JiTConfig, weights: str) -> ModelInfo:
    """The :class:`ModelInfo` of an official checkpoint dict: flow and sampling settings from its ``args``."""
    args, epoch = _args_dict(ckpt.get("args")), ckpt.get("epoch")
    return ModelInfo.create(
        config, prediction="x", noise_scale=_number(args, "noise_scale", 2.0 if config.input_size >= 512 else 1.0),
        t_eps=_number(args, "t_eps", 0.05), cfg=_number(args, "cfg", 1.0),
        cfg_interval=(_number(args, "interval_min", 0.1), _number(args, "interval_max", 1.0)),
        source=f"{path} (epoch {epoch})" if isinstance(epoch, int) else str(path), weights=weights,
    )  # fmt: skip


def official_model(
    ckpt: Mapping[str, Any], path: Path, weights: str, device, in_context_start: int | None = None
) -> tuple[JiT, ModelInfo]:
    """The model and :class:`ModelInfo` of an already loaded official checkpoint dict."""
    if not is_official(ckpt):
        raise ValueError(f"{path} is not an official JiT checkpoint (expected keys {list(OFFICIAL_KEYS.values())})")
    config = official_config(ckpt, path, weights, in_context_start)
    state = official_weights(ckpt, weights, path)
    model = build_model(JiT, config, state, device, path, check=False)  # official_config checked the keys
    return model, official_info(ckpt, path, config, weights)


def load_official(
    path: str | Path,
    weights: str = "ema1",
    device: str | torch.device = "cpu",
    *,
    in_context_start: int | None = None,
) -> tuple[JiT, ModelInfo]:
    """Open an official ``checkpoint-*.pth``: ``weights`` is ``ema1`` (default), ``ema2`` or ``raw``.

    Returns the model in eval mode on ``device`` and its :class:`ModelInfo` (flow/sampling settings
    from the checkpoint's ``args``)."""
    path = Path(path)
    return official_model(safe_torch_load(path), path, weights, device, in_context_start)
