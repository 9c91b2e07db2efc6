import argparse
import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from jit_diffusion import JiT, create_model
from jit_diffusion.cli import main as cli_main
from jit_diffusion.formats.checkpoint import ModelInfo, save_checkpoint
from jit_diffusion.formats.convert import (
    CONFIG_NAME,
    FORMAT,
    WEIGHTS_NAME,
    convert,
    infer_config,
    load_official,
    load_pretrained,
    save_pretrained,
)
from jit_diffusion.formats.loading import load_model

GOLDEN_START = 1  # in_context_start of the golden net: not a preset, and not visible in the weights


def official_dict(ema1: dict, *, model: str | None = None, size: int = 32, classes: int = 10, **args) -> dict:
    """An official-format checkpoint: net.* state dicts, distinguishable raw/ema2, optimizer, args."""
    raw = {k: v + 1.0 for k, v in ema1.items()}
    ema2 = {k: v * 0.5 - 0.25 for k, v in ema1.items()}
    net = lambda sd: {f"net.{k}": v.clone() for k, v in sd.items()}  # noqa: E731
    namespace = argparse.Namespace(img_size=size, class_num=classes, noise_scale=1.0, P_mean=-0.8, P_std=0.8,
                                   t_eps=0.05, cfg=2.5, interval_min=0.1, interval_max=0.9, attn_dropout=0.0,
                                   proj_dropout=0.0, output_dir="out", **args)  # fmt: skip
    if model is not None:
        namespace.model = model
    return {
        "model": net(raw),
        "model_ema1": net(ema1),
        "model_ema2": net(ema2),
        "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-4, "params": [0]}]},
        "epoch": 3,
        "args": namespace,
    }


@pytest.fixture
def golden_pth(golden, tmp_path) -> Path:
    path = tmp_path / "checkpoint-last.pth"
    torch.save(official_dict(golden.net_state_dict()), path)
    return path


def forward(model, golden) -> torch.Tensor:
    with torch.no_grad():
        return model(golden["forward.x"], golden["forward.t"], golden["forward.y"])


