import pytest
import torch

from jit_diffusion.diffusion.sampling import (
    GuidedVelocity,
    guidance_weights,
    interval_weights,
    network_evaluations,
    resolve_grid,
    sample,
    sampling_times,
    solve,
    time_grid,
)


def test_golden_sample(golden):
    model = golden.model()
    s = golden.meta["sampler"]
    out = sample(model, golden["sample.noise"], golden["sample.y"], method=s["method"], steps=s["steps"],
                 cfg=s["cfg"], cfg_interval=tuple(s["interval"]), noise_scale=s["noise_scale"], t_eps=s["t_eps"])
    assert out.dtype == torch.float32
    assert (out - golden["sample.out"]).abs().max().item() <= 1e-4


class RowCounter(torch.nn.Module):
    """Wraps a model and counts the rows it is asked to evaluate."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.num_classes = model.num_classes
        self.rows = 0
        self.calls = 0

    def forward(self, z, t, y):
        self.rows += z.shape[0]
        self.calls += 1
        return self.model(z, t, y)


@pytest.mark.slow
def test_heun50_cfg_network_rows(golden):
    counter = RowCounter(golden.model())
    B = 2
    seen = {}
    sample(counter, torch.randn(B, 3, 32, 32), torch.tensor([1, 2]), steps=50, cfg=2.9, cfg_interval=(0.1, 1.0),
           velocity_hook=lambda v: seen.setdefault("v", v))
    velocity = seen["v"]
    assert velocity.calls == 99  # 49 Heun steps x 2 + one final Euler step
    guided = (velocity.rows - velocity.calls * B) // B
    assert guided == 88
    assert counter.rows == 187 * B  # the reference computes 198 rows per image
    assert counter.calls == 99


def test_cfg_one_never_runs_unconditional(golden):
    counter = RowCounter(golden.model())
    sample(counter, torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2]), steps=5, cfg=1.0)
    assert counter.rows == 9 * 3


def test_guidance_weights_interval_edges():
    times = time_grid(10)  # 0, 0.1, ..., 1
    w = guidance_weights(times, 3.0, (0.1, 1.0))
    assert w[0] == 1.0 and w[1] == 1.0 and w[2] == 3.0 and w[-1] == 1.0
    w0 = guidance_weights(times, 3.0, (0.0, 0.5))
    assert w0[0] == 3.0  # lower bound inclusive when it is 0
    assert w0[5] == 1.0  # t = 0.5 is not < 0.5


def test_euler_exact_for_constant_field():
    velocity_field = torch.tensor([[1.5, -2.0]])
    z0 = torch.tensor([[0.3, 0.7]])
    times = time_grid(7)
    out = solve(lambda z, t, w: velocity_field.expand_as(z), z0, times, [1.0] * 8, method="euler")
    assert torch.allclose(out, z0 + velocity_field, atol=1e-6)


def test_heun_exact_for_field_linear_in_t():
    a, b = 0.5, -3.0  # v(t) = a + b t  ->  z(1) = z0 + a + b / 2
    z0 = torch.tensor([[0.25]], dtype=torch.float64)
    times = time_grid(8).double()
    field = lambda z, t, w: torch.full_like(z, a) + b * t
    out = solve(field, z0, times, [1.0] * 9, method="heun", final_euler=False)
    assert torch.allclose(out, z0 + a + b / 2, atol=1e-12)
    # the reference's final Euler step is off by exactly the Euler error of the last interval
    dt = 1 / 8
    out_final_euler = solve(field, z0, times, [1.0] * 9, method="heun")
    assert torch.allclose(out_final_euler, z0 + a + b / 2 - b * dt * dt / 2, atol=1e-12)
    # Euler is not exact for this field: its error is b dt / 2 over [0, 1]
    out_euler = solve(field, z0, times, [1.0] * 9, method="euler")
    assert torch.allclose(out_euler, z0 + a + b / 2 - b * dt / 2, atol=1e-12)


def test_cfg_combination_formula():
    class Fixed(torch.nn.Module):
        num_classes = 4

        def forward(self, z, t, y):  # x-prediction: cond rows -> 1, uncond rows -> 0
            return (y < 4).float().view(-1, 1, 1, 1).expand_as(z).clone()

    z = torch.zeros(2, 3, 2, 2)
    velocity = GuidedVelocity(Fixed(), torch.tensor([0, 1]), null_label=4, t_eps=0.05)
    v = velocity(z, torch.tensor(0.5), 3.0)
    # v_c = (1 - 0) / 0.5 = 2, v_u = 0: v = 0 + 3 * 2
    assert torch.allclose(v, torch.full_like(v, 6.0))


def test_state_stays_fp32_under_bf16_autocast(golden):
    model = golden.model()
    noise = golden["sample.noise"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sample(model, noise, golden["sample.y"], steps=6, cfg=2.5)
    assert out.dtype == torch.float32
    rel = (out - golden["sample.out"]).norm() / golden["sample.out"].norm()
    assert rel.item() < 2e-2


@pytest.mark.slow
def test_bf16_heun50_cfg_sample_close_to_fp32(golden):
    """The fast path (bf16 autocast) against the fp32 reference on the same weights: a whole Heun-50
    sample with CFG 2.9 on [0.1, 1] stays within 2e-2 relative L2 (the ODE state is fp32 throughout)."""
    model = golden.model()
    noise, labels = golden["sample.noise"], golden["sample.y"]
    ref = sample(model, noise, labels, steps=50, cfg=2.9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = sample(model, noise, labels, steps=50, cfg=2.9)
    rel = (fast - ref).norm() / ref.norm()
    assert rel.item() < 2e-2


def test_bad_method():
    with pytest.raises(ValueError, match="sampling method"):
        solve(lambda z, t, w: z, torch.zeros(1), time_grid(2), [1.0] * 3, method="rk4")


@pytest.mark.parametrize("kind", ["uniform", "shifted", "logsnr"])
@pytest.mark.parametrize("steps", [1, 2, 7, 10, 25])
def test_time_grids_are_increasing_from_0_to_1(kind, steps):
    times = time_grid(steps, kind)
    assert times.dtype == torch.float32 and len(times) == steps + 1
    assert times[0] == 0 and times[-1] == 1 and bool((times[1:] > times[:-1]).all())


def test_uniform_grid_is_the_public_one_and_shift_moves_nodes_to_the_noisy_end():
    assert torch.equal(time_grid(50), torch.linspace(0, 1, 51))
    assert torch.allclose(time_grid(50, "shifted", shift=1.0), time_grid(50), atol=1e-7)
    u = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.allclose(time_grid(10, "shifted", shift=3.0).double(), u / (u + 3 * (1 - u)), atol=1e-7)


def test_cfg_interval_edges_become_nodes():
    times = time_grid(10, "shifted", shift=2.0, edges=(0.1, 1.0))
    assert len(times) == 11 and (times == torch.tensor(0.1)).any()
    times = time_grid(25, "uniform", edges=(0.1, 0.6))  # 0.1 and 0.6 fall between nodes of 1/25
    assert len(times) == 26 and (times == torch.tensor(0.1)).any() and (times == torch.tensor(0.6)).any()
    times = time_grid(1, "uniform", edges=(0.1,))  # no free node: one is added
    assert times.tolist() == pytest.approx([0.0, 0.1, 1.0])
    # the new solvers get the edges, Heun keeps the public grid
    assert (sampling_times("dpm++2m", 12, cfg=2.0, cfg_interval=(0.1, 1.0)) == torch.tensor(0.1)).any()
    assert torch.equal(sampling_times("heun", 25, cfg=2.0), torch.linspace(0, 1, 26))


def test_interval_weights_cover_open_intervals():
    times = torch.tensor([0.0, 0.1, 0.3, 0.7, 1.0])
    assert interval_weights(times, 3.0, (0.1, 1.0)) == [1.0, 3.0, 3.0, 3.0, 3.0]
    assert interval_weights(times, 3.0, (0.1, 0.7)) == [1.0, 3.0, 3.0, 1.0, 1.0]
    assert guidance_weights(times, 3.0, (0.1, 1.0)) == [1.0, 1.0, 3.0, 3.0, 1.0]  # the public node rule


def test_grid_options_and_errors():
    assert resolve_grid("heun") == ("uniform", 2.0)
    assert resolve_grid("dpm++2m", shift=3.0) == ("shifted", 3.0)
    with pytest.raises(ValueError, match="--shift applies to the shifted"):
        resolve_grid("heun", "uniform", 2.0)
    with pytest.raises(ValueError, match="time grid"):
        time_grid(5, "cosine")
    with pytest.raises(ValueError, match="--shift must be > 0"):
        time_grid(5, "shifted", shift=0.0)
    with pytest.raises(ValueError, match="--final"):
        solve(lambda z, t, w: z, torch.zeros(1), time_grid(2), [1.0] * 3, final="last")


@pytest.mark.parametrize("method", ["dpm++2m", "dpm++3m", "unipc"])
def test_new_solvers_spend_one_evaluation_per_step(golden, method):
    counter = RowCounter(golden.model())
    seen = {}
    steps = 10
    out = sample(counter, torch.randn(2, 3, 32, 32), torch.tensor([1, 2]), method=method, steps=steps, cfg=2.5,
                 velocity_hook=lambda v: seen.setdefault("v", v))  # fmt: skip
    assert out.dtype == torch.float32
    times = sampling_times(method, steps, cfg=2.5)
    assert seen["v"].calls == steps == network_evaluations(method, times)
    guided_steps = sum(1 for a, b in zip(times[:-1], times[1:]) if a >= 0.1)  # steps inside (0.1, 1)
    assert counter.rows == 2 * (steps + guided_steps)  # unconditional rows only inside the interval


@pytest.mark.parametrize("method", ["heun", "euler", "dpm++2m", "dpm++3m", "unipc"])
def test_final_denoise_returns_the_last_x_prediction(golden, method):
    """With --final denoise the output is the guided x-prediction at the last node before t = 1."""
    model = golden.model()
    noise, labels = golden["sample.noise"][:2], golden["sample.y"][:2]
    inputs = []

    class Recorder(torch.nn.Module):
        num_classes = model.num_classes

        def forward(self, z, t, y):
            inputs.append((z.clone(), t.clone(), y.clone()))
            return model(z, t, y)

    out = sample(Recorder(), noise, labels, method=method, steps=6, cfg=1.0, final="denoise")
    z, t, y = inputs[-1]
    assert t.unique().item() < 1
    assert torch.allclose(out, model(z, t, y), atol=1e-5)
