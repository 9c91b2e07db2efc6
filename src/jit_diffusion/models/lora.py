"""LoRA adapters on a network's linear maps, through ``peft``: inject, list, and merge them away.

``add_lora`` replaces each targeted ``nn.Linear`` (or ``nn.Embedding``/``nn.Conv2d``) in place by peft's LoRA
layer, which computes W x + (alpha / r) B A x with A (r, in) and B (out, r), B starting at zero; the network's
own ``forward`` is unchanged and every other parameter is frozen. ``merge_lora`` folds B A into W and puts
the plain layers back, so the merged network has the original parameter names.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

# the attention and MLP linear maps of every block (models.layers.Attention and SwiGLU)
DEFAULT_TARGETS = ("attn.qkv", "attn.proj", "mlp.w12", "mlp.w3")
ADAPTABLE = (nn.Linear, nn.Embedding, nn.Conv2d)  # the layers that can take an adapter
ADAPTER_MARK = ".lora_"  # in the parameter names of the adapters (lora_A / lora_B, lora_embedding_A / _B)


def parse_targets(text: str | Sequence[str] | None) -> list[str]:
    """``"attn.qkv, mlp.w12"`` -> ``["attn.qkv", "mlp.w12"]``; None or empty -> :data:`DEFAULT_TARGETS`."""
    if text is None:
        return list(DEFAULT_TARGETS)
    parts = text.split(",") if isinstance(text, str) else list(text)
    return [p.strip() for p in parts if p.strip()] or list(DEFAULT_TARGETS)


def target_modules(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """Names of the modules a target names (the whole name, or its tail after a dot, as peft matches);
    a ValueError naming the first target that names nothing."""
    modules = {n: m for n, m in model.named_modules() if n}
    found = []
    for target in targets:
        hits = [n for n in modules if n == target or n.endswith("." + target)]
        if not hits:
            raise ValueError(f"{target!r} names no module (e.g. {', '.join(DEFAULT_TARGETS)}, "
                             f"final_layer.linear, y_embedder.embedding_table)")  # fmt: skip
        odd = [n for n in hits if not isinstance(modules[n], ADAPTABLE)]
        if odd:
            raise ValueError(f"{target!r} names {odd[0]}, a {type(modules[odd[0]]).__name__}; adapters go on "
                             f"Linear, Embedding and Conv2d modules")  # fmt: skip
        found += hits
    return sorted(set(found))


def add_lora(model: nn.Module, rank: int, alpha: float, targets: Sequence[str]) -> nn.Module:
    """Inject LoRA adapters of ``rank`` (scale alpha / rank) into the ``targets`` of ``model`` in place
    (peft's ``inject_adapter_in_model``; A drawn from the torch RNG, B zero); only adapters stay trainable."""
    from peft import LoraConfig, inject_adapter_in_model

    if rank < 1:
        raise ValueError(f"the LoRA rank must be >= 1, got {rank}")
    modules = target_modules(model, targets)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=modules, lora_dropout=0.0, bias="none")
    inject_adapter_in_model(config, model)
    for name, param in model.named_parameters():
        param.requires_grad_(ADAPTER_MARK in name)
    return model


def is_adapter(name: str) -> bool:
    """Whether a parameter name is a LoRA adapter's."""
    return ADAPTER_MARK in name


def has_lora(model: nn.Module) -> bool:
    return any(is_adapter(n) for n, _ in model.named_parameters())


def base_name(name: str) -> str:
    """The plain network's name of a wrapped layer's weight: ``attn.qkv.base_layer.weight`` -> ``attn.qkv.weight``."""
    return name.replace(".base_layer.", ".")


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its layer's weight (W + (alpha / r) B A) and put the plain layer back, in place."""
    from peft.tuners.lora import LoraLayer

    wrapped = [(name, module) for name, module in model.named_modules() if isinstance(module, LoraLayer)]
    for name, module in wrapped:
        module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
    return model
