import pytest
import torch
from torch import nn

from jit_diffusion.diffusion.ema import EMA


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_ema_matches_hand_computation():
    model = _model()
    ema = EMA(model, decays=(0.9, 0.5))
    w0 = model[0].weight.detach().clone()
    expected = {"ema1": w0.clone(), "ema2": w0.clone()}
    for step in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * (step + 1))
        ema.update(model)
        w = model[0].weight.detach()
        expected["ema1"] = 0.9 * expected["ema1"] + 0.1 * w
        expected["ema2"] = 0.5 * expected["ema2"] + 0.5 * w
    for name in ("ema1", "ema2"):
        assert torch.allclose(ema.weights(name)["0.weight"], expected[name], atol=1e-6)
    # a concrete value: w0 + 0.1 * sum of geometric weights
    inc = torch.tensor([0.1, 0.3, 0.6, 1.0])  # cumulative param offsets after each step
    hand = w0.clone()
    for c in inc:
        hand = 0.5 * hand + 0.5 * (w0 + c)
    assert torch.allclose(ema.weights("ema2")["0.weight"], hand, atol=1e-6)


def test_applied_swaps_and_restores():
    model = _model()
    ema = EMA(model, decays=(0.9,))
    raw = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for s in ema.shadows["ema1"]:
            s.fill_(7.0)
    x = torch.randn(5, 3)
    with ema.applied(model, "ema1") as m:
        assert all(torch.all(p == 7.0) for p in m.parameters())
        out = m(x)
    assert not torch.allclose(out, model(x))
    assert all(torch.equal(a, b) for a, b in zip(raw, model.parameters()))


def test_state_dict_round_trip():
    model = _model()
    ema = EMA(model)
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.1)
        ema.update(model)
    state = {k: {n: t.clone() for n, t in v.items()} for k, v in ema.state_dict().items()}
    other = EMA(_model())
    other.load_state_dict(state)
    for name in ema.names:
        for k in ema.param_names:
            assert torch.equal(other.weights(name)[k], ema.weights(name)[k])
    with pytest.raises(KeyError, match="lacks"):
        other.load_state_dict({"ema1": state["ema1"]})


def test_update_close_to_float64_and_exact_for_constant_parameters():
    """One lerp per decay: within fp32 rounding of the float64 recursion, and a parameter that does not
    move (e.g. the fixed pos_embed) keeps an EMA bit-equal to it, as decay * p + (1 - decay) * p may not."""
    model = _model()
    model.register_parameter("table", nn.Parameter(torch.randn(4096), requires_grad=False))
    ema = EMA(model, decays=(0.9999, 0.9))
    exact = {name: [p.detach().double().clone() for p in model.parameters()] for name in ema.names}
    table = model.table.detach().clone()
    for step in range(5):
        with torch.no_grad():
            model[0].weight.add_(0.3 * (step + 1))
        ema.update(model)
        for name, decay in ema.decays.items():
            params = [p.detach().double() for p in model.parameters()]
            exact[name] = [decay * e + (1 - decay) * p for e, p in zip(exact[name], params)]
    for name in ema.names:
        for got, want in zip(ema.shadows[name], exact[name]):
            assert (got.double() - want).abs().max().item() < 1e-6
        assert torch.equal(ema.weights(name)["table"], table)


def test_trainable_only_averages_what_trains():
    """Frozen parameters are left out (their own average); the others follow ema = d ema + (1 - d) p, and
    ``applied`` swaps only those."""
    model = _model()
    model[0].requires_grad_(False)
    ema = EMA(model, decays=(0.5,), trainable_only=True)
    assert ema.param_names == ["2.weight", "2.bias"]
    w0 = model[2].weight.detach().clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    assert torch.allclose(ema.weights("ema1")["2.weight"], w0 + 0.5)
    frozen = model[0].weight.detach().clone()
    with ema.applied(model, "ema1"):
        assert torch.equal(model[0].weight, frozen)
        assert torch.allclose(model[2].weight, w0 + 0.5)
    assert torch.equal(model[2].weight, w0 + 1.0)
