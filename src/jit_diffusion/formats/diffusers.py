"""The diffusers-style JiT layouts: tensor names and ``config.json`` fields, both ways.

Three layouts of ``diffusion_pytorch_model.safetensors`` are in circulation. All store ``pos_embed``
and none stores the RoPE tables; they differ in the names (``N`` is a block index):

- ``A``  (older community wrapper): the official names under one prefix, ``transformer.`` (earlier
  ``net.``). Its ``config.json`` names a preset (``model_type``, older ``model_name``) plus
  ``sample_size``, ``num_class_embeds``, ``attention_dropout``, ``dropout``.
- ``B0`` (community native class): official names, except
  ``blocks.N.adaLN_modulation.1.*`` -> ``blocks.N.adaLN_modulation.*``,
  ``final_layer.norm_final.*`` -> ``norm_final.*``, ``final_layer.linear.*`` -> ``linear_final.*``,
  ``final_layer.adaLN_modulation.1.*`` -> ``adaLN_modulation_final.*``. Its ``config.json`` spells the
  architecture out (``num_layers``, ``num_attention_heads``, ... see :data:`CONFIG_FIELDS`).
- ``B``  (the diffusers pull request class): B0, and in every block ``attn.qkv`` split in q, k, v
  order into ``attn.to_q``/``to_k``/``to_v``, ``attn.q_norm`` -> ``attn.norm_q``, ``attn.k_norm`` ->
  ``attn.norm_k``, ``attn.proj`` -> ``attn.to_out.0``. Same ``config.json`` as B0.

The layout is told from the keys (:func:`detect_layout`); :func:`to_official` and
:func:`from_official` convert state dicts, :func:`jit_config` and :func:`diffusers_config` configs.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ..models.config import PRESETS, JiTConfig

LAYOUTS = ("A", "B0", "B")
A_PREFIXES = ("transformer.", "net.")  # layout A: the first one is written by the current wrapper
NORM_EPS = 1e-6  # the RMSNorm epsilon of every JiT (and of our layers)
TRANSFORMER_CLASS = "JiTTransformer2DModel"

# official name fragment -> layout name fragment, for keys outside the blocks and inside a block
_TOP_B0 = {
    "final_layer.norm_final.": "norm_final.",
    "final_layer.linear.": "linear_final.",
    "final_layer.adaLN_modulation.1.": "adaLN_modulation_final.",
}
_BLOCK_B0 = {"adaLN_modulation.1.": "adaLN_modulation."}
_BLOCK_B = {**_BLOCK_B0, "attn.q_norm.": "attn.norm_q.", "attn.k_norm.": "attn.norm_k.", "attn.proj.": "attn.to_out.0."}
_RENAMES = {"B0": (_TOP_B0, _BLOCK_B0), "B": (_TOP_B0, _BLOCK_B)}
_BLOCK = re.compile(r"^(blocks\.\d+\.)(.*)$")
_SPLIT_QKV = re.compile(r"^(blocks\.\d+\.attn\.)to_([qkv])\.(weight|bias)$")
_FUSED_QKV = re.compile(r"^(blocks\.\d+\.attn\.)qkv\.(weight|bias)$")

# JiTConfig field -> the name written in config.json (B0/B), and the names read, in precedence order
CONFIG_FIELDS = {
    "input_size": "sample_size", "patch_size": "patch_size", "in_channels": "in_channels",
    "hidden_size": "hidden_size", "depth": "num_layers", "num_heads": "num_attention_heads",
    "mlp_ratio": "mlp_ratio", "attn_drop": "attention_dropout", "proj_drop": "dropout",
    "num_classes": "num_classes", "bottleneck_dim": "bottleneck_dim", "in_context_len": "in_context_len",
    "in_context_start": "in_context_start",
}  # fmt: skip
_READ_B = {**{k: (v,) for k, v in CONFIG_FIELDS.items()}, "num_classes": ("num_class_embeds", "num_classes")}
# layout A reads only these (the rest comes from the preset); its older names win when set
_READ_A = {"input_size": ("image_size", "sample_size"), "num_classes": ("num_classes", "num_class_embeds"),
           "attn_drop": ("attn_dropout", "attention_dropout"), "proj_drop": ("proj_dropout", "dropout")}


def detect_layout(keys: Iterable[str]) -> str | None:
    """``A`` when every key has one ``transformer.``/``net.`` prefix, ``B`` when ``attn.to_q`` appears,
    ``B0`` when ``adaLN_modulation_final`` appears; None for anything else."""
    keys = list(keys)
    if keys and any(all(k.startswith(p) for k in keys) for p in A_PREFIXES):
        return "A"
    if any(".attn.to_q." in k for k in keys):
        return "B"
    if any(k.startswith("adaLN_modulation_final.") for k in keys):
        return "B0"
    return None


def a_prefix(keys: Iterable[str]) -> str:
    """The prefix every key of a layout-A state dict carries."""
    keys = list(keys)
    return next(p for p in A_PREFIXES if all(k.startswith(p) for k in keys))


def _rename(key: str, layout: str, to_layout: bool) -> str:
    """One key from official names to ``layout``'s (or back); keys without a rename stay as they are."""
    top, block = _RENAMES[layout]
    match = _BLOCK.match(key)
    head, rest, table = (match.group(1), match.group(2), block) if match else ("", key, top)
    pairs = table.items() if to_layout else [(theirs, ours) for ours, theirs in table.items()]
    for before, after in pairs:
        if rest.startswith(before):
            return head + after + rest[len(before) :]
    return key


