"""One loader: every kind of model source behaves the same in every command and in from_pretrained."""

import argparse
import dataclasses
import json
import os
import stat

import numpy as np
import pytest
import torch
from conftest import lively_jit
from safetensors.torch import load_file, save_file

from jit_diffusion import JiT
from jit_diffusion.cli import main
from jit_diffusion.core.device import same_device
from jit_diffusion.core.fileio import default_file_mode
from jit_diffusion.formats import loading
from jit_diffusion.formats.checkpoint import save_checkpoint
from jit_diffusion.formats.convert import convert
from jit_diffusion.formats.loading import load_model, open_source
from jit_diffusion.models.config import preset_config
from jit_diffusion.models.pretrained import save_pretrained

CONFIG = preset_config("JiT-Ti/4", input_size=8, num_classes=3)  # a preset family: official import infers it
# diffusers-style: a B0 pipeline folder, the transformer/ folder of a B pipeline, a layout-A file beside its
# config.json, B0 shards with their index file
DIFFUSERS = ["pipeline-b0", "transformer-b", "file-a", "shards-b0"]
SINGLE = ["export", *DIFFUSERS]  # sources that hold only their ema1 weights
KINDS = ["run", "latest", "step", "export", "official", *DIFFUSERS]


@pytest.fixture(scope="module")
def weights() -> dict[str, dict[str, torch.Tensor]]:
    """Three distinguishable weight sets with non-zero output layers (so images depend on them)."""
    model = lively_jit(CONFIG)
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    params = [n for n, _ in model.named_parameters()]
    emas = {f"ema{i}": {k: raw[k] + 0.01 * i * torch.randn_like(raw[k]) for k in params} for i in (1, 2)}
    return {"raw": raw, **emas}


