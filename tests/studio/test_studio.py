"""``jit studio``: the caps, the requests behind the page (without a browser), the run-folder readers and the
command's errors (the page in a browser: test_studio_page.py)."""

import dataclasses
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import lively_jit
from PIL import Image
from studio_run import NAMES, make_run

import jit_diffusion
from jit_diffusion.cli import main
from jit_diffusion.core.errors import UserError
from jit_diffusion.core.images import make_grid
from jit_diffusion.models.config import preset_config
from jit_diffusion.studio.limits import Limits
from jit_diffusion.studio.runs import loss_curve, nearest_preview, preview_grids
from jit_diffusion.studio.session import Settings, Studio


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("studio"))


@pytest.fixture(scope="module")
def studio(run_dir, tmp_path_factory) -> Studio:
    return Studio(run_dir, device="cpu", limits=Limits(max_images=6, max_steps=12),
                  out_dir=tmp_path_factory.mktemp("grids"))  # fmt: skip


# --- the caps ---------------------------------------------------------------------------------------


def test_caps_pass_whole_numbers_within_them():
    limits = Limits(max_images=4, max_steps=30, max_upload_mb=1)
    assert limits.images(4) == 4 and limits.images("2") == 2 and limits.images(3.0) == 3
    assert limits.steps(1) == 1 and limits.steps(30) == 30
    limits.upload(1_000_000)


@pytest.mark.parametrize("call, expected", [
    (lambda lim: lim.images(5), "image count 5 is over the cap of 4 images per request (start jit studio with "
                                "--max-images"),
    (lambda lim: lim.images(0), "image count must be at least 1, got 0"),
    (lambda lim: lim.images(2.5), "image count must be a whole number, got 2.5"),
    (lambda lim: lim.images(None), "image count must be a whole number, got None"),
    (lambda lim: lim.images(float("inf")), "image count must be a whole number"),
    (lambda lim: lim.steps(31), "steps 31 is over the cap of 30 ODE steps per request (start jit studio with "
                                "--max-steps"),
    (lambda lim: lim.steps(-3), "steps must be at least 1, got -3"),
    (lambda lim: lim.steps("ten"), "steps must be a whole number, got 'ten'"),
    (lambda lim: lim.upload(1_500_000, "mask.png"), "mask.png is 1.5 MB, over the cap of 1 MB"),
])  # fmt: skip
def test_caps_refuse_with_one_clear_line(call, expected):
    with pytest.raises(UserError) as err:
        call(Limits(max_images=4, max_steps=30, max_upload_mb=1))
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_caps_must_be_positive():
    with pytest.raises(UserError, match="studio caps must be positive"):
        Limits(max_images=0)


# --- the requests behind the page ---------------------------------------------------------------------


def test_studio_reads_the_model(studio):
    assert studio.class_names == NAMES
    assert studio.weight_names == ["raw", "ema1", "ema2"]
    d = studio.defaults()
    assert (d.cfg, d.interval, d.method, d.weights) == (2.0, (0.1, 1.0), "heun", "ema1")


@pytest.mark.parametrize("method, steps, expected", [("heun", 7, 13), ("heun", 1, 1), ("euler", 9, 9),
                                                     ("dpm++2m", 10, 10), ("unipc", 4, 4), ("dpm++3m", 5, 5)])
def test_nfe_follows_the_sampler_table(studio, method, steps, expected):
    # README: heun 2N - 1, the others N (without guidance no CFG-edge node is added)
    assert studio.nfe(method, steps, 1.0, (0.1, 1.0)) == expected


@pytest.mark.parametrize("method", ["heun", "euler", "dpm++2m", "unipc", "dpm++3m"])
def test_nfe_shown_is_the_nfe_sampling_spends(studio, method):
    # with guidance on (0.3, 0.7) a one-step grid of the interval solvers gets a node at each edge: 3 steps
    for steps in (1, 5):
        result = studio.run(Settings(label=1, cfg=3.0, interval=(0.3, 0.7), method=method, steps=steps, count=1))
        assert result.nfe == studio.nfe(method, steps, 3.0, (0.3, 0.7))
    assert studio.nfe(method, 1, 3.0, (0.3, 0.7)) == (3 if method in ("dpm++2m", "unipc", "dpm++3m") else 1)


