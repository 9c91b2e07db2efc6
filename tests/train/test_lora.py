"""LoRA fine-tuning (``jit train --init-from SOURCE --lora-rank R``): the parameter count, frozen base, merging,
adapter-only checkpoints that name their base, loading and export of a LoRA run, exact resume, 1 vs 2
processes, and one-line errors."""

import json
import shutil

import pytest
import torch
from conftest import make_image_folder, max_abs_diff, torchrun_jit, trained_source

from jit_diffusion import cli
from jit_diffusion.formats.checkpoint import latest_checkpoint, read_checkpoint, training_weights, weights_digest
from jit_diffusion.formats.loading import open_source
from jit_diffusion.formats.lora import OWN_BASE_TENSORS
from jit_diffusion.models.jit import JiT, create_model
from jit_diffusion.models.lora import DEFAULT_TARGETS, add_lora, base_name, is_adapter, merge_lora
from jit_diffusion.models.pretrained import load_pretrained
from jit_diffusion.train.config import TrainConfig
from jit_diffusion.train.trainer import Trainer

TINY = ["--batch-size", "8", "--lr", "1e-2", "--warmup-steps", "1", "--ema", "0.9,0.5", "--log-every", "2",
        "--sample-every", "0", "--keep-last", "10"]  # fmt: skip


def _train(*args) -> int:
    return cli.main(["train", *TINY, *[str(a) for a in args]])


def _lora(source: dict, *args) -> int:
    return _train("--init-from", source["run"], "--data", source["data"], "--lora-rank", 4, *args)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> dict:
    """A 4-class JiT-Ti/4 run at 16 px (3 steps), its data, and a LoRA run on it (4 steps)."""
    root = tmp_path_factory.mktemp("lora_source")
    source = trained_source(root, _train, "JiT-Ti/4", 3)
    lora = root / "lora"
    assert _lora(source, "--steps", 4, "--ckpt-every", 2, "--out", lora) == 0
    return {**source, "lora": lora}


def _tiny() -> JiT:
    torch.manual_seed(0)
    return create_model("JiT-Ti/4", input_size=16, num_classes=4)


def _inputs(n: int = 3):
    torch.manual_seed(1)
    return torch.randn(n, 3, 16, 16), torch.rand(n), torch.tensor([0, 2, 4])[:n]


@pytest.mark.parametrize("rank", [1, 4])
def test_rank_adds_r_times_in_plus_out_per_target(rank):
    model = _tiny()
    before = sum(p.numel() for p in model.parameters())
    D, depth = model.config.hidden_size, model.config.depth
    hidden = model.blocks[0].mlp.w3.in_features  # the SwiGLU width
    add_lora(model, rank, 2.0 * rank, DEFAULT_TARGETS)
    # qkv (D -> 3D), proj (D -> D), w12 (D -> 2 hidden), w3 (hidden -> D) in every block
    expected = depth * rank * ((D + 3 * D) + (D + D) + (D + 2 * hidden) + (hidden + D))
    assert sum(p.numel() for p in model.parameters()) - before == expected
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(is_adapter(n) for n in trainable)
    assert len(trainable) == 2 * 4 * depth  # A and B of four maps per block


def test_merged_output_equals_the_active_adapters():
    """Adapters with random B (so they act): the merged plain network gives the same output (<= 1e-5), with
    the plain network's parameter names; the label table and the output layer take adapters too."""
    model = _tiny()
    plain_names = set(model.state_dict())
    add_lora(model, 4, 8.0, [*DEFAULT_TARGETS, "y_embedder.embedding_table", "final_layer.linear"])
    torch.manual_seed(2)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if is_adapter(name):
                param.normal_(std=0.1)
        model.final_layer.linear.base_layer.weight.normal_(std=0.1)  # zero at init: make the output see the rest
    z, t, y = _inputs()
    with torch.no_grad():
        active = model.eval()(z, t, y)
        merged = merge_lora(model)(z, t, y)
    assert set(model.state_dict()) == plain_names
    assert active.abs().max() > 0.1
    assert (active - merged).abs().max() <= 1e-5


def test_lora_trains_only_adapters_and_keeps_the_base_bitwise(source, tmp_path):
    cfg = TrainConfig(model="JiT-Ti/4", img_size=16, data=str(source["data"]), init_from=str(source["run"]),
                      lora_rank=2, lora_alpha=4.0, lora_targets=["attn.qkv", "mlp.w3"], steps=3, batch_size=8,
                      lr=1e-2, warmup_steps=0, sample_every=0, ema_decays=[0.5], out=str(tmp_path / "run"))  # fmt: skip
    trainer = Trainer(cfg)
    try:
        trainer.run()
    finally:
        trainer.close()
    params = dict(trainer.raw_model.named_parameters())
    assert {n for n, p in params.items() if p.requires_grad} == {n for n in params if is_adapter(n)}
    for name, param in params.items():
        if not is_adapter(name):
            assert torch.equal(param.detach(), source["ema1"][base_name(name)]), name
    assert all(params[n].abs().max() > 0 for n in params if ".lora_B." in n)  # the adapters moved off zero
    assert set(trainer.ema.param_names) == {n for n in params if is_adapter(n)}  # the EMA averages adapters only


