"""The analytic forward cost: a hand count, the multiply-adds the network really runs, the paper's B/16 figure."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from jit_diffusion.models.config import JiTConfig, preset_config
from jit_diffusion.models.flops import forward_macs, peak_tflops, train_flops_per_image
from jit_diffusion.models.jit import JiT

TINY = JiTConfig(input_size=8, patch_size=4, hidden_size=32, depth=2, num_heads=2, num_classes=2, bottleneck_dim=8,
                 in_context_len=2, in_context_start=1)  # fmt: skip


def test_tiny_config_by_hand():
    # D = 32, 4 patches of 4 x 4 x 3 = 48 values, bottleneck 8, SwiGLU hidden int(int(32 * 4) * 2 / 3) = 85
    time_mlp = 256 * 32 + 32 * 32
    patch_embed = 4 * (48 * 8 + 8 * 32)
    per_token = 3 * 32 * 32 + 32 * 32 + 3 * 32 * 85  # qkv, proj, SwiGLU
    block_0 = 4 * per_token + 2 * 4 * 4 * 32 + 32 * 6 * 32  # 4 tokens, attention, adaLN
    block_1 = 6 * per_token + 2 * 6 * 6 * 32 + 32 * 6 * 32  # + 2 in-context tokens from block 1 on
    final = 4 * 32 * 48 + 32 * 2 * 32
    assert forward_macs(TINY) == time_mlp + patch_embed + block_0 + block_1 + final == 158_144
    assert train_flops_per_image(TINY) == 6 * 158_144  # forward + backward = 3 forwards, 2 FLOPs per multiply-add


def _measured_macs(config: JiTConfig, batch: int, monkeypatch) -> int:
    """Multiply-adds of a real forward pass: matmuls and convolutions from torch's FLOP counter, and the
    attention (which the counter skips for SDPA on CPU) as 2 B nh N^2 hd from the shapes SDPA is called with."""
    attention = []
    sdpa = F.scaled_dot_product_attention

    def counting(q, k, v, *args, **kwargs):
        b, heads, n, head_dim = q.shape
        attention.append(2 * b * heads * n * k.shape[2] * head_dim)  # q k^T and attn @ v
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    torch.manual_seed(0)
    model = JiT(**dataclasses.asdict(config)).eval()
    size = config.input_size
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(batch, 3, size, size), torch.rand(batch), torch.arange(batch) % config.num_classes)
    return counter.get_total_flops() // 2 + sum(attention)


@pytest.mark.parametrize(
    "config",
    [
        TINY,
        dataclasses.replace(TINY, bottleneck_dim=None),
        dataclasses.replace(TINY, in_context_len=0),
        dataclasses.replace(TINY, input_size=16, hidden_size=48, num_heads=3, depth=3, in_context_start=2),
    ],
    ids=["tiny", "no-bottleneck", "no-in-context", "wider"],
)
def test_analytic_count_equals_the_network(config, monkeypatch):
    assert _measured_macs(config, 3, monkeypatch) == 3 * forward_macs(config)


def test_b16_is_the_papers_25_gflops():
    macs = forward_macs(preset_config("JiT-B/16"))
    assert macs == pytest.approx(25.1e9, rel=0.01)  # the paper's "25 Gflops" (multiply-adds) for JiT-B/16 at 256 px
    assert train_flops_per_image(preset_config("JiT-B/16")) == pytest.approx(150.6e9, rel=0.01)
    # cost grows with the tokens: B/32 at 512 px has the same 256 tokens and about the same cost
    assert forward_macs(preset_config("JiT-B/32")) == pytest.approx(macs, rel=0.05)


def test_peak_lookup():
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("cpu") is None
