"""Editing operations on tiny random models: the limits that must hold exactly (strength 0 and 1, black and
white masks, interpolation ends), the known pixels of inpainting, and the convergence of inversion."""

import math

import numpy as np
import pytest
import torch
from conftest import lively_jit
from PIL import Image

from jit_diffusion.core.errors import UserError
from jit_diffusion.core.images import to_uint8
from jit_diffusion.data.image_folder import center_crop_arr, image_to_tensor
from jit_diffusion.diffusion.generate import generate
from jit_diffusion.diffusion.sampling import METHODS, image_noise
from jit_diffusion.diffusion.solvers import decay
from jit_diffusion.editing.inputs import box_mask, load_inputs, load_mask, to_unit
from jit_diffusion.editing.operations import (
    ODESettings,
    img2img,
    inpaint,
    interpolate,
    invert,
    reconstruct,
    slerp,
    swap,
)
from jit_diffusion.models.config import JiTConfig

CONDITIONAL = JiTConfig(input_size=8, patch_size=4, hidden_size=32, depth=2, num_heads=2, num_classes=4,
                        bottleneck_dim=8, in_context_len=2, in_context_start=1)  # fmt: skip
UNCONDITIONAL = JiTConfig(input_size=8, patch_size=4, hidden_size=32, depth=2, num_heads=2, num_classes=0,
                          bottleneck_dim=8, in_context_len=0)  # fmt: skip
SEED, STEPS = 7, 6


@pytest.fixture(scope="module", params=["conditional", "unconditional"])
def setup(request):
    """(model, uint8 inputs (4, 3, 8, 8), labels, noise of SEED, cfg)."""
    config = CONDITIONAL if request.param == "conditional" else UNCONDITIONAL
    model = lively_jit(config).eval()
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 3, 8, 8), dtype=np.uint8))
    labels = torch.tensor([0, 1, 2, 3]) if config.num_classes else torch.zeros(4, dtype=torch.long)
    return model, images, labels, image_noise(range(4), (3, 8, 8), SEED), 2.0 if config.num_classes else 1.0


def plain(model, labels, method, cfg, steps=STEPS, start_index=0):
    return generate(model, labels, image_size=8, seed=SEED, method=method, steps=steps, cfg=cfg,
                    start_index=start_index)  # fmt: skip


def as_uint8(images: torch.Tensor) -> np.ndarray:
    return images.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("method", METHODS)
def test_img2img_strength_one_is_sampling_and_zero_the_input(setup, method):
    model, images, labels, noise, cfg = setup
    settings = ODESettings(method=method, steps=STEPS, cfg=cfg)
    full = img2img(model, to_unit(images), labels, noise, settings, strength=1.0)
    assert np.array_equal(to_uint8(full), plain(model, labels, method, cfg))
    same = img2img(model, to_unit(images), labels, noise, settings, strength=0.0)
    assert np.array_equal(to_uint8(same), as_uint8(images))
    half = to_uint8(img2img(model, to_unit(images), labels, noise, settings, strength=0.5))
    assert not np.array_equal(half, as_uint8(images)) and not np.array_equal(half, to_uint8(full))


class Still(torch.nn.Module):
    """x-prediction = the noisy input: the velocity is 0, so every solver returns its starting state."""

    num_classes, in_channels = 4, 3

    def forward(self, z, t, y):
        return z


@pytest.mark.parametrize("method", METHODS)
def test_img2img_starts_from_the_input_noised_to_one_minus_strength(method):
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    noise = torch.randn(2, 3, 8, 8)
    for strength in (0.0, 0.3, 0.75, 1.0):
        settings = ODESettings(method=method, steps=5, cfg=2.0, noise_scale=2.0)
        out = img2img(Still(), x, torch.tensor([0, 1]), noise, settings, strength=strength)
        assert torch.allclose(out, (1 - strength) * x + strength * 2.0 * noise, atol=1e-6)


def test_strength_grid_starts_at_t0_and_keeps_the_later_nodes():
    settings = ODESettings(method="euler", steps=4)
    assert settings.times_from(0.3).tolist() == pytest.approx([0.3, 0.5, 0.75, 1.0])
    assert settings.times_from(0.5).tolist() == pytest.approx([0.5, 0.75, 1.0])
    assert torch.equal(settings.times_from(0.0), torch.linspace(0, 1, 5))
    with pytest.raises(ValueError, match="--strength must be in"):
        img2img(None, torch.zeros(1, 3, 8, 8), torch.zeros(1), torch.zeros(1, 3, 8, 8), settings, strength=1.5)


