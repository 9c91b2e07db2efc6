"""LoRA fine-tuning (``jit train --init-from SOURCE --lora-rank R``): only adapters train and are saved.

The network starts from the ``--init-from`` weights (:mod:`.init`), then peft injects rank-R adapters into
the ``--lora-targets`` (default: the attention qkv/proj and SwiGLU w12/w3 maps of every block,
:mod:`jit_diffusion.models.lora`); every other tensor is frozen, the label table and the output layer
included unless a target names them (``y_embedder.embedding_table`` gives the label table an adapter of its
own, worth it for new classes). The EMAs average the adapters only, and a checkpoint holds the adapters, their
EMAs and optimizer state, the label and position tables and the base's file and digest
(:mod:`jit_diffusion.formats.lora`): resuming reloads the base and refuses one that changed. LoRA needs
``--init-from`` (adapters on random weights teach nothing a full run would not), and runs without
``--freeze`` (everything but the adapters is frozen already) and without ``--fsdp``.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from ..core.errors import UserError
from ..formats.lora import LORA_KEY, lora_record, own_state
from ..models.lora import DEFAULT_TARGETS, add_lora, is_adapter
from .config import TrainConfig
from .init import init_weights


def validate_lora(cfg: TrainConfig) -> None:
    """The LoRA flags, before any work; a one-line UserError naming the flag."""
    if cfg.lora_rank is None:
        for flag, given in (("--lora-alpha", cfg.lora_alpha is not None),
                            ("--lora-targets", list(cfg.lora_targets) != list(DEFAULT_TARGETS))):  # fmt: skip
            if given:
                raise UserError(f"{flag} needs --lora-rank")
        return
    if cfg.lora_rank < 1:
        raise UserError(f"--lora-rank must be an integer >= 1, got {cfg.lora_rank}")
    if cfg.lora_alpha is not None and not cfg.lora_alpha > 0:
        raise UserError(f"--lora-alpha must be > 0, got {cfg.lora_alpha:g}")
    if not cfg.lora_targets:
        raise UserError("--lora-targets: give at least one module name, e.g. attn.qkv,mlp.w12")
    if not cfg.init_from:
        raise UserError("--lora-rank needs --init-from SOURCE: LoRA adapts a trained model")
    for flag, given, why in (
        ("--freeze", bool(cfg.freeze), "with LoRA every weight but the adapters is frozen already"),
        ("--fsdp", cfg.fsdp, "LoRA runs use DDP (the trainable adapters are small)"),
        ("--model", cfg.family != "jit", "LoRA fine-tunes JiT models"),
    ):  # fmt: skip
        if given:
            raise UserError(f"--lora-rank with {flag}: {why}")


def alpha(cfg: TrainConfig) -> float:
    """The adapters' alpha (scale alpha / rank): ``--lora-alpha``, default the rank."""
    return float(cfg.lora_alpha if cfg.lora_alpha is not None else cfg.lora_rank)


def start_lora(model: nn.Module, cfg: TrainConfig, class_names: list[str], ckpt: dict | None,
               recorded: dict | None) -> tuple[dict, dict]:  # fmt: skip
    """Base weights from the source (on resume: the file the run recorded, its digest checked), then adapters
    (on resume: the checkpoint's). Returns (the ``init_from`` record, the checkpoint's ``lora`` record)."""
    source = cfg if recorded is None else dataclasses.replace(cfg, init_from=recorded.get("file") or recorded["path"])
    origin = init_weights(model, source, class_names)
    if recorded is not None:
        if origin["weights_sha256"] != recorded["weights_sha256"]:
            raise UserError(f"--resume: the LoRA base {source.init_from} has changed since the run started "
                            f"(sha256 {origin['weights_sha256'][:12]}..., recorded "
                            f"{recorded['weights_sha256'][:12]}...)")  # fmt: skip
        origin = recorded
    try:
        add_lora(model, cfg.lora_rank, alpha(cfg), cfg.lora_targets)
    except ValueError as err:
        raise UserError(f"--lora-targets: {err}") from None
    if ckpt is not None:
        result = model.load_state_dict(ckpt["model"], strict=False)
        missing = [k for k in result.missing_keys if is_adapter(k)]
        if missing or result.unexpected_keys:
            raise UserError(f"--resume: the checkpoint's adapters do not fit --lora-targets (missing "
                            f"{missing[:3]}, unexpected {result.unexpected_keys[:3]})")  # fmt: skip
    return origin, lora_record(cfg.lora_rank, alpha(cfg), cfg.lora_targets, origin)


def slim_state(state: dict, record: dict) -> dict:
    """A training state as a LoRA checkpoint keeps it: the model part cut to adapters and own base tensors."""
    return {**state, "model": own_state(state["model"]), LORA_KEY: record}


def describe_lora(model: nn.Module, cfg: TrainConfig, origin: dict, num_classes: int) -> str:
    """One line: the adapters, their trainable share, and a hint when new classes have no label adapter."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for n, p in model.named_parameters() if not is_adapter(n))
    layers = sum(n.endswith(".lora_A.default.weight") or n.endswith(".lora_embedding_A.default")
                 for n, _ in model.named_parameters())  # fmt: skip
    line = (f"LoRA rank {cfg.lora_rank} (alpha {alpha(cfg):g}) on {layers} layers: {trainable:,} trainable "
            f"parameters ({100 * trainable / total:.2f}% of {total:,})")
    labelled = any(t.endswith("embedding_table") for t in cfg.lora_targets)
    if len(origin.get("class_rows", {})) < num_classes and not labelled:
        line += "; new classes share one fixed label row: add y_embedder.embedding_table to --lora-targets"
    return line
