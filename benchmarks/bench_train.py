"""Training throughput of the real trainer step (forward, backward, AdamW, all EMAs).

    python benchmarks/bench_train.py --model JiT-B/16 --batch-size 128 --compile blocks --kernels off  # before
    python benchmarks/bench_train.py --model JiT-B/16 --batch-size 128 --compile model --cuda-graph   # fast path
    python benchmarks/bench_train.py --model JiT-Ti/4 --batch-size 64 --device cpu --profile 2       # CPU
    python benchmarks/bench_train.py --model pMF-Ti/4 --batch-size 32 --device cpu --threads 1       # pMF step
    python benchmarks/bench_train.py --model pMF-Ti/8 --img-size 32 --batch-size 32 --device cpu --threads 1 \
        --optimizer adamw --fm-fraction 0.5 --cfg-max 0 --label-drop 0 --jvp-tangent sample --jvp-method difference

A pMF model (--model pMF-...) runs the pMF objective (v-head target, forward-mode JVP, u and v losses) with
its recipe's optimizer (Muon + Nesterov Adam, or --optimizer adamw) and EDM EMAs; compare it with the JiT
preset of the same width and patch (pMF-Ti/4 vs JiT-Ti/4) at the same batch. MFU is JiT's only.

Prints img/s, ms/step, MFU (against the datasheet bf16 peak, or --peak-tflops) and peak memory.
Warm-up steps (compilation and the CUDA-graph capture included) are excluded from the timing.
``--profile N`` adds a torch.profiler run of N steps summed into buckets (see profile_buckets.py);
with ``--cuda-graph`` those N steps are the eager steps just before the capture (the same kernels),
and idle is the graph's measured step time minus their busy time.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from common import SyntheticDataset, device_name, echo_command, timed
from profile_buckets import EMA_LABEL, RNG_LABEL, bucket_trace, format_table, labelled, profile_steps

from jit_diffusion.core import kernels
from jit_diffusion.diffusion.meanflow import TANGENTS
from jit_diffusion.models.flops import forward_macs, peak_tflops, train_flops_per_image
from jit_diffusion.train.config import JVP_METHODS, with_family_defaults
from jit_diffusion.train.trainer import TrainConfig, Trainer, model_config


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="JiT-B/16")
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    p.add_argument("--compile", nargs="?", const="blocks", default="none", choices=("none", "blocks", "model"),
                   help="torch.compile each block (blocks, also plain --compile) or the whole forward (model)")
    p.add_argument("--kernels", default="auto", choices=kernels.MODES,
                   help="Triton kernels (fused qk-norm + RoPE, counter draws): auto = on CUDA; off = PyTorch")
    p.add_argument("--cuda-graph", action="store_true", help="capture the whole step in a CUDA graph")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="profile N steps and print the buckets")
    p.add_argument("--trace-dir", type=Path, default=Path("/tmp/jit-traces"), help="where --profile saves traces")
    p.add_argument("--label", default=None, help="name of this configuration in the output")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak for MFU (default: datasheet bf16)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads")
    p.add_argument("--optimizer", default=None, choices=("adamw", "muon"), help="default: the family's")
    p.add_argument("--fm-fraction", type=float, default=None, help="pMF: share of the batch with r = t")
    p.add_argument("--cfg-max", type=float, default=None, help="pMF: guidance range (0 = no guidance)")
    p.add_argument("--label-drop", type=float, default=None, help="pMF: class dropout")
    p.add_argument("--jvp-tangent", default=None, choices=TANGENTS, help="pMF: the JVP's dz")
    p.add_argument("--jvp-method", default=None, choices=JVP_METHODS, help="pMF: how du/dt is computed")
    return p.parse_args()


def build_step(args: argparse.Namespace):
    """The trainer and a zero-argument function running one optimizer step on a fixed batch."""
    kernels.set_mode(args.kernels)
    given = dict(model=args.model, img_size=args.img_size, batch_size=args.batch_size, steps=10**9, lr=1e-4,
                 warmup_steps=0, device=args.device, precision=args.precision, compile=False,
                 cuda_graph=args.cuda_graph, grad_checkpointing=args.grad_checkpointing, sample_every=0,
                 out="/tmp/jit-bench-unused")  # fmt: skip
    for name in ("optimizer", "fm_fraction", "cfg_max", "label_drop", "jvp_tangent", "jvp_method"):
        if getattr(args, name) is not None:
            given[name] = getattr(args, name)
    cfg = TrainConfig(**with_family_defaults(given))  # pMF: its objective, optimizer and EMAs
    size = model_config(cfg, args.num_classes).input_size
    data = SyntheticDataset(args.batch_size, size, args.num_classes)
    trainer = Trainer(cfg, dataset=data)
    if args.compile != "none":
        trainer.raw_model.compile_model(args.compile)
    batch = (data.images, torch.as_tensor(data.labels))
    if trainer.device.type == "cuda":
        batch = (batch[0].pin_memory(), batch[1].pin_memory())
    graphed = trainer.graphed  # --cuda-graph: the trainer's steps go through the static-buffer step
    if graphed is not None:
        graphed.warmup_steps = 1 + args.profile  # the profiled steps run eagerly, just before the capture

    def step():
        trainer.train_step([batch], 1e-4)
        trainer.step += 1

    return trainer, graphed, step


def run_profile(args, trainer, graphed, step) -> dict:
    """Profile ``args.profile`` steps with the RNG and EMA calls labelled; returns the Chrome trace."""
    owner = graphed if graphed is not None else trainer
    with labelled(owner, "augment", RNG_LABEL), labelled(owner.ema, "update", EMA_LABEL):
        return profile_steps(step, trainer.device, args.profile, args.trace_dir / f"{args.label or 'train'}.json")


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    echo_command()
    trainer, graphed, step = build_step(args)
    device = trainer.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trace = None
    if graphed is not None and args.profile:  # the eager steps just before the capture: the same kernels
        step()  # compiles
        trace = run_profile(args, trainer, graphed, step)
    times = timed(step, device, args.warmup, args.steps)
    sec = statistics.median(times)
    mc = trainer.raw_model.config
    img_s = args.batch_size / sec
    jit = trainer.cfg.family == "jit"
    flops = train_flops_per_image(mc) * img_s if jit else 0.0
    peak = (args.peak_tflops or peak_tflops(device_name(device))) if jit else None
    macs = f", {forward_macs(mc) / 1e9:.2f} G multiply-adds per image forward" if jit else ""
    print(f"model {args.model} @ {mc.input_size}px, {trainer.raw_model.num_params() / 1e6:.2f}M params{macs}")
    print(f"batch {args.batch_size}, {device_name(device)}, precision {args.precision}, compile {args.compile}, "
          f"kernels {kernels.get_mode()}, cuda graph {graphed is not None and graphed.graph is not None}, "
          f"optimizer {trainer.cfg.optimizer}")
    label = f"[{args.label}] " if args.label else ""
    print(f"train: {label}{img_s:.1f} img/s, {sec * 1e3:.1f} ms/step (median of {args.steps})"
          + (f", {flops / 1e12:.2f} TFLOP/s" if jit else "")
          + (f", MFU {100 * flops / (peak * 1e12):.1f}% of {peak:.0f}" if peak else ""))
    if device.type == "cuda":
        print(f"peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    if args.profile:
        trace = trace or run_profile(args, trainer, graphed, step)
        print(format_table(bucket_trace(trace, args.profile, sec * 1e3), sec * 1e3, args.label or "train"))


if __name__ == "__main__":
    main()