@pytest.mark.parametrize("method", METHODS)
def test_inpainting_keeps_the_known_pixels_exactly(setup, method):
    model, images, labels, noise, cfg = setup
    settings = ODESettings(method=method, steps=STEPS, cfg=cfg)
    x = to_unit(images)
    black = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    assert np.array_equal(to_uint8(inpaint(model, x, black, labels, noise, settings)), as_uint8(images))
    white = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    regenerated = to_uint8(inpaint(model, x, white, labels, noise, settings))
    assert np.array_equal(regenerated, plain(model, labels, method, cfg))
    box = box_mask("2,1,6,5", 8)
    for strength in (1.0, 0.6):
        out = to_uint8(inpaint(model, x, box, labels, noise, settings, strength=strength))
        keep = ~box[0, 0].numpy()
        assert np.array_equal(out[:, keep], as_uint8(images)[:, keep])
        assert not np.array_equal(out[:, ~keep], as_uint8(images)[:, ~keep])


def test_inpainting_conditions_the_hole_on_the_known_pixels(setup):
    """The regenerated pixels depend on the kept ones (the network sees them at every step)."""
    model, images, labels, noise, cfg = setup
    settings = ODESettings(steps=STEPS, cfg=cfg)
    box = box_mask("0,0,4,8", 8)
    other = images.clone()
    other[..., 4:] = 255 - other[..., 4:]
    a = inpaint(model, to_unit(images), box, labels, noise, settings)
    b = inpaint(model, to_unit(other), box, labels, noise, settings)
    assert (a[..., :4] - b[..., :4]).abs().max() > 1e-3


# measured orders of the round trip (error ratio per doubling of the steps, steps 20 -> 40 -> 80):
# heun 2.5, 2.3; euler 1.2, 0.9; dpm++2m 1.2, 1.9; dpm++3m 0.9, 0.8; unipc 1.3, 1.1 (the step into t = 0
# is first order in every method, and the exponential solvers' errors are already 1e-3 at 20 steps)
MIN_ORDER = {"heun": 1.8, "euler": 0.8, "dpm++2m": 1.0, "dpm++3m": 0.6, "unipc": 0.9}


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_inversion_round_trip_converges_with_the_measured_order(setup, method):
    model, images, labels, _, _ = setup
    x = to_unit(images)
    errors = []
    for steps in (20, 40, 80):
        noise, back = reconstruct(model, x, labels, ODESettings(method=method, steps=steps))
        errors.append(float((back - x).pow(2).mean().sqrt()))
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert min(orders) >= MIN_ORDER[method], (errors, orders)
    assert errors[-1] < 0.15  # in [-1, 1] units: under 20 of 255 levels even for euler
    assert torch.isfinite(noise).all()


@pytest.mark.slow
def test_inversion_with_guidance_and_to_an_intermediate_time(setup):
    model, images, labels, _, cfg = setup
    x = to_unit(images)
    settings = ODESettings(method="heun", steps=80, cfg=cfg)
    _, back = reconstruct(model, x, labels, settings)
    assert float((back - x).abs().max()) < 0.1
    z = invert(model, x, labels, settings, t0=0.5)
    assert float((z - x).abs().mean()) > 0.1
    same = swap(model, x, labels, labels, settings, strength=0.5, invert_cfg=cfg)
    assert float((same - x).abs().max()) < 0.05  # back to t = 1 under the same class: the input


def test_swap_changes_the_class_and_strength_zero_keeps_the_input(setup):
    model, images, labels, _, _ = setup
    if model.num_classes == 0:
        pytest.skip("swaps need classes")
    x, settings = to_unit(images), ODESettings(steps=STEPS, cfg=2.0)
    target = (labels + 1) % 4
    assert torch.equal(swap(model, x, labels, target, settings, strength=0.0), x)
    moved = swap(model, x, labels, target, settings, strength=0.7)
    assert (moved - x).abs().mean() > 1e-3


@pytest.mark.parametrize("method", ["heun", "dpm++2m"])
def test_interpolation_ends_are_the_plain_samples(setup, method):
    model, _, _, _, cfg = setup
    ends = (0, 3) if model.num_classes else (0, 0)
    noises = (image_noise([1], (3, 8, 8), SEED)[0], image_noise([2], (3, 8, 8), SEED)[0])
    settings = ODESettings(method=method, steps=STEPS, cfg=cfg)
    frames = to_uint8(interpolate(model, ends, noises, 5, settings))
    assert np.array_equal(frames[0], plain(model, [ends[0]], method, cfg, start_index=1)[0])
    assert np.array_equal(frames[-1], plain(model, [ends[1]], method, cfg, start_index=2)[0])
    assert not np.array_equal(frames[2], frames[0]) and not np.array_equal(frames[2], frames[-1])


