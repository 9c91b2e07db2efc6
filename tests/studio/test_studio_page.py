"""``jit studio``'s page driven in headless Chromium (Debian's, through Playwright): generate, compare, edit
under an uploaded mask and a painted stroke, and the run tab."""

import contextlib
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
from PIL import Image
from studio_run import make_run

import jit_diffusion
from jit_diffusion.core.images import make_grid
from jit_diffusion.editing.inputs import load_inputs
from jit_diffusion.formats.loading import open_source


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("studio"))


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
