"""pMF network: parity with the public module's goldens, official checkpoint loading, presets and config inference."""

import datetime
import json
from pathlib import Path

import pytest
import torch

from jit_diffusion.formats.pmf_official import (
    from_official_keys,
    infer_pmf_config,
    load_official,
    load_official_model,
    official_to_model,
    to_official_keys,
)
from jit_diffusion.models.pmf import create_pmf_model
from jit_diffusion.models.pmf_config import PMF_DEFAULTS, PMF_PRESETS, PMFConfig, find_pmf_preset, pmf_preset_config
from jit_diffusion.models.pretrained import shapes_of

FIXTURES = Path(__file__).parents[1] / "fixtures" / "pmf"
OFFICIAL = FIXTURES / "pmf_tiny_official.pt"


def forward_inputs(g):
    return [g[f"forward.{k}"] for k in ("x", "t", "h", "w", "t_min", "t_max", "y")]


def test_forward_u_and_v_match_golden(pmf_golden):
    model = load_official_model(OFFICIAL)
    with torch.no_grad():
        u, v = model(*forward_inputs(pmf_golden))
    assert (u - pmf_golden["forward.u"]).abs().max().item() <= 1e-5
    assert (v - pmf_golden["forward.v"]).abs().max().item() <= 1e-5


def test_config_inferred_from_shapes_equals_golden_config():
    meta = json.loads((FIXTURES / "pmf_tiny_golden.json").read_text())["config"]
    config, state = load_official(OFFICIAL)
    assert {k: getattr(config, k) for k in meta} == meta
    assert config.v_head and config.bottleneck == 128 and config.mlp_hidden == 170
    assert all("_flax" not in k for k in state) and "rope_freqs" not in state


def test_checkpoint_without_v_head_loads_and_gives_the_same_u(pmf_golden, pmf_official_state, tmp_path):
    path = tmp_path / "no_v.pt"
    torch.save({k: v for k, v in pmf_official_state.items() if not k.startswith(("v_heads.", "v_final_layer."))}, path)
    model = load_official_model(path)
    assert not model.config.v_head and not hasattr(model, "v_heads")
    with torch.no_grad():
        u, v = model(*forward_inputs(pmf_golden))
    assert v is None
    assert (u - pmf_golden["forward.u"]).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="no v head"):
        model(*forward_inputs(pmf_golden), heads="v")


def test_official_key_round_trip(pmf_official_state):
    model = official_to_model(pmf_official_state)
    back = to_official_keys(model)
    assert sorted(back) == sorted(pmf_official_state)
    for key, value in pmf_official_state.items():
        assert back[key].dtype == value.dtype
        assert (back[key] - value).abs().max().item() <= 1e-6, key


def test_rope_tables_match_the_official_buffer(pmf_official_state):
    model = official_to_model(pmf_official_state)
    freqs = pmf_official_state["rope_freqs"]  # (patches, head_dim / 2) complex
    L = model.num_prefix
    assert torch.allclose(model.rope_cos[L:, 0::2], freqs.real, atol=1e-6)
    assert torch.allclose(model.rope_sin[L:, 1::2], freqs.imag, atol=1e-6)
    assert torch.equal(model.rope_cos[:L], torch.ones_like(model.rope_cos[:L]))  # prefix tokens not rotated


def test_a_wrong_rope_buffer_is_refused(pmf_official_state):
    bad = dict(pmf_official_state, rope_freqs=pmf_official_state["rope_freqs"].conj())
    with pytest.raises(ValueError, match="rope_freqs"):
        official_to_model(bad)


def test_not_a_pmf_state_dict_is_a_one_line_error(pmf_official_state):
    bad = {k: v for k, v in pmf_official_state.items() if k != "pos_embed"}
    with pytest.raises(ValueError, match="no 'pos_embed' tensor"):
        official_to_model(bad, source="x.pt")
    extra = dict(from_official_keys(pmf_official_state), **{"u_heads.0.extra": torch.zeros(1)})
    with pytest.raises(ValueError, match="unexpected"):
        infer_pmf_config(shapes_of(extra), "x.pt")


def test_a_pickle_is_never_executed(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"pos_embed": torch.zeros(1), "when": datetime.date(2026, 1, 1)}, path)
    with pytest.raises(ValueError, match="refusing to load .*datetime"):
        load_official(path)


@pytest.mark.parametrize("name", list(PMF_PRESETS))
def test_presets_round_trip_through_shape_inference(name):
    with torch.device("meta"):
        model = create_pmf_model(name, num_classes=10)
    config = infer_pmf_config(shapes_of(model.state_dict()), name)
    assert config == model.config
    assert find_pmf_preset(config) == name


def test_official_preset_architecture():
    b16 = pmf_preset_config("pMF-B/16")
    assert (b16.depth, b16.hidden_size, b16.num_heads, b16.aux_head_depth, b16.input_size) == (16, 768, 12, 8, 256)
    h32 = pmf_preset_config("pMF-H/32")
    assert (h32.depth, h32.hidden_size, h32.input_size, h32.bottleneck, h32.mlp_hidden) == (48, 1280, 512, 256, 3416)
    assert pmf_preset_config("pMF-L/16").mlp_hidden == 2730  # int(1024 * 8/3), not rounded at H <= 1024
    assert [PMF_DEFAULTS[f"pMF-{n}"].noise_scale for n in ("B/16", "B/32", "L/16", "L/32", "H/16", "H/32")] == [
        1, 2, 1, 4, 2, 4,
    ]  # fmt: skip
    assert (PMF_DEFAULTS["pMF-B/16"].omega, PMF_DEFAULTS["pMF-B/16"].interval) == (8.5, (0.1, 0.7))
    assert {pmf_preset_config(n).num_prefix for n in PMF_PRESETS if not n.startswith("pMF-Ti")} == {20}  # public
    assert pmf_preset_config("pMF-Ti/8").num_prefix == 8  # like JiT-Ti's 8 in-context tokens
    assert {n for n in PMF_PRESETS if n.startswith(("pMF-Ti", "pMF-S"))} == {
        f"pMF-{f}/{p}" for f in ("Ti", "S") for p in (4, 8, 16)
    }


def test_bad_configs_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown pMF preset"):
        pmf_preset_config("pMF-X/2")
    with pytest.raises(ValueError, match="aux_head_depth"):
        PMFConfig(depth=4, aux_head_depth=5).validate()
    with pytest.raises(ValueError, match="unknown pMF model argument"):
        pmf_preset_config("pMF-Ti/4", heads=3)


def test_initialisation_zero_gates_and_outputs_give_u_equal_z_over_t():
    torch.manual_seed(0)
    model = create_pmf_model("pMF-Ti/4", num_classes=3)
    assert all(torch.count_nonzero(p) == 0 for n, p in model.named_parameters() if n.endswith(("_scale",)))
    z = torch.randn(2, 3, 32, 32)
    t = torch.tensor([0.5, 0.02])
    ones = torch.ones(2)
    with torch.no_grad():
        u, v = model(z, t, ones * 0.1, ones * 2, ones * 0, ones, torch.tensor([0, 3]))
    expected = z / t.clamp(0.05, 1).view(-1, 1, 1, 1)  # zero output layer: x_hat = 0
    assert torch.allclose(u, expected) and torch.allclose(v, expected)
    linear = model.shared_blocks[0].attn.q_proj.weight
    assert abs(linear.std().item() - 0.32 / 192**0.5) < 0.2 * 0.32 / 192**0.5
