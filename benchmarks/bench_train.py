"""Training throughput of the real trainer step (forward, backward, AdamW, all EMAs).

    python benchmarks/bench_train.py --model JiT-B/16 --batch-size 128 --compile        # CUDA
    python benchmarks/bench_train.py --model JiT-Ti/4 --batch-size 64 --device cpu      # CPU

Prints img/s, ms/step, MFU (against the datasheet bf16 peak, or --peak-tflops) and peak memory.
Warm-up steps (compilation included) are excluded from the timing.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from common import SyntheticDataset, device_name, echo_command, timed

from jit_diffusion.flops import forward_macs, peak_tflops, train_flops_per_image
from jit_diffusion.train import TrainConfig, Trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="JiT-B/16")
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    p.add_argument("--compile", action="store_true")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak for MFU (default: datasheet bf16)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    echo_command()
    cfg = TrainConfig(model=args.model, img_size=args.img_size, batch_size=args.batch_size, steps=10**9,
                      lr=1e-4, warmup_steps=0, device=args.device, precision=args.precision, compile=args.compile,
                      grad_checkpointing=args.grad_checkpointing, sample_every=0, out="/tmp/jit-bench-unused")
    from jit_diffusion.train import model_config

    size = model_config(cfg, args.num_classes).input_size
    data = SyntheticDataset(args.batch_size, size, args.num_classes)
    trainer = Trainer(cfg, dataset=data)
    device = trainer.device
    batch = (data.images, torch.as_tensor(data.labels))
    if device.type == "cuda":
        batch = (batch[0].pin_memory(), batch[1].pin_memory())
        torch.cuda.reset_peak_memory_stats(device)

    def step():
        trainer.train_step([batch], 1e-4)
        trainer.step += 1

    times = timed(step, device, args.warmup, args.steps)
    sec = statistics.median(times)
    mc = trainer.raw_model.config
    img_s = args.batch_size / sec
    flops = train_flops_per_image(mc) * img_s
    peak = args.peak_tflops or peak_tflops(device_name(device))
    print(f"model {args.model} @ {mc.input_size}px, {trainer.raw_model.num_params() / 1e6:.2f}M params, "
          f"{forward_macs(mc) / 1e9:.2f} G multiply-adds per image forward")
    print(f"batch {args.batch_size}, {device_name(device)}, precision {args.precision}, compile {args.compile}")
    print(f"train: {img_s:.1f} img/s, {sec * 1e3:.1f} ms/step (median of {args.steps}), "
          f"{flops / 1e12:.2f} TFLOP/s" + (f", MFU {100 * flops / (peak * 1e12):.1f}% of {peak:.0f}" if peak else ""))
    if device.type == "cuda":
        print(f"peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
