"""The pMF objective: its draws (laws, batch rules, process split), the guided target, dropout, and the loss
against an independent straightforward implementation."""

import math

import pytest
import torch

from jit_diffusion.core import rng
from jit_diffusion.diffusion.meanflow import (
    PMF_STREAMS,
    MeanFlowDraws,
    PMFObjective,
    adaptive_weighted,
    cfg_scale,
    drop_classes,
    guided,
)
from jit_diffusion.models.pmf import create_pmf_model

SHAPE = (3, 16, 16)


def test_streams_are_new():
    ours = {v for k, v in vars(rng).items() if k.startswith("STREAM_")}
    assert not ours & set(PMF_STREAMS) and len(set(PMF_STREAMS)) == len(PMF_STREAMS)


@pytest.mark.parametrize("beta, mean", [(1.0, 7 / math.log(8)), (2.0, math.log(8) / (7 / 8))])
def test_omega_law_mean_is_analytic(beta, mean):
    # density ~ omega^-beta on [1, 8]: beta 1 -> E = c / ln(1 + c); beta 2 -> E = ln(1 + c) / (1 - 1 / (1 + c))
    uniform = rng.uniform(3, 0, 1, torch.arange(200_000))[:, 0]
    omega = cfg_scale(uniform, 7.0, beta)
    assert 1.0 <= omega.min() and omega.max() <= 8.0
    assert abs(omega.mean().item() - mean) < 0.02


def test_half_the_batch_has_r_equal_t_and_the_full_interval():
    draws = PMFObjective().counter_draws(0, 3, torch.arange(8), 8, SHAPE)
    fm = draws.flow_matching
    assert fm.tolist() == [True] * 4 + [False] * 4
    assert torch.equal(draws.r[fm], draws.t[fm]) and (draws.r[~fm] < draws.t[~fm]).all()
    assert (draws.t_min[fm] == 0).all() and (draws.t_max[fm] == 1).all()
    assert ((draws.t_min[~fm] >= 0) & (draws.t_min[~fm] <= 0.5)).all()
    assert ((draws.t_max[~fm] >= 0.5) & (draws.t_max[~fm] <= 1)).all()


def test_draws_equal_for_one_process_and_two_and_after_resume():
    objective = PMFObjective(class_dropout_prob=0.3, tr_uniform=0.5)
    whole = objective.counter_draws(5, 11, torch.arange(8), 8, SHAPE)
    halves = [objective.counter_draws(5, 11, torch.arange(4) + 4 * rank, 8, SHAPE) for rank in (0, 1)]
    for name in vars(whole):
        assert torch.equal(getattr(whole, name), torch.cat([getattr(h, name) for h in halves])), name
    other_step = objective.counter_draws(5, 12, torch.arange(8), 8, SHAPE)
    assert not torch.equal(whole.noise, other_step.noise)


def test_class_dropout_drops_the_first_n_of_the_global_batch():
    objective = PMFObjective(class_dropout_prob=0.25)
    for step in range(5):
        uniform = rng.uniform(0, step, 15, torch.arange(16))[:, 0]
        n = int((uniform < 0.25).sum())
        dropped = objective.dropped(0, step, torch.arange(16), 16)
        assert dropped.tolist() == [i < n for i in range(16)]
    labels, v_t, v_g = torch.tensor([1, 2, 0]), torch.zeros(3, *SHAPE), torch.ones(3, *SHAPE)
    labels, target = drop_classes(labels, v_g, v_t, torch.tensor([True, False, False]), null_label=5)
    assert labels.tolist() == [5, 2, 0]
    assert torch.equal(target[0], v_t[0]) and torch.equal(target[1:], v_g[1:])


class StubV(torch.nn.Module):
    """v head = omega where the label is not null, 0 where it is; records its inputs."""

    num_classes = 4

    def forward(self, z, t, h, omega, t_min, t_max, y, heads=None):
        self.seen = dict(h=h, t_min=t_min, t_max=t_max, heads=heads)
        v = (omega * (y != self.num_classes)).view(-1, 1, 1, 1).expand_as(z).clone()
        return None, v


