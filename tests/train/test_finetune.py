"""Fine-tuning (``jit train --init-from``): class maps and the null row, pos-embed/RoPE at a new size,
--freeze, --lr 0, impossible changes, and exact resume of a fine-tuned run."""

import json
from pathlib import Path

import pytest
import torch
from conftest import make_image_folder, max_abs_diff, torchrun_jit, trained_source

from jit_diffusion import cli
from jit_diffusion.formats.checkpoint import latest_checkpoint, read_checkpoint, training_weights, weights_digest
from jit_diffusion.models.jit import JiT
from jit_diffusion.models.layers import sincos_pos_embed_2d
from jit_diffusion.train.init import class_rows, label_table

TINY = ["--batch-size", "8", "--lr", "1e-3", "--warmup-steps", "2", "--ema", "0.9,0.5", "--log-every", "2",
        "--sample-every", "0", "--keep-last", "10"]  # fmt: skip
TABLE = "y_embedder.embedding_table.weight"


def _train(*args) -> int:
    return cli.main(["train", *TINY, *[str(a) for a in args]])


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> dict:
    """A 4-class JiT-Ti/4 run at 16 px (3 steps) and its data."""
    return trained_source(tmp_path_factory.mktemp("source"), _train, "JiT-Ti/4", 3)


def _weights(run: Path) -> dict:
    ckpt = read_checkpoint(latest_checkpoint(run))
    return {"model": ckpt["model"], **ckpt["ema"], "step": ckpt["step"]}


def _renamed_folder(root: Path) -> Path:
    """The source's classes 3, 0, 2 (3 renamed ``a_three``) and a new class ``z_new``, 16 px."""
    data = make_image_folder(root, num_classes=4)
    for old, new in (("class_3", "a_three"), ("class_1", "z_new")):
        (data / old).rename(data / new)
    return data


def test_class_map_copies_rows_and_moves_the_null_row(source, tmp_path):
    data = _renamed_folder(tmp_path / "renamed")  # classes: a_three, class_0, class_2, z_new
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"a_three": "class_3", "class_0": "class_0", "2": 2}))
    old = source["ema1"][TABLE]  # (5, D): class_0..class_3, null
    for class_map, copied in (("auto", {1: 0, 2: 2}), (mapping, {0: 3, 1: 0, 2: 2})):
        run = tmp_path / f"run_{len(copied)}"
        assert _train("--init-from", source["run"], "--data", data, "--lr", 0, "--steps", 1, "--class-map",
                      class_map, "--out", run) == 0  # fmt: skip
        for weights in _weights(run).values():
            if isinstance(weights, dict):
                table = weights[TABLE]
                assert table.shape == old.shape
                for new in range(4):
                    want = old[copied[new]] if new in copied else old[:4].mean(dim=0)
                    assert torch.equal(table[new], want), (class_map, new)
                assert torch.equal(table[4], old[4])  # the null row at the new null index
    record = json.loads((run / "config.json").read_text())["resolved"]["init_from"]
    assert record["class_rows"] == {"a_three": "class_3", "class_0": "class_0", "class_2": "class_2"}
    assert record["weights"] == "ema1" and record["step"] == 3
    assert record["weights_sha256"] == weights_digest(source["ema1"])


def test_flat_folder_keeps_the_null_row(source, tmp_path):
    data = make_image_folder(tmp_path / "flat", flat=True)
    run = tmp_path / "run"
    assert _train("--init-from", source["run"], "--data", data, "--lr", 0, "--steps", 1, "--out", run) == 0
    table = _weights(run)["ema1"][TABLE]
    assert table.shape[0] == 1 and torch.equal(table[0], source["ema1"][TABLE][4])


def test_label_table_without_source_classes_uses_the_null_row():
    old = torch.randn(1, 6)  # an unconditional source: only the null row
    table = label_table(old, class_rows(["a", "b"], [], "auto"), 2)
    assert torch.equal(table, old.expand(3, -1))


def test_lr_zero_keeps_the_weights_bitwise(source, tmp_path):
    run = tmp_path / "run"
    assert _train("--init-from", source["run"], "--data", source["data"], "--lr", 0, "--steps", 2, "--out", run) == 0
    got = _weights(run)
    assert got["step"] == 2
    for key in ("model", "ema1", "ema2"):
        for name, tensor in got[key].items():
            assert torch.equal(tensor, source["ema1"][name]), (key, name)


