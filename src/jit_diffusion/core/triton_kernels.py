"""Triton kernels of the fast path, registered as ``torch.library.triton_op`` custom ops.

Imported lazily by :mod:`kernels` (which owns the dispatch and the autograd formulas), so a machine
without Triton never imports this file. Under ``TRITON_INTERPRET=1`` the same kernels run on CPU
tensors, which is how the tests check them against the PyTorch reference without a GPU.

- ``qk_norm_rope_fwd`` / ``qk_norm_rope_bwd``: RMSNorm over the head dim, times the norm weight,
  then the 2-D rotary embedding, in one pass over q (or k); fp32 math, one rounding at the end.
- ``counter_uniform`` / ``counter_normal``: the counter-based SplitMix64 draws of :mod:`rng`,
  bit-for-bit the same integer words as the PyTorch code.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch.library import custom_op, triton_op, wrap_triton

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
if _INTERPRET:  # the interpreter has no libdevice; numpy's functions stand in

    @triton.jit
    def _log_cos_sin(radius_arg, angle):
        return tl.log(radius_arg), tl.cos(angle), tl.sin(angle)

else:  # libdevice: the same functions (1 ulp) that PyTorch's CUDA kernels call
    from triton.language.extra import libdevice

    @triton.jit
    def _log_cos_sin(radius_arg, angle):
        return libdevice.log(radius_arg), libdevice.cos(angle), libdevice.sin(angle)


def _op(name: str, fake):
    """Register ``fn`` as the custom op ``jit_diffusion::name``.

    On a GPU it is a ``triton_op``, which torch.compile traces into (Inductor sees the kernel). Interpreted
    kernels cannot run on fake tensors, so under TRITON_INTERPRET it is an opaque ``custom_op`` with
    ``fake`` giving the output shapes: compiled code then calls it like any other operator."""

    def register(fn):
        if not _INTERPRET:
            return triton_op(f"jit_diffusion::{name}", fn, mutates_args={})
        op = custom_op(f"jit_diffusion::{name}", fn, mutates_args=())
        op.register_fake(fake)
        return op

    return register


# ------------------------------------------------------------------------------------------------
# fused qk-RMSNorm + 2-D RoPE
# ------------------------------------------------------------------------------------------------


@triton.jit
def _row_offsets(rows, H, N, stride_b, stride_h, stride_n):
    """Element offset of row r = (b H + h) N + n of a (B, H, N, hd) view with the given strides."""
    b = (rows // (H * N)).to(tl.int64)
    h = ((rows // N) % H).to(tl.int64)
    n = rows % N
    return b * stride_b + h * stride_h + n.to(tl.int64) * stride_n, n


@triton.jit
def _qk_norm_rope_fwd_kernel(x_ptr, w_ptr, cos_ptr, sin_ptr, out_ptr, rstd_ptr, n_rows, H, N,
                             stride_b, stride_h, stride_n, eps,
                             HD: tl.constexpr, BLOCK_HD: tl.constexpr, ROWS: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_HD)
    partner = cols ^ 1  # the other channel of the rotated pair
    row_ok = rows < n_rows
    mask = row_ok[:, None] & (cols < HD)[None, :]
    base, n = _row_offsets(rows, H, N, stride_b, stride_h, stride_n)
    x = tl.load(x_ptr + base[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    x_partner = tl.load(x_ptr + base[:, None] + partner[None, :], mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / HD + eps)  # 1 / sqrt(mean(x^2) + eps), (ROWS,)
    w = tl.load(w_ptr + cols, mask=cols < HD, other=0.0).to(tl.float32)
    w_partner = tl.load(w_ptr + partner, mask=cols < HD, other=0.0).to(tl.float32)
    u = x * rstd[:, None] * w[None, :]
    u_partner = x_partner * rstd[:, None] * w_partner[None, :]
    table = n[:, None].to(tl.int64) * HD + cols[None, :]
    cos = tl.load(cos_ptr + table, mask=mask, other=0.0)
    sin = tl.load(sin_ptr + table, mask=mask, other=0.0)
    sign = tl.where(cols % 2 == 0, -1.0, 1.0)  # rotate_half: (a, b) -> (-b, a)
    out = u * cos + sign[None, :] * u_partner * sin
    out_offsets = rows[:, None].to(tl.int64) * HD + cols[None, :]
    tl.store(out_ptr + out_offsets, out.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + rows, rstd, mask=row_ok)


@triton.jit
def _qk_norm_rope_bwd_kernel(grad_ptr, x_ptr, w_ptr, cos_ptr, sin_ptr, rstd_ptr, dx_ptr, dw_partial_ptr, n_rows,
                             H, N, stride_b, stride_h, stride_n,
                             HD: tl.constexpr, BLOCK_HD: tl.constexpr, ROWS: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_HD)
    partner = cols ^ 1
    row_ok = rows < n_rows
    col_ok = cols < HD
    mask = row_ok[:, None] & col_ok[None, :]
    base, n = _row_offsets(rows, H, N, stride_b, stride_h, stride_n)
    x = tl.load(x_ptr + base[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
    flat = rows[:, None].to(tl.int64) * HD
    grad = tl.load(grad_ptr + flat + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    grad_partner = tl.load(grad_ptr + flat + partner[None, :], mask=mask, other=0.0).to(tl.float32)
    table = n[:, None].to(tl.int64) * HD
    cos = tl.load(cos_ptr + table + cols[None, :], mask=mask, other=0.0)
    sin_partner = tl.load(sin_ptr + table + partner[None, :], mask=mask, other=0.0)
    sign = tl.where(cols % 2 == 0, -1.0, 1.0)
    # out = u cos + R(u) sin with R^T = -R:  du = g cos - sign * g[partner] sin[partner]
    du = grad * cos - sign[None, :] * grad_partner * sin_partner
    x_hat = x * rstd[:, None]  # the normalised input
    tl.store(dw_partial_ptr + pid.to(tl.int64) * HD + cols, tl.sum(du * x_hat, axis=0), mask=col_ok)
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    dx_hat = du * w[None, :]
    # d/dx of x * rstd(x):  rstd (dx_hat - x_hat mean(dx_hat x_hat))
    dx = rstd[:, None] * (dx_hat - x_hat * (tl.sum(dx_hat * x_hat, axis=1) / HD)[:, None])
    tl.store(dx_ptr + flat + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _tile(head_dim: int) -> tuple[int, int]:
    block_hd = triton.next_power_of_2(head_dim)
    return block_hd, max(1, 4096 // block_hd)  # about 4k elements per program


def _fake_qk_norm_rope_fwd(x, weight, cos, sin, eps):
    B, H, N, head_dim = x.shape
    return x.new_empty((B, H, N, head_dim)), x.new_empty((B, H, N), dtype=torch.float32)


@_op("qk_norm_rope_fwd", _fake_qk_norm_rope_fwd)
def qk_norm_rope_fwd(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, H, N, hd) with unit stride on hd -> (rope(rmsnorm(x) * weight) contiguous in x's dtype, rstd (B, H, N))."""
    B, H, N, head_dim = x.shape
    out = torch.empty((B, H, N, head_dim), dtype=x.dtype, device=x.device)
    rstd = torch.empty((B, H, N), dtype=torch.float32, device=x.device)
    block_hd, rows_per_program = _tile(head_dim)
    n_rows = B * H * N
    grid = (triton.cdiv(n_rows, rows_per_program),)
    wrap_triton(_qk_norm_rope_fwd_kernel)[grid](
        x, weight, cos, sin, out, rstd, n_rows, H, N, x.stride(0), x.stride(1), x.stride(2), eps,
        HD=head_dim, BLOCK_HD=block_hd, ROWS=rows_per_program,
    )  # fmt: skip
    return out, rstd


