"""`jit sample`, `jit eval` and `jit convert` on pMF models: our time on the command line, the model's
defaults, one evaluation per step, one-line errors for JiT solver names."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from jit_diffusion.cli import main
from jit_diffusion.core.images import to_uint8
from jit_diffusion.diffusion.generate import generate
from jit_diffusion.diffusion.pmf_sampling import sample_pmf
from jit_diffusion.diffusion.sampling import image_noise
from jit_diffusion.formats.pmf_official import load_official_model

OFFICIAL = Path(__file__).parents[1] / "fixtures" / "pmf" / "pmf_tiny_official.pt"


@pytest.fixture(scope="module")
def model():
    return load_official_model(OFFICIAL)


def _expected(model, labels, steps, omega, interval, seed=0) -> np.ndarray:
    """uint8 images of sample_pmf on the project's per-image noise (image i gets noise i)."""
    noise = image_noise(range(len(labels)), (3, 16, 16), seed)
    return to_uint8(sample_pmf(model, torch.tensor(labels), noise, steps, omega, interval))


def test_sample_speaks_our_time_and_equals_sample_pmf(model, tmp_path):
    npz = tmp_path / "s.npz"
    # the golden's first setting: omega 4, pMF interval [0.1, 0.7] = ours [0.3, 0.9]; steps: the model's (1)
    assert main(["sample", str(OFFICIAL), "--classes", "0,3", "--per-class", "2", "--cfg", "4", "--interval",
                 "0.3,0.9", "--seed", "5", "--device", "cpu", "--npz", str(npz)]) == 0  # fmt: skip
    with np.load(npz) as f:
        images, labels = f["arr_0"], f["labels"]
    assert labels.tolist() == [0, 0, 3, 3]
    np.testing.assert_array_equal(images, _expected(model, [0, 0, 3, 3], 1, 4.0, (0.3, 0.9), seed=5))
    other = _expected(model, [0, 0, 3, 3], 1, 4.0, (0.1, 0.7), seed=5)  # the interval read in pMF time instead
    assert not np.array_equal(images, other)


def test_sample_two_steps_and_batches_do_not_change_images(model, tmp_path):
    npz = tmp_path / "s.npz"
    assert main(["sample", str(OFFICIAL), "--per-class", "1", "--steps", "2", "--cfg", "2.5", "--interval", "0.2,0.8",
                 "--batch-size", "2", "--device", "cpu", "--npz", str(npz)]) == 0  # fmt: skip
    with np.load(npz) as f:
        np.testing.assert_array_equal(f["arr_0"], _expected(model, [0, 1, 2, 3, 4], 2, 2.5, (0.2, 0.8)))