def test_guided_target_uses_omega_inside_the_interval_and_one_outside():
    B = 4
    t = torch.tensor([0.5, 0.5, 0.05, 0.95])
    draws = MeanFlowDraws(t=t, r=t, noise=torch.zeros(B, *SHAPE), t_min=torch.tensor([0.0, 0.2, 0.2, 0.2]),
                          t_max=torch.tensor([1.0, 0.8, 0.8, 0.8]), omega=torch.tensor([3.0, 3.0, 3.0, 3.0]),
                          flow_matching=torch.tensor([True, False, False, False]),
                          dropped=torch.zeros(B, dtype=torch.bool))  # fmt: skip
    v_t = torch.randn(B, *SHAPE)
    stub = StubV()
    v_g, v_c = PMFObjective().guided_target(stub, torch.zeros(B, *SHAPE), t, v_t, torch.arange(B), draws, 4)
    # v_c' = omega, v_u = 0: v_g = v_t + (1 - 1/w) w = v_t + w - 1 with w = omega inside, 1 outside
    expected_shift = torch.tensor([2.0, 2.0, 0.0, 0.0]).view(-1, 1, 1, 1)
    assert torch.allclose(v_g, v_t + expected_shift, atol=1e-6)
    assert torch.allclose(v_c[:, 0, 0, 0], torch.tensor([3.0, 3.0, 1.0, 1.0]))
    assert (stub.seen["h"] == 0).all() and (stub.seen["t_min"] == 0).all() and (stub.seen["t_max"] == 1).all()
    assert stub.seen["heads"] == "v"


def test_adaptive_weight_value_and_gradient():
    loss = torch.tensor([0.99, 3.0], requires_grad=True)
    weighted = adaptive_weighted(loss, eps=0.01)
    assert torch.allclose(weighted, torch.tensor([0.99, 3.0 / 3.01]))
    (grad,) = torch.autograd.grad(weighted.sum(), loss)
    assert torch.allclose(grad, torch.tensor([1.0, 1 / 3.01]))  # 1 / sg(L + eps)


# --- the loss against a straightforward implementation (float64, du/dt by finite differences) ---------


@pytest.fixture(scope="module")
def model64():
    torch.manual_seed(0)
    model = create_pmf_model("pMF-Ti/4", num_classes=4, input_size=16).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("_scale") or "final_layer.linear" in name:
                p.normal_(0, 0.3)
    return model


def reference_loss(model, x, y, d: MeanFlowDraws, noise_scale=1.0):
    """The objective written out step by step, as in the public code (separate 2B and B v-head calls)."""
    null, sh = model.num_classes, (-1, 1, 1, 1)
    t, r = d.t.double(), d.r.double()
    z = (1 - t.view(sh)) * x + t.view(sh) * d.noise.double() * noise_scale
    v_t = (z - x) / t.clamp(0.05, 1).view(sh)
    with torch.no_grad():
        zero, one = torch.zeros_like(t), torch.ones_like(t)
        v2 = model(torch.cat([z, z]), torch.cat([t, t]), torch.cat([zero, zero]), torch.cat([d.omega, one]).double(),
                   torch.cat([zero, zero]), torch.cat([one, one]), torch.cat([y, torch.full_like(y, null)]))[1]
        v_c, v_u = v2.chunk(2)
        v_g_fm = v_t + (1 - 1 / d.omega.double()).view(sh) * (v_c - v_u)
        w = torch.where((t >= d.t_min) & (t <= d.t_max), d.omega.double(), one)
        v_c = model(z, t, zero, w, zero, one, y)[1]
        v_g = torch.where(d.flow_matching.view(sh), v_g_fm, v_t + (1 - 1 / w).view(sh) * (v_c - v_u))
    labels = torch.where(d.dropped, torch.full_like(y, null), y)
    v_g = torch.where(d.dropped.view(sh), v_t, v_g)
    cond = (d.omega.double(), d.t_min.double(), d.t_max.double(), labels)
    f = lambda zz, tt, rr: model(zz, tt, tt - rr, *cond)[0]  # noqa: E731
    eps = 1e-6
    with torch.no_grad():
        du_dt = (f(z + eps * v_c, t + eps, r) - f(z - eps * v_c, t - eps, r)) / (2 * eps)
    u, v = model(z, t, t - r, *cond)
    V = u + (t - r).view(sh) * du_dt
    loss_u = ((V - v_g) ** 2).sum((1, 2, 3))
    loss_v = ((v - v_g) ** 2).sum((1, 2, 3))
    return (loss_u / (loss_u.detach() + 0.01) + loss_v / (loss_v.detach() + 0.01)).mean(), loss_u, loss_v


