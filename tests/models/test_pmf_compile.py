"""pMF under torch.compile: the JVP through ``torch.func.jvp`` (what a compiled forward traces, since a
compiled graph has no forward-mode AD) gives the loss and gradients of the forward-AD path, eagerly and
compiled with inductor."""

import pytest
import torch

from jit_diffusion.diffusion.meanflow import PMFObjective
from jit_diffusion.models.pmf import create_pmf_model

SHAPE = (3, 32, 32)


def _model(**overrides):
    torch.manual_seed(0)
    model = create_pmf_model("pMF-Ti/4", num_classes=4, input_size=32, **overrides)
    with torch.no_grad():  # wake the zero-initialised gates and output layers
        for p in model.parameters():
            if not p.abs().sum():
                p.normal_(std=0.05)
    return model


def _loss_and_grads(model, batch=8):
    objective = PMFObjective(class_dropout_prob=0.3)
    x = torch.rand(batch, *SHAPE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    draws = objective.counter_draws(1, 2, torch.arange(batch), batch, SHAPE)
    model.zero_grad()
    terms = objective.per_sample_losses(model, x, torch.arange(batch) % 4, draws)
    terms["loss"].mean().backward()
    return terms, [p.grad.clone() for p in model.parameters()]


def _assert_close(ours, reference, tol):
    (terms, grads), (ref_terms, ref_grads) = ours, reference
    for key in ("loss", "u", "v"):
        assert torch.allclose(terms[key], ref_terms[key], rtol=tol, atol=0), key
    for a, b in zip(grads, ref_grads):  # relative to the largest entry of each gradient
        assert (a - b).abs().max() <= tol * b.abs().max()


def test_func_jvp_equals_forward_ad():
    model = _model()
    reference = _loss_and_grads(model)  # forward AD, SDPA with its JVP rule
    model.set_jvp_mode("math")
    model.jvp_transform = "func"
    _assert_close(_loss_and_grads(model), reference, 1e-6)


@pytest.mark.slow
def test_compiled_training_step_equals_eager():
    """Inductor on the CPU: loss and gradients within 1e-5 (two shared blocks and one per head keep the
    compile short; every kind of block and the JVP path are in the graph)."""
    model = _model(depth=2, aux_head_depth=1)
    reference = _loss_and_grads(model)
    model.compile_model("model")
    _assert_close(_loss_and_grads(model), reference, 1e-5)
    assert "_orig_mod" not in "".join(model.state_dict())


def test_compile_scope_other_than_the_model_is_refused():
    with pytest.raises(ValueError, match="one graph"):
        _model().compile_model("blocks")