def test_a_lora_checkpoint_holds_adapters_and_names_its_base(source):
    ckpt = read_checkpoint(latest_checkpoint(source["lora"]))
    assert all(is_adapter(k) for k in ckpt["model"] if k not in OWN_BASE_TENSORS)
    assert torch.equal(ckpt["model"]["pos_embed"], source["ema1"]["pos_embed"])
    assert set(OWN_BASE_TENSORS) <= set(ckpt["model"])
    for weights in ckpt["ema"].values():
        assert all(is_adapter(k) for k in weights)
    base = ckpt["lora"]["base"]
    assert base["file"] == str(latest_checkpoint(source["run"]).resolve()) and base["weights"] == "ema1"
    assert base["weights_sha256"] == weights_digest(source["ema1"])
    assert (ckpt["lora"]["rank"], ckpt["lora"]["alpha"], ckpt["lora"]["targets"]) == (4, 4.0, list(DEFAULT_TARGETS))
    size, full = latest_checkpoint(source["lora"]).stat().st_size, latest_checkpoint(source["run"]).stat().st_size
    assert size < full / 20, (size, full)
    saved = json.loads((source["lora"] / "config.json").read_text())
    assert saved["lora_rank"] == 4 and saved["resolved"]["lora"] == ckpt["lora"]


@pytest.mark.parametrize("weights", ["ema1", "raw"])
def test_a_lora_run_loads_merged_and_exports_the_same(source, tmp_path, weights):
    """open_source(run) == the base with the run's adapters active (<= 1e-5); the --merge-lora export
    holds the same tensors."""
    ckpt = read_checkpoint(latest_checkpoint(source["lora"]))
    merged, info = open_source(source["lora"]).load(weights)
    assert info.weights == weights and isinstance(merged, JiT)
    active = JiT(**ckpt["model_config"])
    active.load_state_dict(source["ema1"], strict=True)
    add_lora(active, 4, 4.0, DEFAULT_TARGETS)
    assert active.load_state_dict(training_weights(ckpt, weights), strict=False).unexpected_keys == []
    z, t, y = _inputs()
    with torch.no_grad():
        want, got = active.eval()(z, t, y), merged(z, t, y)
    assert (want - got).abs().max() <= 1e-5
    assert not torch.equal(merged.blocks[0].attn.qkv.weight, source["ema1"]["blocks.0.attn.qkv.weight"])
    assert cli.main(["sample", str(source["lora"]), "--ema", weights, "--per-class", "1", "--steps", "2",
                     "--grid", str(tmp_path / "grid.png")]) == 0  # fmt: skip
    assert (tmp_path / "grid.png").is_file()
    out = tmp_path / "export"
    assert cli.main(["convert", str(source["lora"]), "--merge-lora", str(out), "--weights", weights]) == 0
    exported, _ = load_pretrained(out, JiT)
    for name, tensor in merged.state_dict().items():
        assert torch.equal(exported.state_dict()[name], tensor), name


