"""The pixel MeanFlow network (:class:`PMF`), computing the same function as the public ``pmfDiT``.

Inputs (pMF time: t = 1 noise, t = 0 image): the noisy image z, t, the time gap h = t - r, the guidance
weight omega, the guidance interval [t_min, t_max] and the class y (index num_classes = null). The
sequence is [class (8), omega (4), t_min (2), t_max (2), time gap (4) prefix tokens, patch tokens] (the
public counts; the Ti presets have 4, 1, 1, 1, 1) plus a learned position embedding; (depth -
aux_head_depth) shared blocks, then a u head and a v head of aux_head_depth blocks each. Each head
predicts an image x_hat and returns (z - x_hat) / clip(t, 0.05, 1).

Parameter names are the public ones without the ``._flax_linear`` / ``._flax_embedding`` segments
(:mod:`pmf_official` maps them); the RoPE tables are derived, non-persistent buffers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn

from .jit import JiT
from .layers import LabelEmbedder, PatchEmbed, RMSNorm, TimestepEmbedder, apply_rope, at_least_fp32, rope_tables_2d
from .pmf_attention import JVP_MODES, attention
from .pmf_config import PMF_PRESETS, PMFConfig, pmf_preset_config

__all__ = ["PMF", "PMFBlock", "PMFConfig", "PMF_PRESETS", "create_pmf_model"]

DIFFERENCES = ("difference", "one-sided")  # the jvp_transforms that take du/dt from finite differences


class PMFAttention(nn.Module):
    """Self-attention with separate q/k/v/out maps (no bias), per-head qk-RMSNorm and 2-D RoPE."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim)
        self.k_norm = RMSNorm(self.head_dim)
        self.jvp_mode = "function"

    def forward(self, x: torch.Tensor, rope_cos: torch.Tensor, rope_sin: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = (proj(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))  # (B, nh, N, hd) each  # fmt: skip
        q = apply_rope(self.q_norm(q), rope_cos, rope_sin).to(v.dtype)
        k = apply_rope(self.k_norm(k), rope_cos, rope_sin).to(v.dtype)
        out = attention(q, k, v, self.jvp_mode)  # (B, nh, N, hd)
        return self.out_proj(out.transpose(1, 2).reshape(B, N, C))


class PMFSwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x), no biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class PMFBlock(nn.Module):
    """Pre-norm block with per-channel residual gates (zero at init): x + g_a Attn(n(x)), x + g_m MLP(n(x))."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_hidden: int):
        super().__init__()
        self.norm1 = RMSNorm(hidden_size)
        self.attn = PMFAttention(hidden_size, num_heads)
        self.norm2 = RMSNorm(hidden_size)
        self.mlp = PMFSwiGLU(hidden_size, mlp_hidden)
        self.attn_scale = nn.Parameter(torch.zeros(hidden_size))
        self.mlp_scale = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, x: torch.Tensor, rope_cos: torch.Tensor, rope_sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope_cos, rope_sin) * self.attn_scale
        return x + self.mlp(self.norm2(x)) * self.mlp_scale


class PMFFinalLayer(nn.Module):
    """RMSNorm, then a linear map to p*p*C pixels per token."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm = RMSNorm(hidden_size)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x))


