"""The JiT network ("Just image Transformers") and ``create_model`` for the presets of :mod:`.config`.

A plain ViT on raw pixel patches that maps a noisy image z, a time t in [0, 1] and a class label y
to a prediction of the clean image. Parameter names and shapes equal the official checkpoints
(without their ``net.`` prefix), so ``load_state_dict(..., strict=True)`` works for every preset.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import PRESETS, JiTConfig, preset_config
from .layers import (
    Attention,
    LabelEmbedder,
    PatchEmbed,
    RMSNorm,
    SwiGLU,
    TimestepEmbedder,
    modulate,
    rope_tables_2d,
    sincos_pos_embed_2d,
)
from .pretrained import HubMixin

__all__ = ["JiT", "JiTBlock", "FinalLayer", "JiTConfig", "PRESETS", "create_model", "preset_config"]


class JiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero modulation from the conditioning vector c."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, attn_drop: float, proj_drop: float):
        super().__init__()
        self.norm1 = RMSNorm(hidden_size)
        self.attn = Attention(hidden_size, num_heads, attn_drop=attn_drop, proj_drop=proj_drop)
        self.norm2 = RMSNorm(hidden_size)
        self.mlp = SwiGLU(hidden_size, mlp_ratio, drop=proj_drop)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope_cos: torch.Tensor, rope_sin: torch.Tensor):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=-1)  # (B, D) each
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1), rope_cos, rope_sin)
        x = x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x


class FinalLayer(nn.Module):
    """RMSNorm, adaLN shift/scale, then a linear map to p*p*C pixels per token."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = RMSNorm(hidden_size)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class JiT(
    nn.Module,
    HubMixin,
    library_name="jit-diffusion",
    tags=["diffusion", "pixel-diffusion", "image-generation"],
    paper_url="https://arxiv.org/abs/2511.13720",
):
    """JiT denoiser network: forward(z, t, y) -> predicted clean image (B, C, H, W).

    ``JiT.from_pretrained(folder_or_repo)`` and ``model.save_pretrained(folder)`` read and write the
    export format of :mod:`jit_diffusion.pretrained` (``config.json`` + ``model.safetensors``).
    """

    def __init__(
        self,
        input_size: int = 256,
        patch_size: int = 16,
        in_channels: int = 3,
        hidden_size: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        num_classes: int = 1000,
        bottleneck_dim: int | None = 128,
        in_context_len: int = 32,
        in_context_start: int = 4,
    ):
        super().__init__()
        self.config = JiTConfig(
            input_size, patch_size, in_channels, hidden_size, depth, num_heads, mlp_ratio,
            attn_drop, proj_drop, num_classes, bottleneck_dim, in_context_len, in_context_start,
        )  # fmt: skip
        self.config.validate()
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.grid_size = input_size // patch_size
        self.in_context_len = in_context_len
        self.in_context_start = in_context_start
        self.grad_checkpointing = False

        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size)
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size, bottleneck_dim)
        num_patches = self.grid_size**2
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, hidden_size), requires_grad=False)
        if in_context_len > 0:
            self.in_context_posemb = nn.Parameter(torch.zeros(1, in_context_len, hidden_size))
        # dropout only in the middle half of the blocks: depth//4 <= i < 3*depth//4
        self.blocks = nn.ModuleList(
            JiTBlock(
                hidden_size, num_heads, mlp_ratio,
                attn_drop if depth // 4 <= i < depth // 4 * 3 else 0.0,
                proj_drop if depth // 4 <= i < depth // 4 * 3 else 0.0,
            )  # fmt: skip
            for i in range(depth)
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, in_channels)
        # RoPE tables are derived, not learned: non-persistent buffers, absent from the state dict
        head_dim = hidden_size // num_heads
        for name, prefix in (("rope", 0), ("rope_ic", in_context_len)):
            cos, sin = rope_tables_2d(head_dim, self.grid_size, prefix)
            self.register_buffer(f"{name}_cos", cos, persistent=False)
            self.register_buffer(f"{name}_sin", sin, persistent=False)
        self.initialize_weights()

    @torch.no_grad()
    def init_tables(self) -> None:
        """(Re)compute the fixed tables: pos_embed and the RoPE buffers (e.g. after ``to_empty``)."""
        if self.pos_embed.is_meta:
            return
        D = self.pos_embed.shape[-1]
        self.pos_embed.copy_(sincos_pos_embed_2d(D, self.grid_size).unsqueeze(0))
        head_dim = D // self.config.num_heads
        for name, prefix in (("rope", 0), ("rope_ic", self.in_context_len)):
            cos, sin = rope_tables_2d(head_dim, self.grid_size, prefix)
            getattr(self, f"{name}_cos").copy_(cos)
            getattr(self, f"{name}_sin").copy_(sin)

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """Xavier-uniform Linear/patch weights, zero biases, N(0, 0.02) tables, zero adaLN and output."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for conv in (getattr(self.x_embedder, n, None) for n in ("proj1", "proj2", "proj")):
            if conv is not None:
                nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
                if conv.bias is not None:
                    nn.init.zeros_(conv.bias)
        if self.in_context_len > 0:
            nn.init.normal_(self.in_context_posemb, std=0.02)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.init_tables()

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, p*p*C) tokens laid out (p_row, p_col, channel) -> (B, C, H, W)."""
        B, p, C, h = x.shape[0], self.patch_size, self.in_channels, self.grid_size
        x = x.reshape(B, h, h, p, p, C)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(B, C, h * p, h * p)

    def _run_block(self, block: nn.Module, x, c, cos, sin):
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, c, cos, sin, use_reentrant=False)
        return block(x, c, cos, sin)

    def forward(self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """z (B, C, H, W) noisy image, t (B,) time in [0, 1], y (B,) labels (num_classes = null)."""
        y_emb = self.y_embedder(y)  # (B, D)
        c = self.t_embedder(t) + y_emb  # (B, D)
        x = self.x_embedder(z)  # (B, N, D)
        # pos_embed in the activation dtype: under bf16 autocast the residual stream stays bf16 (an fp32
        # table would promote it to fp32 and double its traffic in every block); a no-op in fp32
        x = x + self.pos_embed.to(x.dtype)
        L = self.in_context_len
        for i, block in enumerate(self.blocks):
            if L > 0 and i == self.in_context_start:
                context = y_emb.unsqueeze(1).expand(-1, L, -1) + self.in_context_posemb  # (B, L, D)
                x = torch.cat([context.to(x.dtype), x], dim=1)  # (B, L + N, D)
            if L > 0 and i >= self.in_context_start:
                x = self._run_block(block, x, c, self.rope_ic_cos, self.rope_ic_sin)
            else:
                x = self._run_block(block, x, c, self.rope_cos, self.rope_sin)
        x = x[:, L:] if L > 0 else x  # drop the in-context tokens
        return self.unpatchify(self.final_layer(x, c))  # (B, C, H, W)

    @staticmethod
    def _raise_recompile_limit(limit: int = 64) -> None:
        """Room for every static shape a run compiles (train and sample batches, with and without CFG rows)."""
        import torch._dynamo

        name = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
        setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), limit))

    def compile_model(self, scope: str = "model", **compile_kwargs) -> None:
        """torch.compile in place; weights keep their names (no ``_orig_mod.`` in the state dict).

        ``scope="model"`` compiles the whole forward as one graph, so the residual add of one block
        fuses with the next block's norm and modulation and the block boundaries cost no extra pass
        over the residual stream; ``scope="blocks"`` compiles each block and the final layer (for FSDP2,
        whose per-block hooks a whole-model graph would have to trace). Static shapes by default.
        """
        if scope == "blocks":
            self.compile_blocks(**compile_kwargs)
            return
        if scope != "model":
            raise ValueError(f"compile scope must be 'model' or 'blocks', got {scope!r}")
        self._raise_recompile_limit()
        compile_kwargs.setdefault("dynamic", False)
        self.compile(**compile_kwargs)

    def compile_blocks(self, **compile_kwargs) -> None:
        """torch.compile each block (and the final layer) in place; weights keep their names.

        Static shapes by default: a run sees a handful of them (token counts with and without the
        in-context tokens, training batch, sampling batch with and without CFG rows), each compiled once.
        """
        self._raise_recompile_limit()
        compile_kwargs.setdefault("dynamic", False)
        for block in self.blocks:
            block.compile(**compile_kwargs)
        self.final_layer.compile(**compile_kwargs)

    def num_params(self) -> int:
        """Number of parameters, pos_embed included (as the official counts are)."""
        return sum(p.numel() for p in self.parameters())


def create_model(name: str, **overrides) -> JiT:
    """Build a preset, e.g. ``create_model("JiT-B/16", num_classes=1000)``."""
    return JiT(**dataclasses.asdict(preset_config(name, **overrides)))
