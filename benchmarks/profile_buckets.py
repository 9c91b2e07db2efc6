"""Where a training step's time goes: torch.profiler kernels summed into buckets per step.

    python profile_buckets.py TRACE.json --steps 3 --step-ms 49.2      # re-bucket a saved trace

Buckets: GEMM (cuBLAS/CUTLASS/convolutions), attention (SDPA kernels), elementwise (every other
kernel: norms, RoPE, activations, Inductor's fused kernels), RNG (the counter-based draws), optimizer
+ EMA, copies (memcpy/memset), and idle = the measured step time minus the time the GPU was busy.
A kernel goes to a bucket by its name when the name says (GEMM, attention, our RNG kernel, fused
AdamW, foreach lerp/norm), otherwise by the innermost labelled CPU range that launched it
(``jit::rng``, ``jit::ema``, ``Optimizer.step``, ``aten::mm``, ...). On a CPU (no kernels) the
self time of every CPU op is bucketed the same way, as a smoke check of the script.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
from collections import Counter, defaultdict
from pathlib import Path

BUCKETS = ("gemm", "attention", "elementwise", "rng", "optimizer+ema", "copies", "idle")
RNG_LABEL, EMA_LABEL = "jit::rng", "jit::ema"

_KERNEL_RULES = [  # (bucket, substrings of a lower-cased kernel name), first match wins
    ("attention", ("flash", "fmha", "sdpa", "attention", "attn")),
    ("gemm", ("gemm", "nvjet", "cutlass", "xmma", "gemv", "splitkreduce", "triton_tem", "cublas")),
    ("rng", ("_counter_kernel",)),
    ("optimizer+ema", ("adam", "lerp", "lpnorm", "multi_tensor_apply")),
]
_CPU_RULES = [  # the same for a CPU op or labelled range
    ("rng", (RNG_LABEL,)),
    ("optimizer+ema", (EMA_LABEL, "optimizer.step", "clip_grad")),
    ("attention", ("scaled_dot_product", "flash_attention", "efficient_attention", "cudnn_attention")),
    ("gemm", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "convolution", "aten::conv")),
]


def _match(name: str, rules) -> str | None:
    lower = name.lower()
    for bucket, needles in rules:
        if any(n in lower for n in needles):
            return bucket
    return None


def _cpu_contexts(events: list[dict]) -> dict[int, list[tuple[float, float, str]]]:
    """Per thread: (start, end, bucket) of every CPU op/range, its bucket inherited from the enclosing one."""
    by_thread = defaultdict(list)
    for e in events:
        if e.get("cat") in ("cpu_op", "user_annotation") and "dur" in e:
            by_thread[e["tid"]].append(e)
    contexts = {}
    for tid, ops in by_thread.items():
        ops.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack, out = [], []
        for e in ops:
            start, end = e["ts"], e["ts"] + e["dur"]
            while stack and stack[-1][1] <= start:
                stack.pop()
            bucket = _match(e["name"], _CPU_RULES) or (stack[-1][2] if stack else "elementwise")
            stack.append((start, end, bucket))
            out.append((start, end, bucket))
        contexts[tid] = out
    return contexts


def _launch_bucket(contexts, tid, ts) -> str | None:
    """Bucket of the innermost CPU range of thread ``tid`` that contains time ``ts``."""
    ops = contexts.get(tid, [])
    i = bisect.bisect_right(ops, (ts, float("inf"), "")) - 1
    best = None
    while i >= 0:  # ops are sorted by start; the innermost containing range starts last
        start, end, bucket = ops[i]
        if start <= ts < end:
            best = bucket
            break
        i -= 1
    return best


def _busy_ms(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals in microseconds -> ms."""
    total, current_end = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > current_end:
            total += end - max(start, current_end)
            current_end = end
    return total / 1e3