def perturbed(model: JiT, seed: int = 0) -> JiT:
    """Add small noise to every parameter, so zero-init layers do not make the output trivially zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    model.init_tables()
    return model.eval()


@pytest.fixture(scope="module")
def ti_model() -> JiT:
    torch.manual_seed(0)
    return perturbed(create_model("JiT-Ti/4", input_size=32, num_classes=7))


# --- official checkpoints ------------------------------------------------------------------


def test_official_convert_then_load_reproduces_golden(golden, golden_pth, tmp_path):
    out = tmp_path / "export"
    rc = cli_main(["convert", str(golden_pth), str(out), "--in-context-start", str(GOLDEN_START)])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    model, info = load_model(out)
    assert (forward(model, golden) - golden["forward.out"]).abs().max().item() <= 1e-5
    assert info.model_config == {**golden.model_config, "attn_drop": 0.0, "proj_drop": 0.0}
    assert (info.cfg, info.cfg_interval, info.noise_scale, info.t_eps) == (2.5, (0.1, 0.9), 1.0, 0.05)
    assert info.class_names == [str(i) for i in range(10)] and info.weights == "ema1"


@pytest.mark.parametrize("weights,key", [("ema1", "model_ema1"), ("ema2", "model_ema2"), ("raw", "model")])
def test_weights_choice_picks_exactly_those_tensors(golden, golden_pth, weights, key):
    with torch.serialization.safe_globals([argparse.Namespace]):
        expected = torch.load(golden_pth, weights_only=True)[key]
    model, info = load_official(golden_pth, weights=weights, in_context_start=GOLDEN_START)
    state = model.state_dict()
    assert set(state) == {k[len("net."):] for k in expected}
    assert all(torch.equal(state[k[len("net."):]], v) for k, v in expected.items())
    assert info.weights == weights


def test_cli_weights_flag_and_bf16(golden, golden_pth, tmp_path):
    out = tmp_path / "raw_bf16"
    assert cli_main(["convert", str(golden_pth), str(out), "--weights", "raw", "--dtype", "bf16",
                     "--in-context-start", "1"]) == 0  # fmt: skip
    config = json.loads((out / CONFIG_NAME).read_text())
    assert config["weights"] == "raw" and config["dtype"] == "bfloat16" and config["format"] == FORMAT
    stored = load_file(out / WEIGHTS_NAME)
    assert stored["blocks.0.attn.qkv.weight"].dtype == torch.bfloat16
    assert stored["pos_embed"].dtype == torch.float32  # the fixed table stays exact
    raw = golden.net_state_dict()["blocks.0.attn.qkv.weight"] + 1.0
    assert torch.equal(stored["blocks.0.attn.qkv.weight"], raw.bfloat16())
    model, _ = load_pretrained(out)
    assert model.pos_embed.dtype == torch.float32  # loaded as fp32 unless asked otherwise
    model16, _ = load_pretrained(out, dtype="bf16")
    assert model16.blocks[0].attn.qkv.weight.dtype == torch.bfloat16


def test_non_preset_needs_in_context_start(golden_pth):
    with pytest.raises(ValueError, match=r"is no preset, and in_context_start is not stored.*--in-context-start"):
        load_official(golden_pth)


@pytest.mark.parametrize("model_name", [None, "JiT-Ti/4", "my-custom-name"])
def test_preset_inferred_from_shapes_or_args(ti_model, tmp_path, model_name):
    model = ti_model
    path = tmp_path / "ti.pth"
    torch.save(official_dict(model.state_dict(), model=model_name, classes=7), path)
    loaded, info = load_official(path)
    assert info.model_config == dataclasses.asdict(model.config)
    assert info.model_config["in_context_start"] == 2  # from the Ti family: not in the weights
    x, t, y = torch.randn(2, 3, 32, 32), torch.rand(2), torch.tensor([0, 7])
    with torch.no_grad():
        assert torch.equal(loaded(x, t, y), model(x, t, y))
    out = save_pretrained(loaded, tmp_path / "ti_export", info)
    assert json.loads((out / CONFIG_NAME).read_text())["preset"] == "JiT-Ti/4"
    if model_name is None:  # checkpoint.load_model opens the .pth directly too
        ema2, _ = load_model(path, weights="ema2")
        assert torch.equal(ema2.pos_embed, model.pos_embed * 0.5 - 0.25)


def test_preset_shape_inference_at_other_sizes():
    with torch.device("meta"):
        model = create_model("JiT-L/32", input_size=256, num_classes=1000)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    config, preset = infer_config(shapes)
    assert preset == "JiT-L/32" and config == model.config


def test_args_model_that_contradicts_weights_lists_keys(golden, tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save(official_dict(golden.net_state_dict(), model="JiT-Ti/8"), path)
    with pytest.raises(ValueError) as err:
        load_official(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    assert "unexpected [" in msg or "missing [" in msg
    assert "wrong shape [pos_embed: file (1, 16, 64) vs config (1, 16, 192)" in msg and "(+" in msg


class Marker:
    """Unpickling this would create a file: proof that something ran."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class Plain:
    pass


@pytest.mark.parametrize("make,offending", [(lambda p: Marker(p), "io.open"), (lambda p: Plain(), "Plain")])
def test_unsafe_pickle_refused_and_nothing_runs(golden, tmp_path, make, offending):
    marker = tmp_path / "marker"
    ckpt = official_dict(golden.net_state_dict())
    ckpt["args"].evil = make(str(marker))
    path = tmp_path / "evil.pth"
    torch.save(ckpt, path)
    assert not marker.exists()  # saving does not run __reduce__'s callable either
    with pytest.raises(ValueError) as err:
        load_official(path, in_context_start=GOLDEN_START)
    msg = str(err.value)
    assert msg.startswith(f"refusing to load {path}") and offending in msg and "\n" not in msg
    assert not marker.exists()
    out = tmp_path / "never"
    assert cli_main(["convert", str(path), str(out), "--in-context-start", "1"]) == 2
    assert not marker.exists() and not out.exists()
    if isinstance(ckpt["args"].evil, Marker):  # the probe works: an unsafe load does create the file
        torch.load(path, weights_only=False)
        assert marker.exists()


