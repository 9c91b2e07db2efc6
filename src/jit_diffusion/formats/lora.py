"""LoRA training checkpoints: what they hold and how the loaders turn one into plain weights.

A LoRA run (``jit train --lora-rank R``) checkpoints only what it owns: the adapter tensors (raw, each
EMA, their optimizer state) and the two base tensors a fine-tune may have replaced (the label table and
the position table), plus ``lora``: the rank, alpha, targets and the base (the resolved file, which
weights, their :func:`~.checkpoint.weights_digest`). Loading one opens the base, checks its digest (a
changed base is a one-line error), applies the adapters of the chosen weights (``raw``, ``ema1``, ...)
and merges them: the result is a plain network, the same for sampling, evaluation and export.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ..models.families import model_class
from ..models.lora import add_lora, base_name, is_adapter, merge_lora
from .checkpoint import training_family, training_weights, weights_digest

LORA_KEY = "lora"
# the base tensors a fine-tune may replace (new classes, new grid): kept in each LoRA checkpoint
OWN_BASE_TENSORS = ("y_embedder.embedding_table.weight", "pos_embed")


def is_lora_checkpoint(ckpt: Mapping) -> bool:
    """Whether a training checkpoint holds only LoRA adapters (and names its base)."""
    return isinstance(ckpt.get(LORA_KEY), dict)


def lora_record(rank: int, alpha: float, targets: list[str], origin: dict) -> dict:
    """The ``lora`` entry of a checkpoint: adapter settings and the base (from the run's ``init_from`` record)."""
    base = {"file": origin.get("file") or origin["path"], "path": origin["path"], "kind": origin["kind"],
            "weights": origin["weights"], "weights_sha256": origin["weights_sha256"]}  # fmt: skip
    return {"rank": rank, "alpha": alpha, "targets": list(targets), "base": base}


def own_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The part of a LoRA model's state a checkpoint keeps: adapters and :data:`OWN_BASE_TENSORS` (named
    ``...base_layer.weight`` when an adapter wraps them)."""
    return {k: v for k, v in state.items() if is_adapter(k) or base_name(k) in OWN_BASE_TENSORS}


def check_base(record: dict, base_state: Mapping[str, torch.Tensor], where: str | Path) -> None:
    """A ValueError when the base weights are not the ones the LoRA run started from."""
    base, digest = record["base"], weights_digest(base_state)
    if digest != base["weights_sha256"]:
        raise ValueError(f"{where}: its LoRA base {base['file']} ({base['weights']}) has changed since the run "
                         f"started (sha256 {digest[:12]}..., recorded {base['weights_sha256'][:12]}...)")  # fmt: skip


def merged_lora_state(
    ckpt: dict, weights: str, base_state: Mapping[str, torch.Tensor], where: str | Path
) -> dict[str, torch.Tensor]:
    """The plain state dict of a LoRA checkpoint's ``weights``: the base (digest checked) with the run's own
    base tensors, the adapters of ``weights`` applied and merged (W + (alpha / r) B A)."""
    record = ckpt[LORA_KEY]
    check_base(record, base_state, where)
    own = training_weights(ckpt, weights)  # the adapters of ``weights`` and the own base tensors
    with torch.random.fork_rng(devices=[]):  # random inits, all overwritten: the caller's RNG stays as it was
        model = model_class(training_family(ckpt))(**ckpt["model_config"])
        model.load_state_dict({**base_state, **{base_name(k): v for k, v in own.items() if not is_adapter(k)}})
        add_lora(model, record["rank"], record["alpha"], record["targets"])
    adapters = {k: v for k, v in own.items() if is_adapter(k)}
    result = model.load_state_dict(adapters, strict=False)
    missing = [k for k in result.missing_keys if is_adapter(k)]
    if missing or result.unexpected_keys:
        raise ValueError(f"{where}: LoRA adapters do not fit their targets (missing {missing[:3]}, "
                         f"unexpected {result.unexpected_keys[:3]})")  # fmt: skip
    return {k: v.detach() for k, v in merge_lora(model).state_dict().items()}