@pytest.mark.slow
@pytest.mark.parametrize("jvp_mode", ["function", "math"])
def test_loss_and_gradients_equal_a_straightforward_implementation(model64, jvp_mode):
    objective = PMFObjective(class_dropout_prob=0.5, noise_scale=1.5)
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(6, *SHAPE, generator=gen, dtype=torch.float64) * 2 - 1
    y = torch.tensor([0, 1, 2, 3, 1, 2])
    draws = objective.counter_draws(7, 4, torch.arange(6), 6, SHAPE)
    assert draws.dropped.any() and not draws.dropped.all()
    model64.set_jvp_mode(jvp_mode)
    terms = objective.per_sample_losses(model64, x, y, draws)
    ours = terms["loss"].mean()
    grads = torch.autograd.grad(ours, list(model64.parameters()))
    expected, loss_u, loss_v = reference_loss(model64, x, y, draws, noise_scale=1.5)
    assert torch.allclose(terms["u"], loss_u, rtol=1e-6) and torch.allclose(terms["v"], loss_v, rtol=1e-9)
    assert abs(ours.item() - expected.item()) < 1e-7
    expected_grads = torch.autograd.grad(expected, list(model64.parameters()))
    for a, b in zip(grads, expected_grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-8)


def test_perceptual_terms_are_off_by_default_and_masked_by_t(model64):
    x = torch.zeros(4, *SHAPE, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    draws = PMFObjective().counter_draws(0, 0, torch.arange(4), 4, SHAPE)
    assert set(PMFObjective().per_sample_losses(model64, x, y, draws)) == {"loss", "u", "v"}
    calls = []
    term = lambda x_hat, x: calls.append(x_hat) or torch.ones(x.shape[0], dtype=x.dtype)  # noqa: E731
    objective = PMFObjective(perceptual=[(0.4, term)], perceptual_max_t=float(draws.t.median()))
    terms = objective.per_sample_losses(model64, x, y, draws)
    assert len(calls) == 1
    assert torch.equal(terms["perceptual0"], (draws.t < objective.perceptual_max_t).double())


@pytest.mark.slow
@pytest.mark.parametrize("jvp_mode", ["function", "math"])
def test_loss_under_bf16_autocast_is_close_to_fp32(model64, jvp_mode):
    model = create_pmf_model("pMF-Ti/4", num_classes=4, input_size=16)
    model.load_state_dict({k: v.float() for k, v in model64.state_dict().items()})
    model.set_jvp_mode(jvp_mode)
    objective = PMFObjective()
    x = torch.rand(4, *SHAPE, generator=torch.Generator().manual_seed(3)) * 2 - 1
    y, draws = torch.tensor([0, 1, 2, 3]), objective.counter_draws(1, 2, torch.arange(4), 4, SHAPE)
    fp32 = objective.per_sample_losses(model, x, y, draws)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = objective.per_sample_losses(model, x, y, draws)
    bf16["loss"].mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert torch.allclose(bf16["u"], fp32["u"], rtol=0.1) and torch.allclose(bf16["v"], fp32["v"], rtol=0.1)


def test_bad_objective_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="data_proportion"):
        PMFObjective(data_proportion=1.5)
    with pytest.raises(ValueError, match="cfg_max"):
        PMFObjective(cfg_max=-1.0)


def _logit_normal_cdf(a: float, mean: float, std: float) -> float:
    return 0.5 * (1 + math.erf((math.log(a / (1 - a)) - mean) / (std * math.sqrt(2))))


