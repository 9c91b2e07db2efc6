"""``jit studio``: the caps, the requests behind the page (without a browser), the run-folder readers, the
command's errors, and the page itself driven in headless Chromium."""

import contextlib
import dataclasses
import importlib.util
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import lively_jit
from PIL import Image

import jit_diffusion
from jit_diffusion.cli import main
from jit_diffusion.core.errors import UserError
from jit_diffusion.core.images import make_grid
from jit_diffusion.editing.inputs import load_inputs
from jit_diffusion.formats.checkpoint import save_checkpoint
from jit_diffusion.formats.loading import open_source
from jit_diffusion.models.config import preset_config
from jit_diffusion.studio.limits import Limits
from jit_diffusion.studio.runs import loss_curve, nearest_preview, preview_grids
from jit_diffusion.studio.session import Settings, Studio

CONFIG = preset_config("JiT-Ti/4", input_size=16, num_classes=3)
NAMES = ["apple", "banana", "cherry"]


def make_run(root: Path) -> Path:
    """A run folder: a training checkpoint (raw, ema1, ema2), two preview grids and a loss in tb/."""
    model = lively_jit(CONFIG)
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    emas = {f"ema{i}": {k: v + 0.02 * i * torch.randn_like(v) for k, v in raw.items()} for i in (1, 2)}
    ckpt = {"model": raw, "ema": emas, "model_config": dataclasses.asdict(CONFIG), "class_names": NAMES, "step": 20,
            "config": {"prediction": "x", "noise_scale": 1.0, "t_eps": 0.05, "sample_cfg": 2.0,
                       "sample_interval": [0.1, 1.0], "data": "fruit"}}  # fmt: skip
    run = root / "run"
    save_checkpoint(ckpt, run, 20)
    (run / "samples").mkdir()
    for step, shade in ((10, 60), (20, 180)):
        Image.new("RGB", (40, 20), (shade, 0, 0)).save(run / "samples" / f"step_{step:08d}.png")
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(run / "tb")) as writer:
        for step, loss in ((5, 1.0), (10, 0.5), (15, 0.4)):
            writer.add_scalar("train/loss", loss, step)
    return run


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


# --- the page in a real browser -----------------------------------------------------------------------

REQUIRED = os.environ.get("JIT_STUDIO_REQUIRED") == "1"  # `make test` (and so CI): fail instead of skipping