def test_new_size_recomputes_pos_embed_and_rope(source, tmp_path):
    """Fine-tuned at 24 px (--lr 0): the same outputs as a fresh 24 px JiT carrying the source's weights."""
    data = make_image_folder(tmp_path / "data24", size=24)
    run = tmp_path / "run"
    assert _train("--init-from", source["run"], "--init-weights", "raw", "--data", data, "--img-size", 24,
                  "--lr", 0, "--steps", 1, "--out", run) == 0  # fmt: skip
    ckpt = read_checkpoint(latest_checkpoint(run))
    assert ckpt["model_config"]["input_size"] == 24
    tuned = JiT(**ckpt["model_config"])
    tuned.load_state_dict(ckpt["model"], strict=True)
    fresh = JiT(**{**source["ckpt"]["model_config"], "input_size": 24})
    weights = {k: v for k, v in source["ckpt"]["model"].items() if k != "pos_embed"}
    assert fresh.load_state_dict(weights, strict=False).missing_keys == ["pos_embed"]
    assert torch.equal(tuned.pos_embed[0], sincos_pos_embed_2d(192, 6))
    for name in ("rope_cos", "rope_sin", "rope_ic_cos", "rope_ic_sin"):
        assert torch.equal(getattr(tuned, name), getattr(fresh, name))
    assert tuned.rope_cos.shape[-2] == 36  # a 6 x 6 grid
    torch.manual_seed(1)
    z, t, y = torch.randn(3, 3, 24, 24), torch.rand(3), torch.tensor([0, 3, 4])
    with torch.no_grad():
        out = tuned.eval()(z, t, y)
        assert torch.equal(out, fresh.eval()(z, t, y))
    assert out.abs().max() > 0  # the trained output layer is not zero


@pytest.mark.slow
def test_freeze_and_resume_of_a_finetuned_run(source, tmp_path, capsys):
    """Frozen parameters stay bitwise equal to the loaded weights; 2 steps + resume == 4 steps."""
    common = ["--init-from", source["run"], "--data", source["data"], "--freeze", "blocks.0-1,x_embedder",
              "--ckpt-every", 2]  # fmt: skip
    assert _train(*common, "--steps", 4, "--out", tmp_path / "full") == 0
    out = capsys.readouterr().out
    n_frozen = sum(name.startswith(("blocks.0.", "blocks.1.", "x_embedder.")) for name in source["ema1"])
    assert f"initialised from {source['run'].resolve()} (ema1 step 3, 4 class rows copied); {n_frozen} parameter " \
           "tensors frozen" in out, out
    assert _train(*common, "--steps", 2, "--out", tmp_path / "part") == 0
    assert _train(*common, "--steps", 4, "--out", tmp_path / "part", "--resume") == 0
    full, part = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    assert full["step"] == part["step"] == 4
    moved = 0
    for key in ("model", "ema1", "ema2"):
        for name, tensor in full[key].items():
            assert torch.equal(tensor, part[key][name]), (key, name)
            frozen = name.startswith(("blocks.0.", "blocks.1.", "x_embedder."))
            same = torch.equal(tensor, source["ema1"][name])
            assert same or not frozen, (key, name)
            moved += not same
    assert moved > 50  # the other parameters trained
    record = json.loads((tmp_path / "part" / "config.json").read_text())
    assert record["resolved"]["init_from"]["weights_sha256"] == weights_digest(source["ema1"])