def to_official(state: Mapping[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """A layout ``A``/``B0``/``B`` state dict with the official (our) names; q, k, v fused back into qkv.

    Keys that do not belong to the layout keep their names, so a later key check lists them."""
    if layout == "A":
        prefix = a_prefix(state)
        return {k[len(prefix) :]: v for k, v in state.items()}
    out: dict[str, torch.Tensor] = {}
    pieces: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = _SPLIT_QKV.match(key) if layout == "B" else None
        if match:
            pieces.setdefault((match.group(1), match.group(3)), {})[match.group(2)] = value
        else:
            out[_rename(key, layout, to_layout=False)] = value
    for (attn, param), qkv in pieces.items():
        if set(qkv) == {"q", "k", "v"}:
            out[f"{attn}qkv.{param}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]], dim=0)  # (3D, ...)
        else:  # an incomplete split stays as it was
            out.update({f"{attn}to_{part}.{param}": value for part, value in qkv.items()})
    return out


def from_official(state: Mapping[str, torch.Tensor], layout: str, prefix: str = "transformer.") -> dict:
    """An official-names state dict in layout ``A`` (under ``prefix``), ``B0`` or ``B``."""
    if layout == "A":
        return {prefix + k: v for k, v in state.items()}
    out = {}
    for key, value in state.items():
        attn = _FUSED_QKV.match(key) if layout == "B" else None
        if attn:
            for part, chunk in zip("qkv", value.chunk(3, dim=0)):  # rows [q; k; v] of the fused projection
                out[f"{attn.group(1)}to_{part}.{attn.group(2)}"] = chunk.clone()
        else:
            out[_rename(key, layout, to_layout=True)] = value
    return out


def layout_shapes(official: Mapping[str, tuple[int, ...]], layout: str, prefix: str = "transformer.") -> dict:
    """Key -> shape that a file in ``layout`` holds for a model with these official shapes."""
    meta = {k: torch.empty(shape, device="meta") for k, shape in official.items()}
    return {k: tuple(v.shape) for k, v in from_official(meta, layout, prefix).items()}


# --------------------------------------------------------------------------------------------
# config.json
# --------------------------------------------------------------------------------------------


def _field(config: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    return next((config[n] for n in names if config.get(n) is not None), None)


def jit_config(config: Mapping[str, Any], layout: str, source: str) -> JiTConfig:
    """The :class:`JiTConfig` a diffusers ``config.json`` describes.

    Layout A: the preset its ``model_type`` (older ``model_name``; default JiT-B/16) names, with the image
    size, class count and dropouts of the file. B0/B: each field from the file when set there, else from
    the preset ``model_type`` names, else the class default (the JiT-B/16 values)."""
    names = ("model_name", "model_type") if layout == "A" else ("model_type", "model_name")
    preset_name = _field(config, names) or ("JiT-B/16" if layout == "A" else None)
    if preset_name not in PRESETS:
        if layout == "A":
            raise ValueError(f"{source}: model_type {preset_name!r} is no JiT preset; layout A needs one of "
                             f"{', '.join(PRESETS)}")  # fmt: skip
        preset_name = None
    eps = config.get("norm_eps")
    if eps is not None and float(eps) != NORM_EPS:
        raise ValueError(f"{source}: norm_eps {eps} is not supported (JiT's RMSNorm uses {NORM_EPS})")
    fields = dict(PRESETS[preset_name]) if preset_name else {}
    for field, keys in (_READ_A if layout == "A" else _READ_B).items():
        value = _field(config, keys)
        if value is not None:
            fields[field] = value
    floats = {k for k, v in dataclasses.asdict(JiTConfig()).items() if isinstance(v, float)}
    try:
        return JiTConfig.from_dict({k: float(v) if k in floats else int(v) for k, v in fields.items()})
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: {err}") from None


def diffusers_config(config: JiTConfig, version: str) -> dict[str, Any]:
    """The ``transformer/config.json`` of layouts B0 and B: every architecture field spelled out."""
    if config.bottleneck_dim is None:
        raise ValueError("the diffusers JiT classes always use the bottleneck patch embedding; this model has none")
    fields = dataclasses.asdict(config)
    out: dict[str, Any] = {"_class_name": TRANSFORMER_CLASS, "_diffusers_version": version}
    out.update({name: fields[field] for field, name in CONFIG_FIELDS.items()})
    out["norm_eps"] = NORM_EPS
    return out
