"""The pMF perceptual terms (LPIPS, ConvNeXt) from local weight files: the distances, the frozen feature
networks, the t < perceptual_max_t rule, and bad files as one-line errors before any step. The weight files
are random tensors of the right shapes, written here with torchvision's constructors."""

import json

import pytest
import torch
from conftest import make_image_folder
from safetensors.torch import save_file

from jit_diffusion import cli
from jit_diffusion.diffusion.meanflow import PMFObjective
from jit_diffusion.models.pmf import create_pmf_model
from jit_diffusion.train.perceptual import LPIPS, LPIPS_WIDTHS, ConvNeXtDistance, read_weights

SHAPE = (3, 32, 32)  # ConvNeXt's smallest input (total stride 32); LPIPS needs 16


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """torchvision's vgg16 features (a .pth), the LPIPS calibration layers in the lpips package's names (a
    .pth), and a convnext_tiny state dict (fp16 .safetensors)."""
    from torchvision.models import convnext_tiny
    from torchvision.models.vgg import cfgs, make_layers

    folder = tmp_path_factory.mktemp("perceptual")
    torch.manual_seed(0)
    vgg = {f"features.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()}
    torch.save(vgg, folder / "vgg16.pth")
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(LPIPS_WIDTHS)}
    torch.save(lin, folder / "lpips_vgg.pth")
    save_file({k: v.half().contiguous() for k, v in convnext_tiny().state_dict().items()},
              str(folder / "convnext.safetensors"))  # fmt: skip
    return {"lpips": f"{folder / 'vgg16.pth'},{folder / 'lpips_vgg.pth'}",
            "convnext": str(folder / "convnext.safetensors")}  # fmt: skip


@pytest.fixture(scope="module")
def terms(weight_files):
    lpips = LPIPS(read_weights(weight_files["lpips"], "--lpips-weights"))
    convnext = ConvNeXtDistance(read_weights(weight_files["convnext"], "--convnext-weights"), size=None)
    return lpips, convnext


def test_distances_are_zero_for_identical_images_and_positive_otherwise(terms):
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, *SHAPE, generator=gen) * 2 - 1
    other = (x + 0.3 * torch.randn(x.shape, generator=gen)).clamp(-1, 1)
    for term in terms:
        assert torch.equal(term(x, x), torch.zeros(3))
        distance = term(other, x)
        assert distance.shape == (3,) and (distance > 0).all(), type(term).__name__
        # per image: the distance of one image does not depend on the others in the batch
        assert torch.allclose(term(other[:1], x[:1]), distance[:1], rtol=1e-5, atol=1e-9)


def _losses(model, objective, seed=2):
    x = torch.rand(4, *SHAPE, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    draws = objective.counter_draws(3, 1, torch.arange(4), 4, SHAPE)
    return objective.per_sample_losses(model, x, torch.tensor([0, 1, 2, 3]), draws), draws


def test_gradients_reach_the_network_only_and_only_where_t_is_below_the_limit(terms):
    torch.manual_seed(0)
    model = create_pmf_model("pMF-Ti/4", num_classes=4, input_size=32)
    plain = PMFObjective(class_dropout_prob=0.0)
    base, draws = _losses(model, plain)
    # every t >= the limit: the loss is exactly the loss without the terms, and the terms are zero
    none_near = PMFObjective(class_dropout_prob=0.0, perceptual=[(0.4, terms[0]), (0.1, terms[1])],
                             perceptual_max_t=float(draws.t.min()))  # fmt: skip
    same, _ = _losses(model, none_near)
    assert torch.equal(same["loss"], base["loss"])
    assert torch.equal(same["perceptual0"], torch.zeros(4)) and torch.equal(same["perceptual1"], torch.zeros(4))
    # half of them below: the terms are positive exactly there
    limit = float(draws.t.median())
    objective = PMFObjective(class_dropout_prob=0.0, perceptual=[(0.4, terms[0]), (0.1, terms[1])],
                             perceptual_max_t=limit)  # fmt: skip
    with_terms, _ = _losses(model, objective)
    near = draws.t < limit
    assert 0 < near.sum() < 4
    for name in ("perceptual0", "perceptual1"):
        assert (with_terms[name][near] > 0).all() and (with_terms[name][~near] == 0).all()
    model.zero_grad()
    base["loss"].mean().backward()
    plain_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with_terms["loss"].mean().backward()
    assert all(p.grad is None for term in terms for p in term.parameters())
    assert all(not p.requires_grad for term in terms for p in term.parameters())
    moved = [not torch.allclose(p.grad, g) for p, g in zip(model.parameters(), plain_grads)]
    assert any(moved)  # the terms add gradient to the network


@pytest.mark.parametrize("which", ["missing", "wrong", "jit"])
def test_bad_weight_files_are_one_line_errors_before_any_step(tmp_path, capsys, weight_files, which):
    data = make_image_folder(tmp_path / "data", num_classes=2, per_class=4)
    flags = {"missing": ["--lpips-weights", str(tmp_path / "nope.pth")],
             "wrong": ["--lpips-weights", weight_files["convnext"]],
             "jit": ["--convnext-weights", weight_files["convnext"]]}[which]  # fmt: skip
    model = "JiT-Ti/4" if which == "jit" else "pMF-Ti/4"
    code = cli.main(["train", "--model", model, "--img-size", "16", "--batch-size", "8", "--data", str(data),
                     "--steps", "1", "--out", str(tmp_path / "run"), *flags])  # fmt: skip
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    needle = {"missing": "--lpips-weights", "wrong": "--lpips-weights: the file has no features.0.weight",
              "jit": "are for pMF models"}[which]  # fmt: skip
    assert code == 2 and len(err) == 1 and needle in err[0] and flags[0] in err[0], err
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_a_run_with_both_terms_trains_and_records_them(tmp_path, weight_files):
    """One step of pMF-Ti/4 at 32 px with both terms (ConvNeXt at its 224 px input): finite loss, config.json
    records the files and weights, and the checkpoint holds no feature-network weights."""
    data = make_image_folder(tmp_path / "data", num_classes=2, per_class=4, size=32)
    run = tmp_path / "run"
    code = cli.main(["train", "--model", "pMF-Ti/4", "--img-size", "32", "--batch-size", "4", "--data", str(data),
                     "--steps", "1", "--sample-every", "0", "--out", str(run), "--lpips-weights", weight_files["lpips"],
                     "--convnext-weights", weight_files["convnext"], "--convnext-loss-weight", "0.2"])  # fmt: skip
    assert code == 0
    saved = json.loads((run / "config.json").read_text())
    assert (saved["lpips_weights"], saved["convnext_weights"]) == (weight_files["lpips"], weight_files["convnext"])
    assert (saved["lpips_loss_weight"], saved["convnext_loss_weight"], saved["perceptual_max_t"]) == (0.4, 0.2, 0.8)
    ckpt = torch.load(next((run / "checkpoints").glob("step_*.pt")), weights_only=True)
    assert not any("features" in k or "lin." in k for k in ckpt["model"])
