"""Triton kernels of the fast path, registered as ``torch.library.triton_op`` custom ops.

Imported lazily by :mod:`kernels` (which owns the dispatch and the autograd formulas), so a machine
without Triton never imports this file. Under ``TRITON_INTERPRET=1`` the same kernels run on CPU
tensors, which is how the tests check them against the PyTorch reference without a GPU.

- ``qk_norm_rope_fwd`` / ``qk_norm_rope_bwd``: RMSNorm over the head dim, times the norm weight,
  then the 2-D rotary embedding, in one pass over q (or k); fp32 math, one rounding at the end.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch.library import custom_op, triton_op, wrap_triton

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
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