def test_generate_runs_one_evaluation_per_step_without_a_doubled_batch(model):
    rows = []
    handle = model.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    try:
        generate(model, [0, 1, 2], image_size=16, family="pmf", steps=3, cfg=3.0, cfg_interval=(0.3, 0.9),
                 method="pmf", t_eps=0.05, grid="auto", final="ode")  # fmt: skip
    finally:
        handle.remove()
    assert rows == [3, 3, 3]


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_jit_solver_on_a_pmf_model_is_a_one_line_error(command, tmp_path, capsys):
    out = ["--npz", str(tmp_path / "x.npz")] if command == "sample" else ["--out", str(tmp_path / "e"), "--num",
                                                                           "4", "--metrics", "none"]  # fmt: skip
    assert main([command, str(OFFICIAL), "--method", "heun", "--device", "cpu", *out]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--method heun does not apply to a pmf model; its sampler(s): pmf" in err
    assert not (tmp_path / "x.npz").exists() and not (tmp_path / "e").exists()


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_omega_below_one_is_refused_before_sampling(command, tmp_path, capsys):
    out = ["--npz", str(tmp_path / "x.npz")] if command == "sample" else ["--out", str(tmp_path / "e"), "--num",
                                                                           "4", "--metrics", "none"]  # fmt: skip
    assert main([command, str(OFFICIAL), "--cfg", "0.5", "--device", "cpu", *out]) == 2
    assert "--cfg 0.5: a pmf model takes guidance weights >= 1" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists() and not (tmp_path / "e").exists()


def test_pmf_sampler_on_a_jit_model_is_a_one_line_error():
    from jit_diffusion.diffusion.generate import check_method

    with pytest.raises(ValueError, match="--method pmf does not apply to a jit model"):
        check_method("jit", "pmf")
    check_method("pmf", "pmf")
    check_method("pmf", None)


def test_eval_sweeps_steps_with_their_nfe(model, tmp_path):
    out = tmp_path / "eval"
    assert main(["eval", str(OFFICIAL), "--num", "6", "--chunk-size", "4", "--steps", "1,2", "--cfg", "1.5,4",
                 "--metrics", "none", "--device", "cpu", "--out", str(out)]) == 0  # fmt: skip
    with (out / "sweep.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["setting"], r["method"], r["steps"], r["nfe"]) for r in rows] == [
        ("ema1-cfg1.5-pmf-1", "pmf", "1", "1"), ("ema1-cfg1.5-pmf-2", "pmf", "2", "2"),
        ("ema1-cfg4-pmf-1", "pmf", "1", "1"), ("ema1-cfg4-pmf-2", "pmf", "2", "2"),
    ]  # fmt: skip
    record = json.loads((out / "ema1-cfg4-pmf-2" / "metrics.json").read_text())
    assert record["network_evaluations"] == 2 and record["sampling"]["family"] == "pmf"
    assert record["sampling"]["cfg_interval"] == [0.0, 1.0]  # the tiny model's defaults (no preset)
    # the samples are jit sample's: image i gets noise i, whatever the chunk
    chunks = sorted((out / "ema1-cfg4-pmf-2" / "samples").glob("*.npz"))
    images = np.concatenate([np.load(c)["arr_0"] for c in chunks])
    labels = [i % 5 for i in range(6)]
    np.testing.assert_array_equal(images, _expected(model, labels, 2, 4.0, (0.0, 1.0)))


def test_convert_then_sample_gives_the_same_images(tmp_path):
    assert main(["convert", str(OFFICIAL), str(tmp_path / "export")]) == 0
    for src, name in ((OFFICIAL, "a.npz"), (tmp_path / "export", "b.npz")):
        assert main(["sample", str(src), "--per-class", "1", "--cfg", "3", "--device", "cpu",
                     "--npz", str(tmp_path / name)]) == 0  # fmt: skip
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        np.testing.assert_array_equal(a["arr_0"], b["arr_0"])


def test_class_scale_in_sample_and_eval(model, tmp_path):
    npz = tmp_path / "s.npz"
    assert main(["sample", str(OFFICIAL), "--classes", "0,3", "--per-class", "1", "--cfg", "2", "--class-scale", "1.5",
                 "--device", "cpu", "--npz", str(npz)]) == 0  # fmt: skip
    with np.load(npz) as f:
        images = f["arr_0"]
    out = tmp_path / "eval"
    assert main(["eval", str(OFFICIAL), "--num", "5", "--cfg", "2", "--class-scale", "1,1.5", "--metrics", "none",
                 "--device", "cpu", "--out", str(out)]) == 0  # fmt: skip
    with (out / "sweep.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["setting"], float(r["class_scale"]), r["nfe"]) for r in rows] == [
        ("ema1-cfg2", 1.0, "1"), ("ema1-cfg2-cs1.5", 1.5, "1")]  # fmt: skip
    record = json.loads((out / "ema1-cfg2-cs1.5" / "metrics.json").read_text())
    assert record["sampling"]["class_scale"] == 1.5 and "class_scale" not in json.loads(
        (out / "ema1-cfg2" / "metrics.json").read_text())["sampling"]  # fmt: skip
    chunk = np.load(next((out / "ema1-cfg2-cs1.5" / "samples").glob("*.npz")))["arr_0"]
    plain = np.load(next((out / "ema1-cfg2" / "samples").glob("*.npz")))["arr_0"]
    assert not np.array_equal(chunk, plain)
    np.testing.assert_array_equal(images[0], chunk[0])  # image 0: class 0, noise 0, in both commands


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_class_scale_on_a_jit_model_is_a_one_line_error(command, tmp_path, capsys):
    from conftest import lively_jit

    from jit_diffusion.models.config import preset_config
    from jit_diffusion.models.pretrained import save_pretrained

    export = save_pretrained(lively_jit(preset_config("JiT-Ti/4", input_size=8, num_classes=3)), tmp_path / "exp")
    out = ["--npz", str(tmp_path / "x.npz")] if command == "sample" else ["--out", str(tmp_path / "e"), "--num",
                                                                           "4", "--metrics", "none"]  # fmt: skip
    assert main([command, str(export), "--class-scale", "1.5", "--device", "cpu", *out]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--class-scale 1.5: a jit model has no class scale" in err
    assert not (tmp_path / "x.npz").exists() and not (tmp_path / "e").exists()