def test_convert_without_merge_lora_or_of_a_plain_run_is_one_line(source, tmp_path, capsys):
    assert cli.main(["convert", str(source["lora"]), str(tmp_path / "a")]) == 2
    assert cli.main(["convert", str(source["run"]), "--merge-lora", str(tmp_path / "b")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "add --merge-lora" in lines[0] and "no LoRA run" in lines[1], lines
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_changed_base_is_one_line(source, tmp_path, capsys):
    base = tmp_path / "base"
    shutil.copytree(source["run"], base)
    run = tmp_path / "run"
    assert _lora({**source, "run": base}, "--steps", 1, "--out", run) == 0
    path = latest_checkpoint(base)
    ckpt = read_checkpoint(path)
    ckpt["ema"]["ema1"]["blocks.0.attn.qkv.weight"] = ckpt["ema"]["ema1"]["blocks.0.attn.qkv.weight"] + 1e-3
    torch.save(ckpt, path.with_suffix(".new"))
    path.with_suffix(".new").replace(path)  # a new file: the loaded one may be memory-mapped
    with pytest.raises(ValueError, match="has changed since the run started"):
        open_source(run).load("ema1")
    capsys.readouterr()
    assert cli.main(["sample", str(run), "--per-class", "1", "--steps", "2", "--grid", str(tmp_path / "g.png")]) == 2
    assert _lora({**source, "run": base}, "--steps", 2, "--out", run, "--resume") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("changed since the run started" in line for line in err), err


def test_resume_of_a_lora_run_equals_uninterrupted(source, tmp_path):
    """2 steps + resume to 4 == the fixture's uninterrupted 4 steps, bitwise (adapters, EMAs, optimizer)."""
    part = tmp_path / "part"
    assert _lora(source, "--steps", 2, "--ckpt-every", 2, "--out", part) == 0
    assert _lora(source, "--steps", 4, "--ckpt-every", 2, "--out", part, "--resume") == 0
    full, resumed = (read_checkpoint(latest_checkpoint(r)) for r in (source["lora"], part))
    assert full["step"] == resumed["step"] == 4
    for key in ("model", *full["ema"]):
        a, b = (full["model"], resumed["model"]) if key == "model" else (full["ema"][key], resumed["ema"][key])
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), (key, name)
    for index, state in full["optimizer"]["state"].items():
        for k, v in state.items():
            assert torch.equal(v, resumed["optimizer"]["state"][index][k]), (index, k)


@pytest.mark.slow
def test_two_processes_match_one_for_lora(source, tmp_path):
    """torchrun with 2 gloo processes == 1 process for a LoRA run (to 1e-5, as the other 2-process tests)."""
    common = ["train", *TINY, "--init-from", str(source["run"]), "--data", str(source["data"]), "--steps", "3",
              "--lora-rank", "4", "--label-drop", "0.3"]  # fmt: skip
    assert cli.main([*common, "--out", str(tmp_path / "one")]) == 0
    torchrun_jit(*common, "--out", tmp_path / "two")
    one, two = (read_checkpoint(latest_checkpoint(tmp_path / r)) for r in ("one", "two"))
    for key in ("ema1", "ema2"):
        worst = max_abs_diff(one["ema"][key], two["ema"][key])
        assert worst < 1e-5, (key, worst)
    worst = max_abs_diff(one["model"], two["model"])
    assert worst < 1e-5 and one["model"].keys() == two["model"].keys()


@pytest.mark.parametrize(("extra", "words"), [
    (["--lora-rank", "0"], ["--lora-rank", ">= 1", "0"]),
    (["--lora-rank", "4", "--lora-targets", "attn.qkv,nothing"], ["--lora-targets", "'nothing'", "names no module"]),
    (["--lora-rank", "4", "--lora-targets", "q_norm"], ["--lora-targets", "RMSNorm"]),
    (["--lora-rank", "4", "--lora-alpha", "0"], ["--lora-alpha", "> 0"]),
    (["--lora-alpha", "8"], ["--lora-alpha needs --lora-rank"]),
    (["--lora-targets", "attn.qkv"], ["--lora-targets needs --lora-rank"]),
    (["--lora-rank", "4", "--freeze", "blocks.0"], ["--freeze", "frozen already"]),
])  # fmt: skip
def test_bad_lora_flags_are_one_line(source, tmp_path, capsys, extra, words):
    run = tmp_path / "run"
    assert _train("--init-from", source["run"], "--data", source["data"], "--steps", 1, "--out", run, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err
    assert not (run / "checkpoints").exists()


def test_lora_without_a_source_is_one_line(source, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train("--model", "JiT-Ti/4", "--img-size", 16, "--data", source["data"], "--lora-rank", 4, "--steps", 1,
                  "--out", run) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--init-from" in err, err
    assert not run.exists()


def test_new_classes_get_a_label_adapter_when_asked(source, tmp_path, capsys):
    """On 5 classes (one new) the default targets leave the label table fixed and say so; with
    y_embedder.embedding_table the table gets an adapter and the run's merged table differs from the copy."""
    data = make_image_folder(tmp_path / "data5", num_classes=5)
    run = tmp_path / "run"
    assert _train("--init-from", source["run"], "--data", data, "--lora-rank", 4, "--steps", 1, "--out", run) == 0
    assert "add y_embedder.embedding_table to --lora-targets" in capsys.readouterr().out
    run2 = tmp_path / "run2"
    assert _train("--init-from", source["run"], "--data", data, "--lora-rank", 4, "--steps", 2, "--out", run2,
                  "--lora-targets", "attn.qkv,y_embedder.embedding_table", "--warmup-steps", 0) == 0  # fmt: skip
    fixed = read_checkpoint(latest_checkpoint(run2))["model"]["y_embedder.embedding_table.base_layer.weight"]
    merged, _ = open_source(run2).load("raw")
    assert merged.y_embedder.embedding_table.weight.shape == fixed.shape == (6, 192)
    assert not torch.equal(merged.y_embedder.embedding_table.weight, fixed)


def test_a_lora_run_at_a_new_size_loads_with_its_grid(source, tmp_path):
    """16 px source, LoRA at 24 px: the checkpoint keeps the new position table and the merged model is 24 px."""
    from jit_diffusion.models.layers import sincos_pos_embed_2d

    data = make_image_folder(tmp_path / "data24", size=24)
    run = tmp_path / "run"
    assert _lora({**source, "data": data}, "--img-size", 24, "--steps", 1, "--out", run) == 0
    merged, info = open_source(run).load("ema1")
    assert info.image_size == 24 and merged.config.input_size == 24
    assert torch.equal(merged.pos_embed[0], sincos_pos_embed_2d(192, 6))
    with torch.no_grad():
        assert merged(torch.randn(2, 3, 24, 24), torch.rand(2), torch.tensor([0, 4])).shape == (2, 3, 24, 24)
