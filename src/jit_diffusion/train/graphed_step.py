"""A training step on static buffers that a CUDA graph can capture: draws, forward, loss, backward,
gradient clipping, fused AdamW and every EMA, launched as one graph instead of ~1,000 kernels.

The step is the trainer's ``train_step`` for one micro-batch per process, written so that nothing in
it reads a Python value that changes between steps: the images and labels are copied into fixed
buffers, the step number lives in a device tensor that the counter-based draws read (see :mod:`rng`),
and the learning rate lives in a device tensor that the capturable AdamW reads. The first
``warmup_steps`` calls run eagerly (real training steps, on a side stream, which also compiles and
initialises every lazy state); the next call captures the step and every later call replays it.
Eager and replayed steps launch the same kernels, so they compute the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..diffusion.meanflow import PMFObjective
from .optim import set_learning_rate


def micro_batch_backward(model: nn.Module, objective: Callable, augment: Callable, x_uint8: torch.Tensor,
                         y: torch.Tensor, step, positions: torch.Tensor, use_bf16: bool,
                         accum: int = 1) -> torch.Tensor:  # fmt: skip
    """The draws, forward and loss of one micro-batch, then the backward pass of loss / ``accum``; returns
    the loss (shared by this step and ``Trainer.train_step``). ``augment`` gives (x, y, *draws): (t, noise)
    for flow matching, one :class:`MeanFlowDraws` for the pMF objective, whose returned (logged) value is the
    raw mean |V - v_g|^2 (its adaptively weighted loss is ~2 by construction)."""
    x, y, *draws = augment(x_uint8, y, step, positions)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=use_bf16):
        if isinstance(objective, PMFObjective):
            terms = objective.per_sample_losses(model, x, y, *draws)
            loss, logged = terms["loss"].mean(), terms["u"].mean()
        else:
            t, noise = draws
            loss = logged = objective(model, x, y, t=t, noise=noise, label_dropout=False)
    (loss / accum).backward()
    return logged


def apply_update(raw_model: nn.Module, optimizer: torch.optim.Optimizer, ema, grad_clip: float) -> None:
    """Gradient clipping (foreach on CUDA: no sync), the optimizer step and every EMA update."""
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip)
    optimizer.step()
    ema.update(raw_model)


class GraphedTrainStep:
    """``step(x_uint8, y, step, lr) -> loss``: one optimizer step with the trainer's math.

    ``augment(x_uint8, y, step, positions)`` gives (x, y, t, noise) as :class:`train.Augment` does;
    ``objective(model, x, y, t=, noise=, label_dropout=False)`` the loss. ``model`` is what runs the
    forward (possibly compiled), ``raw_model`` what the EMA reads, ``positions`` the global batch
    positions of this process's rows. With ``cuda_graph=False`` (or on a CPU) every step runs eagerly,
    which is how the step is compared against the trainer's without a GPU.
    """

    def __init__(self, *, model: nn.Module, raw_model: nn.Module, objective: Callable, augment: Callable,
                 optimizer: torch.optim.Optimizer, ema, positions: torch.Tensor, use_bf16: bool,
                 grad_clip: float = 0.0, cuda_graph: bool = True, warmup_steps: int = 3):
        self.model, self.raw_model, self.objective, self.augment = model, raw_model, objective, augment
        self.optimizer, self.ema, self.positions = optimizer, ema, positions
        self.device = positions.device
        self.use_bf16, self.grad_clip = use_bf16, grad_clip
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        if self.cuda_graph and warmup_steps < 1:
            raise ValueError("a CUDA graph needs at least one eager warm-up step before the capture")
        self.warmup_steps = warmup_steps
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self._step = torch.zeros((), dtype=torch.int64, device=self.device)
        self._loss = torch.zeros((), dtype=torch.float32, device=self.device)
        self._x: torch.Tensor | None = None
        self._y: torch.Tensor | None = None

    def _body(self) -> None:
        """Everything the graph holds; reads only the static buffers."""
        loss = micro_batch_backward(self.model, self.objective, self.augment, self._x, self._y, self._step,
                                    self.positions, self.use_bf16)  # fmt: skip
        apply_update(self.raw_model, self.optimizer, self.ema, self.grad_clip)
        self._loss.copy_(loss.detach())

    def __call__(self, x_uint8: torch.Tensor, y: torch.Tensor, step: int, lr: float) -> torch.Tensor:
        if self._x is None:
            self._x = torch.empty(x_uint8.shape, dtype=x_uint8.dtype, device=self.device)
            self._y = torch.empty(y.shape, dtype=y.dtype, device=self.device)
        self._x.copy_(x_uint8, non_blocking=True)
        self._y.copy_(y, non_blocking=True)
        self._step.fill_(step)
        set_learning_rate(self.optimizer, lr)
        self.calls += 1
        if not self.cuda_graph:
            self._body()
            self.optimizer.zero_grad(set_to_none=True)
        elif self.graph is not None:
            self.graph.replay()
        elif self.calls <= self.warmup_steps:
            self._eager_on_side_stream()
        else:
            self._capture()
            self.graph.replay()  # the capture only records: this replay is the step
        return self._loss.clone()

    def _eager_on_side_stream(self) -> None:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self._body()
            self.optimizer.zero_grad(set_to_none=True)
        torch.cuda.current_stream(self.device).wait_stream(side)

    def _capture(self) -> None:
        if not all(group.get("capturable", False) for group in self.optimizer.param_groups):
            raise ValueError("a CUDA-graph step needs an optimizer built with capturable=True "
                             "(see train_optim.capturable_adamw)")  # fmt: skip
        self.optimizer.zero_grad(set_to_none=True)  # backward inside the graph allocates the grads
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._body()
