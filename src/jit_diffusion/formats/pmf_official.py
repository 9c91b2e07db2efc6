"""Official pMF checkpoints (``pMF-B-16.pt`` ...): plain state dicts of the public ``pmfDiT`` module.

Their keys carry ``._flax_linear`` / ``._flax_embedding`` segments and a complex64 ``rope_freqs`` buffer
(the RoPE angles as unit complex numbers), and the v head (``v_heads.*``, ``v_final_layer.*``) may be
absent. They are read with the safe loader (no pickled code runs); the architecture is inferred from the
tensor shapes, and the RoPE buffer is checked against the table the config implies. A file is told apart
from the other formats by its keys (:func:`is_pmf_official`); its sampling defaults are the public eval
settings of its preset (:func:`pmf_official_info`, in our time).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from ..core.fileio import safe_torch_load
from ..models.config import ModelInfo
from ..models.pmf import PMF
from ..models.pmf_config import PMF_DEFAULTS, PMFConfig, PMFDefaults, find_pmf_preset
from ..models.pretrained import Shapes, check_state_dict, shapes_of

_FLAX = re.compile(r"\._flax_(linear|embedding)(?=\.)")
ROPE_KEY = "rope_freqs"
# keys only a pMF network has (ours or the public names): the u head's output layer and the omega tokens
_MARKERS = ("omega_tokens", "u_final_layer.linear")
PMF_WEIGHTS = "ema1"  # the name of the one weight set a released file holds (the public EMA)


def is_pmf_official(ckpt: Mapping) -> bool:
    """Whether a loaded checkpoint is a plain pMF state dict: tensors only, with the pMF network's keys."""
    if not ckpt or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ckpt.items()):
        return False
    return all(any(k.startswith(m) for k in ckpt) for m in _MARKERS)


def pmf_official_info(config: PMFConfig, source: str | Path) -> ModelInfo:
    """The :class:`ModelInfo` of an official pMF checkpoint: the public eval settings of its preset (noise
    scale, omega, interval converted to our time), or neutral ones (omega 1, interval [0, 1]) for another
    architecture; one step."""
    preset = find_pmf_preset(config)
    defaults = PMF_DEFAULTS.get(preset or "", PMFDefaults())
    return ModelInfo.create(config, prediction="x", noise_scale=defaults.noise_scale, cfg=defaults.omega,
                            cfg_interval=(1.0 - defaults.interval[1], 1.0 - defaults.interval[0]),
                            source=str(source), weights=PMF_WEIGHTS, family="pmf")  # fmt: skip


def check_rope_freqs(state: Mapping[str, torch.Tensor], model: PMF, source: str | Path) -> None:
    """A one-line ValueError when the file's ``rope_freqs`` buffer (if any) is not the model's 2-D RoPE table."""
    if ROPE_KEY not in state:
        return
    found, implied = state[ROPE_KEY], rope_freqs(model).to(state[ROPE_KEY].device)
    if found.shape != implied.shape or (found - implied).abs().max().item() > 1e-4:
        raise ValueError(f"{source}: its rope_freqs buffer {tuple(found.shape)} is not the 2-D RoPE table "
                         f"of the inferred config ({tuple(implied.shape)})")  # fmt: skip


def from_official_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our names for an official state dict: ``._flax_linear`` / ``._flax_embedding`` dropped, no rope_freqs."""
    return {_FLAX.sub("", k): v for k, v in state.items() if k != ROPE_KEY}


def rope_freqs(model: PMF) -> torch.Tensor:
    """The official complex64 RoPE buffer (patches, head_dim / 2) of a model: cos + i sin per channel pair."""
    cos = model.rope_cos[model.num_prefix :, 0::2]  # (N, hd/2): each pair shares its angle
    sin = model.rope_sin[model.num_prefix :, 0::2]
    return torch.complex(cos.float(), sin.float())


def to_official_keys(model: PMF, state: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The official layout of ``model``'s state dict (or of ``state``, in our names): linear and embedding
    weights under ``._flax_linear`` / ``._flax_embedding``, plus the ``rope_freqs`` buffer."""
    state = model.state_dict() if state is None else state
    kinds = {name: kind for name, module in model.named_modules()
             for kind, cls in (("linear", torch.nn.Linear), ("embedding", torch.nn.Embedding))
             if isinstance(module, cls)}  # fmt: skip
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        owner, _, leaf = key.rpartition(".")
        out[f"{owner}._flax_{kinds[owner]}.{leaf}" if owner in kinds else key] = value
    out[ROPE_KEY] = rope_freqs(model)
    return out


def _need(shapes: Shapes, key: str, source) -> tuple[int, ...]:
    if key not in shapes:
        raise ValueError(f"{source}: cannot infer the pMF architecture: no {key!r} tensor (not a pMF state dict?)")
    return tuple(shapes[key])


