"""Counter-based random numbers: every training draw is a pure function of (seed, step, sample).

The training noise, times, flips and label drops of the sample at position ``p`` of the global
batch of step ``s`` are hashed from ``(seed, s, stream, p, element)`` with the SplitMix64 mixer, so
they do not depend on how the global batch is split over processes or accumulation steps, nor on
what ran before: one process and N processes see the same draws, and a resumed run needs no
generator state to continue exactly. The hash runs as int64 tensor ops on the batch's device, or,
for CUDA tensors, as one Triton kernel per draw (:mod:`kernels`) that produces the same integer words.
``step`` may also be a one-element int64 tensor on that device, so that a captured CUDA graph reads the
current step at replay.
"""

from __future__ import annotations

import math

import torch

from . import kernels

_MASK64 = (1 << 64) - 1


def _i64(value: int) -> int:
    """Reinterpret an unsigned 64-bit constant as a signed int64."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _i64(0x9E3779B97F4A7C15)
_C1 = _i64(0xBF58476D1CE4E5B9)
_C2 = _i64(0x94D049BB133111EB)

# stream ids: one independent stream per kind of draw
STREAM_TIME, STREAM_NOISE, STREAM_FLIP, STREAM_LABEL_DROP = 1, 2, 3, 4
STREAM_SUBSTITUTE = 5  # which image replaces one that does not decode
STREAM_RESAMPLE = 6  # inpainting's fresh noise when it jumps back (jit edit inpaint --resample)


def _srl(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finaliser on int64 tensors (wrapping arithmetic)."""
    x = x + _GOLDEN
    x = (x ^ _srl(x, 30)) * _C1
    x = (x ^ _srl(x, 27)) * _C2
    return x ^ _srl(x, 31)


def _mix_int(x: int) -> int:
    """SplitMix64 of a Python int (for the scalar part of the key)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _seed_key(seed: int) -> int:
    return _i64(_mix_int(seed & _MASK64))


def _base_key(seed: int, step: int | torch.Tensor, stream: int) -> int | torch.Tensor:
    """mix(mix(mix(seed) ^ step) ^ stream) as a signed int64 (a 0-d tensor when ``step`` is one)."""
    if isinstance(step, torch.Tensor):
        # the seed's key stays a Python scalar: a tensor made from it would be a host-to-device copy,
        # which a CUDA graph cannot capture
        return splitmix64(splitmix64(step.reshape(()).to(torch.int64) ^ _seed_key(seed)) ^ stream)
    return _i64(_mix_int(_mix_int(_mix_int(seed & _MASK64) ^ (step & _MASK64)) ^ stream))


def _bits(seed: int, step: int | torch.Tensor, stream: int, positions: torch.Tensor, numel: int) -> torch.Tensor:
    """(B, numel) pseudo-random int64 words for the samples at ``positions`` (B,)."""
    sample_keys = splitmix64(positions.to(torch.int64) ^ _base_key(seed, step, stream))  # (B,)
    # the xor keeps the element index a value: Inductor would fold arange * constant into an index
    # expression, where a 64-bit constant does not fit (int32 in Triton, wrong vector code on CPU)
    counters = (torch.arange(numel, device=positions.device, dtype=torch.int64) ^ 0) * _GOLDEN  # (numel,)
    return splitmix64(sample_keys[:, None] + counters[None, :])  # (B, numel)


def uniform(seed: int, step: int | torch.Tensor, stream: int, positions: torch.Tensor, numel: int = 1) -> torch.Tensor:
    """U(0, 1) fp32 values (B, numel), never exactly 0 or 1 (24-bit resolution)."""
    if kernels.use_triton(positions):
        return kernels.counter_draws("uniform", _seed_key(seed), step, stream, positions, numel)
    top24 = _srl(_bits(seed, step, stream, positions, numel), 40)
    return (top24.to(torch.float32) + 0.5) * (1.0 / 2**24)


def normal(seed: int, step: int | torch.Tensor, stream: int, positions: torch.Tensor, numel: int) -> torch.Tensor:
    """N(0, 1) fp32 values (B, numel): Box-Muller on two 24-bit uniforms per word, both outputs used."""
    if kernels.use_triton(positions):
        return kernels.counter_draws("normal", _seed_key(seed), step, stream, positions, numel)
    words = _bits(seed, step, stream, positions, (numel + 1) // 2)
    u1 = (_srl(words, 40).to(torch.float32) + 0.5) * (1.0 / 2**24)
    u2 = ((_srl(words, 16) & 0xFFFFFF).to(torch.float32) + 0.5) * (1.0 / 2**24)
    radius = torch.sqrt(-2.0 * torch.log(u1))  # z1, z2 = r cos(2 pi u2), r sin(2 pi u2)
    angle = (2.0 * math.pi) * u2
    return torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)[:, :numel]
