"""The few-step solvers: exact coefficients, exactness for a constant x-prediction, and convergence at
their order to a fine Heun solution of the same ODE (with and without interval CFG)."""

import math

import pytest
import torch

from jit_diffusion.diffusion.sampling import GuidedVelocity, sample, solve, time_grid
from jit_diffusion.diffusion.solvers import METHODS, SOLVERS, decay, from_log_snr, log_snr, step_moments

NEW_METHODS = ("dpm++2m", "dpm++3m", "unipc")


class GaussianClasses(torch.nn.Module):
    """The exact x-prediction E[x | z_t, y] for data x ~ N(mean_y, diag(std^2)) with equally likely classes
    (the null label gives the mixture's posterior mean): a smooth, strongly class-dependent denoiser whose
    small per-pixel stds (0.05 to 0.55) make the ODE as stiff near t = 1 as image models are."""

    def __init__(self, num_classes: int = 4, shape=(3, 8, 8), seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.num_classes = num_classes
        self.means = torch.rand(num_classes, *shape, generator=gen, dtype=torch.float64) * 1.6 - 0.8
        self.stds = 0.05 + 0.5 * torch.rand(shape, generator=gen, dtype=torch.float64)

    def forward(self, z, t, y):
        z, t = z.double(), t.double().view(-1, 1, 1, 1)
        var = t**2 * self.stds**2 + (1 - t) ** 2  # Var[z_t | class] per pixel, (B, C, H, W)
        resid = z.unsqueeze(1) - t.unsqueeze(1) * self.means  # (B, K, C, H, W)
        posterior = self.means + (t * self.stds**2 / var).unsqueeze(1) * resid  # E[x | z_t, k]
        log_lik = -0.5 * (resid**2 / var.unsqueeze(1) + var.unsqueeze(1).log()).flatten(2).sum(-1)  # (B, K)
        onehot = torch.nn.functional.one_hot(y.clamp(max=self.num_classes - 1), self.num_classes).double()
        weights = torch.where((y == self.num_classes).view(-1, 1), log_lik.softmax(1), onehot)  # (B, K)
        return (weights.view(*weights.shape, 1, 1, 1) * posterior).sum(1).float()


def heun_reference(model, noise, labels, steps: int, cfg: float, lo: float = 0.1) -> torch.Tensor:
    """Heun without the final Euler step on a uniform grid with a node at the interval edge ``lo`` and the
    weight of each step's interval: the fine solution of the ODE that every method converges to."""
    velocity = GuidedVelocity(model, labels, null_label=model.num_classes)
    first = round(steps * lo)
    z = solve(velocity, noise.float(), torch.linspace(0, lo, first + 1), [1.0] * (first + 1), final_euler=False)
    rest = steps - first
    return solve(velocity, z, torch.linspace(lo, 1, rest + 1), [cfg] * (rest + 1), final_euler=False)


def test_log_snr_round_trip_and_continuation():
    for t in (1e-4, 0.1, 0.5, 0.9, 0.95, 0.97, 1.0):
        assert from_log_snr(log_snr(t, 0.05), 0.05) == pytest.approx(t, abs=1e-12)
    assert log_snr(0.0, 0.05) == -math.inf and math.isfinite(log_snr(1.0, 0.05))
    slope_below = (log_snr(0.95, 0.05) - log_snr(0.95 - 1e-7, 0.05)) / 1e-7
    slope_above = (log_snr(0.95 + 1e-7, 0.05) - log_snr(0.95, 0.05)) / 1e-7
    assert slope_above == pytest.approx(slope_below, rel=1e-5)  # C^1 at the knee


@pytest.mark.parametrize("s,t", [(0.1, 0.4), (0.5, 0.95), (0.95, 1.0), (0.97, 0.99), (0.6, 1.0), (0.93, 0.96)])
def test_step_moments_match_quadrature(s, t):
    """c_k = int_s^t exp(-(phi(t) - phi(r))) (u(r) - u(s))^k dphi(r), against a fine trapezoid rule in t."""
    t_eps = 0.05
    r = torch.linspace(s, t, 200_001, dtype=torch.float64)
    inv_c = 1 / torch.clamp(1 - r, min=t_eps)  # dphi/dt
    phi = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumulative_trapezoid(inv_c, r)])
    u = torch.tensor([log_snr(float(v), t_eps) for v in r[::1000]], dtype=torch.float64)
    u = torch.nn.functional.interpolate(u.view(1, 1, -1), size=len(r), mode="linear", align_corners=True).view(-1)
    kernel = torch.exp(phi - phi[-1]) * inv_c
    assert decay(s, t, t_eps) == pytest.approx(math.exp(-phi[-1].item()), rel=1e-9)
    moments = step_moments(s, t, t_eps, 3)
    for k in range(3):
        expected = torch.trapezoid(kernel * (u - u[0]) ** k, r).item()
        assert moments[k] == pytest.approx(expected, rel=2e-4, abs=1e-9)


