"""pMF under FSDP2 sharded per block (one gloo process): every block is its own unit, and the JVP pass
without gradient ("separate") gives the unsharded network's u, v, du/dt and gradients."""

import pytest
import torch
import torch.distributed as dist

from jit_diffusion.core.parallel import apply_fsdp, full_tensor
from jit_diffusion.models.pmf import create_pmf_model


@pytest.fixture
def one_process_group(tmp_path):
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _model():
    torch.manual_seed(0)
    model = create_pmf_model("pMF-Ti/4", num_classes=3, input_size=16)
    with torch.no_grad():  # non-zero gates and outputs so that every path has a derivative
        for name, p in model.named_parameters():
            if name.endswith("_scale") or "final_layer.linear" in name:
                p.normal_(0, 0.3)
    return model


def _step(model):
    gen = torch.Generator().manual_seed(1)
    z, dz = torch.randn(2, 3, 16, 16, generator=gen), torch.randn(2, 3, 16, 16, generator=gen)
    t, h, y = torch.tensor([0.7, 0.4]), torch.tensor([0.3, 0.0]), torch.tensor([0, 3])
    cond = (torch.tensor([2.0, 3.0]), torch.tensor([0.1, 0.2]), torch.tensor([0.9, 0.8]))
    u, v, du_dt = model(z, t, h, *cond, y, jvp_tangent=dz)
    (u.square().mean() + v.mean() + (du_dt * u).mean()).backward()
    grads = {n: full_tensor(p.grad).detach().clone() for n, p in model.named_parameters()}
    return u.detach(), v.detach(), du_dt, grads


def test_per_block_sharding_with_the_separate_jvp_equals_the_plain_network(one_process_group):
    u, v, du_dt, grads = _step(_model())
    model = _model()
    apply_fsdp(model, model.all_blocks())
    model.jvp_transform = "separate"
    from torch.distributed.fsdp import FSDPModule

    assert all(isinstance(b, FSDPModule) for b in model.all_blocks()) and len(model.all_blocks()) == 8
    u_s, v_s, du_s, grads_s = _step(model)
    assert torch.allclose(u_s, u, atol=1e-6) and torch.allclose(v_s, v, atol=1e-6)
    assert torch.allclose(du_s, du_dt, atol=1e-5)
    assert all(torch.allclose(grads_s[n], g, atol=1e-6) for n, g in grads.items())