def test_run_writes_the_grid_it_returns(studio):
    result = studio.run(Settings(label=2, cfg=2.0, method="euler", steps=4, seed=3, count=5))
    assert result.images.shape == (5, 16, 16, 3) and result.images.dtype == np.uint8
    assert result.images.std() > 5  # not blank
    grid = np.asarray(Image.open(result.grid).convert("RGB"))
    expected = make_grid(result.images, nrow=5).repeat(8, axis=0).repeat(8, axis=1)  # 128 // 16 = 8x upscale
    np.testing.assert_array_equal(grid, expected)
    assert result.summary().startswith("5 images in ") and result.summary().endswith("NFE 4")


def test_an_unconditional_export_has_no_classes_and_no_guidance(tmp_path):
    from jit_diffusion.models.pretrained import save_pretrained

    export = save_pretrained(lively_jit(preset_config("JiT-Ti/4", input_size=8, num_classes=0)), tmp_path / "exp")
    studio = Studio(export, device="cpu", out_dir=tmp_path / "grids")
    assert studio.class_names == [] and studio.weight_names == ["ema1"] and studio.defaults().cfg == 1.0
    guided, plain = (studio.run(Settings(cfg=cfg, steps=3, count=2, method="euler")) for cfg in (5.0, 1.0))
    np.testing.assert_array_equal(guided.images, plain.images)  # the weight is ignored: nothing to guide
    assert studio.nfe("heun", 5, 4.0, (0.1, 1.0)) == 9


def test_compare_uses_the_same_noise(studio):
    a = Settings(label=0, cfg=2.0, method="heun", steps=6, seed=5, count=2)
    same, again = studio.compare(a, a)
    np.testing.assert_array_equal(same.images, again.images)
    heun, ema2 = studio.compare(a, dataclasses.replace(a, weights="ema2", seed=99, count=1))  # b takes a's noise
    assert ema2.images.shape == heun.images.shape and not np.array_equal(ema2.images, heun.images)
    # the same noise: the two weight sets differ a little, so their images stay close
    assert np.abs(ema2.images.astype(int) - heun.images.astype(int)).mean() < 40


def test_requests_over_the_caps_fail_before_any_work(studio):
    before = set(studio.out_dir.iterdir())
    for bad in (Settings(count=7), Settings(steps=13), Settings(label=3), Settings(label=None), Settings(method="rk4"),
                Settings(interval=(0.8, 0.2)), Settings(weights="ema9")):  # fmt: skip
        with pytest.raises((UserError, ValueError)):
            studio.run(bad)
    with pytest.raises(UserError, match="over the cap of 12 ODE steps"):
        studio.compare(Settings(steps=4, count=1), Settings(steps=50))
    assert set(studio.out_dir.iterdir()) == before


# --- the run folder -----------------------------------------------------------------------------------


def test_run_folder_readers(run_dir, tmp_path):
    grids = preview_grids(run_dir)
    assert [s for s, _ in grids] == [10, 20]
    assert nearest_preview(grids, 15)[0] == 10 and nearest_preview(grids, 20)[0] == 20
    assert nearest_preview(grids, 3)[0] == 10 and nearest_preview([], 3) is None
    assert loss_curve(run_dir) == [(5, 1.0), (10, 0.5), (15, pytest.approx(0.4))]
    assert preview_grids(tmp_path) == [] and loss_curve(tmp_path) == []


@pytest.mark.slow
def test_a_resumed_run_keeps_the_last_value_of_a_step(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    for part, points in enumerate(([(1, 3.0), (2, 2.0)], [(2, 1.5), (3, 1.0)])):
        with SummaryWriter(str(tmp_path / "tb"), filename_suffix=f".{part}") as writer:
            for step, loss in points:
                writer.add_scalar("train/loss", loss, step)
        time.sleep(1.1)  # event files are named by the second they were opened
    assert loss_curve(tmp_path) == [(1, 3.0), (2, 1.5), (3, 1.0)]


# --- the command --------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, expected", [
    (["studio", "{tmp}/missing"], "does not exist"),
    (["studio", "{run}", "--port", "70000"], "--port must be in 1..65535, got 70000"),
    (["studio", "{run}", "--max-upload-mb", "0"], "studio caps must be positive"),
])  # fmt: skip
def test_studio_command_errors_are_one_line(argv, expected, run_dir, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, run=run_dir) for a in argv]
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert expected in err and "\n" not in err


