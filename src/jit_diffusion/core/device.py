"""Where tensors live and in which precision the network runs: one rule for every command."""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "bf16", "fp32")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> cuda if available, else mps, else cpu; any other name as given, when this machine has
    it (a one-line ValueError otherwise); a ``torch.device`` as given."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"--device: unknown device {device!r} (use auto, cpu, cuda, cuda:N or mps)") from err
    _check_available(resolved, device)
    return resolved


def _check_available(device: torch.device, name: str) -> None:
    """A one-line error for a CUDA/MPS device this machine does not have (instead of a driver traceback)."""
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            built = "" if torch.version.cuda else " (this PyTorch is built without CUDA)"
            raise ValueError(f"--device {name}: no CUDA GPU is available{built}; use --device cpu or auto")
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"--device {name}: MPS is not available here; use --device cpu or auto")


def with_index(device: str | torch.device) -> torch.device:
    """``device`` with its index filled in: ``cuda`` -> ``cuda:N`` of the current CUDA device, ``mps`` ->
    ``mps:0``; so ``torch.device("cuda")`` and a tensor's ``cuda:0`` compare equal."""
    device = torch.device(device)
    if device.index is None and device.type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    if device.index is None and device.type == "mps":  # there is one
        return torch.device("mps", 0)
    return device


def same_device(a: str | torch.device, b: str | torch.device) -> bool:
    """Whether ``a`` and ``b`` name one device (``cuda`` is the current CUDA device)."""
    return with_index(a) == with_index(b)


def check_precision(precision: str) -> str:
    """Validate a ``--precision`` value (auto, bf16 or fp32); returns it."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def use_bf16(device: torch.device, precision: str = "auto") -> bool:
    """The precision rule: bf16 autocast for ``bf16``, and for ``auto`` on CUDA; fp32 otherwise."""
    check_precision(precision)
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def autocast_context(device: torch.device, precision: str = "auto"):
    """bf16 autocast where :func:`use_bf16` says so, else a no-op context."""
    if use_bf16(device, precision):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