@pytest.fixture(scope="module")
def sources(weights, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("sources")
    run = root / "run"
    ckpt = {
        "model": weights["raw"], "ema": {"ema1": weights["ema1"], "ema2": weights["ema2"]},
        "model_config": dataclasses.asdict(CONFIG), "class_names": ["a", "b", "c"], "step": 10,
        "config": {"prediction": "x", "noise_scale": 1.0, "t_eps": 0.05, "sample_cfg": 1.0,
                   "sample_interval": [0.1, 1.0], "data": "emoji", "bottleneck_dim": None, "attn_drop": 0.0},
    }  # fmt: skip
    step = save_checkpoint(ckpt, run, 10)
    (run / "config.json").write_text('{"model": "JiT-Ti/4", "bottleneck_dim": null, "attn_drop": 0.0}')
    model, info = load_model(run, "ema1")
    export = save_pretrained(model, root / "export", info)
    net = lambda sd: {f"net.{k}": v for k, v in sd.items()}  # noqa: E731
    official = root / "checkpoint-last.pth"
    args = argparse.Namespace(model="JiT-Ti/4", cfg=1.0, interval_min=0.1, interval_max=1.0, noise_scale=1.0)
    torch.save({"model": net(weights["raw"]), "model_ema1": net({**weights["raw"], **weights["ema1"]}),
                "model_ema2": net({**weights["raw"], **weights["ema2"]}), "epoch": 3, "args": args}, official)
    return {"run": run, "latest": run / "checkpoints" / "latest", "step": step, "export": export,
            "official": official, **diffusers_sources(export, root)}  # fmt: skip


def diffusers_sources(export, root) -> dict:
    """The ema1 weights in each diffusers-style kind (B0/B written by `jit convert`, A and shards by hand)."""
    pipeline_b0, _, _ = convert(export, root / "pipeline-b0", fmt="diffusers-b0")
    pipeline_b, _, _ = convert(export, root / "pipeline-b", fmt="diffusers-b")
    official_names = load_file(str(export / "model.safetensors"))
    file_a = root / "a" / "diffusion_pytorch_model.safetensors"
    file_a.parent.mkdir()
    save_file({f"transformer.{k}": v for k, v in official_names.items()}, str(file_a))
    (root / "a" / "config.json").write_text(json.dumps({"model_type": "JiT-Ti/4", "sample_size": 8,
                                                        "num_class_embeds": 3, "dropout": 0.0}))  # fmt: skip
    b0 = load_file(str(pipeline_b0 / "transformer" / "diffusion_pytorch_model.safetensors"))
    shards = root / "shards"
    shards.mkdir()
    weight_map = {k: f"part-{i % 2}.safetensors" for i, k in enumerate(sorted(b0))}
    for name in set(weight_map.values()):
        save_file({k: v for k, v in b0.items() if weight_map[k] == name}, str(shards / name))
    (shards / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (shards / "config.json").write_text((pipeline_b0 / "transformer" / "config.json").read_text())
    return {"pipeline-b0": pipeline_b0, "transformer-b": pipeline_b / "transformer", "file-a": file_a,
            "shards-b0": shards}  # fmt: skip


def _same_state(model: JiT, expected: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


@pytest.mark.parametrize("kind", KINDS)
def test_load_model_and_from_pretrained_give_the_same_weights(sources, weights, kind):
    for model in (load_model(sources[kind])[0], JiT.from_pretrained(sources[kind])):
        _same_state(model, weights["ema1"])
        assert not model.training
    if kind not in SINGLE:
        _same_state(JiT.from_pretrained(sources[kind], weights="ema2"), weights["ema2"])
        _same_state(load_model(sources[kind], "raw")[0], weights["raw"])


@pytest.mark.parametrize("kind", SINGLE)
def test_single_weight_sources_refuse_weights_they_do_not_hold(sources, kind):
    with pytest.raises(ValueError, match="holds only its ema1 weights"):
        open_source(sources[kind]).load("ema2")


@pytest.mark.parametrize("kind", ["run", "official", "export", "pipeline-b0"])
def test_a_source_builds_once_and_swaps_exactly_the_fresh_weights_in(sources, kind, monkeypatch):
    names = ["ema1", "ema1"] if kind in SINGLE else ["ema1", "ema2", "raw", "ema1"]
    fresh = {name: open_source(sources[kind]).load(name)[0].state_dict() for name in set(names)}
    builds = []
    build = loading.build_model
    monkeypatch.setattr(loading, "build_model", lambda *args, **kw: builds.append(1) or build(*args, **kw))
    source = open_source(sources[kind])
    info = source.info("ema1")
    assert builds == []  # the settings alone build nothing
    assert info == open_source(sources[kind]).load("ema1")[1]
    builds.clear()
    models = []
    for name in names:
        model, info = source.load(name, torch.device("cpu") if models else "cpu")
        state = model.state_dict()
        assert state.keys() == fresh[name].keys() and info.weights == name and not model.training
        assert all(torch.equal(state[k], v) and state[k].dtype == v.dtype for k, v in fresh[name].items())
        models.append(model)
    assert builds == [1] and all(m is models[0] for m in models)


def test_cuda_without_index_is_the_current_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert same_device("cuda", torch.device("cuda:1")) and not same_device("cuda", "cuda:0")
    assert same_device("cpu", torch.device("cpu")) and not same_device("cpu", "cuda:1")


@pytest.mark.parametrize("kind", ["run", "official"])
def test_model_is_another_name_for_the_raw_weights(sources, weights, kind):
    model, info = open_source(sources[kind]).load("model")
    _same_state(model, weights["raw"])
    assert info.weights == "raw"


@pytest.mark.parametrize("kind", KINDS)
def test_convert_writes_the_same_export_with_usual_permissions(sources, weights, kind, tmp_path):
    out = tmp_path / "out"
    assert main(["convert", str(sources[kind]), str(out)]) == 0
    tensors = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(tensors[k], v) for k, v in weights["ema1"].items())
    for name in ("model.safetensors", "config.json"):
        assert stat.S_IMODE(os.stat(out / name).st_mode) == default_file_mode()


@pytest.mark.parametrize("kind", KINDS)
def test_convert_to_diffusers_and_back_keeps_the_weights(sources, weights, kind, tmp_path):
    out = tmp_path / "pipeline"
    assert main(["convert", str(sources[kind]), str(out), "--format", "diffusers-b"]) == 0
    _same_state(JiT.from_pretrained(out), weights["ema1"])


@pytest.mark.slow
def test_sample_and_eval_give_the_same_images_from_every_kind(sources, tmp_path):
    grids, chunks = {}, {}
    for kind in KINDS:
        npz = tmp_path / f"{kind}.npz"
        assert main(["sample", str(sources[kind]), "--classes", "0,2", "--per-class", "2", "--steps", "2",
                     "--cfg", "2.0", "--device", "cpu", "--npz", str(npz)]) == 0  # fmt: skip
        grids[kind] = np.load(npz)["arr_0"]
        out = tmp_path / f"eval-{kind}"
        assert main(["eval", str(sources[kind]), "--out", str(out), "--num", "3", "--steps", "2", "--cfg", "1.5",
                     "--metrics", "none", "--device", "cpu"]) == 0  # fmt: skip
        chunks[kind] = np.load(out / "ema1-cfg1.5" / "samples" / "chunk_00000.npz")["arr_0"]
    for kind in KINDS[1:]:
        np.testing.assert_array_equal(grids[kind], grids["run"])
        np.testing.assert_array_equal(chunks[kind], chunks["run"])
    assert grids["run"].std() > 0
