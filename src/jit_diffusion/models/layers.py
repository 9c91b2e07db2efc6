"""Building blocks of the JiT network: norms, positional tables, attention, SwiGLU.

Every layer here computes the same function as the public JiT code in fp32; the attention goes
through ``torch.nn.functional.scaled_dot_product_attention`` so CUDA gets the flash kernels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..core import kernels


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """x in fp32, or as it is when wider (float64 stays float64, for finite-difference checks)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class RMSNorm(nn.Module):
    """RMSNorm with the statistics and the weight product in fp32, cast back to the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = at_least_fp32(x)
        # x / sqrt(mean(x^2) + eps) * w, all in fp32
        out = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (out * at_least_fp32(self.weight)).to(x.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation: x * (1 + scale) + shift, with (B, D) conditioning broadcast over tokens.

    Computed in fp32 and rounded once to x's dtype (identical ops when everything is fp32)."""
    return (x.float() * (1 + scale.float().unsqueeze(1)) + shift.float().unsqueeze(1)).to(x.dtype)


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of t in [0, 1] (not scaled by 1000): [cos(t f_k), sin(t f_k)]."""
    args = at_least_fp32(t[:, None]) * _timestep_frequencies(dim // 2, max_period, t.device)[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, dim)


_FREQUENCIES: dict[tuple[int, float, torch.device], torch.Tensor] = {}


def _timestep_frequencies(half: int, max_period: float, device: torch.device) -> torch.Tensor:
    """f_k = exp(-ln(max_period) * k / half), made on the CPU in the reference's op order (bit parity) and
    moved once per device: a copy inside every eager forward could not be captured by a CUDA graph."""
    def table() -> torch.Tensor:
        return torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / half).to(device)

    if torch.compiler.is_compiling():  # compiled code folds the table into a constant
        return table()
    key = (half, max_period, device)
    if key not in _FREQUENCIES:
        with torch.inference_mode(False):  # a normal tensor even when first asked for while sampling
            _FREQUENCIES[key] = table()
    return _FREQUENCIES[key]


def sincos_pos_embed_2d(dim: int, grid_size: int) -> torch.Tensor:
    """Fixed 2-D sin-cos table (N, dim), computed in float64 then cast to fp32.

    The first dim/2 channels encode the column index, the last dim/2 the row index; each half is
    [sin(pos w_k), cos(pos w_k)] with w_k = 10000^(-k / (dim/4)).
    """
    assert dim % 4 == 0, "pos_embed needs hidden_size divisible by 4"
    omega = torch.arange(dim // 4, dtype=torch.float64) / (dim / 4.0)
    omega = 1.0 / 10000**omega  # (dim/4,)
    coords = torch.arange(grid_size, dtype=torch.float32).to(torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")  # (S, S) each, row-major tokens

    def one_axis(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1)[:, None] * omega[None]  # (N, dim/4)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # (N, dim/2)

    return torch.cat([one_axis(cols), one_axis(rows)], dim=1).float()  # (N, dim)


def rope_tables_2d(head_dim: int, grid_size: int, num_prefix: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (num_prefix + S*S, head_dim) for 2-D rotary embedding with interleaved pairs.

    Frequencies f_j = 10000^(-2j / (head_dim/2)), j < head_dim/4, each used for a pair of channels.
    The first head_dim/2 channels rotate by the token's row, the rest by its column; the
    ``num_prefix`` in-context tokens in front get the identity rotation.
    """
    assert head_dim % 4 == 0, "2-D RoPE needs head_dim divisible by 4"
    half = head_dim // 2
    freqs = 1.0 / (10000 ** (torch.arange(0, half, 2)[: half // 2].float() / half))  # (hd/4,)
    # positions as arange(S) / S * S (float32), which is how the reference spells them
    pos = torch.arange(grid_size) / grid_size * grid_size
    angles = (pos[:, None] * freqs[None]).repeat_interleave(2, dim=-1)  # (S, hd/2): s f0, s f0, s f1, ...
    row = angles[:, None, :].expand(grid_size, grid_size, half)
    col = angles[None, :, :].expand(grid_size, grid_size, half)
    angles_2d = torch.cat([row, col], dim=-1).reshape(grid_size * grid_size, head_dim)  # (N, hd)
    cos, sin = angles_2d.cos(), angles_2d.sin()
    if num_prefix > 0:
        cos = torch.cat([torch.ones(num_prefix, head_dim), cos], dim=0)
        sin = torch.cat([torch.zeros(num_prefix, head_dim), sin], dim=0)
    return cos, sin


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Map each channel pair (a, b) to (-b, a)."""
    pairs = x.unflatten(-1, (-1, 2))  # (..., hd/2, 2)
    a, b = pairs.unbind(-1)
    return torch.stack((-b, a), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """out = x cos + rotate_half(x) sin, computed in fp32 and returned in x's dtype."""
    x32 = at_least_fp32(x)
    return (x32 * cos + rotate_half(x32) * sin).to(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with qk-RMSNorm and 2-D RoPE, through SDPA.

    On CUDA the norm and the rotation of q and k run as one Triton kernel each (see :mod:`kernels`)."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        assert dim % num_heads == 0, f"hidden_size {dim} is not divisible by num_heads {num_heads}"
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.q_norm = RMSNorm(self.head_dim)
        self.k_norm = RMSNorm(self.head_dim)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim, bias=True)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, rope_cos: torch.Tensor, rope_sin: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, nh, N, hd) each
        if kernels.use_triton(q):  # one fused kernel each (CUDA): RMSNorm, weight, RoPE, one rounding
            q = kernels.norm_rope(q, self.q_norm.weight, rope_cos, rope_sin, self.q_norm.eps)
            k = kernels.norm_rope(k, self.k_norm.weight, rope_cos, rope_sin, self.k_norm.eps)
        else:
            q = apply_rope(self.q_norm(q), rope_cos, rope_sin).to(v.dtype)
            k = apply_rope(self.k_norm(k), rope_cos, rope_sin).to(v.dtype)
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)  # (B, nh, N, hd)
        out = out.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(out))


class SwiGLU(nn.Module):
    """SwiGLU feed-forward: w3(dropout(silu(a) * b)) with [a, b] = w12(x)."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, drop: float = 0.0):
        super().__init__()
        hidden = int(int(dim * mlp_ratio) * 2 / 3)  # 2048 for dim 768
        self.w12 = nn.Linear(dim, 2 * hidden, bias=True)
        self.w3 = nn.Linear(hidden, dim, bias=True)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(self.drop(F.silu(a) * b))


class TimestepEmbedder(nn.Module):
    """t -> 256-d sinusoid -> Linear -> SiLU -> Linear."""

    def __init__(self, hidden_size: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim))


class LabelEmbedder(nn.Module):
    """Class table with one extra row, index ``num_classes``, for the null (unconditional) label."""

    def __init__(self, num_classes: int, hidden_size: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)


class PatchEmbed(nn.Module):
    """Patchify with an optional linear bottleneck: Conv(p, no bias) -> 1x1 Conv, or one Conv(p)."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int, bottleneck_dim: int | None):
        super().__init__()
        self.bottleneck_dim = bottleneck_dim
        if bottleneck_dim:
            self.proj1 = nn.Conv2d(in_channels, bottleneck_dim, patch_size, stride=patch_size, bias=False)
            self.proj2 = nn.Conv2d(bottleneck_dim, hidden_size, 1, bias=True)
        else:
            self.proj = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj2(self.proj1(x)) if self.bottleneck_dim else self.proj(x)  # (B, D, h, w)
        return x.flatten(2).transpose(1, 2)  # (B, h*w, D), row-major tokens
