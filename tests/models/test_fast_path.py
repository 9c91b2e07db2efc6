"""The fast path (bf16 autocast, Triton kernels, larger compiled regions) against the fp32 reference.

Kernel tests run on the GPU when there is one and on the CPU under TRITON_INTERPRET=1 otherwise."""

import subprocess
import sys
import textwrap

import pytest
import torch
from kernel_env import needs_triton, triton_device

from jit_diffusion.core import kernels
from jit_diffusion.models.layers import RMSNorm, apply_rope, rope_tables_2d

# one bf16 ulp relative: a GPU rounds an fp32 result to nearest (half an ulp), Triton's interpreter truncates
BF16_ULP = 2.0**-7


@pytest.fixture
def device():
    with triton_device() as dev:
        yield dev


def test_residual_stream_stays_bf16_under_autocast(golden):
    model = golden.model()
    seen = []
    for block in model.blocks:
        block.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    x, t, y = golden["forward.x"], golden["forward.t"], golden["forward.y"]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(x, t, y)
    assert seen == [torch.bfloat16] * len(model.blocks)
    seen.clear()
    with torch.no_grad():
        model(x, t, y)
    assert seen == [torch.float32] * len(model.blocks)


def _qk_case(head_dim, heads, grid, prefix, dtype, device, seed=0):
    """q as the attention takes it: a strided (B, H, N, hd) view of a (B, N, 3, H, hd) qkv tensor."""
    gen = torch.Generator().manual_seed(seed)
    n_tokens = prefix + grid * grid
    cos, sin = rope_tables_2d(head_dim, grid, prefix)
    qkv = (3 * torch.randn(2, n_tokens, 3, heads, head_dim, generator=gen)).to(dtype)
    weight = 1 + 0.2 * torch.randn(head_dim, generator=gen)
    grad = torch.randn(2, heads, n_tokens, head_dim, generator=gen).to(dtype)
    return [t.to(device) for t in (qkv, weight, cos, sin, grad)]


def _exact_norm_rope(x, weight, cos, sin, eps=1e-6):
    """rope(rmsnorm(x) * w) in float64: the value both paths approximate."""
    x = x.double()
    u = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.double()
    a, b = u.unflatten(-1, (-1, 2)).unbind(-1)
    return u * cos.double() + torch.stack((-b, a), dim=-1).flatten(-2) * sin.double()


CASES = [(16, 4, 4, 4), (64, 3, 4, 8), (80, 2, 3, 0)]  # head dims of the golden net, B/L, and H (padded)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim,heads,grid,prefix", CASES)
def test_norm_rope_kernel_forward_and_backward(device, dtype, head_dim, heads, grid, prefix):
    qkv, weight, cos, sin, grad = _qk_case(head_dim, heads, grid, prefix, dtype, device)
    qkv.requires_grad_(True)
    weight.requires_grad_(True)
    x = qkv.permute(2, 0, 3, 1, 4)[0]  # (B, H, N, hd), non-contiguous
    out = kernels.norm_rope(x, weight, cos, sin, 1e-6)
    out.backward(grad)
    assert out.dtype == dtype and out.is_contiguous() and out.shape == x.shape

    x64 = x.detach().double().requires_grad_(True)
    w64 = weight.detach().double().requires_grad_(True)
    exact = _exact_norm_rope(x64, w64, cos, sin)
    exact.backward(grad.double())
    dx = qkv.grad.permute(2, 0, 3, 1, 4)[0]
    if dtype == torch.float32:
        torch.testing.assert_close(out.double(), exact, rtol=0, atol=1e-5 * exact.abs().max().item())
        torch.testing.assert_close(dx.double(), x64.grad, rtol=0, atol=1e-5 * x64.grad.abs().max().item())
    else:  # fp32 math on the bf16 inputs, rounded once: within one bf16 ulp of the exact value
        assert ((out.double() - exact).abs() <= BF16_ULP * exact.abs() + 1e-5).all()
        assert ((dx.double() - x64.grad).abs() <= BF16_ULP * x64.grad.abs() + 1e-5 * x64.grad.abs().max()).all()
    assert weight.grad.dtype == torch.float32
    torch.testing.assert_close(weight.grad.double(), w64.grad, rtol=0, atol=1e-5 * w64.grad.abs().max().item())


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norm_rope_kernel_close_to_reference_path(device, dtype):
    """The kernel against the module code it replaces (which rounds twice in bf16)."""
    qkv, weight, cos, sin, grad = _qk_case(64, 3, 4, 8, dtype, device, seed=1)
    x = qkv.permute(2, 0, 3, 1, 4)[1]
    norm = RMSNorm(64).to(device)
    with torch.no_grad():
        norm.weight.copy_(weight)
    reference = apply_rope(norm(x), cos, sin)
    fused = kernels.norm_rope(x, weight, cos, sin, norm.eps)
    # the reference rounds the normalised q to bf16 before rotating it: up to ~2 ulps of the row's scale
    tolerance = 1e-6 if dtype == torch.float32 else 2 * BF16_ULP
    assert (fused.float() - reference.float()).abs().max() <= tolerance * reference.float().abs().max()


