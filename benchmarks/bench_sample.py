"""Sampling throughput: Heun-50 with CFG in an interval (the evaluation setting).

    python benchmarks/bench_sample.py --model JiT-B/16 --batch-sizes 128,256,512 --cfg 2.9 --compile model  # CUDA
    python benchmarks/bench_sample.py --model JiT-Ti/4 --batch-size 32 --steps 10 --device cpu

Counts the network rows actually evaluated (conditional + unconditional) and reports img/s and MFU
for each batch size, then the best one. The warm-up is a 2-step sample, which compiles both row
counts (with and without the CFG rows) of a batch size without running a whole sample.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from common import device_name, echo_command, randomize_zero_init, timed

from jit_diffusion import create_model
from jit_diffusion.core import kernels
from jit_diffusion.diffusion.generate import autocast_context, resolve_device
from jit_diffusion.diffusion.sampling import sample
from jit_diffusion.models.flops import forward_macs, peak_tflops


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="JiT-B/16")
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--batch-size", "--batch-sizes", dest="batch_sizes", default="128",
                   help="one batch size or a comma-separated list, e.g. 128,256,512")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--method", default="heun")
    p.add_argument("--cfg", type=float, default=2.9)
    p.add_argument("--interval", default="0.1,1.0")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1, help="untimed 2-step samples first (compilation)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    p.add_argument("--compile", nargs="?", const="blocks", default="none", choices=("none", "blocks", "model"),
                   help="torch.compile each block (blocks, also plain --compile) or the whole forward (model)")
    p.add_argument("--dynamic-batch", action="store_true",
                   help="compile with automatic dynamic shapes: one graph for every batch size after the second")
    p.add_argument("--kernels", default="auto", choices=kernels.MODES, help="Triton kernels: auto = on CUDA")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args()


def measure(model, batch_size: int, device: torch.device, interval, args):
    """Median seconds of a whole sample of ``batch_size`` images (after 2-step warm-ups), and its counter."""
    size = model.config.input_size
    noise = torch.randn(batch_size, 3, size, size, device=device)
    labels = torch.arange(batch_size, device=device) % 1000
    seen = {}

    def run(steps: int):
        with autocast_context(device, args.precision):
            sample(model, noise, labels, method=args.method, steps=steps, cfg=args.cfg, cfg_interval=interval,
                   velocity_hook=lambda v: seen.__setitem__("v", v))

    for _ in range(args.warmup):
        run(2)
    sec = statistics.median(timed(lambda: run(args.steps), device, 0, args.repeats))
    return sec, seen["v"]


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    echo_command()
    kernels.set_mode(args.kernels)
    device = resolve_device(args.device)
    overrides = {"input_size": args.img_size} if args.img_size else {}
    model = create_model(args.model, num_classes=1000, **overrides)
    randomize_zero_init(model)
    model = model.to(device).eval()
    if args.compile != "none":
        model.compile_model(args.compile, **({"dynamic": None} if args.dynamic_batch else {}))
    size = model.config.input_size
    interval = tuple(float(v) for v in args.interval.split(","))
    macs = forward_macs(model.config)
    peak = args.peak_tflops or peak_tflops(device_name(device))
    print(f"model {args.model} @ {size}px, {macs / 1e9:.2f} G multiply-adds per forward row")
    print(f"{device_name(device)}, precision {args.precision}, compile {args.compile}"
          f"{' (dynamic batch)' if args.dynamic_batch else ''}, kernels {kernels.get_mode()}")
    results = {}
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        sec, velocity = measure(model, batch_size, device, interval, args)
        rows_per_image = velocity.rows / batch_size
        flops = 2 * macs * rows_per_image * batch_size / sec
        results[batch_size] = batch_size / sec
        print(f"{args.method}-{args.steps}, cfg {args.cfg} in {interval}: {velocity.calls} evaluations, "
              f"{rows_per_image:.0f} network rows per image")
        print(f"sample: batch {batch_size}: {batch_size / sec:.2f} img/s, {sec:.2f} s per batch (median of "
              f"{args.repeats}), {flops / 1e12:.2f} TFLOP/s"
              + (f", MFU {100 * flops / (peak * 1e12):.1f}% of {peak:.0f}" if peak else ""))  # fmt: skip
        if device.type == "cuda":
            print(f"peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    best = max(results, key=results.get)
    if len(results) > 1:
        print(f"sample: best batch {best}: {results[best]:.2f} img/s")


if __name__ == "__main__":
    main()
