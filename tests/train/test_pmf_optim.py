"""pMF recipe: the EDM half-life EMA rule and Muon + Adam with optax's update scales."""

import math

import pytest
import torch

from jit_diffusion.diffusion.ema import EMA
from jit_diffusion.models.pmf import create_pmf_model
from jit_diffusion.train.pmf_optim import build_pmf_optimizer, edm_ema_beta, edm_ema_decays


def test_edm_ema_beta_values():
    assert edm_ema_beta(0, 1024, 500) == 0.0  # the first update copies the weights
    assert edm_ema_beta(100, 1024, 500) == pytest.approx(0.5 ** (1024 / 5120))  # ramp: 5% of the images seen
    late = edm_ema_beta(10**6, 1024, 500)
    assert late == pytest.approx(0.5 ** (1024 / 500_000))
    assert late ** (500_000 / 1024) == pytest.approx(0.5)  # half-life of 500 kimg
    assert edm_ema_decays(10**6, 1024, {"ema500": 500, "ema2000": 2000})["ema2000"] == pytest.approx(
        0.5 ** (1024 / 2_000_000)
    )


def test_edm_decays_drive_the_project_ema():
    model = torch.nn.Linear(2, 1, bias=False)
    ema = EMA(model, decays=(0.5,), names=("ema1",))
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.decays.update(edm_ema_decays(0, 8, {"ema1": 1.0}))
    ema.update(model)
    assert torch.equal(ema.weights("ema1")["weight"], model.weight.detach())


def newton_schulz(x: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """optax's orthogonalisation in fp64: x / (|x|_F + eps), then the quintic iteration on the wide side."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = x.double()
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / (x.norm() + 1e-8)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return create_pmf_model("pMF-Ti/4", num_classes=3, input_size=16)


def test_partition_matrices_to_muon_the_rest_to_adam(model):
    optimizer = build_pmf_optimizer(model)
    muon = {id(p) for g in optimizer.muon.param_groups for p in g["params"]}
    adam = {id(p) for g in optimizer.adam.param_groups for p in g["params"]}
    assert not muon & adam and len(muon | adam) == len(list(model.parameters()))
    assert all((id(p) in muon) == (p.ndim == 2) for p in model.parameters())
    blocks = build_pmf_optimizer(model, muon_scope="blocks")
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].startswith(("shared_blocks.", "u_heads.", "v_heads."))
               for g in blocks.muon.param_groups for p in g["params"])  # fmt: skip
    assert isinstance(optimizer.adam, torch.optim.NAdam)
    with pytest.raises(ValueError, match="muon scope"):
        build_pmf_optimizer(model, muon_scope="all")


def test_first_muon_step_has_optax_scale(model):
    lr = 1e-3
    optimizer = build_pmf_optimizer(model, lr=lr)
    params = {"w1": model.shared_blocks[0].mlp.w1.weight, "w2": model.shared_blocks[0].mlp.w2.weight,
              "table": model.y_embedder.embedding_table.weight}  # fmt: skip
    before = {k: p.detach().clone() for k, p in params.items()}
    gen = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)
    grads = {k: p.grad.clone() for k, p in params.items()}
    optimizer.step()
    for key, p in params.items():
        out_, in_ = p.shape
        # optax on the transposed (in, out) kernel: sqrt(max(1, out / in)); the table (rows, H): sqrt(max(1, H / rows))
        scale = math.sqrt(max(1, in_ / out_)) if key == "table" else math.sqrt(max(1, out_ / in_))
        expected = -lr * scale * newton_schulz(grads[key])  # the first step's direction is the gradient's
        delta = (p.detach() - before[key]).double()
        assert (delta - expected).norm() / expected.norm() < 0.03, key  # torch runs Newton-Schulz in bf16
    assert optimizer.param_groups[0]["lr"] == lr  # lr_scale applied only during the step


def test_state_dict_round_trip_and_zero_grad(model):
    optimizer = build_pmf_optimizer(model, adam="adamw")
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    state = optimizer.state_dict()
    fresh = build_pmf_optimizer(model, adam="adamw")
    fresh.load_state_dict(state)
    assert fresh.state_dict()["adam"]["state"].keys() == state["adam"]["state"].keys()
    optimizer.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(KeyError, match="Muon"):
        fresh.load_state_dict({"adam": state["adam"]})


def test_adam_part_is_optax_nesterov_adam():
    param = torch.nn.Parameter(torch.randn(5, 2, 2))  # 3-D: Adam side
    reference = param.detach().clone().double()
    optimizer = build_pmf_optimizer(torch.nn.ParameterList([param]), lr=0.1)
    m = v = torch.zeros_like(reference)
    b1, b2, gen = 0.9, 0.95, torch.Generator().manual_seed(1)
    for k in range(1, 6):
        grad = torch.randn(param.shape, generator=gen)
        param.grad = grad.clone()
        optimizer.step()
        g = grad.double()
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        m_hat = b1 * m / (1 - b1 ** (k + 1)) + (1 - b1) * g / (1 - b1**k)  # optax nesterov=True
        reference -= 0.1 * m_hat / ((v / (1 - b2**k)).sqrt() + 1e-8)
        assert torch.allclose(param.detach().double(), reference, atol=1e-6)


def test_newton_schulz_fp32_matches_torch_muon_and_runs_on_cpu_steps():
    """The CPU route computes torch.optim.Muon's orthogonalisation (bf16 there) in fp32; MuonWithAdam uses it
    for CPU parameters only during its step."""
    from torch.optim import _muon

    from jit_diffusion.train.pmf_optim import newton_schulz_fp32

    torch.manual_seed(0)
    for shape in ((48, 16), (16, 48)):
        g = torch.randn(shape)
        ours = newton_schulz_fp32(g, (3.4445, -4.7750, 2.0315), 5, 1e-7)
        theirs = _muon._zeropower_via_newtonschulz(g, (3.4445, -4.7750, 2.0315), 5, 1e-7).float()
        assert ours.dtype == torch.float32 and ours.shape == shape
        assert (ours - theirs).norm() / theirs.norm() < 0.02
        singular = torch.linalg.svdvals(ours)
        assert singular.min() > 0.5 and singular.max() < 1.5  # orthogonal up to the quintic's band
    assert _muon._zeropower_via_newtonschulz is not newton_schulz_fp32  # restored after any step
