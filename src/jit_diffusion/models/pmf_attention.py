"""Softmax attention that also runs under forward-mode autodiff (the JVP of the MeanFlow objective).

``scaled_dot_product_attention`` has no forward-AD formula in PyTorch, so under
``torch.autograd.forward_ad`` :func:`attention` takes one of two routes (``JVP_MODES``):

- ``function`` (default): SDPA for the value and for the backward pass, and an explicit JVP rule
  (:class:`SDPAWithJVP`) that materialises the attention matrix once, in fp32;
- ``math``: the attention written as matmul + softmax + matmul, which forward AD differentiates
  op by op (and whose backward keeps the (N, N) matrix).

Outside forward AD both are plain SDPA.
"""

from __future__ import annotations

import math

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

from .layers import at_least_fp32

JVP_MODES = ("function", "math")


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v with the softmax in fp32 (at least); q, k, v (B, nh, N, hd)."""
    scores = (at_least_fp32(q) @ at_least_fp32(k).transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, nh, N, N)
    return (scores.softmax(dim=-1) @ at_least_fp32(v)).to(v.dtype)


def attention_jvp(q, k, v, out, dq, dk, dv) -> torch.Tensor:
    """Tangent of O = softmax(S) v, S = s q k^T, for tangents (dq, dk, dv); ``out`` is O.

    dS = s (dq k^T + q dk^T); dO = (P * dS) v - rowsum(P * dS) O + P dv, in fp32 at least."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    q, k, v, out = at_least_fp32(q), at_least_fp32(k), at_least_fp32(v), at_least_fp32(out)
    zeros = [torch.zeros_like(x) for x in (q, k, v)]
    dq, dk, dv = (z if d is None else d.to(z.dtype) for d, z in zip((dq, dk, dv), zeros))
    probs = ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1)  # (B, nh, N, N)
    # dq k^T + q dk^T as one matmul over the concatenated head dim
    d_scores = (torch.cat([dq, q], -1) @ torch.cat([k, dk], -1).transpose(-2, -1)) * scale
    weighted = probs * d_scores
    mean = weighted.sum(-1, keepdim=True)  # (B, nh, N, 1)
    # (P * dS) v + P dv as one matmul over the concatenated key axis
    return torch.cat([weighted, probs], -1) @ torch.cat([v, dv], -2) - mean * out


class SDPAWithJVP(torch.autograd.Function):
    """SDPA whose backward is SDPA's own and whose forward-mode derivative is :func:`attention_jvp`."""

    @staticmethod
    def forward(ctx, q, k, v):
        with torch.enable_grad():  # keep SDPA's graph for backward (no recomputation)
            inputs = [x.detach().requires_grad_(x.requires_grad) for x in (q, k, v)]
            out = F.scaled_dot_product_attention(*inputs)
        ctx.graph = (inputs, out)
        ctx.save_for_forward(q, k, v)
        ctx.out_value = out.detach()
        return out.detach()

    @staticmethod
    def backward(ctx, grad_out):
        inputs, out = ctx.graph
        need = [x for x in inputs if x.requires_grad]
        grads = iter(torch.autograd.grad(out, need, grad_out) if need else ())
        del ctx.graph
        return tuple(next(grads) if x.requires_grad else None for x in inputs)

    @staticmethod
    def jvp(ctx, dq, dk, dv):
        q, k, v = ctx.saved_tensors
        return attention_jvp(q, k, v, ctx.out_value, dq, dk, dv).to(v.dtype)


def _has_tangent(*tensors: torch.Tensor) -> bool:
    return any(fwAD.unpack_dual(x).tangent is not None for x in tensors)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, jvp_mode: str = "function") -> torch.Tensor:
    """Attention of (B, nh, N, hd) q, k, v through SDPA; under forward AD through ``jvp_mode``."""
    if not _has_tangent(q, k, v):
        return F.scaled_dot_product_attention(q, k, v)
    if jvp_mode == "math":
        return math_attention(q, k, v)
    if jvp_mode == "function":
        return SDPAWithJVP.apply(q, k, v)
    raise ValueError(f"attention jvp_mode must be one of {JVP_MODES}, got {jvp_mode!r}")
