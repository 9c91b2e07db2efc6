"""Inpainting with RePaint jumps (``resample`` K): the path's backward transition in law, K = 1 is the plain
inpainting bit for bit, the known pixels stay exact, K changes the hole, and the fresh noise belongs to the
image index, not the batch."""

import numpy as np
import pytest
import torch
from conftest import lively_jit

from jit_diffusion.core.images import to_uint8
from jit_diffusion.diffusion.sampling import METHODS, image_noise
from jit_diffusion.editing.inputs import box_mask, to_unit
from jit_diffusion.editing.operations import ODESettings, check_resample, inpaint, jump_back, jump_noise
from jit_diffusion.models.config import JiTConfig

CONFIG = JiTConfig(input_size=8, patch_size=4, hidden_size=32, depth=2, num_heads=2, num_classes=4,
                   bottleneck_dim=8, in_context_len=2, in_context_start=1)  # fmt: skip
SEED, STEPS = 7, 5


@pytest.fixture(scope="module")
def setup():
    """(model, fp32 inputs (4, 3, 8, 8) in [-1, 1], uint8 inputs (N, H, W, 3), labels, noise of SEED)."""
    model = lively_jit(CONFIG).eval()
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (4, 3, 8, 8), dtype=np.uint8))
    return model, to_unit(images), images.permute(0, 2, 3, 1).numpy(), torch.tensor([0, 1, 2, 3]), \
        image_noise(range(4), (3, 8, 8), SEED)  # fmt: skip


@pytest.mark.parametrize("s, t, sigma", [(0.8, 0.3, 1.0), (1.0, 0.5, 2.0), (0.4, 0.0, 1.0), (0.9, 0.85, 0.5)])
def test_jump_back_gives_the_path_marginal(s, t, sigma):
    """z_s = s x + (1 - s) sigma e re-noised to t has mean t x and standard deviation (1 - t) sigma."""
    n = 200_000
    gen = torch.Generator().manual_seed(0)
    x = torch.tensor([0.7, -0.4]).repeat(n, 1)
    z_s = s * x + (1 - s) * sigma * torch.randn(n, 2, generator=gen)
    z_t = jump_back(z_s, s, t, torch.randn(n, 2, generator=gen), sigma).double()
    assert z_t.mean(0).tolist() == pytest.approx((t * x[0]).tolist(), abs=0.01 * sigma)
    assert z_t.std(0).tolist() == pytest.approx([(1 - t) * sigma] * 2, rel=0.01, abs=1e-6)


def test_jump_noise_is_the_image_index_s_whatever_the_batch():
    every = jump_noise(SEED, torch.arange(4), 3, 1, (3, 8, 8))
    assert torch.equal(jump_noise(SEED, torch.tensor([2, 3]), 3, 1, (3, 8, 8)), every[2:])
    assert every.shape == (4, 3, 8, 8) and abs(float(every.std()) - 1.0) < 0.1
    for other in (jump_noise(SEED + 1, torch.arange(4), 3, 1, (3, 8, 8)), jump_noise(SEED, torch.arange(4), 4, 1,
                  (3, 8, 8)), jump_noise(SEED, torch.arange(4), 3, 2, (3, 8, 8))):  # fmt: skip
        assert not torch.allclose(other, every)


@pytest.mark.parametrize("method", METHODS)
def test_resample_one_is_plain_inpainting_and_known_pixels_stay_exact(setup, method):
    model, x, original, labels, noise = setup
    settings = ODESettings(method=method, steps=STEPS, cfg=2.0)
    box = box_mask("1,2,6,7", 8)
    keep = ~box[0, 0].numpy()
    plain = inpaint(model, x, box, labels, noise, settings)
    assert torch.equal(inpaint(model, x, box, labels, noise, settings, resample=1, seed=SEED), plain)
    outs = []
    for k in (2, 3):
        out = inpaint(model, x, box, labels, noise, settings, resample=k, seed=SEED)
        images = to_uint8(out)
        assert np.array_equal(images[:, keep], original[:, keep])
        assert (out - plain)[..., ~torch.from_numpy(keep)].abs().max() > 1e-3  # the jumps change the hole
        outs.append(out)
    assert (outs[0] - outs[1]).abs().max() > 1e-3  # and K matters
    black = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    assert np.array_equal(to_uint8(inpaint(model, x, black, labels, noise, settings, resample=3)), original)


def test_resample_with_strength_and_across_batches(setup):
    model, x, original, labels, noise = setup
    settings = ODESettings(method="heun", steps=STEPS, cfg=2.0)
    box = box_mask("0,0,4,8", 8)
    whole = inpaint(model, x, box, labels, noise, settings, strength=0.7, resample=2, seed=SEED)
    parts = [inpaint(model, x[lo:hi], box, labels[lo:hi], noise[lo:hi], settings, strength=0.7, resample=2,
                     seed=SEED, indices=range(lo, hi)) for lo, hi in ((0, 1), (1, 4))]  # fmt: skip
    torch.testing.assert_close(torch.cat(parts), whole, atol=1e-5, rtol=0)
    shifted = inpaint(model, x[1:], box, labels[1:], noise[1:], settings, strength=0.7, resample=2, seed=SEED)
    assert (shifted - whole[1:]).abs().max() > 1e-3  # indices 0.. instead of 1..: other fresh noise
    assert np.array_equal(to_uint8(whole)[:, :, 4:], original[:, :, 4:])


def test_bad_resample_is_a_one_line_error():
    assert check_resample(3) == 3
    for bad in (0, -2, 1.5):
        with pytest.raises(ValueError, match="--resample must be an integer >= 1"):
            check_resample(bad)
