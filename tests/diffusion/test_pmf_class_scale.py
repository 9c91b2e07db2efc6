"""pMF's class scale: each class embedding moved away from the classes' mean, m + S (e - m), at sampling."""

from pathlib import Path

import pytest
import torch

from jit_diffusion.diffusion.pmf_sampling import sample_pmf
from jit_diffusion.formats.pmf_official import load_official_model

OFFICIAL = Path(__file__).parents[1] / "fixtures" / "pmf" / "pmf_tiny_official.pt"


@pytest.fixture(scope="module")
def model():
    return load_official_model(OFFICIAL)


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


def test_one_evaluation_per_step_and_bad_scales(model):
    rows = []
    handle = model.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    try:
        sample_pmf(model, torch.tensor([0, 1, 2]), torch.randn(3, 3, 16, 16), steps=2, class_scale=1.5)
    finally:
        handle.remove()
    assert rows == [3, 3]  # no extra batch
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
    from jit_diffusion.diffusion.sampling import image_noise
    from jit_diffusion.models.config import preset_config

    images = generate(model, [0, 3], image_size=16, family="pmf", steps=1, cfg=2.0, class_scale=1.5)
    expected = sample_pmf(model, torch.tensor([0, 3]), image_noise(range(2), (3, 16, 16), 0), 1, 2.0, class_scale=1.5)
    assert (images == to_uint8(expected)).all()
    jit = lively_jit(preset_config("JiT-Ti/4", input_size=8, num_classes=3))
    generate(jit, [0], image_size=8, steps=2, method="euler", class_scale=1.0)  # 1: the plain sampler, any family
    with pytest.raises(ValueError, match="a jit model has no class scale"):
        generate(jit, [0], image_size=8, steps=2, method="euler", class_scale=1.5)