def chromium_or_skip() -> str:
    """Chromium's executable; a skip (a failure under JIT_STUDIO_REQUIRED=1) naming what is missing."""
    missing = [m for m in ("gradio", "playwright") if importlib.util.find_spec(m) is None]
    exe = os.environ.get("STUDIO_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    reason = None
    if missing:
        reason = f"the browser test needs the studio extra (pip install -e '.[studio]'); missing {missing}"
    elif exe is None:
        reason = "the browser test needs Chromium (Debian package chromium, installed by scripts/system_deps.sh)"
    if reason:
        (pytest.fail if REQUIRED else pytest.skip)(reason)
    return exe


@contextlib.contextmanager
def studio_server(model: Path, log: Path, *extra: str):
    """`jit studio MODEL` on a free loopback port; yields its URL once the page answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = str(Path(jit_diffusion.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    argv = [sys.executable, "-m", "jit_diffusion.cli", "studio", str(model), "--port", str(port), "--device", "cpu",
            *extra]  # fmt: skip
    with open(log, "w") as out:
        server = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, f"jit studio exited {server.returncode}: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"jit studio did not answer in 180 s: {log.read_text()[-2000:]}"
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def picked(page, name: str, option: str) -> str:
    """Pick ``option`` in the dropdown labelled ``name`` (typing part of it first, as a user searches)."""
    box = page.get_by_role("combobox", name=name)
    box.click()
    box.fill(option[:3])
    page.get_by_role("option", name=option, exact=True).click()
    return box.input_value()


def typed(page, label: str, value) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(str(value))
    field.press("Tab")


def shown_image(page, selector: str) -> np.ndarray:
    img = page.locator(f"{selector} img")
    img.wait_for(timeout=120_000)
    answer = page.request.get(img.get_attribute("src"))
    assert answer.ok
    return np.asarray(Image.open(io.BytesIO(answer.body())).convert("RGB"))


def painted_stroke(page, size: int, upload: int) -> np.ndarray:
    """Drag the brush across the middle row of the Edit canvas (showing an ``upload`` px square image); per
    model pixel (``size`` a side), how much its shown colour changed (0: not painted), read at its centre."""
    canvas = page.locator("#edit-paint canvas").first
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    zoom = float(page.locator("#edit-paint .zoom-number").inner_text().strip("%")) / 100  # shown px per pixel
    side = upload * zoom  # the image's side on the page
    left, top = box["x"] + (box["width"] - side) / 2, box["y"] + (box["height"] - side) / 2
    centres = (np.arange(size) + 0.5) * side / size

    def shown() -> np.ndarray:
        shot = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB"), dtype=np.int16)
        return shot[np.ix_((top + centres).astype(int), (left + centres).astype(int))]

    before = shown()
    page.mouse.move(left + 0.15 * side, top + side / 2)
    page.mouse.down()
    page.mouse.move(left + 0.85 * side, top + side / 2, steps=12)
    page.mouse.up()
    page.wait_for_timeout(1500)  # the canvas sends its layer
    return np.abs(shown() - before).max(axis=2)


def grown(mask: np.ndarray) -> np.ndarray:
    """``mask`` grown by one pixel in every direction (8-neighbourhood)."""
    padded = np.pad(mask, 1)
    h, w = mask.shape
    return np.any([padded[i : i + h, j : j + w] for i in range(3) for j in range(3)], axis=0)


@pytest.mark.slow
def test_the_page_in_headless_chromium(run_dir, tmp_path):
    exe = chromium_or_skip()
    from playwright.sync_api import expect, sync_playwright

    model = Path(os.environ.get("STUDIO_MODEL") or run_dir)  # STUDIO_MODEL: e.g. the demo run, for the README
    info = open_source(model).info()
    name, size = info.class_names[min(5, info.num_classes - 1)], info.image_size
    with studio_server(model, tmp_path / "studio.log", "--max-images", "16") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 940})
        outside = []  # the page asks nothing of any other host (no fonts, scripts or analytics)
        page.on("request", lambda r: None if r.url.startswith((url, "data:", "blob:")) else outside.append(r.url))
        page.goto(url)
        assert picked(page, "class", name) == name
        # the NFE follows the solver and the steps (README: heun 2N - 1, dpm++2m N)
        picked(page, "solver", "heun")
        typed(page, "steps", 7)
        expect(page.locator("#nfe")).to_contain_text("NFE 13")
        assert picked(page, "solver", "dpm++2m") == "dpm++2m"
        typed(page, "steps", 10)
        expect(page.locator("#nfe")).to_contain_text("NFE 10")
        typed(page, "images", 8)
        page.get_by_role("button", name="Generate").click()
        expect(page.locator("#timing")).to_contain_text("8 images in", timeout=120_000)
        expect(page.locator("#timing")).to_contain_text("NFE 10")
        grid = shown_image(page, "#grid")
        expected = make_grid(np.zeros((8, size, size, 3), np.uint8), nrow=8).shape[:2]
        assert grid.shape[:2] == tuple(n * max(1, 128 // size) for n in expected)  # small images: >= 128 px
        assert grid.std() > 10 and len(np.unique(grid.reshape(-1, 3), axis=0)) > 50  # not blank
        if os.environ.get("STUDIO_SCREENSHOT"):
            page.screenshot(path=os.environ["STUDIO_SCREENSHOT"], full_page=True)
        with page.expect_download() as download:
            page.get_by_role("button", name="Download PNG").click()
        np.testing.assert_array_equal(np.asarray(Image.open(download.value.path()).convert("RGB")), grid)
        # over the cap: the message shows, and the next request is served
        typed(page, "images", 17)
        page.get_by_role("button", name="Generate").click()
        expect(page.get_by_text("image count 17 is over the cap of 16 images per request")).to_be_visible()
        typed(page, "images", 2)
        page.get_by_role("button", name="Generate").click()
        expect(page.locator("#timing")).to_contain_text("2 images in", timeout=120_000)
        assert shown_image(page, "#grid").shape[1] < grid.shape[1]
        # Compare: two settings on the same noise; Run: the run folder's latest preview grid and the loss
        page.get_by_role("tab", name="Compare").click()
        page.locator("#compare-count input").fill("2")
        page.get_by_role("button", name="Compare", exact=True).click()
        expect(page.locator("#timing-B")).to_contain_text("2 images in", timeout=120_000)
        a, b = shown_image(page, "#grid-A"), shown_image(page, "#grid-B")
        assert a.shape == b.shape and not np.array_equal(a, b)
        # Edit: upload an image and a mask (white = regenerate the left half), inpaint, the right half is kept
        blocks = np.random.default_rng(0).integers(0, 256, (size, size, 3)).astype(np.uint8)
        Image.fromarray(blocks.repeat(8, 0).repeat(8, 1)).save(tmp_path / "in.png")  # a bigger upload: 8 px blocks
        image = load_inputs(tmp_path / "in.png", size)[0][0].permute(1, 2, 0).numpy()  # what the model is given
        mask = np.zeros((size, size), np.uint8)
        mask[:, : size // 2] = 255
        Image.fromarray(mask).save(tmp_path / "mask.png")
        page.get_by_role("tab", name="Edit").click()
        for field, path in (("#edit-image", "in.png"), ("#edit-mask", "mask.png")):
            page.locator(f"{field} input[type=file]").set_input_files(str(tmp_path / path))
            page.locator(f"{field} img").wait_for()
        page.locator("#edit-steps input").fill("4")
        page.get_by_role("button", name="Inpaint").click()
        expect(page.locator("#edit-timing")).to_contain_text("1 images in", timeout=120_000)
        up = max(1, 128 // size)
        edited = shown_image(page, "#edit-grid")[2 * up : (2 + size) * up : up, 2 * up : (2 + size) * up : up]
        np.testing.assert_array_equal(edited[:, size // 2 :], image[:, size // 2 :])
        assert (edited[:, : size // 2] != image[:, : size // 2]).mean() > 0.5
        painted = painted_stroke(page, size, 8 * size)  # a stroke on the canvas wins over the uploaded mask
        first = page.locator("#edit-grid img").get_attribute("src")
        page.get_by_role("button", name="Inpaint").click()
        expect(page.locator("#edit-grid img")).not_to_have_attribute("src", first, timeout=120_000)
        edited = shown_image(page, "#edit-grid")[2 * up : (2 + size) * up : up, 2 * up : (2 + size) * up : up]
        untouched = ~grown(painted > 0)
        np.testing.assert_array_equal(edited[untouched], image[untouched])
        assert (edited[painted > 60] != image[painted > 60]).mean() > 0.5 and untouched[:, : size // 2].any()
        if model == run_dir:
            page.get_by_role("tab", name="Run").click()
            assert shown_image(page, "#run-preview")[..., 0].max() == 180  # step 20's grid (red 180)
            expect(page.locator("#run-loss")).to_be_visible()
        browser.close()
    assert outside == []


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
