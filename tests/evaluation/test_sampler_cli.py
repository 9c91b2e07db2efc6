"""The sampler flags end to end: `jit sample` with a few-step solver, and `jit eval` over steps x solvers
(one setting per pair, network evaluations recorded, the NFE figure)."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image
from test_evaluate import _eval, tiny_classifier, tiny_folder, tiny_run  # noqa: F401 (fixtures)

from jit_diffusion.cli import main
from jit_diffusion.core.errors import UserError
from jit_diffusion.diffusion.sampling import network_evaluations, sampling_times
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


def _sample(run, tmp_path, *extra) -> int:
    return main(["sample", str(run), "--per-class", "1", "--steps", "1", "--device", "cpu", *extra])


@pytest.mark.parametrize("flag,name", [("--grid", "g.png"), ("--png-dir", "pngs"), ("--npz", "s.npz")])
def test_sample_outputs_are_written_atomically(tiny_run, tmp_path, monkeypatch, flag, name):  # noqa: F811
    """A writer killed half-way leaves the previous file whole (and no temporary file behind)."""
    target = tmp_path / name
    assert _sample(tiny_run, tmp_path, flag, str(target)) == 0
    first = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    def killed(fp, *args, **kwargs):  # a kill after part of the file was written
        if isinstance(fp, (str, os.PathLike)):
            fp = open(fp, "wb")  # noqa: SIM115 - left open like a killed process leaves it
        fp.write(b"partial")
        fp.flush()
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", lambda self, fp, *a, **k: killed(fp))
    monkeypatch.setattr(np, "savez", killed)
    assert _sample(tiny_run, tmp_path, "--seed", "1", flag, str(target)) == 130
    assert {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == first


def test_npz_without_the_suffix_names_the_file_written(tiny_run, tmp_path, capsys):  # noqa: F811
    assert _sample(tiny_run, tmp_path, "--npz", str(tmp_path / "out")) == 0
    assert f"wrote {tmp_path / 'out.npz'}\n" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npz"]
    assert np.load(tmp_path / "out.npz")["arr_0"].shape == (4, 8, 8, 3)


@pytest.mark.parametrize("argv,message", [
    (["--png-dir", "{tmp}/afile"], "--png-dir {tmp}/afile is a file, not a folder"),
    (["--grid", "{tmp}"], "--grid {tmp} is a folder: give a file name"),
    (["--npz", "{tmp}/dir"], "--npz {tmp}/dir.npz is a folder: give a file name"),
])  # fmt: skip
def test_output_paths_of_the_wrong_kind_are_one_line(tiny_run, tmp_path, capsys, argv, message):  # noqa: F811
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "dir.npz").mkdir()
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert _sample(tiny_run, tmp_path, *argv) == 2
    assert capsys.readouterr().err == f"jit sample: error: {message.format(tmp=tmp_path)}\n"


@pytest.mark.parametrize("argv,message", [
    (["sample", "{run}", "--per-class", "0", "--grid", "{tmp}/g.png"], "argument --per-class: must be >= 1, got 0"),
    (["sample", "{run}", "--steps", "0", "--grid", "{tmp}/g.png"], "argument --steps: must be >= 1, got 0"),
    (["sample", "{run}", "--batch-size", "0", "--grid", "{tmp}/g.png"], "argument --batch-size: must be >= 1, got 0"),
    (["eval", "{run}", "--out", "{tmp}/ev", "--num", "2", "--chunk-size", "0"],
     "argument --chunk-size: must be >= 1, got 0"),
    (["eval", "{run}", "--out", "{tmp}/ev", "--per-class", "0"], "argument --per-class: must be >= 1, got 0"),
    (["eval", "{run}", "--out", "{tmp}/ev", "--num", "2", "--metric-batch-size", "0"],
     "argument --metric-batch-size: must be >= 1, got 0"),
    (["fid-stats", "emoji", "--img-size", "8", "--out", "{tmp}/s.npz", "--batch-size", "0"],
     "argument --batch-size: must be >= 1, got 0"),
    (["toy", "--quick", "--workers", "0", "--out", "{tmp}/toy"], "argument --workers: must be >= 1, got 0"),
    (["data", "check", "{tmp}", "--workers", "-1"], "argument --workers: must be >= 0, got -1"),
    (["classifier", "train", "--img-size", "0"], "argument --img-size: must be >= 1, got 0"),
])  # fmt: skip
def test_zero_counts_are_refused_before_any_work(tiny_run, tmp_path, capsys, argv, message):  # noqa: F811
    with pytest.raises(SystemExit) as exit_:
        main([a.format(run=tiny_run, tmp=tmp_path) for a in argv])
    assert exit_.value.code == 2
    command = " ".join(argv[:2]) if argv[0] in ("data", "classifier") else argv[0]
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"jit {command}: error: {message}"
    assert list(tmp_path.iterdir()) == []


def test_a_model_with_t_eps_zero_samples_with_heun_and_refuses_log_snr_solvers(tiny_run, tmp_path,  # noqa: F811
                                                                              capsys):  # fmt: skip
    ckpt = read_checkpoint(latest_checkpoint(tiny_run))
    ckpt["config"] = {**ckpt["config"], "t_eps": 0.0}
    run = tmp_path / "run"
    save_checkpoint(ckpt, run, 10)
    assert _sample(run, tmp_path, "--npz", str(tmp_path / "heun.npz"), "--steps", "3") == 0
    assert np.load(tmp_path / "heun.npz")["arr_0"].shape == (4, 8, 8, 3)
    capsys.readouterr()
    for method in ("dpm++2m", "dpm++3m", "unipc"):
        assert _sample(run, tmp_path, "--method", method, "--npz", str(tmp_path / f"{method}.npz")) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"jit sample: error: {method} needs 0 < t_eps < 1") and err.count("\n") == 1
    assert _sample(run, tmp_path, "--time-grid", "logsnr", "--npz", str(tmp_path / "l.npz")) == 2
    assert "the logsnr time grid needs 0 < t_eps < 1" in capsys.readouterr().err
    assert _eval(run, tmp_path / "ev", "--num", "2", "--method", "unipc", "--metrics", "none") == 2
    assert "unipc needs 0 < t_eps < 1" in capsys.readouterr().err and not (tmp_path / "ev").exists()
    with pytest.raises(ValueError, match="dpm\\+\\+3m needs 0 < t_eps < 1"):
        sampling_times("dpm++3m", 4, t_eps=0.0)


def test_one_step_of_a_multistep_solver_costs_two_evaluations_under_guidance():
    """What the README's sampler table says: with the default interval 0.1,1.0 and guidance, --steps 1
    gets a node at the interval's edge (2 evaluations); without guidance, or from 2 steps on, N."""
    for method in ("dpm++2m", "dpm++3m", "unipc"):
        nfe = [network_evaluations(method, sampling_times(method, n, cfg=cfg)) for n, cfg in
               [(1, 2.0), (2, 2.0), (3, 2.0), (1, 1.0)]]  # fmt: skip
        assert nfe == [2, 2, 3, 1], method