def test_foreign_files_are_clear_errors(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=f"cannot read {junk} as a torch checkpoint"):
        load_official(junk)
    other = tmp_path / "other.pth"
    torch.save({"weights": {"a": torch.zeros(1)}}, other)
    with pytest.raises(ValueError, match="is not an official JiT checkpoint"):
        load_official(other)
    assert cli_main(["convert", str(other), str(tmp_path / "out")]) == 2


def test_plain_containers_still_load(golden, tmp_path):
    from collections import OrderedDict

    ckpt = official_dict(golden.net_state_dict())
    ckpt["model_ema1"] = OrderedDict(ckpt["model_ema1"])  # what state_dict() really returns
    path = tmp_path / "ordered.pth"
    torch.save(ckpt, path)
    model, _ = load_official(path, in_context_start=GOLDEN_START)
    assert (forward(model, golden) - golden["forward.out"]).abs().max().item() <= 1e-5


# --- export folder and the hub mixin ----------------------------------------------------------


def test_export_from_pretrained_bit_identical(golden, tmp_path):
    model = golden.model()
    names = [f"c{i}" for i in range(10)]
    info = ModelInfo(model_config=golden.model_config, class_names=names, noise_scale=2.0, t_eps=0.04, cfg=2.9,
                     cfg_interval=(0.2, 0.8), source="golden", weights="ema2", step=12)  # fmt: skip
    folder = save_pretrained(model, tmp_path / "exp", info)
    loaded = JiT.from_pretrained(folder)
    assert type(loaded) is JiT and not loaded.training
    assert torch.equal(forward(loaded, golden), forward(model, golden))
    _, back = load_pretrained(folder)
    assert (back.class_names, back.noise_scale, back.t_eps, back.cfg, back.cfg_interval, back.weights, back.step) == (
        info.class_names, 2.0, 0.04, 2.9, (0.2, 0.8), "ema2", 12)  # fmt: skip
    with safe_open(str(folder / WEIGHTS_NAME), "pt") as f:
        assert f.metadata()["jit_diffusion"] == FORMAT


def test_mixin_save_pretrained_round_trip(golden, tmp_path):
    model = golden.model()
    model.save_pretrained(tmp_path / "mixin")
    assert (tmp_path / "mixin" / CONFIG_NAME).is_file() and (tmp_path / "mixin" / WEIGHTS_NAME).is_file()
    assert json.loads((tmp_path / "mixin" / CONFIG_NAME).read_text())["format"] == FORMAT
    loaded = JiT.from_pretrained(tmp_path / "mixin")
    assert torch.equal(forward(loaded, golden), forward(model, golden))
    via_ours, info = load_pretrained(tmp_path / "mixin")  # the same folder format both ways
    assert torch.equal(forward(via_ours, golden), forward(model, golden))
    assert info.class_names == [str(i) for i in range(10)]
    # ModelInfo travels with a model loaded by from_pretrained into its next save_pretrained
    save_pretrained(model, tmp_path / "named", dataclasses.replace(info, class_names=list("abcdefghij"), cfg=3.0))
    JiT.from_pretrained(tmp_path / "named").save_pretrained(tmp_path / "again")
    _, again = load_pretrained(tmp_path / "again")
    assert again.class_names == list("abcdefghij") and again.cfg == 3.0


def test_mixin_keeps_construction_unchanged(golden):
    with torch.device("meta"):
        meta_model = JiT(**golden.model_config)
    assert meta_model.pos_embed.is_meta
    model = golden.model()
    assert set(model.state_dict()) == set(golden.net_state_dict())
    clone = copy.deepcopy(model)
    assert torch.equal(forward(clone, golden), forward(model, golden))


def test_edited_hidden_size_lists_wrong_shapes(golden, tmp_path):
    folder = save_pretrained(golden.model(), tmp_path / "exp")
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["model_config"]["hidden_size"] = 128
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError) as err:
        load_pretrained(folder)
    msg = str(err.value)
    assert "\n" not in msg and str(folder / WEIGHTS_NAME) in msg
    assert "pos_embed: file (1, 16, 64) vs config (1, 16, 128)" in msg
    with pytest.raises(ValueError, match="wrong shape"):
        JiT.from_pretrained(folder)