def test_class_interpolation_with_one_noise_and_the_null_class(setup):
    model, _, _, _, _ = setup
    if model.num_classes == 0:
        pytest.skip("class interpolation needs classes")
    noise = image_noise([0], (3, 8, 8), SEED)[0]
    settings = ODESettings(steps=STEPS, cfg=1.0)
    frames = to_uint8(interpolate(model, (1, model.num_classes), (noise, noise), 3, settings))
    unconditional = plain(model, [model.num_classes], "heun", 1.0)[0]  # the null label: unconditional
    assert np.array_equal(frames[-1], unconditional)
    assert np.array_equal(frames[0], plain(model, [1], "heun", 1.0)[0])


def test_slerp_ends_and_norm():
    a, b = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)
    middle = slerp(a, b, 0.5)
    assert float(middle.norm()) == pytest.approx(float((a.norm() + b.norm()) / 2), rel=0.05)
    assert torch.allclose(slerp(a, a, 0.3), a)


def test_backward_decay_inverts_the_forward_one():
    for s, t in [(0.2, 0.7), (0.5, 0.99), (0.96, 1.0), (0.0, 1.0)]:
        assert decay(s, t, 0.05) * decay(t, s, 0.05) == pytest.approx(1.0)


# --- inputs ------------------------------------------------------------------------------------


def test_inputs_of_any_size_and_format_are_cropped_like_training_data(tmp_path):
    rng = np.random.default_rng(1)
    wide = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
    Image.fromarray(wide).save(tmp_path / "a_wide.png")
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)
    rgba[..., 0], rgba[:5, :, 3] = 200, 255  # top half opaque red, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "b_rgba.png")
    Image.fromarray(rng.integers(0, 256, (30, 30), dtype=np.uint8), "L").save(tmp_path / "c_gray.jpg")
    images, paths = load_inputs(tmp_path, 8)
    assert [p.name for p in paths] == ["a_wide.png", "b_rgba.png", "c_gray.jpg"] and images.shape == (3, 3, 8, 8)
    assert torch.equal(images[0], image_to_tensor(center_crop_arr(Image.fromarray(wide), 8)))
    assert images[1][:, 0].tolist() == [[200] * 8, [0] * 8, [0] * 8]  # red on top
    assert images[1][:, -1].tolist() == [[255] * 8] * 3  # transparent -> white
    assert torch.equal(images[2][0], images[2][1]) and torch.equal(images[2][1], images[2][2])
    single, _ = load_inputs(tmp_path / "a_wide.png", 8)
    assert torch.equal(single[0], images[0])


def test_bad_inputs_and_masks_are_one_line_errors(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match="cannot read .*broken.png as an image"):
        load_inputs(tmp_path, 8)
    with pytest.raises(UserError, match="does not exist"):
        load_inputs(tmp_path / "missing", 8)
    colour = np.zeros((8, 8, 3), dtype=np.uint8)
    colour[..., 0] = 255
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(UserError, match="is a colour image; a mask must be black and white"):
        load_mask(tmp_path / "colour.png", 8)
    with pytest.raises(UserError, match="cannot read"):
        load_mask(tmp_path / "broken.png", 8)
    for text in ("0,0,9,4", "3,0,3,4", "-1,0,2,2"):
        with pytest.raises(UserError, match="out of range"):
            box_mask(text, 8)
    with pytest.raises(UserError, match="four comma-separated integers"):
        box_mask("1,2,3", 8)


def test_masks_of_any_size_are_centre_cropped_and_resized_nearest(tmp_path):
    mask = np.zeros((16, 32), dtype=np.uint8)  # wide: its centre square is columns 8..23
    mask[:8, 8:16] = 255  # top-left quarter of the centre square
    Image.fromarray(mask, "L").save(tmp_path / "m.png")
    loaded = load_mask(tmp_path / "m.png", 8)[0, 0]
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[:4, :4] = True
    assert torch.equal(loaded, expected)
    Image.fromarray(np.stack([mask] * 3, -1)).save(tmp_path / "rgb.png")  # gray stored as RGB is fine
    assert torch.equal(load_mask(tmp_path / "rgb.png", 8)[0, 0], expected)
