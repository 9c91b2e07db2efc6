import math

import pytest
import torch
from torch import nn

from jit_diffusion import PRESETS, JiT, create_model, preset_config
from jit_diffusion.models.layers import rope_tables_2d, rotate_half, sincos_pos_embed_2d


def test_forward_matches_golden(golden):
    model = golden.model()
    with torch.no_grad():
        out = model(golden["forward.x"], golden["forward.t"], golden["forward.y"])
    assert out.shape == golden["forward.out"].shape
    assert (out - golden["forward.out"]).abs().max().item() <= 1e-5


def test_pos_embed_init_equals_golden_table(golden):
    model = JiT(**golden.model_config)
    assert torch.equal(model.pos_embed, golden.net_state_dict()["pos_embed"])


@pytest.mark.parametrize("name", ["JiT-B/16", "JiT-B/32", "JiT-L/16", "JiT-L/32", "JiT-H/16", "JiT-H/32"])
def test_official_presets_match_manifest(name, manifest):
    entry = manifest[name]
    with torch.device("meta"):
        model = create_model(name, input_size=entry["input_size"], num_classes=1000)
    expected = {k[len("net."):]: tuple(v) for k, v in entry["state_dict"].items()}
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == expected
    assert model.num_params() == entry["num_params"]


def test_official_preset_default_sizes(manifest):
    for name, entry in manifest.items():
        assert PRESETS[name]["input_size"] == entry["input_size"]


def test_g_preset_is_about_two_billion():
    with torch.device("meta"):
        model = create_model("JiT-G/16")
    assert 1.9e9 < model.num_params() < 2.1e9


def test_fresh_model_outputs_exact_zeros():
    torch.manual_seed(0)
    model = create_model("JiT-Ti/8", num_classes=5)
    z = torch.randn(2, 3, 64, 64)
    out = model(z, torch.rand(2), torch.tensor([0, 5]))
    assert out.shape == z.shape
    assert torch.equal(out, torch.zeros_like(z))


def test_init_rules():
    torch.manual_seed(0)
    model = create_model("JiT-S/8", num_classes=10)
    for block in model.blocks:
        assert torch.equal(block.adaLN_modulation[1].weight, torch.zeros_like(block.adaLN_modulation[1].weight))
        assert torch.equal(block.adaLN_modulation[1].bias, torch.zeros_like(block.adaLN_modulation[1].bias))
        for lin in (block.attn.qkv, block.attn.proj, block.mlp.w12, block.mlp.w3):
            assert torch.count_nonzero(lin.bias) == 0
            fan_out, fan_in = lin.weight.shape
            bound = math.sqrt(6 / (fan_in + fan_out))  # xavier-uniform
            assert lin.weight.abs().max() <= bound
            assert lin.weight.abs().max() > 0.9 * bound
        for norm in (block.norm1, block.norm2, block.attn.q_norm, block.attn.k_norm):
            assert torch.equal(norm.weight, torch.ones_like(norm.weight))
    fl = model.final_layer
    for p in (fl.linear.weight, fl.linear.bias, fl.adaLN_modulation[1].weight, fl.adaLN_modulation[1].bias):
        assert torch.count_nonzero(p) == 0
    for w in (model.y_embedder.embedding_table.weight, model.t_embedder.mlp[0].weight, model.t_embedder.mlp[2].weight,
              model.in_context_posemb):
        assert abs(w.std().item() - 0.02) < 0.002
        assert abs(w.mean().item()) < 0.002
    w1 = model.x_embedder.proj1.weight
    bound = math.sqrt(6 / (w1.shape[0] + w1[0].numel()))
    assert w1.abs().max() <= bound and w1.abs().max() > 0.9 * bound
    assert torch.count_nonzero(model.x_embedder.proj2.bias) == 0
    assert not model.pos_embed.requires_grad
    assert "rope_cos" not in model.state_dict()


def test_dropout_only_in_middle_blocks():
    model = create_model("JiT-B/16", attn_drop=0.1, proj_drop=0.2, input_size=32)
    drops = [(b.attn.attn_drop, b.attn.proj_drop.p, b.mlp.drop.p) for b in model.blocks]
    assert drops == [(0.0, 0.0, 0.0)] * 3 + [(0.1, 0.2, 0.2)] * 6 + [(0.0, 0.0, 0.0)] * 3


