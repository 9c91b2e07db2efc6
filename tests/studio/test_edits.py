"""The studio's Edit requests without a browser: image-to-image, inpainting under a painted or uploaded mask,
the class interpolation strip, and their checks; img2img and inpainting of a pMF model."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from studio_run import make_run

from jit_diffusion.core.errors import UserError
from jit_diffusion.studio.edits import Editor
from jit_diffusion.studio.limits import Limits
from jit_diffusion.studio.session import Settings, Studio

EULER = dict(method="euler", steps=4, cfg=2.0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("edits")
    studio = Studio(make_run(root), device="cpu", limits=Limits(max_images=6, max_steps=12, max_upload_mb=0.01),
                    out_dir=root / "grids")  # fmt: skip
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    Image.fromarray(image).save(root / "in.png")
    mask = np.zeros((16, 16), np.uint8)
    mask[:, :8] = 255  # regenerate the left half
    Image.fromarray(mask).save(root / "mask.png")
    return Editor(studio), image, root


def test_inpaint_keeps_the_unmasked_pixels(setup):
    editor, image, root = setup
    result = editor.inpaint(root / "in.png", root / "mask.png", Settings(label=1, **EULER))
    out = result.images[0]
    np.testing.assert_array_equal(out[:, 8:], image[:, 8:])
    assert (out[:, :8] != image[:, :8]).mean() > 0.9 and result.nfe == 4


def test_img2img_strength_runs_from_the_input_to_plain_sampling(setup):
    editor, image, root = setup
    kept = editor.img2img(root / "in.png", Settings(label=1, **EULER), 0.0)
    np.testing.assert_array_equal(kept.images[0], image)  # strength 0: the input, no network evaluation
    assert kept.nfe == 0
    half = editor.img2img(root / "in.png", Settings(label=1, **EULER), 0.5)
    full = editor.img2img(root / "in.png", Settings(label=1, seed=4, **EULER), 1.0)
    plain = editor.studio.run(Settings(label=1, seed=4, count=1, **EULER))
    assert half.nfe == 2 and np.abs(full.images.astype(int) - plain.images).max() <= 1  # strength 1 = sampling


def test_the_strip_runs_from_one_class_to_the_other(setup):
    editor, _, _ = setup
    strip = editor.interpolate(Settings(label=0, seed=2, **EULER), 2, 5)
    assert strip.images.shape == (5, 16, 16, 3)
    for label, frame in ((0, 0), (2, 4)):
        plain = editor.studio.run(Settings(label=label, seed=2, count=1, **EULER))
        assert np.abs(strip.images[frame].astype(int) - plain.images[0]).max() <= 1


def test_edit_requests_are_checked_first(setup, tmp_path):
    editor, _, root = setup
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3)).astype(np.uint8)).save(big)
    for call, message in [
        (lambda: editor.img2img(None, Settings(**EULER), 0.5), "upload an image first"),
        (lambda: editor.inpaint(root / "in.png", None, Settings(**EULER)), "(or upload a mask) first"),
        (lambda: editor.img2img(big, Settings(**EULER), 0.5), "an image is 0.01"),
        (lambda: editor.img2img(root / "in.png", Settings(**EULER), 1.5), "--strength must be in [0, 1]"),
        (lambda: editor.interpolate(Settings(**EULER), 1, 7), "image count 7 is over the cap of 6"),
        (lambda: editor.interpolate(Settings(**EULER), 1, 1), "at least 2 frames"),
        (lambda: editor.interpolate(Settings(**EULER), 3, 4), "class 3 is out of range 0..2"),
        (lambda: editor.inpaint(root / "in.png", root / "in.png", Settings(**EULER)), "colour image"),
    ]:  # fmt: skip
        with pytest.raises((UserError, ValueError)) as err:
            call()
        assert message in str(err.value)


PMF = Path(__file__).parents[1] / "fixtures" / "pmf" / "pmf_tiny_official.pt"


@pytest.fixture(scope="module")
def pmf(tmp_path_factory):
    root = tmp_path_factory.mktemp("pmf-edits")
    studio = Studio(PMF, device="cpu", out_dir=root / "grids")
    size = studio.info.image_size
    image = np.random.default_rng(5).integers(0, 256, (size, size, 3)).astype(np.uint8)
    Image.fromarray(image).save(root / "in.png")
    mask = np.zeros((size, size), np.uint8)
    mask[2 : size // 2, 3:] = 255
    Image.fromarray(mask).save(root / "mask.png")
    return Editor(studio), image, mask > 0, root


def test_pmf_inpaint_keeps_the_unmasked_pixels_exactly(pmf):
    editor, image, regenerate, root = pmf
    assert editor.studio.methods == ("pmf",)
    s = dataclasses.replace(editor.studio.defaults(), steps=2, seed=3)
    result = editor.inpaint(root / "in.png", root / "mask.png", s)
    out = result.images[0]
    np.testing.assert_array_equal(out[~regenerate], image[~regenerate])
    assert (out[regenerate] != image[regenerate]).mean() > 0.9 and result.nfe == 2


def test_pmf_img2img_strength_one_is_the_studios_sampling(pmf):
    editor, image, _, root = pmf
    s = dataclasses.replace(editor.studio.defaults(), steps=2, seed=7, count=1)
    full = editor.img2img(root / "in.png", s, 1.0)
    np.testing.assert_array_equal(full.images, editor.studio.run(s).images)
    assert full.nfe == 2
    kept = editor.img2img(root / "in.png", s, 0.0)
    np.testing.assert_array_equal(kept.images[0], image)
    assert kept.nfe == 0
    with pytest.raises(UserError, match="interpolation strip runs the sampling ODE of JiT models"):
        editor.interpolate(s, 1, 4)


def test_a_painted_layer_is_the_mask(setup, tmp_path):
    """Any layer pixel that is not transparent is regenerated; the layer is resized to the image nearest-neighbour;
    an empty layer falls back to the uploaded mask, and nothing painted or uploaded is a one-line error."""
    editor, image, root = setup
    layer = np.zeros((32, 32, 4), np.uint8)
    layer[4:20, 8:24] = (255, 255, 255, 40)  # a faint stroke still counts
    Image.fromarray(layer, "RGBA").save(tmp_path / "layer.png")
    Image.fromarray(np.zeros((16, 16, 4), np.uint8), "RGBA").save(tmp_path / "empty.png")
    painted = editor.inpaint(root / "in.png", None, Settings(label=1, **EULER), [tmp_path / "layer.png"])
    regenerate = np.zeros((16, 16), bool)
    regenerate[2:10, 4:12] = True
    np.testing.assert_array_equal(painted.images[0][~regenerate], image[~regenerate])
    assert (painted.images[0][regenerate] != image[regenerate]).mean() > 0.9
    uploaded = editor.inpaint(root / "in.png", root / "mask.png", Settings(label=1, **EULER), [tmp_path / "empty.png"])
    np.testing.assert_array_equal(uploaded.images[0][:, 8:], image[:, 8:])
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "black.png")
    for mask, strokes, message in [(None, [tmp_path / "empty.png"], "paint over the part to regenerate"),
                                   (tmp_path / "black.png", [], "the mask is empty")]:  # fmt: skip
        with pytest.raises(UserError, match=message):
            editor.inpaint(root / "in.png", mask, Settings(**EULER), strokes)