def _count(shapes: Shapes, prefix: str) -> int:
    ids = {int(m.group(1)) for k in shapes if (m := re.match(rf"{prefix}\.(\d+)\.", k))}
    return max(ids) + 1 if ids else 0


def infer_pmf_config(shapes: Shapes, source: str | Path = "state dict") -> PMFConfig:
    """The :class:`PMFConfig` of a state dict in our names (see :func:`from_official_keys`), from its shapes:
    depth, aux_head_depth, width, heads, patch, bottleneck, SwiGLU width, classes, token counts, image size
    (from the position embedding) and whether the v head is present. Checked against every key and shape."""
    bottleneck, in_channels, patch, _ = _need(shapes, "x_embedder.proj1.weight", source)
    _, total_tokens, hidden = _need(shapes, "pos_embed", source)
    tokens = {f"num_{n}_tokens": _need(shapes, f"{k}_tokens", source)[1]
              for n, k in (("class", "class"), ("cfg", "omega"), ("interval", "t_min"), ("time", "time"))}  # fmt: skip
    prefix = tokens["num_class_tokens"] + tokens["num_cfg_tokens"] + 2 * tokens["num_interval_tokens"]
    num_patches = total_tokens - prefix - tokens["num_time_tokens"]
    grid = math.isqrt(max(num_patches, 0))
    if num_patches <= 0 or grid * grid != num_patches:
        raise ValueError(f"{source}: pos_embed has {total_tokens} tokens, which leaves no square patch grid")
    shared, heads = _count(shapes, "shared_blocks"), _count(shapes, "u_heads")
    first = "shared_blocks.0" if shared else "u_heads.0"
    head_dim = _need(shapes, f"{first}.attn.q_norm.weight", source)[0]
    fields = dict(
        input_size=grid * patch, patch_size=patch, in_channels=in_channels, hidden_size=hidden,
        depth=shared + heads, num_heads=hidden // head_dim, aux_head_depth=heads,
        num_classes=_need(shapes, "y_embedder.embedding_table.weight", source)[0] - 1, bottleneck_dim=bottleneck,
        mlp_hidden_dim=_need(shapes, f"{first}.mlp.w1.weight", source)[0],
        v_head="v_final_layer.linear.weight" in shapes,
        **tokens,
    )  # fmt: skip
    config = PMFConfig.from_dict(fields, source=str(source))
    # default widths stay implicit (None), so that presets compare equal
    if dataclasses.replace(config, bottleneck_dim=None).bottleneck == config.bottleneck:
        config = dataclasses.replace(config, bottleneck_dim=None)
    if dataclasses.replace(config, mlp_hidden_dim=None).mlp_hidden == config.mlp_hidden:
        config = dataclasses.replace(config, mlp_hidden_dim=None)
    with torch.device("meta"):
        expected = shapes_of(PMF(**dataclasses.asdict(config)).state_dict())
    check_state_dict(expected, shapes, source)
    return config


def official_to_model(
    state: Mapping[str, torch.Tensor], source: str | Path = "state dict", device: str | torch.device = "cpu"
) -> PMF:
    """A :class:`PMF` (eval mode, on ``device``) holding an official state dict, its config from the shapes."""
    ours = from_official_keys(state)
    config = infer_pmf_config(shapes_of(ours), source)
    with torch.device("meta"):
        model = PMF(**dataclasses.asdict(config))
    model = model.to_empty(device=device)
    model.init_tables()
    model.load_state_dict(ours, strict=True)
    check_rope_freqs(state, model, source)
    return model.eval()


def load_official(path: str | Path, device: str | torch.device = "cpu") -> tuple[PMFConfig, dict[str, torch.Tensor]]:
    """Read an official pMF checkpoint safely: (its inferred config, its state dict in our names)."""
    path = Path(path)
    state = safe_torch_load(path)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a plain state dict of tensors (an official pMF checkpoint)")
    model = official_to_model(state, path, device)  # checks shapes and the RoPE buffer
    return model.config, model.state_dict()


def load_official_model(path: str | Path, device: str | torch.device = "cpu") -> PMF:
    """An official pMF checkpoint as a :class:`PMF` in eval mode on ``device``."""
    path = Path(path)
    config, state = load_official(path, device)
    model = PMF(**dataclasses.asdict(config)).to(device)
    model.load_state_dict(state, strict=True)
    return model.eval()


__all__ = ["check_rope_freqs", "from_official_keys", "to_official_keys", "infer_pmf_config", "is_pmf_official",
           "load_official", "load_official_model", "official_to_model", "find_pmf_preset", "pmf_official_info",
           "rope_freqs"]  # fmt: skip
