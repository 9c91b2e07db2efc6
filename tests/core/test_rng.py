"""The counter-based draws: pure functions of (seed, step, stream, position, element)."""

import math

import numpy as np
import pytest
import torch
from kernel_env import needs_triton, triton_device

from jit_diffusion.core import kernels, rng

POSITIONS = torch.tensor([0, 1, 7, 1000])


@pytest.fixture(autouse=True)
def reference_path():
    with kernels.mode("off"):  # the PyTorch definition; the Triton kernel is compared to it below
        yield


def test_pinned_values():
    """The definition does not drift: integer words and uniforms are exact on every device."""
    words = rng._bits(0, 0, 1, POSITIONS, 2)
    assert words.tolist() == [[4390630750454604301, 6019875334170554273], [3471063472440291957, 1501364362985313201],
                              [-8322175103533834479, -1932626515993103231],
                              [-4586479603834572191, 2975307103491921148]]
    uniform = rng.uniform(0, 0, 1, POSITIONS, 3)
    assert uniform[0].tolist() == [float.fromhex(h) for h in ("0x1.e7753cp-3", "0x1.4e2b92p-2", "0x1.fae3b2p-2")]
    assert uniform[3].tolist() == [float.fromhex(h) for h in ("0x1.80b31cp-1", "0x1.4a5354p-3", "0x1.0df2p-1")]
    normal = rng.normal(5, 12, 2, POSITIONS, 3)
    expected = [float.fromhex(h) for h in ("-0x1.2fb948p+1", "-0x1.2507aep-1", "-0x1.c6a108p-2")]
    torch.testing.assert_close(normal[2], torch.tensor(expected), rtol=0, atol=1e-6)


def test_deterministic_and_keyed_by_every_argument():
    base = rng.normal(3, 10, rng.STREAM_NOISE, POSITIONS, 6)
    assert torch.equal(base, rng.normal(3, 10, rng.STREAM_NOISE, POSITIONS, 6))
    noise = rng.STREAM_NOISE
    for seed, step, stream, positions in ((4, 10, noise, POSITIONS), (3, 11, noise, POSITIONS),
                                          (3, 10, rng.STREAM_TIME, POSITIONS), (3, 10, noise, POSITIONS + 1)):
        assert not torch.isclose(rng.normal(seed, step, stream, positions, 6), base).any()


def test_independent_of_batch_split_and_order():
    """Rows depend on the global position only: any split over processes or micro-batches agrees."""
    positions = torch.arange(12)
    whole = rng.normal(0, 5, rng.STREAM_NOISE, positions, 10)
    parts = torch.cat([rng.normal(0, 5, rng.STREAM_NOISE, positions[i : i + 4], 10) for i in (0, 4, 8)])
    assert torch.equal(whole, parts)
    order = torch.tensor([5, 0, 11, 3])
    assert torch.equal(rng.uniform(0, 5, 1, order, 7), rng.uniform(0, 5, 1, positions, 7)[order])
    # element j of a uniform draw does not depend on how many elements were asked for
    assert torch.equal(rng.uniform(0, 5, 1, positions, 9)[:, :4], rng.uniform(0, 5, 1, positions, 4))


def test_step_as_a_device_tensor_equals_the_int():
    """A CUDA graph reads the step from a tensor: the same draws as the Python int."""
    for step in (0, 1, 2**40 + 3):
        tensor_step = torch.tensor(step, dtype=torch.int64)
        assert torch.equal(rng.uniform(7, tensor_step, 3, POSITIONS, 5), rng.uniform(7, step, 3, POSITIONS, 5))
        assert torch.equal(rng.normal(7, tensor_step, 2, POSITIONS, 5), rng.normal(7, step, 2, POSITIONS, 5))