def test_missing_and_unexpected_tensors_listed(golden, tmp_path):
    folder = save_pretrained(golden.model(), tmp_path / "exp")
    tensors = load_file(folder / WEIGHTS_NAME)
    del tensors["blocks.2.mlp.w3.bias"]
    tensors["blocks.9.extra.weight"] = torch.zeros(3)
    save_file(tensors, folder / WEIGHTS_NAME)
    with pytest.raises(ValueError) as err:
        load_pretrained(folder)
    msg = str(err.value)
    assert "missing [blocks.2.mlp.w3.bias]" in msg and "unexpected [blocks.9.extra.weight]" in msg
    assert "\n" not in msg


def test_bad_config_json_is_clear(golden, tmp_path):
    folder = save_pretrained(golden.model(), tmp_path / "exp")
    (folder / CONFIG_NAME).write_text(json.dumps({"format": "something-else/3", "model_config": {}}))
    with pytest.raises(ValueError, match="is not a jit-diffusion export"):
        load_pretrained(folder)
    (folder / CONFIG_NAME).write_text(json.dumps({"format": FORMAT, "model_config": {"widthh": 3}}))
    with pytest.raises(ValueError, match=r"unknown model_config field\(s\) \['widthh'\]"):
        load_pretrained(folder)


def test_overwrite_refused_unless_asked(golden, tmp_path):
    model = golden.model()
    folder = save_pretrained(model, tmp_path / "exp")
    with pytest.raises(FileExistsError, match="not empty"):
        save_pretrained(model, folder)
    info = ModelInfo(model_config=golden.model_config, class_names=[str(i) for i in range(10)], cfg=4.0)
    save_pretrained(model, folder, info, overwrite=True)
    assert load_pretrained(folder)[1].cfg == 4.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]  # no temp folders left behind
    (tmp_path / "empty").mkdir()
    save_pretrained(model, tmp_path / "empty")  # an empty folder is fine
    assert cli_main(["convert", str(folder), str(tmp_path / "empty")]) == 2
    assert cli_main(["convert", str(folder), str(tmp_path / "empty"), "--overwrite", "--dtype", "bf16"]) == 0
    assert json.loads((tmp_path / "empty" / CONFIG_NAME).read_text())["dtype"] == "bfloat16"
    with pytest.raises(ValueError, match="holds only its ema1 weights"):
        convert(folder, tmp_path / "x", weights="raw")


# --- training checkpoints ---------------------------------------------------------------------


@pytest.mark.slow
def test_training_checkpoint_converts_and_samples(tmp_path, capsys):
    torch.manual_seed(0)
    model = create_model("JiT-Ti/8", num_classes=3).eval()
    ema1 = {n: p.detach() * 0.9 for n, p in model.named_parameters()}
    ema2 = {n: p.detach() * 0.8 for n, p in model.named_parameters()}
    state = {
        "model": model.state_dict(),
        "ema": {"ema1": ema1, "ema2": ema2},
        "model_config": dataclasses.asdict(model.config),
        "config": {"prediction": "x", "noise_scale": 1.5, "t_eps": 0.05, "sample_cfg": 2.0,
                   "sample_interval": [0.1, 1.0]},  # fmt: skip
        "class_names": ["cat", "dog", "fox"],
        "step": 40,
    }
    run = tmp_path / "run"
    save_checkpoint(state, run, step=40)
    out = tmp_path / "export"
    assert cli_main(["convert", str(run), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "JiT-Ti/8" in printed and "ema1" in printed and str(out) in printed
    loaded, info = load_model(out)
    exported = loaded.state_dict()
    assert all(torch.equal(exported[k], v) for k, v in ema1.items())
    assert (info.class_names, info.noise_scale, info.cfg, info.step) == (["cat", "dog", "fox"], 1.5, 2.0, 40)
    grid = tmp_path / "g.png"
    assert cli_main(["sample", str(out), "--per-class", "1", "--steps", "2", "--grid", str(grid)]) == 0
    assert grid.is_file() and grid.stat().st_size > 0
    folder, _, _ = convert(run / "checkpoints" / "step_00000040.pt", tmp_path / "raw", weights="raw")
    exported = load_pretrained(folder)[0].state_dict()
    assert all(torch.equal(exported[k], v) for k, v in model.state_dict().items())