@pytest.mark.parametrize(("extra", "words"), [
    (["--model", "JiT-S/4"], ["hidden_size 192", "384"]),
    (["--model", "JiT-Ti/8", "--img-size", "16"], ["patch_size 4", "8"]),
    (["--bottleneck", "32"], ["bottleneck_dim 64", "32"]),
    (["--freeze", "blocks.9"], ["--freeze", "blocks.9"]),
    (["--model", "pMF-Ti/4"], ["a jit model cannot start a pmf run (--model pMF-Ti/4)", "keeps the model family"]),
    (["--class-map", "missing.json"], ["--class-map", "missing.json"]),
])  # fmt: skip
def test_impossible_changes_are_one_line(source, tmp_path, capsys, extra, words):
    run = tmp_path / "run"
    assert _train("--init-from", source["run"], "--data", source["data"], "--steps", 1, "--out", run, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err
    assert not (run / "checkpoints").exists()


@pytest.mark.parametrize("fmt", ["jit", "diffusers-b"])
def test_init_from_an_export_or_diffusers_folder_inherits_its_settings(source, tmp_path, fmt):
    """The preset, image size and flow settings come from the source; --lr 0 keeps its weights."""
    folder = tmp_path / "converted"
    assert cli.main(["convert", str(source["run"]), str(folder), "--format", fmt, "--weights", "ema2"]) == 0
    run = tmp_path / "run"
    assert cli.main(["train", "--init-from", str(folder), "--data", str(source["data"]), "--lr", "0", "--steps", "1",
                     "--batch-size", "8", "--sample-every", "0", "--out", str(run)]) == 0  # fmt: skip
    saved = json.loads((run / "config.json").read_text())
    assert (saved["model"], saved["img_size"], saved["bottleneck_dim"]) == ("JiT-Ti/4", 16, 64)
    assert saved["resolved"]["init_from"]["path"] == str(folder.resolve())
    want = training_weights(source["ckpt"], "ema2")
    for name, tensor in _weights(run)["ema1"].items():
        assert torch.equal(tensor, want[name]), name


@pytest.mark.slow
def test_two_processes_match_one_when_fine_tuning(source, tmp_path):
    """torchrun with 2 gloo processes == 1 process for a fine-tuned run with frozen blocks (to 1e-5, as
    tests/train/test_train.py's test_two_processes_match_one); the frozen blocks stay bitwise."""
    common = ["train", *TINY, "--init-from", str(source["run"]), "--data", str(source["data"]), "--steps", "4",
              "--freeze", "blocks.0-2", "--label-drop", "0.3"]  # fmt: skip
    assert cli.main([*common, "--out", str(tmp_path / "one")]) == 0
    torchrun_jit(*common, "--out", tmp_path / "two")
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for key in ("model", "ema1", "ema2"):
        worst = max_abs_diff(one[key], two[key])
        assert worst < 1e-5, (key, worst)
        for name in one[key]:
            if name.startswith(("blocks.0.", "blocks.1.", "blocks.2.")):
                assert torch.equal(two[key][name], source["ema1"][name]), (key, name)


def test_a_pmf_source_for_a_jit_model_is_one_line(source, tmp_path, capsys):
    from jit_diffusion.formats.pmf_official import to_official_keys
    from jit_diffusion.models.pmf import PMF

    folder = tmp_path / "pmf.pt"  # an official pMF state dict
    model = PMF(input_size=16, patch_size=4, hidden_size=48, depth=2, num_heads=2, aux_head_depth=1, num_classes=4)
    torch.save(to_official_keys(model), folder)
    run = tmp_path / "run"
    assert _train("--init-from", folder, "--model", "JiT-Ti/4", "--data", source["data"], "--steps", 1,
                  "--out", run) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a pmf model cannot start a jit run" in err and str(folder) in err, err


def test_init_from_an_official_checkpoint(source, tmp_path):
    """An official-layout .pth (``model_ema1``/``model_ema2``/``model`` with ``net.`` names): the preset is
    inferred from the shapes, the chosen weight set is loaded (--lr 0 keeps it); its classes have no names
    of ours, so a --class-map by index keeps the label rows."""
    ckpt = source["ckpt"]
    net = lambda sd: {f"net.{k}": v.clone() for k, v in sd.items()}  # noqa: E731
    path = tmp_path / "official.pth"
    torch.save({"model": net(ckpt["model"]), "model_ema1": net(ckpt["ema"]["ema1"]),
                "model_ema2": net(ckpt["ema"]["ema2"])}, path)  # fmt: skip
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({str(i): i for i in range(4)}))
    run = tmp_path / "run"
    assert _train("--init-from", path, "--init-weights", "ema2", "--img-size", 16, "--data", source["data"],
                  "--class-map", mapping, "--lr", 0, "--steps", 1, "--out", run) == 0  # fmt: skip
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"] == "JiT-Ti/4" and saved["resolved"]["init_from"]["kind"] == "official"
    want = training_weights(ckpt, "ema2")
    for name, tensor in _weights(run)["model"].items():
        assert torch.equal(tensor, want[name]), name
