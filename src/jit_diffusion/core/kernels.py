"""When the fast path's Triton kernels run, and their autograd formulas.

The PyTorch code in :mod:`layers` and :mod:`rng` is the reference; the kernels in
:mod:`triton_kernels` compute the same functions with fewer passes over memory. Which one runs is
decided per call by :func:`use_triton`:

- ``auto`` (default): Triton kernels for CUDA tensors when Triton is installed, PyTorch otherwise;
- ``off``: always the PyTorch reference (``JIT_TRITON=off`` in the environment, any case, or ``set_mode``);
- ``on``: Triton kernels for CPU tensors as well, which needs ``TRITON_INTERPRET=1`` (tests only).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import warnings
from collections.abc import Iterator
from types import ModuleType

import torch

MODES = ("auto", "on", "off")


def _triton_installed() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        return False


_TRITON_FOUND = _triton_installed()
_ENV_VALUE = os.environ.get("JIT_TRITON", "auto")
_mode = _ENV_VALUE.strip().lower() or "auto"  # a bad value is an error at use (check_mode), not at import
_ops: ModuleType | None = None


def set_mode(mode: str) -> None:
    """Choose ``auto``, ``on`` or ``off`` for every later call (compiled code recompiles on a change)."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"Triton kernel mode must be one of {MODES}, got {mode!r}")
    _mode = mode


def check_mode() -> str:
    """The current mode; a one-line ValueError when ``JIT_TRITON`` holds none of the modes."""
    if _mode not in MODES:
        raise ValueError(f"JIT_TRITON must be one of {', '.join(MODES)} (any case), got {_ENV_VALUE!r}")
    return _mode


def get_mode() -> str:
    return check_mode()


@contextlib.contextmanager
def mode(name: str) -> Iterator[None]:
    """Context manager form of :func:`set_mode`."""
    global _mode
    previous = _mode
    set_mode(name)
    try:
        yield
    finally:
        _mode = previous


def use_triton(tensor: torch.Tensor) -> bool:
    """True when the op on ``tensor`` should go through a Triton kernel."""
    if _mode == "off":
        return False
    check_mode()
    return _TRITON_FOUND and (tensor.is_cuda or _mode == "on")


def triton_ops() -> ModuleType:
    """The Triton custom ops, imported on first use (interpreted if TRITON_INTERPRET=1 is set then)."""
    global _ops
    if _ops is None:
        if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1":
            raise RuntimeError("Triton kernels without a GPU need TRITON_INTERPRET=1 (or JIT_TRITON=off)")
        _ops = importlib.import_module(".triton_kernels", __package__)
        _register_autograd(_ops)
    return _ops


# ------------------------------------------------------------------------------------------------
# fused qk-RMSNorm + RoPE
# ------------------------------------------------------------------------------------------------


def _setup_qk_norm_rope(ctx, inputs, output) -> None:
    x, weight, cos, sin, _eps = inputs
    ctx.save_for_backward(x, weight, cos, sin, output[1])


def _backward_qk_norm_rope(ctx, grad_out, _grad_rstd):
    x, weight, cos, sin, rstd = ctx.saved_tensors
    dx, dweight = triton_ops().qk_norm_rope_bwd(grad_out.contiguous(), x, weight, cos, sin, rstd)
    return dx, dweight, None, None, None


def _register_autograd(ops: ModuleType) -> None:
    ops.qk_norm_rope_fwd.register_autograd(_backward_qk_norm_rope, setup_context=_setup_qk_norm_rope)


def norm_rope(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float) -> torch.Tensor:
    """rope(rmsnorm(x) * weight) of x (B, H, N, hd) in one kernel; a contiguous result in x's dtype.

    The same function as ``apply_rope(RMSNorm(x), cos, sin)`` of :mod:`layers`, rounded once instead
    of twice in bf16. cos/sin are the fp32 (N, hd) tables."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    out, _rstd = triton_ops().qk_norm_rope_fwd(x, weight, cos.contiguous(), sin.contiguous(), eps)
    return out


# ------------------------------------------------------------------------------------------------
# counter-based draws
# ------------------------------------------------------------------------------------------------


def counter_draws(kind: str, seed_key: int, step: int | torch.Tensor, stream: int, positions: torch.Tensor,
                  numel: int) -> torch.Tensor:
    """``uniform`` or ``normal`` draws (B, numel) of :mod:`rng` from the Triton kernel.

    ``seed_key`` is SplitMix64(seed) as a signed int64; ``step`` an int or a one-element int64 tensor
    on the positions' device (a CUDA graph replays with the value the tensor holds at replay)."""
    ops = triton_ops()
    op = ops.counter_normal if kind == "normal" else ops.counter_uniform
    positions = positions.to(torch.int64).contiguous()
    if isinstance(step, torch.Tensor):
        return op(positions, step.reshape(1).to(torch.int64), seed_key, 0, stream, numel)
    return op(positions, None, seed_key, step, stream, numel)


# last, once every helper above is defined (triton_ops registers the autograd formulas)
if _TRITON_FOUND and torch.cuda.is_available():
    try:
        triton_ops()  # import now, so that compiled code never traces the import
    except Exception as err:  # e.g. a Triton too old for the kernels: the PyTorch code still works
        warnings.warn(f"jit_diffusion: Triton kernels unavailable ({type(err).__name__}: {err}); "
                      "using the PyTorch reference", stacklevel=1)  # fmt: skip
        _TRITON_FOUND = False