def _fake_qk_norm_rope_bwd(grad, x, weight, cos, sin, rstd):
    return x.new_empty(x.shape), weight.new_empty(weight.shape)


@_op("qk_norm_rope_bwd", _fake_qk_norm_rope_bwd)
def qk_norm_rope_bwd(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor,
                     sin: torch.Tensor, rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients (dx contiguous in x's dtype, dweight fp32) of :func:`qk_norm_rope_fwd` for a contiguous grad."""
    B, H, N, head_dim = x.shape
    block_hd, rows_per_program = _tile(head_dim)
    n_rows = B * H * N
    programs = triton.cdiv(n_rows, rows_per_program)
    dx = torch.empty((B, H, N, head_dim), dtype=x.dtype, device=x.device)
    dw_partial = torch.empty((programs, head_dim), dtype=torch.float32, device=x.device)
    wrap_triton(_qk_norm_rope_bwd_kernel)[(programs,)](
        grad, x, weight, cos, sin, rstd, dx, dw_partial, n_rows, H, N, x.stride(0), x.stride(1), x.stride(2),
        HD=head_dim, BLOCK_HD=block_hd, ROWS=rows_per_program,
    )  # fmt: skip
    return dx, dw_partial.sum(0).to(weight.dtype)


# ------------------------------------------------------------------------------------------------
# counter-based SplitMix64 draws (see rng.py for the definition they reproduce)
# ------------------------------------------------------------------------------------------------


@triton.jit
def _splitmix64(x):
    """SplitMix64 finaliser on uint64 (wrapping multiply, logical shifts)."""
    x = x + 0x9E3779B97F4A7C15
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB
    return x ^ (x >> 31)


@triton.jit
def _as_u64(value):
    return value.to(tl.int64).to(tl.uint64, bitcast=True)


@triton.jit(do_not_specialize=["seed_key", "step", "stream"])  # keep them values (1 would be a constexpr)
def _counter_kernel(positions_ptr, out_ptr, step_ptr, seed_key, step, stream, numel, words,
                    NORMAL: tl.constexpr, STEP_FROM_PTR: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    if STEP_FROM_PTR:
        step_value = _as_u64(tl.load(step_ptr))
    else:
        step_value = _as_u64(step)
    # key = mix(mix(mix(seed) ^ step) ^ stream), with mix(seed) done on the host
    key = _splitmix64(_splitmix64(_as_u64(seed_key) ^ step_value) ^ _as_u64(stream))
    sample_key = _splitmix64(_as_u64(tl.load(positions_ptr + row)) ^ key)
    word = _splitmix64(sample_key + cols.to(tl.uint64) * 0x9E3779B97F4A7C15)  # (BLOCK,)
    u1 = ((word >> 40).to(tl.int32).to(tl.float32) + 0.5) * (1.0 / 16777216.0)  # top 24 bits
    out_row = out_ptr + row.to(tl.int64) * numel
    if NORMAL:
        u2 = (((word >> 16) & 0xFFFFFF).to(tl.int32).to(tl.float32) + 0.5) * (1.0 / 16777216.0)
        log_u1, cos_angle, sin_angle = _log_cos_sin(u1, 6.283185307179586 * u2)
        radius = tl.sqrt_rn(-2.0 * log_u1)  # Box-Muller: r cos(2 pi u2), r sin(2 pi u2)
        tl.store(out_row + cols, radius * cos_angle, mask=cols < words)
        tl.store(out_row + words + cols, radius * sin_angle, mask=(cols < words) & (words + cols < numel))
    else:
        tl.store(out_row + cols, u1, mask=cols < numel)


def _counter_layout(positions: torch.Tensor, numel: int, normal: bool) -> tuple[torch.Tensor, int, int, tuple]:
    """Output buffer, words per row, block size and grid of a counter draw."""
    out = torch.empty((positions.shape[0], numel), dtype=torch.float32, device=positions.device)
    words = (numel + 1) // 2 if normal else numel
    block = min(1024, triton.next_power_of_2(max(words, 16)))
    return out, words, block, (positions.shape[0], triton.cdiv(words, block))


def _fake_counter(positions, step_tensor, seed_key, step, stream, numel):
    return positions.new_empty((positions.shape[0], numel), dtype=torch.float32)


@_op("counter_uniform", _fake_counter)
def counter_uniform(positions: torch.Tensor, step_tensor: torch.Tensor | None, seed_key: int, step: int,
                    stream: int, numel: int) -> torch.Tensor:
    """U(0, 1) fp32 (B, numel) for int64 ``positions`` (B,); the step from ``step_tensor`` when given."""
    out, words, block, grid = _counter_layout(positions, numel, normal=False)
    step_arg = positions if step_tensor is None else step_tensor  # a dummy pointer when the step is a scalar
    wrap_triton(_counter_kernel)[grid](
        positions, out, step_arg, seed_key, step, stream, numel, words,
        NORMAL=False, STEP_FROM_PTR=step_tensor is not None, BLOCK=block,
    )  # fmt: skip
    return out


@_op("counter_normal", _fake_counter)
def counter_normal(positions: torch.Tensor, step_tensor: torch.Tensor | None, seed_key: int, step: int,
                   stream: int, numel: int) -> torch.Tensor:
    """N(0, 1) fp32 (B, numel), Box-Muller on the words of :func:`counter_uniform`'s hash."""
    out, words, block, grid = _counter_layout(positions, numel, normal=True)
    step_arg = positions if step_tensor is None else step_tensor
    wrap_triton(_counter_kernel)[grid](
        positions, out, step_arg, seed_key, step, stream, numel, words,
        NORMAL=True, STEP_FROM_PTR=step_tensor is not None, BLOCK=block,
    )  # fmt: skip
    return out