@pytest.mark.parametrize("share, fm_share", [(0.0, None), (0.3, None), (1.0, None), (1.0, 0.0), (0.0, 0.5)])
def test_tr_uniform_draws_follow_the_mixture_law(share, fm_share):
    """t = max and r = min of two draws from (1 - share) LogitNormal + share U(0, 1) (both from the same law
    per image): P(t <= a) = F(a)^2, P(r <= a) = 1 - (1 - F(a))^2 with F(a) = share a + (1 - share) Phi(...);
    the flow-matching images (r = t) have P(t <= a) = F(a) with their own share (default: the same).
    200k draws: errors ~0.002."""
    n, mean, std = 200_000, 0.8, 0.8
    objective = PMFObjective(p_mean=mean, p_std=std, tr_uniform=share, tr_uniform_fm=fm_share, data_proportion=0.5,
                             class_dropout_prob=0)  # fmt: skip
    draws = objective.counter_draws(4, 9, torch.arange(n), n, (1, 1, 1))
    fm = draws.flow_matching
    for a in (0.1, 0.3, 0.5, 0.69, 0.9):
        ln = _logit_normal_cdf(a, mean, std)
        # a share of the images draws (t, r) uniformly: P(t <= a) mixes per image, not per draw
        p_t = share * a**2 + (1 - share) * ln**2
        p_r = share * (1 - (1 - a) ** 2) + (1 - share) * (1 - (1 - ln) ** 2)
        fm_law = share if fm_share is None else fm_share
        p_fm = fm_law * a + (1 - fm_law) * ln
        assert abs((draws.t[~fm] <= a).double().mean().item() - p_t) < 0.008, (a, "t")
        assert abs((draws.r[~fm] <= a).double().mean().item() - p_r) < 0.008, (a, "r")
        assert abs((draws.t[fm] <= a).double().mean().item() - p_fm) < 0.008, (a, "fm")
    if share == 1.0:  # E[max] = 2/3, E[min] = 1/3 of two uniforms
        assert abs(draws.t[~fm].mean().item() - 2 / 3) < 0.005 and abs(draws.r[~fm].mean().item() - 1 / 3) < 0.005
    # the option changes only the r = t images' draws: the others are those of a run without it, bit for bit
    default = PMFObjective(p_mean=mean, p_std=std, tr_uniform=share, data_proportion=0.5, class_dropout_prob=0)
    some = torch.arange(0, n, n // 64)
    before, after = (o.counter_draws(4, 9, some, n, (1, 1, 1)) for o in (default, objective))
    moved = after.flow_matching & (fm_share is not None and fm_share != share)
    assert torch.equal(before.t[~moved], after.t[~moved]) and torch.equal(before.r[~moved], after.r[~moved])
    assert not moved.any() or not torch.equal(before.t[moved], after.t[moved])


class Counting(torch.nn.Module):
    """Wraps a network and counts the rows each call sees."""

    def __init__(self, net):
        super().__init__()
        self.net, self.rows = net, []
        self.num_classes, self.has_v_head = net.num_classes, net.has_v_head

    def forward(self, z, *args, **kwargs):
        self.rows.append(z.shape[0])
        return self.net(z, *args, **kwargs)


def _double_draws_and_z(objective: PMFObjective, B: int) -> tuple[MeanFlowDraws, torch.Tensor]:
    """Step 5's draws (seed 2) for a batch of B, in float64, and a float64 z."""
    draws = objective.counter_draws(2, 5, torch.arange(B), B, SHAPE)
    draws = MeanFlowDraws(*(d.double() if d.is_floating_point() else d for d in vars(draws).values()))
    return draws, torch.randn(B, *SHAPE, generator=torch.Generator().manual_seed(4), dtype=torch.float64)


def test_guided_velocities_compute_only_the_rows_used(model64):
    """v_c for the asked rows, v_u where the class is kept and w may differ from 1; zeros elsewhere, the
    computed rows equal to the v head's on the full batch."""
    B = 8
    objective = PMFObjective(class_dropout_prob=0.3)
    draws, z = _double_draws_and_z(objective, B)
    t, y, null = draws.t, torch.arange(B) % 4, 4
    cond_rows = ~draws.flow_matching
    counting = Counting(model64)
    w, v_c, v_u = objective.guided_velocities(counting, z, t, y, draws, null, cond_rows)
    inside = draws.flow_matching | ((t >= draws.t_min) & (t <= draws.t_max))
    needed = inside & ~draws.dropped
    assert 0 < needed.sum() < B and draws.dropped.any()
    assert counting.rows == [int(cond_rows.sum() + needed.sum())]
    zero, one = torch.zeros_like(t), torch.ones_like(t)
    with torch.no_grad():
        v_c_ref = model64(z, t, zero, w, zero, one, y, heads="v")[1]
        v_u_ref = model64(z, t, zero, one, zero, one, torch.full_like(y, null), heads="v")[1]
    assert torch.allclose(v_c[cond_rows], v_c_ref[cond_rows], atol=1e-12) and (v_c[~cond_rows] == 0).all()
    assert torch.allclose(v_u[needed], v_u_ref[needed], atol=1e-12) and (v_u[~needed] == 0).all()
    assert torch.equal(w, torch.where(inside, draws.omega, one))


def test_without_guidance_no_unconditional_rows_run(model64):
    """--cfg-max 0 (omega = 1 always): the target is v_t, so the v head runs only for the JVP tangents."""
    B = 8
    objective = PMFObjective(cfg_max=0.0, class_dropout_prob=0.3)
    draws, z = _double_draws_and_z(objective, B)
    cond_rows = ~draws.flow_matching
    counting = Counting(model64)
    w, v_c, v_u = objective.guided_velocities(counting, z, draws.t, torch.arange(B) % 4, draws, 4, cond_rows)
    assert torch.equal(w, torch.ones_like(w)) and counting.rows == [int(cond_rows.sum())] and (v_u == 0).all()
    v_t = torch.randn_like(z)
    assert torch.equal(guided(v_t, w, v_c, v_u), v_t)


def reference_sample_tangent_loss(model, x, y, d: MeanFlowDraws, tangent: str = "sample"):
    """MeanFlow's form written out: no v head, guidance velocities from u at h = 0, JVP tangent e - x
    ("sample") or the conditional velocity v_c from u at h = 0 ("u-head")."""
    null, sh = model.num_classes, (-1, 1, 1, 1)
    t, r, e = d.t.double(), d.r.double(), d.noise.double()
    z = (1 - t.view(sh)) * x + t.view(sh) * e
    v_t = (z - x) / t.clamp(0.05, 1).view(sh)
    zero, one = torch.zeros_like(t), torch.ones_like(t)
    with torch.no_grad():
        w = torch.where(d.flow_matching | ((t >= d.t_min) & (t <= d.t_max)), d.omega.double(), one)
        v_c = model(z, t, zero, w, zero, one, y)[0]
        v_u = model(z, t, zero, one, zero, one, torch.full_like(y, null))[0]
    labels = torch.where(d.dropped, torch.full_like(y, null), y)
    v_g = torch.where(d.dropped.view(sh), v_t, v_t + (1 - 1 / w).view(sh) * (v_c - v_u))
    cond = (d.omega.double(), d.t_min.double(), d.t_max.double(), labels)
    f = lambda zz, tt, rr: model(zz, tt, tt - rr, *cond)[0]  # noqa: E731
    eps, dz = 1e-6, (e - x) if tangent == "sample" else v_c
    with torch.no_grad():
        du_dt = (f(z + eps * dz, t + eps, r) - f(z - eps * dz, t - eps, r)) / (2 * eps)
    V = model(z, t, t - r, *cond)[0] + (t - r).view(sh) * du_dt
    loss_u = ((V - v_g) ** 2).sum((1, 2, 3))
    return (loss_u / (loss_u.detach() + 0.01)).mean(), loss_u


@pytest.fixture(scope="module")
def model64_u_only(model64):
    """model64 without its v head (the same trunk and u head)."""
    model = create_pmf_model("pMF-Ti/4", num_classes=4, input_size=16, v_head=False).double()
    model.load_state_dict({k: v for k, v in model64.state_dict().items() if not k.startswith("v_")})
    return model


@pytest.mark.parametrize("tangent", ["sample", "u-head"])
def test_sample_tangent_loss_and_gradients_equal_meanflow_written_out(model64_u_only, tangent):
    """tangents "sample" and "u-head" on a network without a v head: the u term only, with MeanFlow's e - x
    (or v_c) as the JVP's dz and the guidance velocities (and the flow-matching rows' v_c) from u at h = 0."""
    objective = PMFObjective(class_dropout_prob=0.5, tangent=tangent)
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(6, *SHAPE, generator=gen, dtype=torch.float64) * 2 - 1
    y = torch.tensor([0, 1, 2, 3, 1, 2])
    draws = objective.counter_draws(7, 4, torch.arange(6), 6, SHAPE)
    assert draws.dropped.any() and not draws.dropped.all() and draws.flow_matching.any()
    model64_u_only.set_jvp_mode("function")
    terms = objective.per_sample_losses(model64_u_only, x, y, draws)
    expected, loss_u = reference_sample_tangent_loss(model64_u_only, x, y, draws, tangent)
    assert set(terms) == {"u", "loss"} and torch.allclose(terms["u"], loss_u, rtol=1e-6)
    grads = torch.autograd.grad(terms["loss"].mean(), list(model64_u_only.parameters()))
    expected_grads = torch.autograd.grad(expected, list(model64_u_only.parameters()))
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-8) for a, b in zip(grads, expected_grads))


def test_sample_tangent_without_guidance_runs_one_forward_and_v_head_tangent_needs_a_v_head(model64_u_only):
    """No guidance and no dropout: the only network call is the loss's own; the public tangent refuses a
    network without a v head."""
    B = 8
    objective = PMFObjective(cfg_max=0.0, class_dropout_prob=0.0, tangent="sample")
    draws, _ = _double_draws_and_z(objective, B)
    x = torch.rand(B, *SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    counting = Counting(model64_u_only)
    objective.per_sample_losses(counting, x, torch.arange(B) % 4, draws)
    assert counting.rows == [B]
    with pytest.raises(ValueError, match="v-head tangent needs a network with a v head"):
        PMFObjective().per_sample_losses(model64_u_only, x, torch.arange(B) % 4, draws)
    with pytest.raises(ValueError, match="tangent must be one of"):
        PMFObjective(tangent="model")