def test_uniform_range_and_moments():
    u = rng.uniform(1, 2, 3, torch.arange(200), 1000).double().flatten()  # 200,000 draws
    assert 0.0 < u.min().item() and u.max().item() < 1.0
    sigma = math.sqrt(1 / 12 / u.numel())
    assert abs(u.mean().item() - 0.5) < 5 * sigma
    assert abs(u.var().item() - 1 / 12) < 5e-3 / 12
    counts = torch.histc(u, bins=10, min=0, max=1)  # chi-square with 9 degrees of freedom
    chi2 = ((counts - u.numel() / 10) ** 2 / (u.numel() / 10)).sum().item()
    assert chi2 < 30  # p ~ 4e-4


def test_normal_moments():
    z = rng.normal(1, 2, 3, torch.arange(200), 1001).double().flatten()  # odd numel: the last sine is dropped
    n = z.numel()
    assert n == 200 * 1001
    assert abs(z.mean().item()) < 5 / math.sqrt(n)
    assert abs(z.std().item() - 1) < 5 / math.sqrt(2 * n)
    assert abs((z**3).mean().item()) < 5 * math.sqrt(15 / n)
    assert abs((z**4).mean().item() - 3) < 5 * math.sqrt(96 / n)


@pytest.mark.slow
def test_compiled_equals_eager():
    """The hash compiles (Inductor on CPU here) and gives the same integer words; normals to an ulp."""
    positions = torch.arange(16)
    compiled_uniform = torch.compile(lambda p: rng.uniform(0, 9, 1, p, 300), fullgraph=True)
    compiled_normal = torch.compile(lambda p: rng.normal(0, 9, 2, p, 300), fullgraph=True)
    assert torch.equal(compiled_uniform(positions), rng.uniform(0, 9, 1, positions, 300))
    torch.testing.assert_close(compiled_normal(positions), rng.normal(0, 9, 2, positions, 300), rtol=0, atol=2e-6)


# ------------------------------------------------------------------------------------------------
# the Triton kernel (GPU, or CPU under TRITON_INTERPRET=1) against the PyTorch definition
# ------------------------------------------------------------------------------------------------


def _box_muller_float32(words: np.ndarray, numel: int) -> np.ndarray:
    """The normal draws from exact integer words with float32 numpy math (what the interpreter runs)."""
    unsigned, half, scale = words.astype(np.uint64), np.float32(0.5), np.float32(2.0**-24)
    u1 = ((unsigned >> np.uint64(40)).astype(np.float32) + half) * scale
    u2 = (((unsigned >> np.uint64(16)) & np.uint64(0xFFFFFF)).astype(np.float32) + half) * scale
    radius = np.sqrt(np.float32(-2.0) * np.log(u1))
    angle = np.float32(2.0 * math.pi) * u2
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)], axis=1)[:, :numel]


@needs_triton
@pytest.mark.parametrize("numel", [1, 2, 7, 768])
def test_triton_kernel_equals_definition(numel):
    with triton_device() as device:
        positions = torch.tensor([0, 5, 2**40, 123456789], device=device)
        for step in (0, 3, 2**33 + 1, torch.tensor(77, device=device)):
            with kernels.mode("off"):
                uniform_ref = rng.uniform(11, step, 2, positions, numel)
                normal_ref = rng.normal(11, step, 2, positions, numel)
                words = rng._bits(11, step, 2, positions, (numel + 1) // 2).cpu().numpy()
            uniform = rng.uniform(11, step, 2, positions, numel)
            normal = rng.normal(11, step, 2, positions, numel)
            assert torch.equal(uniform, uniform_ref)  # exact everywhere: integer hash, exact conversions
            if device.type == "cuda":  # libdevice in the kernel, the same functions as PyTorch's kernels
                torch.testing.assert_close(normal, normal_ref, rtol=0, atol=1e-6)
            else:  # the interpreter's numpy float32 math, bit for bit
                assert np.array_equal(normal.numpy(), _box_muller_float32(words, numel))
                torch.testing.assert_close(normal, normal_ref, rtol=0, atol=2e-6)
