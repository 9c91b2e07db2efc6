"""Fine-tuning (``jit train --init-from SOURCE``): a new run that starts from another model's weights.

The source is anything :func:`~jit_diffusion.formats.loading.open_source` opens. Its architecture and
flow settings are inherited unless a flag overrides them; what may change is the image size (same patch
size: the fixed sin-cos ``pos_embed`` is recomputed for the new grid, and the RoPE tables, non-persistent
buffers, are built for it by the new model), the classes (the label table is remapped by name) and
dropout. ``--freeze`` patterns exclude parameters from training. A pMF source starts a pMF run (what
differs: :mod:`.pmf_init`); a source of the other family than ``--model`` is a one-line error.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import re
from pathlib import Path

import torch
from torch import nn

from ..core.errors import UserError
from ..formats.checkpoint import weights_digest
from ..formats.loading import Source, open_source
from ..models.config import parse_model_config, preset_name
from .config import TrainConfig, model_config, with_family_defaults
from .pmf_init import check_pmf_architecture, fit_v_head, resize_pos_embed

# what must equal the source's (the image size, the classes and dropout may change)
ARCH_FIELDS = ("patch_size", "in_channels", "hidden_size", "depth", "num_heads", "mlp_ratio", "bottleneck_dim",
               "in_context_len", "in_context_start")  # fmt: skip
LABEL_TABLE = "y_embedder.embedding_table.weight"


def open_init(cfg: TrainConfig) -> Source:
    """The ``--init-from`` source (JiT or pMF); a one-line UserError when it cannot serve."""
    try:
        source = open_source(cfg.init_from)
        source.check([cfg.init_weights or source.default_weights])
    except (ValueError, FileNotFoundError) as err:
        raise UserError(f"--init-from {cfg.init_from}: {err}") from None
    return source


def check_architecture(source: dict, new: dict, where: str, family: str = "jit") -> None:
    """A one-line UserError naming both values when the new run's architecture differs from the source's."""
    if family == "pmf":
        return check_pmf_architecture(source, new, where)
    for key in ARCH_FIELDS:
        old, now = source.get(key), new.get(key)
        if (old or None) != (now or None):
            raise UserError(f"--init-from {where}: the source has {key} {old}, the new run {now}; only the image "
                            f"size (same patch size), the classes and dropout can change")  # fmt: skip


def inherit(cfg: TrainConfig, explicit: set[str]) -> TrainConfig:
    """``cfg`` with the source's preset, image size, bottleneck and flow/sampling settings where no flag
    (``explicit``) sets them; checked against the source's architecture."""
    source = open_init(cfg)
    info = source.info(cfg.init_weights)
    arch = info.model_config
    if "model" in explicit and source.family != cfg.family:
        raise UserError(f"--init-from {cfg.init_from}: a {source.family} model cannot start a {cfg.family} run "
                        f"(--model {cfg.model}); fine-tuning keeps the model family")  # fmt: skip
    inherited = {"img_size": info.image_size, "bottleneck_dim": arch.get("bottleneck_dim") or 0,
                 "noise_scale": info.noise_scale, "sample_cfg": info.cfg, "sample_interval": list(info.cfg_interval)}
    if source.family == "pmf":
        inherited["sample_steps"] = info.steps
    else:
        inherited.update(prediction=info.prediction, t_eps=info.t_eps, sample_method=info.method)
    if "model" not in explicit:
        inherited["model"] = preset_name(parse_model_config(arch, source.family))
        if inherited["model"] is None:
            raise UserError(f"--init-from {cfg.init_from}: its architecture matches no preset (`jit presets`)")
        given = {k: getattr(cfg, k) for k in explicit if hasattr(cfg, k)}  # the source's family's defaults
        inherited = {**with_family_defaults({**given, "model": inherited["model"]}), **inherited}
    new = dataclasses.replace(cfg, **{k: v for k, v in inherited.items() if k not in explicit})
    check_architecture(arch, dataclasses.asdict(model_config(new, 0)), cfg.init_from, source.family)
    return new


def _index(key, names: list[str], what: str, where: str) -> int:
    """A class given by name or index (JSON keys are strings: "3" is index 3 unless a class is named "3")."""
    if isinstance(key, str) and key in names:
        return names.index(key)
    if str(key).isdigit() and int(key) < len(names):
        return int(key)
    raise UserError(f"--class-map {where}: {key!r} is no {what} class (have {names[:8]})")


def class_rows(new_names: list[str], old_names: list[str], class_map: str) -> dict[int, int]:
    """new class index -> source class index: equal names (``auto``) or a JSON file of new -> old
    (names or indices)."""
    if class_map == "auto":
        return {i: old_names.index(n) for i, n in enumerate(new_names) if n in old_names}
    try:
        pairs = json.loads(Path(class_map).read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"--class-map {class_map}: expected 'auto' or a JSON file of new -> old classes "
                        f"({err})") from None
    if not isinstance(pairs, dict):
        raise UserError(f"--class-map {class_map}: expected a JSON object of new -> old classes")
    return {_index(k, new_names, "new", class_map): _index(v, old_names, "source", class_map) for k, v in pairs.items()}


