"""pMF models through every loader: the official .pt (with and without its v head), a pMF training run
and an export folder, with the public sampling defaults in our time and the run's own settings."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from jit_diffusion import JiT, load_model, open_source
from jit_diffusion.diffusion.pmf_sampling import our_interval, sample_pmf
from jit_diffusion.formats.checkpoint import save_checkpoint
from jit_diffusion.formats.convert import convert
from jit_diffusion.formats.pmf_official import is_pmf_official, pmf_official_info
from jit_diffusion.models.config import ModelInfo
from jit_diffusion.models.families import build_network, family_of_model
from jit_diffusion.models.pmf import PMF
from jit_diffusion.models.pmf_config import pmf_preset_config

FIXTURES = Path(__file__).parents[1] / "fixtures" / "pmf"
OFFICIAL = FIXTURES / "pmf_tiny_official.pt"
GOLDEN_SETTINGS = [("sample1.out", 1, 4.0, (0.1, 0.7)), ("sample2.out", 2, 2.5, (0.2, 0.8))]  # pMF-time intervals


@pytest.fixture(scope="module")
def no_v_head(pmf_official_state, tmp_path_factory) -> Path:
    """The fixture as a released inference file: no v_heads.* / v_final_layer.*."""
    path = tmp_path_factory.mktemp("pmf") / "pmf_no_v.pt"
    torch.save({k: v for k, v in pmf_official_state.items() if not k.startswith("v_")}, path)
    return path


def _golden_samples(model, pmf_golden) -> list[float]:
    """Max abs error of the model's 1- and 2-step samples (our-time interval) against the public sampler's."""
    labels, noise = pmf_golden["sample.labels"], pmf_golden["sample.z0"]
    errors = []
    for key, steps, omega, interval in GOLDEN_SETTINGS:
        images = sample_pmf(model, labels, noise, steps, omega, our_interval(*interval))
        errors.append((images - pmf_golden[key]).abs().max().item())
    return errors


@pytest.mark.parametrize("with_v", [True, False])
def test_official_file_opens_and_samples_the_golden(pmf_golden, no_v_head, with_v):
    source = open_source(OFFICIAL if with_v else no_v_head)
    assert (source.kind, source.family, source.weight_names) == ("pmf-official", "pmf", ["ema1"])
    assert source.describe() == "official pMF checkpoint"
    model, info = source.load()
    assert isinstance(model, PMF) and model.has_v_head is with_v and not model.training
    assert (info.family, info.method, info.steps, info.num_classes, info.image_size) == ("pmf", "pmf", 1, 5, 16)
    assert max(_golden_samples(model, pmf_golden)) <= 1e-5
    again, _ = load_model(OFFICIAL if with_v else no_v_head)  # the API entry point
    assert torch.equal(again.u_final_layer.linear.weight, model.u_final_layer.linear.weight)


def test_official_detection_is_by_keys(pmf_official_state):
    assert is_pmf_official(pmf_official_state)
    assert not is_pmf_official({"model": {}, "model_config": {}})  # a training checkpoint
    assert not is_pmf_official({k: v for k, v in pmf_official_state.items() if "omega" not in k})
    assert not is_pmf_official({**pmf_official_state, "args": "not a tensor"})


def test_ema2_of_an_official_pmf_file_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"holds only its ema1 weights; choose from \['ema1'\]$"):
        open_source(OFFICIAL).load("ema2")


@pytest.mark.parametrize("preset, omega, interval, noise", [
    ("pMF-B/16", 8.5, (0.3, 0.9), 1.0), ("pMF-B/32", 6.5, (0.3, 0.9), 2.0), ("pMF-L/16", 7.0, (0.3, 0.8), 1.0),
    ("pMF-L/32", 7.5, (0.4, 0.8), 4.0), ("pMF-H/16", 8.5, (0.3, 0.9), 2.0),
])  # fmt: skip
def test_official_defaults_are_the_public_eval_settings_in_our_time(preset, omega, interval, noise):
    info = pmf_official_info(pmf_preset_config(preset, v_head=False), "x.pt")
    assert (info.cfg, info.noise_scale, info.steps, info.method) == (omega, noise, 1, "pmf")
    assert info.cfg_interval == pytest.approx(interval)


def test_export_round_trip_keeps_the_v_head_and_the_outputs(pmf_golden, tmp_path):
    folder, model, info = convert(OFFICIAL, tmp_path / "export")
    config = json.loads((folder / "config.json").read_text())
    assert config["family"] == "pmf" and config["sampling"]["steps"] == 1 and config["model_config"]["v_head"]
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "rope_freqs" not in keys and "v_final_layer.linear.weight" in keys  # derived buffers recomputed
    source = open_source(folder)
    assert (source.kind, source.family) == ("export", "pmf")
    loaded, loaded_info = source.load()
    assert loaded_info == dataclasses.replace(info, source=str(folder))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert max(_golden_samples(loaded, pmf_golden)) <= 1e-5
    hub_style = JiT.from_pretrained(folder)  # the Hub mixin's local path opens any family
    assert isinstance(hub_style, PMF) and hub_style.pretrained_info.family == "pmf"
    # and once more through the export of the export
    folder2, _, _ = convert(folder, tmp_path / "export2")
    assert json.loads((folder2 / "config.json").read_text())["model_config"] == config["model_config"]


def _training_checkpoint(run: Path) -> tuple[PMF, dict]:
    """A pMF run folder as the trainer writes it (contract layout), from a tiny network and two EMAs."""
    torch.manual_seed(0)
    model = build_network("pmf", dict(input_size=16, patch_size=4, hidden_size=32, depth=2, num_heads=2,
                                      aux_head_depth=1, num_classes=3))  # fmt: skip
    params = {k: v for k, v in model.state_dict().items()}
    emas = {name: {k: v + scale for k, v in params.items()} for name, scale in (("ema1", 0.5), ("ema2", -0.25))}
    state = {
        "model": params, "ema": emas, "optimizer": {}, "step": 7, "model_family": "pmf",
        "model_config": dataclasses.asdict(model.config), "class_names": ["cat", "dog", "owl"],
        "config": {"data": "emoji", "noise_scale": 2.0, "sample_cfg": 3.0, "sample_interval": [0.2, 0.8],
                   "sample_steps": 2, "sample_method": "heun"},
    }  # fmt: skip
    save_checkpoint(state, run, 7)
    return model, state


def test_training_run_loads_with_its_ema_weight_sets_and_settings(tmp_path):
    model, state = _training_checkpoint(tmp_path / "run")
    source = open_source(tmp_path / "run")
    assert (source.kind, source.family, source.weight_names) == ("training", "pmf", ["raw", "ema1", "ema2"])
    assert source.describe() == "pmf training checkpoint" and source.data == "emoji"
    info = source.info()
    assert (info.cfg, info.cfg_interval, info.steps, info.noise_scale, info.step) == (3.0, (0.2, 0.8), 2, 2.0, 7)
    assert info.method == "pmf" and info.class_names == ["cat", "dog", "owl"]  # the run's sample_method is JiT's
    built = None
    for name in ("ema1", "ema2", "raw"):
        loaded, info = source.load(name)
        built = built or loaded
        assert loaded is built and family_of_model(loaded).name == "pmf"  # other sets swapped in place
        expected = state["model"] if name == "raw" else state["ema"][name]
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in expected.items())


def test_unknown_family_in_a_checkpoint_is_a_one_line_error(tmp_path):
    _, state = _training_checkpoint(tmp_path / "run")
    save_checkpoint({**state, "model_family": "vae"}, tmp_path / "bad", 1)
    with pytest.raises(ValueError, match="unknown model family 'vae'; known: jit, pmf"):
        open_source(tmp_path / "bad").info()


def test_jit_runs_keep_their_defaults():
    info = ModelInfo.create({"num_classes": 2, "input_size": 32})
    assert (info.family, info.method, info.steps) == ("jit", "heun", None)
    assert ModelInfo.create({"num_classes": 2, "input_size": 32}, family="pmf", method="heun").method == "pmf"