@pytest.mark.parametrize("method", NEW_METHODS)
@pytest.mark.parametrize("grid", ["uniform", "shifted", "logsnr"])
def test_exact_for_a_constant_x_prediction(method, grid):
    """dz/dt = (D - z) / max(1 - t, t_eps) with constant D: z(1) = D + t_eps e^-1 (z(0) - D), clamp included."""
    target, z0 = torch.tensor([[0.7, -0.2]], dtype=torch.float64), torch.tensor([[0.3, 1.1]], dtype=torch.float64)
    t_eps = 0.05

    def velocity(z, t, w):
        return (target - z) / max(1 - float(t), t_eps)

    times = time_grid(7, grid, t_eps=t_eps)
    out = solve(velocity, z0, times, [1.0] * len(times), method=method, t_eps=t_eps)
    assert torch.allclose(out, target + t_eps * math.exp(-1) * (z0 - target), atol=1e-12)


def test_registry_entries_share_one_signature():
    assert set(NEW_METHODS) <= set(METHODS)
    for name, solver in SOLVERS.items():
        assert solver.guidance in ("node", "interval") and solver.grid in ("uniform", "shifted", "logsnr")
        assert solver.evaluations(10) == (19 if name == "heun" else 10)


def _errors(model, noise, labels, method, steps_list, cfg, reference, grid="auto"):
    return [(sample(model, noise, labels, method=method, steps=n, cfg=cfg, grid=grid) - reference).norm().item()
            / reference.norm().item() for n in steps_list]  # fmt: skip


@pytest.fixture(scope="module")
def gaussian_case():
    torch.manual_seed(0)
    model = GaussianClasses()
    noise, labels = torch.randn(4, 3, 8, 8), torch.arange(4)
    references = {cfg: heun_reference(model, noise, labels, 200, cfg) for cfg in (1.0, 2.5)}
    return model, noise, labels, references


# the smallest error ratio per doubling of the steps (40 -> 80) for each solver's order: 2M is second
# order (4x), 3M and UniPC third (8x; they measure 6-10x here, their first steps being lower order)
MIN_RATIO = {"dpm++2m": 3.3, "dpm++3m": 5.0, "unipc": 5.0}


@pytest.mark.parametrize("cfg", [1.0, 2.5])
@pytest.mark.parametrize("method", NEW_METHODS)
def test_converges_at_its_order_to_fine_heun(gaussian_case, method, cfg):
    model, noise, labels, references = gaussian_case
    errors = _errors(model, noise, labels, method, (20, 40, 80), cfg, references[cfg], grid="uniform")
    assert errors[0] > errors[1] > errors[2]
    assert errors[1] / errors[2] >= MIN_RATIO[method], errors


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_random_weight_jit_converges_at_second_order(golden, cfg):
    """The golden (random-weight) JiT, its label embedding scaled up so that CFG changes its predictions
    (its x-prediction hardly depends on t, so this ODE is easy: every solver shows at least 2nd order)."""
    model = golden.model()
    with torch.no_grad():
        model.y_embedder.embedding_table.weight.mul_(30)
    noise, labels = golden["sample.noise"][:2], golden["sample.y"][:2]
    reference = heun_reference(model, noise, labels, 200, cfg)
    for method in NEW_METHODS:
        errors = _errors(model, noise, labels, method, (10, 20, 40), cfg, reference, grid="uniform")
        assert errors[0] / errors[1] >= 3.3 and errors[1] / errors[2] >= 3.3, (method, errors)


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_every_method_agrees_at_500_steps(gaussian_case, cfg):
    model, noise, labels, references = gaussian_case
    outputs = {m: sample(model, noise, labels, method=m, steps=500, cfg=cfg) for m in ("heun", *NEW_METHODS)}
    for method, out in outputs.items():
        assert (out - references[cfg]).abs().max().item() <= 1e-3, method
