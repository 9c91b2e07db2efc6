"""The sampler flags end to end: `jit sample` with a few-step solver, and `jit eval` over steps x solvers
(one setting per pair, network evaluations recorded, the NFE figure)."""

import csv
import json

import numpy as np
import pytest
from test_evaluate import _eval, tiny_classifier, tiny_folder, tiny_run  # noqa: F401 (fixtures)

from jit_diffusion.cli import main
from jit_diffusion.core.errors import UserError
from jit_diffusion.evaluation.sample_store import check_resume
from jit_diffusion.formats.checkpoint import latest_checkpoint, read_checkpoint, save_checkpoint
from jit_diffusion.formats.loading import load_model
from jit_diffusion.train.config import TrainConfig, validate


def test_sample_with_new_solver_grid_and_final(tiny_run, tmp_path):  # noqa: F811
    outputs = {}
    for name, extra in [("heun", []), ("dpm", ["--method", "dpm++2m", "--time-grid", "logsnr", "--final", "denoise"]),
                        ("unipc", ["--method", "unipc", "--shift", "3"])]:  # fmt: skip
        npz = tmp_path / f"{name}.npz"
        code = main(["sample", str(tiny_run), "--per-class", "1", "--cfg", "2.0", "--steps", "4", "--device", "cpu",
                     "--grid", str(tmp_path / f"{name}.png"), "--npz", str(npz), *extra])  # fmt: skip
        assert code == 0 and (tmp_path / f"{name}.png").is_file()
        outputs[name] = np.load(npz)["arr_0"]
    assert outputs["dpm"].shape == outputs["heun"].shape == (4, 8, 8, 3)
    assert not np.array_equal(outputs["dpm"], outputs["unipc"])


def test_steps_by_methods_sweep(tiny_run, tiny_classifier, tmp_path):  # noqa: F811
    out = tmp_path / "sweep"
    code = _eval(tiny_run, out, "--num", "4", "--chunk-size", "4", "--cfg", "2.0", "--steps", "2,3",
                 "--method", "heun,dpm++2m", "--metrics", "fd-emoji", "--classifier", str(tiny_classifier))  # fmt: skip
    assert code == 0
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [(r["setting"], r["nfe"]) for r in rows] == [
        ("ema1-cfg2-heun-2", "3"), ("ema1-cfg2-heun-3", "5"), ("ema1-cfg2-dpm++2m-2", "2"), ("ema1-cfg2-dpm++2m-3", "3")
    ]
    record = json.loads((out / "ema1-cfg2-dpm++2m-3" / "metrics.json").read_text())
    assert record["sampling"]["method"] == "dpm++2m" and record["sampling"]["time_grid"] in ("shifted", "logsnr")
    assert record["network_evaluations"] == 3
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_method_and_bad_steps_fail_in_one_line(tiny_run, tmp_path, capsys):  # noqa: F811
    assert _eval(tiny_run, tmp_path / "a", "--num", "4", "--method", "heun,rk4", "--metrics", "none") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown solver 'rk4'" in err
    assert _eval(tiny_run, tmp_path / "b", "--num", "4", "--time-grid", "uniform", "--shift", "3",
                 "--metrics", "none") == 2  # fmt: skip
    assert "--shift applies to the shifted time grid" in capsys.readouterr().err
    for steps, message in [("10,x", "--steps expects comma-separated numbers like 10,20, got '10,x'"),
                           (",", "--steps is empty"), ("0,10", "--steps must be >= 1, got 0")]:  # fmt: skip
        assert _eval(tiny_run, tmp_path / "c", "--num", "4", "--steps", steps, "--metrics", "none") == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err


def test_run_with_a_sample_method_makes_it_the_default(tiny_run, tmp_path):  # noqa: F811
    """A run trained with --sample-method dpm++2m samples with dpm++2m when --method is not given."""
    ckpt = read_checkpoint(latest_checkpoint(tiny_run))
    ckpt["config"] = {**ckpt["config"], "sample_method": "dpm++2m"}
    run = tmp_path / "run"
    save_checkpoint(ckpt, run, 10)
    assert load_model(run, device="cpu")[1].method == "dpm++2m"
    images = {}
    for name, extra in [("default", []), ("dpm", ["--method", "dpm++2m"]), ("heun", ["--method", "heun"])]:
        npz = tmp_path / f"{name}.npz"
        assert main(["sample", str(run), "--per-class", "1", "--steps", "4", "--device", "cpu", "--npz", str(npz),
                     *extra]) == 0  # fmt: skip
        images[name] = np.load(npz)["arr_0"]
    assert np.array_equal(images["default"], images["dpm"])
    assert not np.array_equal(images["default"], images["heun"])


def test_unknown_sample_method_is_refused_before_training():
    with pytest.raises(UserError, match="--sample-method must be one of"):
        validate(TrainConfig(sample_method="rk45", steps=1), world_size=1)


def test_resume_refuses_a_setting_named_only_in_the_old_folder(tmp_path):
    """Settings at their default are left out of the record, so a folder made with --time-grid logsnr must
    not take samples from a rerun without it (nor the other way round)."""
    check_resume(tmp_path / "a", {"model": "x", "method": "heun", "time_grid": "logsnr"}, write=True)
    with pytest.raises(ValueError, match=r"other settings \(time_grid\)"):
        check_resume(tmp_path / "a", {"model": "y", "method": "heun"}, write=True)
    check_resume(tmp_path / "a", {"model": "y", "method": "heun", "time_grid": "logsnr"}, write=True)
    check_resume(tmp_path / "b", {"model": "x", "method": "heun"}, write=True)
    with pytest.raises(ValueError, match=r"other settings \(final\)"):
        check_resume(tmp_path / "b", {"model": "x", "method": "heun", "final": "denoise"}, write=True)
