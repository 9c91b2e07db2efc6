"""The profile bucketing of benchmarks/profile_buckets.py on a small hand-made Kineto trace."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
profile_buckets = pytest.importorskip("profile_buckets")


def _cpu(name, ts, dur, tid=1, cat="cpu_op"):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "tid": tid, "pid": 1}


def _launch(correlation, ts, tid=1, api="cuda_runtime"):
    return {"ph": "X", "cat": api, "name": "cudaLaunchKernel", "ts": ts, "dur": 1, "tid": tid, "pid": 1,
            "args": {"correlation": correlation}}


def _kernel(name, correlation, ts, dur):
    return {"ph": "X", "cat": "kernel", "name": name, "ts": ts, "dur": dur, "tid": 7, "pid": 0,
            "args": {"correlation": correlation}}


def test_buckets_by_kernel_name_and_by_launching_range():
    events = [
        _cpu("jit::rng", 0, 100, cat="user_annotation"), _cpu("aten::bitwise_xor", 10, 20), _launch(1, 15),
        _cpu("aten::addmm", 200, 50), _launch(2, 210),
        _cpu("aten::_scaled_dot_product_cudnn_attention", 300, 50), _launch(3, 310),
        _cpu("aten::mul", 400, 10), _launch(4, 402),
        _cpu("Optimizer.step#AdamW.step", 500, 100, cat="user_annotation"), _launch(5, 510),
        _cpu("jit::ema", 700, 50, cat="user_annotation"), _launch(6, 710, api="cuda_driver"),
        _kernel("void at::native::vectorized_elementwise_kernel<4, BitwiseXor>", 1, 1000, 100),  # rng by range
        _kernel("nvjet_hsh_256x128_64x4_1x2_h_bz_coopB_TNN", 2, 1100, 400),  # gemm by name
        _kernel("cudnn_generated_fort_native_sdpa_sm90_flash_fprop", 3, 1500, 300),  # attention by name
        _kernel("triton_poi_fused_add_mul_0", 4, 1800, 50),  # elementwise
        _kernel("void multi_tensor_apply_for_fused_optimizer<FusedAdamMathFunctor>", 5, 1850, 100),
        _kernel("void multi_tensor_apply_kernel<LerpFunctor<float>>", 6, 1950, 50),
        _kernel("_counter_kernel", 99, 2000, 20),  # no launch record (e.g. inside a CUDA graph): by name
        {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy HtoD", "ts": 2020, "dur": 30, "tid": 7, "pid": 0},
        {"ph": "s", "cat": "ac2g", "name": "flow", "ts": 15, "id": 1},  # flow arrows are ignored
    ]
    result = profile_buckets.bucket_trace({"traceEvents": events}, steps=1, step_ms=1.5)
    ms = result["ms"]
    assert ms["rng"] == pytest.approx(0.12) and ms["gemm"] == pytest.approx(0.4)
    assert ms["attention"] == pytest.approx(0.3) and ms["elementwise"] == pytest.approx(0.05)
    assert ms["optimizer+ema"] == pytest.approx(0.15) and ms["copies"] == pytest.approx(0.03)
    assert result["busy"] == pytest.approx(1.05)  # kernels back to back from 1000 to 2050 us
    assert ms["idle"] == pytest.approx(1.5 - 1.05)
    assert result["kernels"] == 7
    table = profile_buckets.format_table(result, 1.5, "test")
    assert "idle" in table and "triton_poi_fused_add_mul_0" in table


def test_cpu_trace_buckets_self_time():
    events = [_cpu("aten::linear", 0, 100), _cpu("aten::addmm", 10, 80), _cpu("aten::mul", 200, 40),
              _cpu("jit::rng", 300, 50, cat="user_annotation"), _cpu("aten::bitwise_xor", 305, 40)]
    result = profile_buckets.bucket_trace({"traceEvents": events}, steps=2, step_ms=None)
    assert result["device"] == "cpu"
    assert result["ms"]["gemm"] == pytest.approx(0.05)  # (100 us of linear incl. addmm) / 2 steps
    assert result["ms"]["elementwise"] == pytest.approx(0.02)
    assert result["ms"]["rng"] == pytest.approx(0.025)