class PMFPatchEmbed(PatchEmbed):
    """The bottleneck patch embedding of :class:`layers.PatchEmbed`, with a bias on the first conv too."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int, bottleneck_dim: int):
        super().__init__(patch_size, in_channels, hidden_size, bottleneck_dim)
        self.proj1 = nn.Conv2d(in_channels, bottleneck_dim, patch_size, stride=patch_size, bias=True)


_PREFIX = ("class_tokens", "omega_tokens", "t_min_tokens", "t_max_tokens", "time_tokens")  # sequence order


class PMF(nn.Module):
    """pMF network: forward(z, t, h, omega, t_min, t_max, y) -> (u, v), velocities in pMF time."""

    unpatchify = JiT.unpatchify  # (B, N, p*p*C) -> (B, C, H, W); needs patch_size, in_channels, grid_size

    def __init__(self, **fields):
        super().__init__()
        self.config = config = PMFConfig.from_dict(fields, source="PMF")
        H = config.hidden_size
        self.patch_size, self.in_channels, self.grid_size = config.patch_size, config.in_channels, config.grid_size
        self.num_classes, self.num_prefix = config.num_classes, config.num_prefix
        self.x_embedder = PMFPatchEmbed(config.patch_size, config.in_channels, H, config.bottleneck)
        self.h_embedder = TimestepEmbedder(H)
        self.omega_embedder = TimestepEmbedder(H)
        self.cfg_t_start_embedder = TimestepEmbedder(H)
        self.cfg_t_end_embedder = TimestepEmbedder(H)
        self.y_embedder = LabelEmbedder(config.num_classes, H)
        counts = (config.num_class_tokens, config.num_cfg_tokens, config.num_interval_tokens,
                  config.num_interval_tokens, config.num_time_tokens)  # fmt: skip
        for name, count in zip(_PREFIX, counts):
            setattr(self, name, nn.Parameter(torch.zeros(1, count, H)))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_prefix + config.grid_size**2, H))
        block = lambda: PMFBlock(H, config.num_heads, config.mlp_hidden)  # noqa: E731
        self.shared_blocks = nn.ModuleList(block() for _ in range(config.depth - config.aux_head_depth))
        self.u_heads = nn.ModuleList(block() for _ in range(config.aux_head_depth))
        self.u_final_layer = PMFFinalLayer(H, config.patch_size, config.in_channels)
        if config.v_head:
            self.v_heads = nn.ModuleList(block() for _ in range(config.aux_head_depth))
            self.v_final_layer = PMFFinalLayer(H, config.patch_size, config.in_channels)
        cos, sin = rope_tables_2d(H // config.num_heads, config.grid_size, config.num_prefix)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        # "forward_ad", "func" (torch.func.jvp: what a compiled forward traces), "separate" (FSDP2 per block)
        # "difference" (central differences, fp32: two plain forwards of the rows that need du/dt) or "one-sided"
        # (one forward of those rows, the loss forward's u as the other point)
        self.jvp_transform = "forward_ad"
        self.initialize_weights()

    @property
    def has_v_head(self) -> bool:
        return self.config.v_head

    def set_jvp_mode(self, mode: str) -> None:
        """How attention runs under forward AD: ``function`` (SDPA + JVP rule) or ``math``."""
        if mode not in JVP_MODES:
            raise ValueError(f"attention jvp mode must be one of {JVP_MODES}, got {mode!r}")
        for module in self.modules():
            if isinstance(module, PMFAttention):
                module.jvp_mode = mode

    def compile_model(self, scope: str = "model", **compile_kwargs) -> None:
        """torch.compile the whole forward in place (weights keep their names), the JVP included: a compiled
        graph has no forward-AD formula (AOTAutograd), so the JVP switches to ``torch.func.jvp``, which the
        compiler traces into plain ops, with attention written out (``math``). Static shapes by default."""
        if scope != "model":
            raise ValueError(f"a pMF network compiles as one graph (scope 'model'), got {scope!r}")
        JiT._raise_recompile_limit()
        self.set_jvp_mode("math")
        self.jvp_transform = "func"
        compile_kwargs.setdefault("dynamic", False)
        self.compile(**compile_kwargs)

    @torch.no_grad()
    def init_tables(self) -> None:
        """(Re)compute the RoPE buffers (e.g. after ``to_empty``)."""
        if self.rope_cos.is_meta:
            return
        cos, sin = rope_tables_2d(self.config.hidden_size // self.config.num_heads, self.grid_size, self.num_prefix)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """Linear weights N(0, c^2 / fan_in) (c = 0.32 in blocks, 1 elsewhere), zero biases, gates and
        output layers; prefix tokens N(0, 1/H); position embedding N(0, 0.02^2); patch convs Xavier-uniform."""
        blocks = {id(m) for b in self.modules() if isinstance(b, PMFBlock) for m in b.modules()}
        for module in self.modules():
            if isinstance(module, nn.Linear):
                c = 0.32 if id(module) in blocks else 1.0
                nn.init.normal_(module.weight, std=c / math.sqrt(module.in_features))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for conv in (self.x_embedder.proj1, self.x_embedder.proj2):
            nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
            nn.init.zeros_(conv.bias)
        H = self.config.hidden_size
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=1.0 / math.sqrt(H))
        for name in _PREFIX:
            if getattr(self, name).numel():  # a kind may have no tokens (--prefix-tokens)
                nn.init.normal_(getattr(self, name), std=1.0 / math.sqrt(H))
        nn.init.normal_(self.pos_embed, std=0.02)
        for final in (self.u_final_layer, getattr(self, "v_final_layer", None)):
            if final is not None:
                nn.init.zeros_(final.linear.weight)
                nn.init.zeros_(final.linear.bias)
        self.init_tables()

    def class_condition(self, y: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """The class embeddings (B, H); with ``scale`` != 1 each is moved away from the mean m of the classes'
        embeddings: m + scale (e_y - m) (sampling-time class emphasis; the null label stays as it is)."""
        e = self.y_embedder(y)
        if scale == 1.0 or self.num_classes == 0:
            return e
        m = self.y_embedder.embedding_table.weight[: self.num_classes].mean(dim=0)
        return torch.where((y < self.num_classes).unsqueeze(1), m + scale * (e - m), e)

    def trunk(self, z, h, omega, t_min, t_max, y, class_scale: float = 1.0) -> torch.Tensor:
        """Prefix + patch tokens through the shared blocks: (B, num_prefix + N, H)."""
        conditions = (self.class_condition(y, class_scale), self.omega_embedder(1 - 1 / omega),
                      self.cfg_t_start_embedder(t_min), self.cfg_t_end_embedder(t_max),
                      self.h_embedder(h))  # (B, H) each  # fmt: skip
        patches = self.x_embedder(z)  # (B, N, H)
        prefix = [(getattr(self, name) + c.unsqueeze(1)).to(patches.dtype) for name, c in zip(_PREFIX, conditions)]
        x = torch.cat([*prefix, patches], dim=1) + self.pos_embed.to(patches.dtype)  # (B, L + N, H)
        for block in self.shared_blocks:
            x = block(x, self.rope_cos, self.rope_sin)
        return x

    def head(self, tokens: torch.Tensor, which: str) -> torch.Tensor:
        """The image predicted by head ``which`` ("u" or "v") from the trunk's tokens: (B, C, H, W)."""
        if which == "v" and not self.has_v_head:
            raise ValueError("this pMF model has no v head (an inference checkpoint); it cannot compute v")
        blocks, final = (self.u_heads, self.u_final_layer) if which == "u" else (self.v_heads, self.v_final_layer)
        x = tokens
        for block in blocks:
            x = block(x, self.rope_cos, self.rope_sin)
        return self.unpatchify(final(x[:, self.num_prefix :]))

    @staticmethod
    def velocity(z: torch.Tensor, x_pred: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(z - x_hat) / clip(t, 0.05, 1): the velocity in pMF time of an image prediction (fp32)."""
        return (at_least_fp32(z) - at_least_fp32(x_pred)) / at_least_fp32(t).clamp(0.05, 1.0).view(-1, 1, 1, 1)

    def forward(self, z, t, h, omega, t_min, t_max, y, heads: str | None = None, jvp_tangent=None, jvp_rows=None,
                class_scale: float = 1.0):  # fmt: skip
        """z (B, C, H, W); t, h, omega, t_min, t_max (B,) in pMF time; y (B,). Returns (u, v).

        ``heads``: "u", "v" or "uv" (default: both when the model has a v head, else "u").
        ``class_scale``: see :meth:`class_condition` (the plain forward only; training keeps 1).
        ``jvp_tangent`` (B, C, H, W): return (u, v, du/dt) instead, see :meth:`forward_with_jvp`;
        ``jvp_rows`` (B,) bool: du/dt is needed only there (0 elsewhere), see :meth:`jvp_on_rows`."""
        if jvp_tangent is not None and class_scale != 1.0:
            raise ValueError("class_scale is a sampling option: the forward with a JVP takes the plain class")
        if jvp_tangent is not None and jvp_rows is not None and self.jvp_transform == "forward_ad":
            return self.jvp_on_rows(z, t, h, omega, t_min, t_max, y, jvp_tangent, jvp_rows)
        if jvp_tangent is not None and self.jvp_transform in DIFFERENCES:
            u, v = self.forward(z, t, h, omega, t_min, t_max, y)
            one_sided = self.jvp_transform == "one-sided" and self.runs_in_fp32(z)  # else u is no fp32 base
            return u, v, self.difference_du_dt(z, t, h, omega, t_min, t_max, y, jvp_tangent, jvp_rows,
                                               base=u.detach() if one_sided else None)  # fmt: skip
        if jvp_tangent is not None:
            return self.forward_with_jvp(z, t, h, omega, t_min, t_max, y, jvp_tangent)
        heads = ("uv" if self.has_v_head else "u") if heads is None else heads
        tokens = self.trunk(z, h, omega, t_min, t_max, y, class_scale)
        u = self.velocity(z, self.head(tokens, "u"), t) if "u" in heads else None
        v = self.velocity(z, self.head(tokens, "v"), t) if "v" in heads else None
        return u, v

    def forward_with_jvp(self, z, t, h, omega, t_min, t_max, y, tangent_z):
        """(u, v, du/dt): u and v as :meth:`forward`, and the derivative of u along the tangent
        (dz, dt, dr) = (tangent_z, 1, 0), i.e. dh = dt = 1, by forward-mode AD (no gradient flows through
        it: detach it or use it under stop-gradient). The v head runs on the trunk's value only.

        It runs inside ``forward`` so that DDP/FSDP wrappers see one ordinary call."""
        if self.jvp_transform == "func":
            return self._func_jvp(z, t, h, omega, t_min, t_max, y, tangent_z)
        if self.jvp_transform == "separate":
            return self._separate_jvp(z, t, h, omega, t_min, t_max, y, tangent_z)
        with dual_level():
            ones = torch.ones_like(t)
            z_dual, t_dual = fwAD.make_dual(z, tangent_z.to(z.dtype)), fwAD.make_dual(t, ones)
            tokens = self.trunk(z_dual, fwAD.make_dual(h, ones), omega, t_min, t_max, y)
            u, du_dt = fwAD.unpack_dual(self.velocity(z_dual, self.head(tokens, "u"), t_dual))
            tokens = fwAD.unpack_dual(tokens).primal
        v = self.velocity(z, self.head(tokens, "v"), t) if self.has_v_head else None
        return u, v, du_dt.detach()

    def jvp_on_rows(self, z, t, h, omega, t_min, t_max, y, tangent_z, rows):
        """:meth:`forward_with_jvp` where only ``rows`` (B,) bool need du/dt (returned as 0 elsewhere): those
        rows go through forward AD, the others through the plain forward, which does no tangent work (the
        pMF objective's flow-matching half has r = t, so its (t - r) du/dt is 0). Same values up to float
        rounding; one host synchronisation (the row counts)."""
        picked, others = rows.nonzero()[:, 0], (~rows).nonzero()[:, 0]
        inputs = (z, t, h, omega, t_min, t_max, y)
        if not len(others):
            return self.forward_with_jvp(*inputs, tangent_z)
        u0, v0 = self.forward(*(a[others] for a in inputs))
        if not len(picked):
            return u0, v0, torch.zeros_like(u0)
        u1, v1, du1 = self.forward_with_jvp(*(a[picked] for a in inputs), tangent_z[picked])
        back = torch.cat([picked, others]).argsort()  # (B,) each row back at its place
        join = lambda a, b: None if a is None else torch.cat([a, b])[back]  # noqa: E731
        return join(u1, u0), join(v1, v0), join(du1, torch.zeros_like(u0))

    def _separate_jvp(self, z, t, h, omega, t_min, t_max, y, tangent_z):
        """:meth:`forward_with_jvp` with du/dt from its own forward-AD pass without gradient, then the plain
        forward with gradient: one more trunk-and-u-head pass, but no autograd node ever sees a dual tensor
        (FSDP2's per-block hooks are autograd Functions without a forward-AD rule; without gradient they
        only gather and free the parameters). Same values."""
        with torch.no_grad(), dual_level():
            ones = torch.ones_like(t)
            z_dual, t_dual = fwAD.make_dual(z, tangent_z.to(z.dtype)), fwAD.make_dual(t, ones)
            tokens = self.trunk(z_dual, fwAD.make_dual(h, ones), omega, t_min, t_max, y)
            du_dt = fwAD.unpack_dual(self.velocity(z_dual, self.head(tokens, "u"), t_dual)).tangent
        u, v = self.forward(z, t, h, omega, t_min, t_max, y)
        return u, v, du_dt

    @torch.no_grad()
    def difference_du_dt(self, z, t, h, omega, t_min, t_max, y, tangent_z, rows=None, base=None, eps: float = 1e-3):
        """du/dt along (dz, dt, dh) = (tangent_z, 1, 1) by finite differences in fp32, on ``rows`` (B,) bool
        only (0 elsewhere; default all). Central: (u(z + eps dz, t + eps, h + eps) - u(z - eps dz, ...)) /
        (2 eps), two plain forwards of the rows, error O(eps^2) + O(rounding / eps), about 1e-4 relative.
        Given ``base`` = u(z, t, h) computed in fp32 (the loss forward's), one-sided: (u(z + eps dz, ...) -
        base) / eps, one forward, error O(eps) + O(rounding / eps), about 1e-3 relative. No gradient."""
        picked = torch.arange(len(z), device=z.device) if rows is None else rows.nonzero()[:, 0]
        du_dt = torch.zeros_like(z, dtype=torch.promote_types(z.dtype, torch.float32))
        if not len(picked):
            return du_dt
        signs = (1.0,) if base is not None else (1.0, -1.0)
        moved = lambda a, d: torch.cat([a[picked] + sign * eps * d for sign in signs])  # noqa: E731
        kept = lambda a: torch.cat([a[picked]] * len(signs))  # noqa: E731
        with torch.autocast(z.device.type, enabled=False):
            z_moved = moved(at_least_fp32(z), at_least_fp32(tangent_z[picked]))
            u, _ = self.forward(z_moved, moved(t, 1.0), moved(h, 1.0), kept(omega), kept(t_min), kept(t_max), kept(y),
                                heads="u")  # fmt: skip
        if base is not None:
            value = (u - base[picked]) / eps
        else:
            plus, minus = u.chunk(2)
            value = (plus - minus) / (2 * eps)
        return du_dt.index_copy(0, picked, value.to(du_dt.dtype))

    def runs_in_fp32(self, z: torch.Tensor) -> bool:
        """Whether a plain forward on ``z`` computes in fp32 or better (no autocast, fp32 or fp64 weights)."""
        weights = self.pos_embed.dtype in (torch.float32, torch.float64)
        return weights and not torch.is_autocast_enabled(z.device.type)

    def _func_jvp(self, z, t, h, omega, t_min, t_max, y, tangent_z):
        """:meth:`forward_with_jvp` through ``torch.func.jvp`` (what ``compile_model`` uses); same values."""

        def u_and_tokens(z_, t_, h_):
            tokens = self.trunk(z_, h_, omega, t_min, t_max, y)
            return self.velocity(z_, self.head(tokens, "u"), t_), tokens

        ones = torch.ones_like(t)
        u, du_dt, tokens = torch.func.jvp(u_and_tokens, (z, t, h), (tangent_z.to(z.dtype), ones, ones), has_aux=True)
        v = self.velocity(z, self.head(tokens, "v"), t) if self.has_v_head else None
        return u, v, du_dt.detach()

    def all_blocks(self) -> list[nn.Module]:
        """The transformer blocks: shared, then the u head's, then the v head's (FSDP2's units)."""
        return [*self.shared_blocks, *self.u_heads, *(self.v_heads if self.has_v_head else [])]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


@contextlib.contextmanager
def dual_level():
    """``forward_ad.dual_level`` without the FutureWarning torch's own first use of it raises (it scripts its
    JVP decompositions with the deprecated ``torch.jit.script``): nothing a user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
        with fwAD.dual_level():
            yield


def create_pmf_model(name: str, **overrides) -> PMF:
    """Build a preset, e.g. ``create_pmf_model("pMF-B/16", num_classes=1000)``."""
    return PMF(**dataclasses.asdict(pmf_preset_config(name, **overrides)))
