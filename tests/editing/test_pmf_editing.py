"""img2img and inpainting on a pMF model: its few-step sampler started at pMF time s = strength. Strength 1 is
plain sampling bit for bit, strength 0 the input with no evaluation, the first step starts from the input
noised to t0, and the known pixels of inpainting are exact."""

from pathlib import Path

import numpy as np
import pytest
import torch

from jit_diffusion.core.images import to_uint8
from jit_diffusion.diffusion.generate import generate
from jit_diffusion.diffusion.pmf_sampling import pmf_times, sample_pmf
from jit_diffusion.diffusion.sampling import image_noise
from jit_diffusion.editing.inputs import box_mask, to_unit
from jit_diffusion.editing.operations import ODESettings, img2img, inpaint
from jit_diffusion.formats.pmf_official import load_official_model

OFFICIAL = Path(__file__).parents[1] / "fixtures" / "pmf" / "pmf_tiny_official.pt"
SEED, OMEGA, INTERVAL = 3, 2.5, (0.2, 0.9)


@pytest.fixture(scope="module")
def setup():
    """(model, fp32 inputs (4, 3, 16, 16), uint8 inputs (N, H, W, 3), labels, noise of SEED)."""
    model = load_official_model(OFFICIAL)
    images = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (4, 3, 16, 16), dtype=np.uint8))
    return model, to_unit(images), images.permute(0, 2, 3, 1).numpy(), torch.tensor([0, 1, 2, 3]), \
        image_noise(range(4), (3, 16, 16), SEED)  # fmt: skip


def settings(steps: int, noise_scale: float = 1.0) -> ODESettings:
    return ODESettings(method="pmf", steps=steps, cfg=OMEGA, cfg_interval=INTERVAL, noise_scale=noise_scale)


def counted(model, run):
    """(result of run(), batch rows of each network evaluation)."""
    rows = []
    handle = model.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    try:
        return run(), rows
    finally:
        handle.remove()


@pytest.mark.parametrize("steps", [1, 2])
def test_strength_one_is_sampling_and_zero_the_input(setup, steps):
    model, x, original, labels, noise = setup
    out, rows = counted(model, lambda: img2img(model, x, labels, noise, settings(steps), strength=1.0))
    assert torch.equal(out, sample_pmf(model, labels, noise, steps, OMEGA, INTERVAL))
    assert rows == [4] * steps  # one evaluation per step
    plain = generate(model, labels, image_size=16, seed=SEED, family="pmf", steps=steps, cfg=OMEGA,
                     cfg_interval=INTERVAL)  # fmt: skip
    assert np.array_equal(to_uint8(out), plain)
    same, rows = counted(model, lambda: img2img(model, x, labels, noise, settings(steps), strength=0.0))
    assert torch.equal(same, x) and rows == []


def test_img2img_starts_from_the_input_noised_to_one_minus_strength(setup):
    """One step from our t0 = 0.4 (pMF s = 0.6): z = 0.4 x + 0.6 sigma e, then z - 0.6 u(z, 0.6, h = 0.6)."""
    model, x, _, labels, noise = setup
    out = img2img(model, x, labels, noise, settings(1, noise_scale=2.0), strength=0.6)
    z = 0.4 * x + 0.6 * (2.0 * noise)
    rows = lambda v: torch.full((4,), float(v))  # noqa: E731
    u, _ = model(z, rows(0.6), rows(0.6), rows(OMEGA), rows(0.1), rows(0.8), labels, heads="u")
    torch.testing.assert_close(out, z - 0.6 * u, atol=1e-5, rtol=0)
    assert pmf_times(2, 0.6).tolist() == pytest.approx([0.6, 0.3, 0.0])
    assert (out - img2img(model, x, labels, noise, settings(1), strength=0.9)).abs().max() > 1e-3


@pytest.mark.parametrize("steps", [1, 2])
def test_inpainting_keeps_the_known_pixels_exactly(setup, steps):
    model, x, original, labels, noise = setup
    black = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    assert np.array_equal(to_uint8(inpaint(model, x, black, labels, noise, settings(steps))), original)
    white = torch.ones(1, 1, 16, 16, dtype=torch.bool)
    assert torch.equal(inpaint(model, x, white, labels, noise, settings(steps)),
                       sample_pmf(model, labels, noise, steps, OMEGA, INTERVAL))  # fmt: skip
    box = box_mask("3,2,12,10", 16)
    keep = ~box[0, 0].numpy()
    for strength in (1.0, 0.6):
        out, rows = counted(model, lambda s=strength: inpaint(model, x, box, labels, noise, settings(steps),
                                                                  strength=s))
        images = to_uint8(out)
        assert np.array_equal(images[:, keep], original[:, keep])
        assert not np.array_equal(images[:, ~keep], original[:, ~keep])
        assert rows == [4] * steps


def test_inpainting_conditions_the_hole_on_the_known_pixels(setup):
    """With two steps the second evaluation sees the known pixels noised to s = 0.5 (the first sees pure noise
    at strength 1)."""
    model, x, _, labels, noise = setup
    box = box_mask("0,0,8,16", 16)
    other = x.clone()
    other[..., 8:] = -other[..., 8:]
    a = inpaint(model, x, box, labels, noise, settings(2))
    b = inpaint(model, other, box, labels, noise, settings(2))
    assert (a[..., :8] - b[..., :8]).abs().max() > 1e-3
    one_a = inpaint(model, x, box, labels, noise, settings(1))
    assert torch.equal(one_a[..., :8], inpaint(model, other, box, labels, noise, settings(1))[..., :8])


def test_resample_and_bad_starts_are_one_line_errors(setup):
    model, x, _, labels, noise = setup
    with pytest.raises(ValueError, match="--resample applies to JiT models"):
        inpaint(model, x, box_mask("0,0,8,16", 16), labels, noise, settings(1), resample=2)
    with pytest.raises(ValueError, match="pMF start time must be in"):
        pmf_times(1, 1.5)
    with pytest.raises(ValueError, match="need the image"):
        sample_pmf(model, labels, noise, 1, OMEGA, start=0.5)