@needs_triton
def test_model_with_kernels_matches_golden(golden, device, monkeypatch):
    """The whole network with the fused kernels: golden forward, and gradients equal to the reference path."""
    model = golden.model().train().to(device)
    x, t, y = (golden[f"forward.{k}"].to(device) for k in ("x", "t", "y"))

    def forward_backward():
        model.zero_grad()
        out = model(x, t, y)
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    if device.type == "cuda":  # fp32 means fp32 here: no TF32 in the patch-embedding convolution
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    out, grads = forward_backward()
    assert (out.cpu() - golden["forward.out"]).abs().max().item() <= 1e-5
    with kernels.mode("off"):
        ref_out, ref_grads = forward_backward()
    assert len(grads) == len(ref_grads)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-5 * r.abs().max().item() + 1e-9)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        fast = model(x, t, y)
    assert ((fast.float() - ref_out).norm() / ref_out.norm()).item() < 1e-2


@needs_triton
def test_norm_rope_traces_under_compile(device):
    """No graph break around the custom op, forward and backward, and the same numbers as eager."""
    qkv, weight, cos, sin, _ = _qk_case(16, 2, 3, 2, torch.float32, device)

    def attention_inputs(qkv, weight):
        return kernels.norm_rope(qkv.permute(2, 0, 3, 1, 4)[0], weight, cos, sin, 1e-6) * 2

    backend = "inductor" if device.type == "cuda" else "aot_eager"
    compiled = torch.compile(attention_inputs, backend=backend, fullgraph=True)
    grads = []
    for fn in (attention_inputs, compiled):
        a, b = qkv.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        out = fn(a, b)
        out.square().sum().backward()
        grads.append((out.detach(), a.grad, b.grad))
    for eager, traced in zip(*grads):
        torch.testing.assert_close(traced, eager, rtol=1e-6, atol=1e-6)


OFFLINE_COMPILE = textwrap.dedent("""
    import triton
    from triton.backends.compiler import GPUTarget
    from jit_diffusion.core import triton_kernels as tk

    def build(fn, signature, constants):
        signature = {**signature, **{name: "constexpr" for name in constants}}
        source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constants)
        return triton.compile(source, target=GPUTarget("cuda", 90, 32))

    tables = dict(w_ptr="*fp32", cos_ptr="*fp32", sin_ptr="*fp32", rstd_ptr="*fp32")
    shape = dict(n_rows="i32", H="i32", N="i32", stride_b="i64", stride_h="i32", stride_n="i32")
    for dt in ("bf16", "fp32"):
        build(tk._qk_norm_rope_fwd_kernel, dict(x_ptr="*" + dt, out_ptr="*" + dt, eps="fp32", **tables, **shape),
              dict(HD=64, BLOCK_HD=64, ROWS=64))
        build(tk._qk_norm_rope_bwd_kernel, dict(grad_ptr="*" + dt, x_ptr="*" + dt, dx_ptr="*" + dt,
              dw_partial_ptr="*fp32", **tables, **shape), dict(HD=80, BLOCK_HD=128, ROWS=32))
    counter = dict(positions_ptr="*i64", out_ptr="*fp32", step_ptr="*i64", seed_key="i64", step="i32", stream="i32")
    for normal in (False, True):
        for from_ptr in (False, True):
            kernel = build(tk._counter_kernel, dict(numel="i32", words="i32", **counter),
                           dict(NORMAL=normal, STEP_FROM_PTR=from_ptr, BLOCK=1024))
            assert not normal or "__nv_logf" in kernel.asm["ptx"], "expected libdevice's logf"
    # the launcher turns an int argument equal to 1 into a constant: numel = 1 is the Augment's case
    build(tk._counter_kernel, counter, dict(numel=1, words=1, NORMAL=False, STEP_FROM_PTR=False, BLOCK=16))
    build(tk._qk_norm_rope_fwd_kernel, dict(x_ptr="*bf16", out_ptr="*bf16", eps="fp32", n_rows="i32", N="i32",
          stride_b="i64", stride_h="i32", stride_n="i32", **tables), dict(H=1, HD=64, BLOCK_HD=64, ROWS=64))
    print("compiled")
""")


