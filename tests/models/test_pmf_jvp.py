"""Forward-mode derivatives through the pMF network: attention JVP rule and the model's du/dt vs finite differences."""

import copy

import pytest
import torch
import torch.autograd.forward_ad as fwAD

from jit_diffusion.models.pmf import create_pmf_model
from jit_diffusion.models.pmf_attention import SDPAWithJVP, attention, attention_jvp, math_attention


def qkv(dtype=torch.float64, requires_grad=False):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(2, 2, 7, 8, generator=gen, dtype=dtype).requires_grad_(requires_grad) for _ in range(3)]


def test_attention_jvp_rule_matches_finite_differences():
    (q, k, v), (dq, dk, dv) = qkv(), qkv()
    eps = 1e-6
    fd = (math_attention(q + eps * dq, k + eps * dk, v + eps * dv)
          - math_attention(q - eps * dq, k - eps * dk, v - eps * dv)) / (2 * eps)  # fmt: skip
    rule = attention_jvp(q, k, v, math_attention(q, k, v), dq, dk, dv)
    assert (rule - fd).abs().max().item() < 1e-8


@pytest.mark.parametrize("mode", ["function", "math"])
def test_attention_under_forward_ad_gives_value_tangent_and_gradients(mode):
    q, k, v = qkv(requires_grad=True)
    dq, dk, dv = qkv()
    with fwAD.dual_level():
        out = attention(*(fwAD.make_dual(x, d) for x, d in zip((q, k, v), (dq, dk, dv))), jvp_mode=mode)
        value, tangent = fwAD.unpack_dual(out)
    reference = math_attention(q, k, v)
    assert torch.allclose(value, reference, atol=1e-12)
    assert torch.allclose(tangent, attention_jvp(q, k, v, reference, dq, dk, dv), atol=1e-12)
    grads = torch.autograd.grad(value.square().sum(), (q, k, v))
    expected = torch.autograd.grad(reference.square().sum(), (q, k, v))
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(grads, expected))


def test_sdpa_with_jvp_gradient_only_for_inputs_that_need_it():
    q, k, v = qkv(requires_grad=False)
    q.requires_grad_(True)
    (gq,) = torch.autograd.grad(SDPAWithJVP.apply(q, k, v).sum(), (q,))
    (expected,) = torch.autograd.grad(math_attention(q, k, v).sum(), (q,))
    assert torch.allclose(gq, expected, atol=1e-10)
    with pytest.raises(ValueError, match="jvp_mode"):
        with fwAD.dual_level():
            attention(fwAD.make_dual(q.detach(), q.detach()), k, v, jvp_mode="flash")


@pytest.fixture(scope="module")
def model64():
    torch.manual_seed(0)
    model = create_pmf_model("pMF-Ti/4", num_classes=3, input_size=16).double()
    with torch.no_grad():  # non-zero gates and outputs so that every path has a derivative
        for name, p in model.named_parameters():
            if name.endswith("_scale") or "final_layer.linear" in name:
                p.normal_(0, 0.3)
    return model


def inputs64(B=2):
    gen = torch.Generator().manual_seed(1)
    f64 = dict(dtype=torch.float64)
    z, dz = torch.randn(B, 3, 16, 16, generator=gen, **f64), torch.randn(B, 3, 16, 16, generator=gen, **f64)
    t, h = torch.tensor([0.7, 0.4], **f64), torch.tensor([0.3, 0.0], **f64)
    cond = (torch.tensor([2.0, 3.0], **f64), torch.tensor([0.1, 0.2], **f64), torch.tensor([0.9, 0.8], **f64))
    return z, dz, t, h, cond, torch.tensor([0, 3])


@pytest.mark.parametrize("mode", ["function", "math"])
def test_model_du_dt_matches_finite_differences_float64(model64, mode):
    z, dz, t, h, cond, y = inputs64()
    model64.set_jvp_mode(mode)
    u, v, du_dt = model64(z, t, h, *cond, y, jvp_tangent=dz)
    eps = 1e-6
    with torch.no_grad():  # tangent (dz, dt, dr) = (v, 1, 0): z, t and h = t - r all move
        fd = (model64(z + eps * dz, t + eps, h + eps, *cond, y)[0]
              - model64(z - eps * dz, t - eps, h - eps, *cond, y)[0]) / (2 * eps)  # fmt: skip
        u_ref, v_ref = model64(z, t, h, *cond, y)
    assert (du_dt - fd).abs().max().item() < 1e-6 * fd.abs().max().item()
    assert torch.allclose(u, u_ref, atol=1e-12) and torch.allclose(v, v_ref, atol=1e-12)
    assert not du_dt.requires_grad and u.requires_grad


def test_gradients_through_u_are_those_of_the_plain_forward(model64):
    z, dz, t, h, cond, y = inputs64()
    model64.set_jvp_mode("function")
    u, v, _ = model64(z, t, h, *cond, y, jvp_tangent=dz)
    grads = torch.autograd.grad((u.square().mean() + v.mean()), list(model64.parameters()))
    u_ref, v_ref = model64(z, t, h, *cond, y)
    expected = torch.autograd.grad((u_ref.square().mean() + v_ref.mean()), list(model64.parameters()))
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(grads, expected))


