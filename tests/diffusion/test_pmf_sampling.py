"""pMF sampling in our time: goldens of the public sampler, the interval mapping, per-image noise, the class
scale."""

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


@pytest.mark.parametrize("class_scale", [1.0, 1.5])
def test_one_evaluation_per_step_of_batch_rows(model, class_scale):
    calls = []
    handle = model.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        sample_pmf(model, torch.tensor([0, 1, 2]), torch.randn(3, 3, 16, 16), steps=3, omega=3.0,
                   class_scale=class_scale)  # fmt: skip
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


# --- the class scale: each class embedding moved away from the classes' mean, m + S (e - m) ---


def test_the_condition_is_the_mean_plus_the_scaled_offset(model):
    n = model.num_classes
    y = torch.tensor([0, 2, n])  # two classes and the null label
    table = model.y_embedder.embedding_table.weight.detach()
    m = table[:n].mean(dim=0)
    torch.testing.assert_close(model.class_condition(y, 1.0), table[y])
    scaled = model.class_condition(y, 2.5).detach()
    torch.testing.assert_close(scaled[:2], m + 2.5 * (table[y[:2]] - m))
    torch.testing.assert_close(scaled[2], table[n])  # the null label is left as it is


def test_scale_one_is_the_plain_sampler_and_zero_the_mean_class(model):
    labels, noise = torch.tensor([0, 3]), torch.randn(1, 3, 16, 16).expand(2, -1, -1, -1)
    plain = sample_pmf(model, labels, noise, steps=2, omega=2.0)
    torch.testing.assert_close(sample_pmf(model, labels, noise, steps=2, omega=2.0, class_scale=1.0), plain)
    assert not torch.allclose(plain[0], plain[1])  # two classes on the same noise differ
    mean_class = sample_pmf(model, labels, noise, steps=2, omega=2.0, class_scale=0.0)
    torch.testing.assert_close(mean_class[0], mean_class[1])  # scale 0: every class is the classes' mean
    stronger = sample_pmf(model, labels, noise, steps=2, omega=2.0, class_scale=1.5)
    assert not torch.allclose(stronger, plain)


def test_bad_class_scales_are_refused(model):
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="--class-scale must be a number >= 0"):
            sample_pmf(model, torch.tensor([0]), torch.randn(1, 3, 16, 16), class_scale=bad)


def test_training_forward_with_a_jvp_refuses_a_class_scale(model):
    z, ones = torch.randn(2, 3, 16, 16), torch.ones(2)
    with pytest.raises(ValueError, match="class_scale is a sampling option"):
        model(z, ones, ones, ones, 0 * ones, ones, torch.tensor([0, 1]), jvp_tangent=torch.randn_like(z),
              class_scale=1.5)  # fmt: skip


def test_generate_takes_the_scale_for_pmf_and_refuses_it_for_jit(model):
    from conftest import lively_jit

    from jit_diffusion.core.images import to_uint8
    from jit_diffusion.diffusion.generate import generate
    from jit_diffusion.models.config import preset_config

    images = generate(model, [0, 3], image_size=16, family="pmf", steps=1, cfg=2.0, class_scale=1.5)
    expected = sample_pmf(model, torch.tensor([0, 3]), image_noise(range(2), (3, 16, 16), 0), 1, 2.0, class_scale=1.5)
    assert (images == to_uint8(expected)).all()
    jit = lively_jit(preset_config("JiT-Ti/4", input_size=8, num_classes=3))
    generate(jit, [0], image_size=8, steps=2, method="euler", class_scale=1.0)  # 1: the plain sampler, any family
    with pytest.raises(ValueError, match="a jit model has no class scale"):
        generate(jit, [0], image_size=8, steps=2, method="euler", class_scale=1.5)