@pytest.mark.parametrize("flag", ["--max-images", "--max-steps", "--port"])
def test_studio_count_flags_must_be_positive(flag, run_dir, capsys):
    with pytest.raises(SystemExit) as done:
        main(["studio", str(run_dir), flag, "0"])
    assert done.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"jit studio: error: argument {flag}: must be >= 1, got 0"


def test_studio_command_names_the_extra_when_gradio_is_missing(run_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` now fails as if not installed
    monkeypatch.delitem(sys.modules, "jit_diffusion.studio.app", raising=False)
    assert main(["studio", str(run_dir)]) != 0
    assert "pip install 'jit-diffusion[studio]'" in capsys.readouterr().err


@pytest.mark.slow
def test_concurrent_requests_wait_their_turn_and_a_failure_does_not_stop_the_server(studio, monkeypatch):
    pytest.importorskip("gradio", reason="needs the studio extra (pip install -e '.[studio]')")
    import httpx
    from gradio_client import Client

    from jit_diffusion.studio.app import serve

    spans, real_run = [], studio.run

    def slow_run(settings):  # records when each request runs; seed 13 fails as an unexpected error would
        start = time.monotonic()
        if settings.seed == 13:
            raise RuntimeError("out of memory (simulated)")
        time.sleep(1.0)
        result = real_run(dataclasses.replace(settings, steps=1, count=1))
        spans.append((start, time.monotonic()))
        return result

    monkeypatch.setattr(studio, "run", slow_run)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = serve(studio, port=port, block=False)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        args = dict(label_=0, weights_="ema1", cfg_=1.0, lo_=0.1, hi_=1.0, method_="euler", steps_=1, count_=1)
        jobs = [client.submit(**args, seed_=seed, api_name="/generate") for seed in (1, 13, 2, 3)]
        outcomes = []
        for job in jobs:
            try:
                outcomes.append(job.result(timeout=120)[1])
            except Exception as err:  # the client raises the page's error
                outcomes.append(f"error: {err}")
        upload = f"http://127.0.0.1:{port}/gradio_api/upload"  # the upload cap holds for any client
        assert httpx.post(upload, files={"files": ("small.bin", b"0" * 1000)}).status_code == 200
        big = {"files": ("big.bin", b"0" * (studio.limits.max_upload_bytes + 1))}
        assert httpx.post(upload, files=big).status_code == 413
    finally:
        app.close()
    assert outcomes[1].startswith("error") and "RuntimeError: out of memory (simulated)" in outcomes[1]
    assert [outcomes[i].split(" in ")[0] for i in (0, 2, 3)] == ["1 images"] * 3  # served after the failure
    spans.sort()
    assert len(spans) == 3 and all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))


PMF_OFFICIAL = Path(__file__).parents[1] / "fixtures" / "pmf" / "pmf_tiny_official.pt"


def test_a_pmf_model_generates_with_its_own_sampler_and_nfe(tmp_path):
    studio = Studio(PMF_OFFICIAL, device="cpu", out_dir=tmp_path)
    d = studio.defaults()
    assert studio.methods == ("pmf",) and d.method == "pmf" and d.steps == 1
    assert studio.nfe("pmf", 2, 2.5, (0.2, 0.8)) == 2  # one evaluation per step, no doubled batch
    with pytest.raises(UserError, match="solver must be one of pmf"):
        studio.check(dataclasses.replace(d, method="heun"))
    settings = dataclasses.replace(d, label=1, cfg=2.5, interval=(0.2, 0.8), steps=2, count=3, seed=4)
    result = studio.run(settings)
    assert result.nfe == 2 and result.images.shape == (3, 16, 16, 3)
    same = jit_diffusion.generate(studio.model(d.weights), [1] * 3, image_size=16, seed=4, family="pmf",
                                  method="pmf", steps=2, cfg=2.5, cfg_interval=(0.2, 0.8))  # fmt: skip
    np.testing.assert_array_equal(result.images, same)
