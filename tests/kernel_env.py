"""Where the Triton kernel tests run: the GPU when there is one, else the CPU under TRITON_INTERPRET=1."""

import contextlib

import pytest
import torch

from jit_diffusion import kernels

HAS_TRITON = kernels._TRITON_FOUND
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")


@contextlib.contextmanager
def triton_device(monkeypatch):
    """Yield the device on which the kernels run, with the kernel mode 'on' (also for CPU tensors)."""
    if torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        monkeypatch.setenv("TRITON_INTERPRET", "1")  # read once, when the kernels are first imported
        device = torch.device("cpu")
    with kernels.mode("on"):
        kernels.triton_ops()
        yield device
