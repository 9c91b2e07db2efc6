"""Fine-tuning pMF models (``jit train --init-from`` a pMF run or official pMF file): inherited preset and
recipe, exact start weights (--lr 0), class rows, the learned position embedding at a new size, a v head
from the u head, and the other family as a one-line error."""

import json

import pytest
import torch
from conftest import make_image_folder, trained_source

from jit_diffusion import cli
from jit_diffusion.formats.checkpoint import latest_checkpoint, read_checkpoint
from jit_diffusion.formats.pmf_official import to_official_keys
from jit_diffusion.models.pmf import create_pmf_model
from jit_diffusion.train.pmf_init import resize_pos_embed

TINY = ["--batch-size", "8", "--log-every", "2", "--sample-every", "0", "--ema-half-lives", "0.01,0.1"]
TABLE = "y_embedder.embedding_table.weight"


def _train(*args) -> int:
    return cli.main(["train", *TINY, *[str(a) for a in args]])


def _weights(run) -> dict:
    ckpt = read_checkpoint(latest_checkpoint(run))
    return {"model": ckpt["model"], **ckpt["ema"]}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> dict:
    """A 4-class pMF-Ti/4 run at 16 px (2 Muon steps) and its data."""
    return trained_source(tmp_path_factory.mktemp("pmf_source"), _train, "pMF-Ti/4", 2)


def test_a_pmf_run_starts_at_its_source_and_copies_class_rows(source, tmp_path):
    """No --model: the preset and the pMF recipe come from the source; --lr 0 keeps every weight (raw and
    both EMAs) at the source's EMA1 except the label rows, which the class map moves."""
    data = make_image_folder(tmp_path / "data", num_classes=4)
    (data / "class_1").rename(data / "z_new")  # classes: class_0, class_2, class_3, z_new
    run = tmp_path / "run"
    assert _train("--init-from", source["run"], "--data", data, "--lr", 0, "--steps", 1, "--out", run) == 0
    saved = json.loads((run / "config.json").read_text())
    assert (saved["model"], saved["img_size"], saved["optimizer"], saved["ema_half_lives"]) == (
        "pMF-Ti/4", 16, "muon", [0.01, 0.1])
    assert saved["resolved"]["init_from"]["class_rows"] == {"class_0": "class_0", "class_2": "class_2",
                                                            "class_3": "class_3"}  # fmt: skip
    old = source["ema1"]
    for weights in _weights(run).values():
        for name, tensor in weights.items():
            if name != TABLE:
                assert torch.equal(tensor, old[name]), name
        table = weights[TABLE]
        for new, src in ((0, 0), (1, 2), (2, 3)):
            assert torch.equal(table[new], old[TABLE][src])
        assert torch.equal(table[3], old[TABLE][:4].mean(dim=0)) and torch.equal(table[4], old[TABLE][4])


def test_an_official_file_without_v_head_at_a_new_size(source, tmp_path):
    """An official pMF-Ti/4 state dict at 16 px without the v head, fine-tuned at 32 px: the v head starts as
    a copy of the u head, the position embedding keeps its prefix rows and resizes the patch grid 4 -> 8."""
    torch.manual_seed(3)
    model = create_pmf_model("pMF-Ti/4", num_classes=4, input_size=16)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(("v_heads.", "v_final_layer."))}
    path = tmp_path / "pMF-Ti-4.pt"
    torch.save(to_official_keys(model, state), path)
    data = make_image_folder(tmp_path / "data32", num_classes=4, size=32)
    run = tmp_path / "run"
    assert _train("--init-from", path, "--img-size", 32, "--class-map", str(_identity(tmp_path)), "--data", data,
                  "--lr", 0, "--steps", 1, "--out", run) == 0  # fmt: skip
    weights = _weights(run)["model"]
    for name, tensor in weights.items():
        if name.startswith(("v_heads.", "v_final_layer.")):
            assert torch.equal(tensor, state[name.replace("v_heads.", "u_heads.").replace("v_final", "u_final")])
        elif name != "pos_embed":
            assert torch.equal(tensor, state[name]), name
    prefix = model.num_prefix
    assert weights["pos_embed"].shape == (1, prefix + 64, 192)
    assert torch.equal(weights["pos_embed"][:, :prefix], state["pos_embed"][:, :prefix])
    assert torch.equal(weights["pos_embed"], resize_pos_embed(state["pos_embed"], prefix, 8))
    assert json.loads((run / "config.json").read_text())["resolved"]["init_from"]["v_head_from_u"] is True


def test_a_run_without_v_head_leaves_the_sources_out(source, tmp_path):
    """--jvp-tangent sample builds the network without its v head: the source's trunk and u head are kept
    (--lr 0: bitwise), its v head is left out and the run's checkpoint has none."""
    run = tmp_path / "run"
    assert _train("--init-from", source["run"], "--data", source["data"], "--jvp-tangent", "sample", "--lr", 0,
                  "--steps", 1, "--out", run) == 0  # fmt: skip
    weights = _weights(run)["model"]
    old = source["ema1"]
    assert not any(k.startswith("v_") for k in weights) and any(k.startswith("v_heads.") for k in old)
    assert all(torch.equal(tensor, old[name]) for name, tensor in weights.items())


def _identity(folder):
    mapping = folder / "map.json"
    mapping.write_text(json.dumps({f"class_{i}": i for i in range(4)}))
    return mapping


def test_resized_position_embedding_is_exact_on_constants_and_keeps_the_grid():
    table = torch.randn(1, 3 + 16, 5)
    assert torch.equal(resize_pos_embed(table, 3, 4), table)
    constant = torch.cat([torch.randn(1, 3, 5), torch.arange(5.0).expand(1, 16, 5)], dim=1)
    resized = resize_pos_embed(constant, 3, 6)
    assert resized.shape == (1, 3 + 36, 5)
    assert torch.allclose(resized[:, 3:], torch.arange(5.0).expand(1, 36, 5), atol=1e-5)


def test_a_jit_model_from_a_pmf_run_is_one_line(source, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train("--init-from", source["run"], "--model", "JiT-Ti/4", "--data", source["data"], "--steps", 1,
                  "--out", run) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a pmf model cannot start a jit run (--model JiT-Ti/4)" in err, err
    assert not (run / "checkpoints").exists()


def test_frozen_patterns_stay_fixed_in_a_pmf_fine_tune(source, tmp_path):
    run = tmp_path / "run"
    assert _train("--init-from", source["run"], "--data", source["data"], "--freeze", "shared_blocks.0-1,x_embedder",
                  "--lr", "1e-2", "--steps", 1, "--out", run) == 0  # fmt: skip
    moved = 0
    for name, tensor in _weights(run)["model"].items():
        same = torch.equal(tensor, source["ema1"][name])
        assert same or not name.startswith(("shared_blocks.0.", "shared_blocks.1.", "x_embedder.")), name
        moved += not same
    assert moved > 20