def test_set_jvp_mode_rejects_unknown(model64):
    with pytest.raises(ValueError, match="jvp mode"):
        model64.set_jvp_mode("flash")


@pytest.mark.parametrize("rows", [[True, False, True, False], [False, False, False, False], [True] * 4])
def test_jvp_on_rows_equals_the_full_jvp_where_asked_and_zero_elsewhere(model64, rows):
    z, dz, t, h, cond, y = inputs64()
    z, dz, t, h, y = torch.cat([z, z.flip(0)]), torch.cat([dz, -dz]), t.repeat(2), h.repeat(2), y.repeat(2)
    cond = tuple(c.repeat(2) for c in cond)
    model64.set_jvp_mode("function")
    u, v, du_dt = model64(z, t, h, *cond, y, jvp_tangent=dz)
    rows = torch.tensor(rows)
    u_r, v_r, du_r = model64(z, t, h, *cond, y, jvp_tangent=dz, jvp_rows=rows)
    assert torch.allclose(u_r, u, atol=1e-12) and torch.allclose(v_r, v, atol=1e-12)
    assert torch.allclose(du_r[rows], du_dt[rows], atol=1e-12) and (du_r[~rows] == 0).all()
    grads = torch.autograd.grad(u_r.square().mean() + v_r.mean(), list(model64.parameters()))
    expected = torch.autograd.grad(u.square().mean() + v.mean(), list(model64.parameters()))
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(grads, expected))


def test_separate_jvp_pass_gives_the_same_values_and_gradients(model64):
    """jvp_transform "separate" (FSDP2 per block: du/dt from a pass without gradient, then the plain forward)
    equals the dual forward: u, v, du/dt and the gradients; its du/dt carries no graph."""
    z, dz, t, h, cond, y = inputs64()
    model64.set_jvp_mode("function")
    u, v, du_dt = model64(z, t, h, *cond, y, jvp_tangent=dz)
    expected = torch.autograd.grad(u.square().mean() + v.mean(), list(model64.parameters()))
    model64.jvp_transform = "separate"
    try:
        u_s, v_s, du_s = model64(z, t, h, *cond, y, jvp_tangent=dz)
    finally:
        model64.jvp_transform = "forward_ad"
    assert torch.allclose(u_s, u, atol=1e-12) and torch.allclose(v_s, v, atol=1e-12)
    assert torch.allclose(du_s, du_dt, atol=1e-12) and du_s.grad_fn is None and not du_s.requires_grad
    grads = torch.autograd.grad(u_s.square().mean() + v_s.mean(), list(model64.parameters()))
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(grads, expected))


@pytest.mark.parametrize("transform, tolerance", [("difference", 1e-3), ("one-sided", 1e-2)])
def test_differences_are_close_to_forward_ad_in_float32_and_only_on_rows(model64, transform, tolerance):
    """jvp_transform "difference" or "one-sided": u and v (and their gradients) of the plain forward; du/dt
    by central (one-sided) differences in fp32 within 1e-3 (1e-2) of the forward-mode one where asked, 0
    elsewhere, without a graph."""
    model = copy.deepcopy(model64).float()
    z, dz, t, h, cond, y = inputs64()
    z, dz, t, h, cond = z.float(), dz.float(), t.float(), h.float(), tuple(c.float() for c in cond)
    model.set_jvp_mode("function")
    u, v, du_dt = model(z, t, h, *cond, y, jvp_tangent=dz)
    expected = torch.autograd.grad(u.square().mean() + v.mean(), list(model.parameters()))
    model.jvp_transform = transform
    u_d, v_d, du_d = model(z, t, h, *cond, y, jvp_tangent=dz)
    assert torch.equal(u_d, model(z, t, h, *cond, y)[0]) and torch.allclose(u_d, u, atol=1e-5)
    error = ((du_d - du_dt).norm() / du_dt.norm()).item()
    assert error < tolerance and not du_d.requires_grad
    grads = torch.autograd.grad(u_d.square().mean() + v_d.mean(), list(model.parameters()))
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(grads, expected))
    rows = torch.tensor([False, True])
    du_rows = model(z, t, h, *cond, y, jvp_tangent=dz, jvp_rows=rows)[2]
    assert (du_rows[0] == 0).all() and (du_rows[1] - du_dt[1]).norm() < tolerance * du_dt[1].norm()
    print(f"{transform}: relative error {error:.1e}")


def test_one_sided_differences_under_autocast_fall_back_to_central(model64):
    """Under autocast the loss forward's u is no fp32 base point: one-sided then takes central differences."""
    model = copy.deepcopy(model64).float()
    z, dz, t, h, cond, y = inputs64()
    z, dz, t, h, cond = z.float(), dz.float(), t.float(), h.float(), tuple(c.float() for c in cond)
    model.jvp_transform = "difference"
    with torch.no_grad():
        central = model.difference_du_dt(z, t, h, *cond, y, dz)
    model.jvp_transform = "one-sided"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not model.runs_in_fp32(z)
        du_d = model(z, t, h, *cond, y, jvp_tangent=dz)[2]
    assert torch.equal(du_d, central)