@needs_triton
@pytest.mark.slow
def test_kernels_compile_for_h100_without_a_gpu():
    """Triton's real compiler (not the interpreter) accepts every kernel for sm_90, e.g. no int64
    constant is narrowed to int32; the normal draws use libdevice's functions, as PyTorch's do."""
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", OFFLINE_COMPILE], capture_output=True, text=True, env=env, timeout=600)
    if "ptxas" in res.stderr and "not found" in res.stderr:
        pytest.skip("triton's ptxas is not available")
    assert res.returncode == 0 and "compiled" in res.stdout, res.stderr[-3000:]


IMPORT_AS_ON_A_GPU = textwrap.dedent("""
    import os, warnings
    import torch
    torch.cuda.is_available = lambda: True  # the import-time path of a GPU machine
    os.environ["TRITON_INTERPRET"] = "1"
    warnings.simplefilter("error")
    from jit_diffusion.core import kernels
    assert kernels._TRITON_FOUND and kernels._ops is not None
    print("loaded")
""")


@needs_triton
def test_kernels_load_at_import_on_a_gpu_machine():
    """On a machine with CUDA the kernels module imports the Triton ops (and registers their autograd
    formulas) when it is imported; a failure there turns every kernel off with a warning, so it must not
    fail for want of a helper defined further down the module."""
    res = subprocess.run([sys.executable, "-c", IMPORT_AS_ON_A_GPU], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "loaded" in res.stdout, res.stderr[-3000:]


def _tiny_model():
    from jit_diffusion import JiT

    torch.manual_seed(0)  # 3 blocks, the in-context tokens joining at the second: both token counts occur
    model = JiT(input_size=16, patch_size=4, hidden_size=32, depth=3, num_heads=2, num_classes=10, bottleneck_dim=8,
                in_context_len=2, in_context_start=1)
    with torch.no_grad():  # non-zero adaLN and output layers, so that every block matters
        for name, p in model.named_parameters():
            if "adaLN_modulation" in name or "final_layer.linear" in name:
                p.normal_(std=0.05)
    return model


def _forward_backward(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z, t, y = torch.randn(3, 3, 16, 16, generator=gen), torch.rand(3, generator=gen), torch.tensor([1, 10, 4])
    model.zero_grad()
    out = model(z, t, y)
    out.square().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.slow
def test_whole_model_compiles_as_one_graph_and_keeps_names():
    """The whole forward traces as one graph (fullgraph: no break between blocks, forward and backward);
    the state dict keeps its plain names and the numbers equal eager's."""
    model = _tiny_model().train()
    names = list(model.state_dict())
    ref_out, ref_grads = _forward_backward(model)
    model.compile_model("model", backend="aot_eager", fullgraph=True)
    out, grads = _forward_backward(model)
    assert list(model.state_dict()) == names
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=0, atol=1e-6 * ref_grads[name].abs().max().item() + 1e-9)


@pytest.mark.slow
def test_whole_model_inductor_matches_eager():
    """Inductor (C++ on CPU, Triton on a GPU) on the whole forward and backward: eager's numbers to fp32 rounding."""
    model = _tiny_model().train()
    ref_out, ref_grads = _forward_backward(model)
    model.compile_model("model")
    for seed in (0, 0, 1):  # the second call reuses the graph; a new input needs no recompile
        out, grads = _forward_backward(model, seed)
        if seed == 0:
            torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-5)
            for name, grad in grads.items():
                scale = ref_grads[name].abs().max().item()
                torch.testing.assert_close(grad, ref_grads[name], rtol=0, atol=1e-5 * scale)
    with pytest.raises(ValueError, match="compile scope"):
        model.compile_model("layers")
