"""The pMF training recipe's optimizer and EMA schedule.

Optimizer: the public code uses optax ``contrib.muon``: Muon on every 2-D parameter and Adam (b2 0.95,
Nesterov momentum) on the rest, lr 1e-3 constant, no weight decay. Here: ``torch.optim.Muon`` with
``adjust_lr_fn="original"``, whose update scale sqrt(max(1, out / in)) of a (out, in) Linear weight is
optax's sqrt(max(1, fan_out / fan_in)) of the transposed (in, out) kernel; the label table, stored the same
way in both, gets optax's scale sqrt(max(1, H / rows)) through a per-group ``lr_scale``. Adam with Nesterov
momentum is ``torch.optim.NAdam`` with a constant momentum (an infinite momentum_decay); plain AdamW is the
alternative. Differences left: torch runs Newton-Schulz in bf16 on accelerators (optax in the parameter
dtype; on a CPU, where bf16 matmuls are ~20x slower than fp32, it runs here in fp32) and has no bias
correction of the momentum (optax has; it only changes the first few steps' mix of gradient and momentum).

EMA: the EDM half-life rule, beta = 0.5^(batch / max(min(halflife_kimg * 1000, step * batch * 0.05), 1e-8)).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping

import torch
from torch import nn

MUON_SCOPES = ("matrices", "blocks")
ADAM_KINDS = ("nadam", "adamw")
_BLOCK_PREFIXES = ("shared_blocks.", "u_heads.", "v_heads.")


def edm_ema_beta(step: int, batch_size: int, halflife_kimg: float, rampup: float = 0.05) -> float:
    """EMA decay of a step: 0.5^(batch / max(min(halflife_kimg * 1000, step * batch * rampup), 1e-8))."""
    halflife_images = min(halflife_kimg * 1000.0, step * batch_size * rampup)
    return 0.5 ** (batch_size / max(halflife_images, 1e-8))


def edm_ema_decays(step: int, batch_size: int, halflives_kimg: Mapping[str, float]) -> dict[str, float]:
    """{ema name: decay} of a step for several half-lives (assign to ``EMA.decays`` before ``update``)."""
    return {name: edm_ema_beta(step, batch_size, kimg) for name, kimg in halflives_kimg.items()}


def _muon_groups(model: nn.Module, scope: str) -> tuple[list[dict], list[nn.Parameter]]:
    """Muon param groups (Linear weights; other matrices with optax's scale as ``lr_scale``) and the rest."""
    if scope not in MUON_SCOPES:
        raise ValueError(f"muon scope must be one of {MUON_SCOPES}, got {scope!r}")
    linear = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    plain, scaled, rest = [], {}, []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim != 2 or (scope == "blocks" and not name.startswith(_BLOCK_PREFIXES)):
            rest.append(p)
        elif id(p) in linear:
            plain.append(p)
        else:  # stored (rows, H) like optax's: its scale is sqrt(max(1, H / rows)), torch's sqrt(max(1, rows / H))
            rows, cols = p.shape
            scale = math.sqrt(max(1.0, cols / rows)) / math.sqrt(max(1.0, rows / cols))
            scaled.setdefault(scale, []).append(p)
    groups = [{"params": plain, "lr_scale": 1.0}] if plain else []
    groups += [{"params": ps, "lr_scale": s} for s, ps in scaled.items()]
    return groups, rest


def newton_schulz_fp32(grad: torch.Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int,
                       eps: float) -> torch.Tensor:  # fmt: skip
    """torch.optim.Muon's quintic Newton-Schulz orthogonalisation, computed in fp32 instead of bf16."""
    a, b, c = ns_coefficients
    x = grad.float()
    wide = x.T if x.shape[0] > x.shape[1] else x  # iterate on the (short, long) orientation
    wide = wide / wide.norm().clamp(min=eps)  # spectral norm <= 1
    for _ in range(ns_steps):
        gram = wide @ wide.T
        wide = a * wide + (b * gram + c * gram @ gram) @ wide  # X <- a X + (b A + c A^2) X, A = X X^T
    return wide.T if x.shape[0] > x.shape[1] else wide


@contextlib.contextmanager
def _newton_schulz_fp32() -> Iterator[None]:
    """Within the context torch.optim.Muon orthogonalises in fp32 (its module function swapped)."""
    from torch.optim import _muon

    original = _muon._zeropower_via_newtonschulz
    _muon._zeropower_via_newtonschulz = newton_schulz_fp32
    try:
        yield
    finally:
        _muon._zeropower_via_newtonschulz = original


class MuonWithAdam:
    """One optimizer object over two: ``torch.optim.Muon`` on matrices and an Adam on the rest.

    ``param_groups`` lists both optimizers' groups (a learning-rate setter that writes ``group["lr"]`` works);
    each group's ``lr_scale`` multiplies its lr during :meth:`step`."""

    def __init__(self, muon: torch.optim.Optimizer | None, adam: torch.optim.Optimizer | None):
        self.muon, self.adam = muon, adam  # None when a side has no parameters

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.muon, self.adam) if o is not None]

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    @torch.no_grad()
    def step(self) -> None:
        """One step of both optimizers, each group at lr * lr_scale (Newton-Schulz in fp32 on a CPU)."""
        saved = [(group, group["lr"]) for group in self.param_groups]
        for group, lr in saved:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        on_cpu = self.muon is not None and self.muon.param_groups[0]["params"][0].device.type == "cpu"
        try:
            with _newton_schulz_fp32() if on_cpu else contextlib.nullcontext():
                for optimizer in self.optimizers:
                    optimizer.step()
        finally:
            for group, lr in saved:
                group["lr"] = lr

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def _named(self) -> dict[str, torch.optim.Optimizer]:
        return {name: o for name, o in (("muon", self.muon), ("adam", self.adam)) if o is not None}

    def state_dict(self) -> dict:
        return {name: optimizer.state_dict() for name, optimizer in self._named().items()}

    def load_state_dict(self, state: Mapping) -> None:
        missing = set(self._named()) - set(state)
        if missing:
            raise KeyError(f"optimizer state lacks {sorted(missing)} (not this Muon + Adam state)")
        for name, optimizer in self._named().items():
            optimizer.load_state_dict(state[name])