def test_sincos_table_layout():
    table = sincos_pos_embed_2d(8, 3)  # (9, 8): cols then rows, each [sin, cos] with w = (1, 1e-2)
    token = 1 * 3 + 2  # row 1, column 2
    expected = [math.sin(2), math.sin(0.02), math.cos(2), math.cos(0.02),
                math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)]
    assert torch.allclose(table[token], torch.tensor(expected), atol=1e-7)


def test_rope_tables_layout():
    cos, sin = rope_tables_2d(8, 4, num_prefix=2)  # hd 8 -> freqs (1, 1e-2), pairs repeated
    assert cos.shape == (2 + 16, 8)
    assert torch.equal(cos[:2], torch.ones(2, 8)) and torch.equal(sin[:2], torch.zeros(2, 8))
    row, col = 3, 1
    angles = torch.tensor([row, row, row * 0.01, row * 0.01, col, col, col * 0.01, col * 0.01])
    assert torch.allclose(cos[2 + row * 4 + col], angles.cos(), atol=1e-7)
    assert torch.allclose(sin[2 + row * 4 + col], angles.sin(), atol=1e-7)
    assert torch.equal(rotate_half(torch.tensor([1.0, 2.0, 3.0, 4.0])), torch.tensor([-2.0, 1.0, -4.0, 3.0]))


def test_bf16_autocast_close_to_fp32(golden):
    # bf16 keeps 8 mantissa bits (unit roundoff 2^-9 ~ 2e-3). Rounding at each of the ~10 matmul and
    # activation stages of a 4-block net adds up to a few 1e-3 relative L2; the fast-path budget for the
    # network output is 1e-2 (measured 6.3e-3 on the golden weights with the bf16 residual stream).
    model = golden.model()
    x, t, y = golden["forward.x"], golden["forward.t"], golden["forward.y"]
    with torch.no_grad():
        ref = model(x, t, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, t, y)
    assert out.dtype == torch.bfloat16
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel.item() < 1e-2


def test_unpatchify_layout():
    model = JiT(input_size=8, patch_size=4, hidden_size=16, depth=1, num_heads=1, num_classes=2,
                bottleneck_dim=4, in_context_len=0)
    tokens = torch.arange(4 * 48, dtype=torch.float32).reshape(1, 4, 48)  # (p_row, p_col, c) per token
    img = model.unpatchify(tokens)
    # token 1 (row 0, col 1), p_row 2, p_col 3, channel 1 -> pixel (y=2, x=4+3)
    assert img[0, 1, 2, 7].item() == tokens[0, 1, (2 * 4 + 3) * 3 + 1].item()


def test_no_bottleneck_variant_and_in_context_off():
    model = JiT(input_size=32, patch_size=8, hidden_size=64, depth=2, num_heads=4, num_classes=3,
                bottleneck_dim=None, in_context_len=0)
    assert "x_embedder.proj.weight" in model.state_dict()
    assert "in_context_posemb" not in model.state_dict()
    out = model(torch.randn(2, 3, 32, 32), torch.rand(2), torch.tensor([0, 3]))
    assert out.shape == (2, 3, 32, 32)


def test_bad_configs_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown model preset 'JiT-X/3'"):
        create_model("JiT-X/3")
    with pytest.raises(ValueError, match="not a multiple of the patch size 16"):
        preset_config("JiT-B/16", input_size=100)
    with pytest.raises(ValueError, match="unknown model argument"):
        preset_config("JiT-B/16", widthh=3)


def test_meta_init_then_materialise_gives_tables(golden):
    with torch.device("meta"):
        model = JiT(**golden.model_config)
    model = model.to_empty(device="cpu")
    model.load_state_dict(golden.net_state_dict(), strict=True)
    model.init_tables()
    model.eval()
    with torch.no_grad():
        out = model(golden["forward.x"], golden["forward.t"], golden["forward.y"])
    assert (out - golden["forward.out"]).abs().max().item() <= 1e-5


def test_grad_checkpointing_same_gradients(golden):
    model = golden.model().train()
    x, t, y = golden["forward.x"], golden["forward.t"], golden["forward.y"]
    model(x, t, y).square().mean().backward()
    ref = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    model.grad_checkpointing = True
    model(x, t, y).square().mean().backward()
    for r, p in zip(ref, [p for p in model.parameters() if p.requires_grad]):
        assert torch.allclose(r, p.grad, atol=1e-6)


def test_modules_are_standard():
    model = create_model("JiT-Ti/4", num_classes=3)
    assert isinstance(model.blocks[0].attn.qkv, nn.Linear)
