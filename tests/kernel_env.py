"""Where the Triton kernel tests run: the GPU when there is one, else the CPU under TRITON_INTERPRET=1.

Triton reads TRITON_INTERPRET when its own library is first imported, so on a CPU machine the variable
is set here, when pytest collects the kernel tests (before any test imports triton)."""

import contextlib
import os

import pytest
import torch

from jit_diffusion.core import kernels

HAS_TRITON = kernels._TRITON_FOUND
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
if HAS_TRITON and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _interpreter_ready() -> bool:
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    return os.environ.get("TRITON_INTERPRET") == "1" and isinstance(tl.standard.sum, InterpretedFunction)


@contextlib.contextmanager
def triton_device():
    """Yield the device on which the kernels run, with the kernel mode 'on' (also for CPU tensors)."""
    if torch.cuda.is_available():
        device = torch.device("cuda")
    elif _interpreter_ready():
        device = torch.device("cpu")
    else:
        pytest.fail("triton was imported before TRITON_INTERPRET=1 was set; run with TRITON_INTERPRET=1")
    with kernels.mode("on"):
        kernels.triton_ops()
        yield device