def bucket_trace(trace: dict, steps: int, step_ms: float | None) -> dict:
    """{"ms": {bucket: ms per step}, "kernels": kernels per step, "top": [(name, ms per step)], "device": ...}."""
    events = trace.get("traceEvents", trace if isinstance(trace, list) else [])
    contexts = _cpu_contexts(events)
    launches = {e["args"]["correlation"]: e for e in events
                if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})}
    gpu = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e]
    ms, names = Counter(), Counter()
    if gpu:
        for e in gpu:
            if e["cat"] != "kernel":
                bucket = "copies"
            else:
                launch = launches.get(e.get("args", {}).get("correlation"))
                context = _launch_bucket(contexts, launch["tid"], launch["ts"]) if launch else None
                bucket = _match(e["name"], _KERNEL_RULES) or context or "elementwise"
                if bucket == "gemm" and context == "attention":
                    bucket = "attention"  # the matmuls of the math SDPA backend
            ms[bucket] += e["dur"] / 1e3
            names[(bucket, e["name"][:90])] += e["dur"] / 1e3
        busy = _busy_ms([(e["ts"], e["ts"] + e["dur"]) for e in gpu])
        count, device = len([e for e in gpu if e["cat"] == "kernel"]), "cuda"
    else:  # CPU: the self time of each op, bucketed by the op or its enclosing range
        for ops in contexts.values():
            for k, (start, end, bucket) in enumerate(ops):
                children = sum(e2 - s2 for s2, e2, _ in _direct_children(ops, k))
                ms[bucket] += (end - start - children) / 1e3
        busy, count, device = sum(ms.values()), 0, "cpu"
    out = {b: ms[b] / steps for b in BUCKETS if b != "idle"}
    out["idle"] = max(0.0, step_ms - busy / steps) if step_ms else 0.0
    top = sorted(((n, t / steps) for (b, n), t in names.items() if b == "elementwise"), key=lambda x: -x[1])[:12]
    return {"ms": out, "kernels": count / steps, "busy": busy / steps, "top": top, "device": device}


def _direct_children(ops, k):
    start, end, _ = ops[k]
    depth_end = start
    for j in range(k + 1, len(ops)):
        s2, e2, b2 = ops[j]
        if s2 >= end:
            break
        if s2 >= depth_end:  # a direct child: starts after the previous child ended
            yield s2, min(e2, end), b2
            depth_end = e2


def format_table(result: dict, step_ms: float | None, label: str) -> str:
    """The per-bucket summary, one line per bucket, as printed by the benchmarks."""
    lines = [f"profile [{label}] ({result['device']}): {result['kernels']:.0f} kernels per step, "
             f"busy {result['busy']:.2f} ms" + (f" of a {step_ms:.2f} ms step" if step_ms else "")]
    total = step_ms or sum(result["ms"].values())
    for bucket in BUCKETS:
        value = result["ms"][bucket]
        lines.append(f"  {bucket:<14} {value:8.2f} ms  {100 * value / max(total, 1e-9):5.1f}%")
    if result["top"]:
        lines.append("  largest elementwise kernels (ms per step):")
        lines += [f"    {t:7.3f}  {name}" for name, t in result["top"]]
    return "\n".join(lines)


@contextlib.contextmanager
def labelled(obj, attribute: str, label: str):
    """Wrap ``obj.attribute`` (a callable) in a profiler range named ``label`` for the duration."""
    import torch

    original = getattr(obj, attribute)

    def wrapper(*args, **kwargs):
        with torch.profiler.record_function(label):
            return original(*args, **kwargs)

    setattr(obj, attribute, wrapper)
    try:
        yield
    finally:
        setattr(obj, attribute, original)


def profile_steps(step_fn, device, steps: int, trace_path: Path) -> dict:
    """Run ``step_fn`` ``steps`` times under torch.profiler and save the Chrome trace; returns it."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step_fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    trace_path.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(trace_path))
    return json.loads(trace_path.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace", type=Path, help="Chrome trace written by torch.profiler")
    p.add_argument("--steps", type=int, required=True, help="training steps the trace holds")
    p.add_argument("--step-ms", type=float, default=None, help="measured step time, for the idle bucket")
    args = p.parse_args()
    result = bucket_trace(json.loads(args.trace.read_text()), args.steps, args.step_ms)
    print(format_table(result, args.step_ms, args.trace.name))


if __name__ == "__main__":
    main()
