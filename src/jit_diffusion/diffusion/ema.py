"""Exponential moving averages of a model's parameters, updated with multi-tensor (foreach) ops."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from ..core.parallel import copy_into


class EMA:
    """Several EMAs of one model, e.g. decays (0.9999, 0.9996) named ``ema1``, ``ema2``.

    ``update(model)`` applies ema = decay * ema + (1 - decay) * param to every EMA at once (as a lerp);
    ``applied(model, name)`` temporarily swaps an EMA's weights into the model (no deep copy).
    EMA tensors are fp32 and live on the model's device. With ``trainable_only`` only the parameters that
    require grad (say, LoRA adapters) are averaged; the others stay as the model holds them.
    """

    def __init__(
        self, model: nn.Module, decays: Sequence[float] = (0.9999, 0.9996), names: Sequence[str] | None = None,
        trainable_only: bool = False,
    ):  # fmt: skip
        names = list(names) if names is not None else [f"ema{i + 1}" for i in range(len(decays))]
        if len(names) != len(decays):
            raise ValueError(f"got {len(decays)} EMA decays but {len(names)} names")
        for d in decays:
            if not 0.0 <= d < 1.0:
                raise ValueError(f"EMA decay must be in [0, 1), got {d}")
        self.decays = dict(zip(names, [float(d) for d in decays]))
        self.trainable_only = trainable_only
        self.param_names = [n for n, _ in self._averaged(model)]
        self.shadows: dict[str, list[torch.Tensor]] = {
            name: [p.detach().float().clone() for _, p in self._averaged(model)] for name in names
        }

    def _averaged(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """The (name, parameter) pairs this EMA averages, in model order."""
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad or not self.trainable_only]

    @property
    def names(self) -> list[str]:
        return list(self.decays)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step for every decay: one ``_foreach_lerp_`` per decay (no per-parameter Python loop)."""
        params = [p.detach() for _, p in self._averaged(model)]
        if params and params[0].dtype != torch.float32:
            params = [p.float() for p in params]
        for name, decay in self.decays.items():
            # ema += (1 - decay) (param - ema): one fused pass over each EMA (read ema and param, write ema)
            torch._foreach_lerp_(self.shadows[name], params, 1.0 - decay)

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """{ema_name: {param_name: tensor}} (the tensors themselves, not copies)."""
        return {name: dict(zip(self.param_names, shadow)) for name, shadow in self.shadows.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        """Copy saved EMA weights in; names and parameter keys must match."""
        missing = set(self.decays) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)}; it has {sorted(state)}")
        for name, shadow in self.shadows.items():
            saved = state[name]
            bad = [k for k in self.param_names if k not in saved]
            if bad:
                raise KeyError(f"EMA {name!r} state lacks parameter(s) {bad[:5]}")
            for key, tensor in zip(self.param_names, shadow):
                copy_into(tensor, saved[key])  # takes this rank's shard when the EMA is sharded (FSDP)

    def weights(self, name: str) -> dict[str, torch.Tensor]:
        """One EMA as a model state dict (parameters only)."""
        if name not in self.shadows:
            raise KeyError(f"unknown EMA {name!r}; have {self.names}")
        return dict(zip(self.param_names, self.shadows[name]))

    @contextlib.contextmanager
    def applied(self, model: nn.Module, name: str) -> Iterator[nn.Module]:
        """Context in which ``model``'s parameters hold the EMA ``name``; restored on exit."""
        if name in ("raw", "model", None):
            yield model
            return
        shadow = self.weights(name)
        params = dict(self._averaged(model))
        backup = {k: p.data for k, p in params.items()}
        try:
            for k, p in params.items():
                p.data = shadow[k].to(dtype=backup[k].dtype)
            yield model
        finally:
            for k, p in params.items():
                p.data = backup[k]
