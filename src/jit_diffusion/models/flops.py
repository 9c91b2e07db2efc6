"""Analytic cost of a JiT forward pass (multiply-adds per image) and model FLOP utilisation."""

from __future__ import annotations

from .config import JiTConfig

# dense bf16 peak (TFLOP/s, no sparsity) of accelerators we report MFU on
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.0}


def forward_macs(cfg: JiTConfig) -> int:
    """Multiply-adds of one image's forward pass: linear layers, convolutions and attention matmuls.

    Elementwise work (norms, RoPE, activations, softmax) is left out, as usual for MFU.
    """
    D, p, C = cfg.hidden_size, cfg.patch_size, cfg.in_channels
    N = (cfg.input_size // p) ** 2
    hidden = int(int(D * cfg.mlp_ratio) * 2 / 3)
    macs = 256 * D + D * D  # time-embedding MLP
    if cfg.bottleneck_dim:
        macs += N * (p * p * C * cfg.bottleneck_dim + cfg.bottleneck_dim * D)
    else:
        macs += N * p * p * C * D
    for i in range(cfg.depth):
        T = N + (cfg.in_context_len if cfg.in_context_len and i >= cfg.in_context_start else 0)
        macs += T * (3 * D * D + D * D + 3 * D * hidden)  # qkv, proj, SwiGLU (w12 + w3)
        macs += 2 * T * T * D  # q k^T and attn @ v over all heads
        macs += D * 6 * D  # adaLN modulation (per image)
    macs += N * D * p * p * C + D * 2 * D  # final linear + its modulation
    return macs


def train_flops_per_image(cfg: JiTConfig) -> float:
    """FLOPs of one training image: forward + backward = 3 forwards, 2 FLOPs per multiply-add."""
    return 3 * 2 * forward_macs(cfg)


def peak_tflops(device_name: str) -> float | None:
    """Datasheet dense bf16 peak for a device name like 'NVIDIA H200', or None if unknown."""
    for key, value in PEAK_TFLOPS.items():
        if key in device_name:
            return value
    return None
