"""pMF sampling in our time: goldens of the public sampler, the interval mapping, per-image noise."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from jit_diffusion.diffusion.pmf_sampling import network_interval, our_interval, pmf_times, sample_pmf
from jit_diffusion.diffusion.sampling import image_noise
from jit_diffusion.formats.pmf_official import load_official_model

FIXTURES = Path(__file__).parents[1] / "fixtures" / "pmf"


@pytest.fixture(scope="module")
def model():
    return load_official_model(FIXTURES / "pmf_tiny_official.pt")


@pytest.fixture(scope="module")
def golden():
    return load_file(str(FIXTURES / "pmf_tiny_golden.safetensors"))


@pytest.mark.parametrize("key, steps, omega, pmf_interval", [
    ("sample1.out", 1, 4.0, (0.1, 0.7)), ("sample2.out", 2, 2.5, (0.2, 0.8)),
])  # fmt: skip
def test_samples_match_golden(model, golden, key, steps, omega, pmf_interval):
    interval = our_interval(*pmf_interval)  # the user speaks our time
    out = sample_pmf(model, golden["sample.labels"], golden["sample.z0"], steps, omega, interval)
    assert (out - golden[key]).abs().max().item() <= 1e-5


def test_interval_maps_to_network_time():
    assert network_interval((0.3, 0.9)) == pytest.approx((0.1, 0.7))
    assert our_interval(0.1, 0.7) == pytest.approx((0.3, 0.9))
    with pytest.raises(ValueError, match="guidance interval"):
        network_interval((0.9, 0.3))


def test_one_evaluation_per_step_of_batch_rows(model):
    calls = []
    handle = model.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        sample_pmf(model, torch.tensor([0, 1, 2]), torch.randn(3, 3, 16, 16), steps=3, omega=3.0)
    finally:
        handle.remove()
    assert calls == [3, 3, 3]  # no doubled batch
    assert pmf_times(2).tolist() == [1.0, 0.5, 0.0]


def test_image_noise_makes_images_independent_of_batching(model):
    labels = torch.tensor([0, 1, 2, 3])
    whole = sample_pmf(model, labels, image_noise(range(4), (3, 16, 16), seed=7), steps=1, omega=2.0)
    parts = [sample_pmf(model, labels[i:i + 2], image_noise(range(i, i + 2), (3, 16, 16), seed=7), 1, 2.0)
             for i in (0, 2)]  # fmt: skip
    assert torch.allclose(whole, torch.cat(parts), atol=1e-6)


def test_noise_scale_and_bad_omega(model, golden):
    z0 = golden["sample.z0"]
    a = sample_pmf(model, golden["sample.labels"], z0, noise_scale=2.0)
    b = sample_pmf(model, golden["sample.labels"], 2 * z0)
    assert torch.allclose(a, b)
    with pytest.raises(ValueError, match="omega"):
        sample_pmf(model, golden["sample.labels"], z0, omega=0.5)
