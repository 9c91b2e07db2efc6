"""The optimizer of a run: AdamW with weight decay on matrices only, and the learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from .config import TrainConfig


def learning_rate(step: int, cfg: TrainConfig, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up per iteration (lr * step / warmup), then constant or cosine to ``min_lr``."""
    peak = cfg.lr_value()
    if step < warmup_steps:
        return peak * step / warmup_steps
    if cfg.schedule == "constant":
        return peak
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    # min_lr + (peak - min_lr) * (1 + cos(pi * progress)) / 2
    return cfg.min_lr + (peak - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: biases, norm weights and 1-d tensors are never decayed."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device, sharded: bool) -> torch.optim.AdamW:
    """AdamW over ``model``'s (possibly sharded) parameters: the fused kernel on CUDA (capturable for
    ``--cuda-graph``), foreach otherwise."""
    groups, betas = param_groups(model, cfg.weight_decay), (cfg.beta1, cfg.beta2)
    if cfg.cuda_graph:
        return capturable_adamw(groups, cfg.lr_value(), betas, device)
    fast = {"fused": True} if device.type == "cuda" and not sharded else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.lr_value(), betas=betas, **fast)


def capturable_adamw(groups: Iterable, lr: float, betas: tuple[float, float],
                     device: torch.device) -> torch.optim.AdamW:  # fmt: skip
    """Fused AdamW with its step counters and learning rate on ``device`` (CUDA-graph capturable).

    On a CPU this is the plain foreach AdamW (the same update), so the graphed step can be tested there."""
    if device.type != "cuda":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, foreach=True)
    lr_tensor = torch.tensor(lr, dtype=torch.float32, device=device)
    return torch.optim.AdamW(groups, lr=lr_tensor, betas=betas, fused=True, capturable=True)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Use ``lr`` for every parameter group from the next step on; in place when a group's lr is a tensor
    (a capturable optimizer's: a captured CUDA graph keeps reading that tensor)."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
