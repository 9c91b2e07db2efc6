"""Sampling throughput: Heun-50 with CFG in an interval (the evaluation setting).

    python benchmarks/bench_sample.py --model JiT-B/16 --batch-size 128 --cfg 2.9 --compile   # CUDA
    python benchmarks/bench_sample.py --model JiT-Ti/4 --batch-size 32 --steps 10 --device cpu

Counts the network rows actually evaluated (conditional + unconditional) and reports img/s and MFU.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from common import device_name, echo_command, randomize_zero_init, timed

from jit_diffusion import create_model
from jit_diffusion.flops import forward_macs, peak_tflops
from jit_diffusion.generate import autocast_context, resolve_device
from jit_diffusion.sampling import sample


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="JiT-B/16")
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--method", default="heun")
    p.add_argument("--cfg", type=float, default=2.9)
    p.add_argument("--interval", default="0.1,1.0")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    p.add_argument("--compile", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    echo_command()
    device = resolve_device(args.device)
    overrides = {"input_size": args.img_size} if args.img_size else {}
    model = create_model(args.model, num_classes=1000, **overrides)
    randomize_zero_init(model)
    model = model.to(device).eval()
    if args.compile:
        model.compile_blocks()
    size = model.config.input_size
    noise = torch.randn(args.batch_size, 3, size, size, device=device)
    labels = torch.arange(args.batch_size, device=device) % 1000
    interval = tuple(float(v) for v in args.interval.split(","))
    counter = {}

    def run():
        with autocast_context(device, args.precision):
            sample(model, noise, labels, method=args.method, steps=args.steps, cfg=args.cfg, cfg_interval=interval,
                   velocity_hook=lambda v: counter.__setitem__("v", v))

    times = timed(run, device, args.warmup, args.repeats)
    sec = statistics.median(times)
    rows_per_image = counter["v"].rows / args.batch_size
    macs = forward_macs(model.config)
    flops = 2 * macs * rows_per_image * args.batch_size / sec
    peak = args.peak_tflops or peak_tflops(device_name(device))
    print(f"model {args.model} @ {size}px, {macs / 1e9:.2f} G multiply-adds per forward row")
    print(f"{args.method}-{args.steps}, cfg {args.cfg} in {interval}: {counter['v'].calls} evaluations, "
          f"{rows_per_image:.0f} network rows per image")
    print(f"batch {args.batch_size}, {device_name(device)}, precision {args.precision}, compile {args.compile}")
    print(f"sample: {args.batch_size / sec:.2f} img/s, {sec:.2f} s per batch (median of {args.repeats}), "
          f"{flops / 1e12:.2f} TFLOP/s" + (f", MFU {100 * flops / (peak * 1e12):.1f}% of {peak:.0f}" if peak else ""))


if __name__ == "__main__":
    main()