def build_pmf_optimizer(
    model: nn.Module,
    lr: float = 1e-3,
    *,
    betas: tuple[float, float] = (0.9, 0.95),
    momentum: float = 0.95,
    eps: float = 1e-8,
    muon_scope: str = "matrices",
    adam: str = "nadam",
) -> MuonWithAdam:
    """The public recipe: Muon (momentum 0.95, Nesterov, no weight decay) on the 2-D parameters
    (``muon_scope="blocks"``: only those of the transformer blocks) and Nesterov Adam (``adam="nadam"``,
    as optax) or AdamW on the others, no weight decay anywhere."""
    if adam not in ADAM_KINDS:
        raise ValueError(f"adam must be one of {ADAM_KINDS}, got {adam!r}")
    groups, rest = _muon_groups(model, muon_scope)
    muon = torch.optim.Muon(groups, lr=lr, weight_decay=0.0, momentum=momentum, nesterov=True,
                            adjust_lr_fn="original") if groups else None  # fmt: skip
    if not rest:
        other = None
    elif adam == "nadam":  # mu_t = b1 (1 - 0.5 * 0.96^(t * decay)) -> b1: optax's Nesterov Adam
        other = torch.optim.NAdam(rest, lr=lr, betas=betas, eps=eps, weight_decay=0.0, momentum_decay=math.inf)
    else:
        other = torch.optim.AdamW(rest, lr=lr, betas=betas, eps=eps, weight_decay=0.0)
    return MuonWithAdam(muon, other)