def label_table(old: torch.Tensor, rows: dict[int, int], num_classes: int) -> torch.Tensor:
    """The new (num_classes + 1, D) table: mapped rows copied, the others the mean of the source's class rows
    (its null row when it has none), the null row (last) the source's null row."""
    classes = old[:-1]
    fill = classes.mean(dim=0) if len(classes) else old[-1]
    table = fill.expand(num_classes + 1, -1).clone()
    for new, src in rows.items():
        table[new] = classes[src]
    table[num_classes] = old[-1]
    return table


def init_weights(model: nn.Module, cfg: TrainConfig, class_names: list[str]) -> dict:
    """Load the ``--init-from`` weights into ``model`` (remapped classes; pos_embed recomputed for JiT,
    resized for pMF; a pMF v head from the u head when the source has none); returns where they came
    from (for config.json)."""
    source = open_init(cfg)
    if source.family != cfg.family:
        raise UserError(f"--init-from {cfg.init_from}: a {source.family} model cannot start a {cfg.family} run "
                        f"(--model {cfg.model}); fine-tuning keeps the model family")  # fmt: skip
    loaded, info = source.load(cfg.init_weights, "cpu")
    state = {k: v.detach().clone() for k, v in loaded.state_dict().items()}
    check_architecture(info.model_config, dataclasses.asdict(model.config), cfg.init_from, source.family)
    digest = weights_digest(state)
    v_head_from_u = source.family == "pmf" and fit_v_head(state, model.has_v_head)
    rows = class_rows(class_names, list(info.class_names), cfg.class_map)
    state[LABEL_TABLE] = label_table(state[LABEL_TABLE], rows, len(class_names))
    fresh = model.state_dict()
    if state["pos_embed"].shape != fresh["pos_embed"].shape and source.family == "pmf":  # learned: resized
        state["pos_embed"] = resize_pos_embed(state["pos_embed"], model.num_prefix, model.grid_size)
    elif state["pos_embed"].shape != fresh["pos_embed"].shape:  # another grid: the fixed table of the new one
        state["pos_embed"] = fresh["pos_embed"].detach().cpu().clone()
    model.load_state_dict(state, strict=True)
    origin = {"path": str(source.path.resolve()), "file": str(source.file.resolve()), "kind": source.kind,
              "weights": info.weights, "step": info.step, "weights_sha256": digest, "image_size": info.image_size,
              "class_rows": {class_names[n]: info.class_names[o] for n, o in rows.items()}}  # fmt: skip
    return {**origin, "v_head_from_u": True} if v_head_from_u else origin


def _patterns(text: str) -> list[str]:
    """``blocks.0-5,x_embedder`` -> ``blocks.0 ... blocks.5``, ``x_embedder`` (a trailing range expands)."""
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        m = re.fullmatch(r"(.*?)(\d+)-(\d+)", part)
        out += [f"{m[1]}{i}" for i in range(int(m[2]), int(m[3]) + 1)] if m else [part]
    return out


def freeze(model: nn.Module, text: str | None) -> list[str]:
    """``--freeze``: parameters named by a pattern (a name prefix at a dot, or a glob) get requires_grad
    False, so the optimizer leaves them out; returns their names. A pattern that matches nothing is an error."""
    if not text:
        return []
    frozen = []
    for pattern in _patterns(text):
        hits = [n for n, _ in model.named_parameters()
                if n == pattern or n.startswith(pattern + ".") or fnmatch.fnmatchcase(n, pattern)]  # fmt: skip
        if not hits:
            tops = sorted({n.split(".")[0] for n, _ in model.named_parameters()})
            raise UserError(f"--freeze: {pattern!r} names no parameter (top-level names: {', '.join(tops)})")
        frozen += hits
    params = dict(model.named_parameters())
    for name in frozen:
        params[name].requires_grad_(False)
    return sorted(set(frozen))


def describe_init(origin: dict | None, frozen: list[str]) -> str:
    """One line on what a new run starts from and what it keeps fixed."""
    parts = []
    if origin:
        step = "" if origin["step"] is None else f" step {origin['step']}"
        parts.append(f"initialised from {origin['path']} ({origin['weights']}{step}, "
                     f"{len(origin['class_rows'])} class rows copied)")  # fmt: skip
    if frozen:
        parts.append(f"{len(frozen)} parameter tensors frozen")
    return "; ".join(parts)


def recorded_origin(run_dir: Path) -> dict | None:
    """The ``init_from`` record of a run folder's config.json (kept when the run resumes)."""
    path = run_dir / "config.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("resolved", {}).get("init_from")
