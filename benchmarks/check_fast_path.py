"""Numerical check of the fast path (bf16 autocast with a bf16 residual stream, SDPA, the Triton
kernels on CUDA, optional torch.compile) against the fp32 eager PyTorch reference on the same random weights.

    python benchmarks/check_fast_path.py --model JiT-B/16 --compile model    # CUDA
    python benchmarks/check_fast_path.py --model JiT-Ti/8 --device cpu      # CPU (bf16 autocast)

Passes when the relative L2 error of the network output is <= 1e-2 and of a whole Heun-50 CFG
sample is <= 2e-2; exits non-zero otherwise.
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch
from common import echo_command, randomize_zero_init

from jit_diffusion import create_model
from jit_diffusion.core import kernels
from jit_diffusion.diffusion.generate import resolve_device
from jit_diffusion.diffusion.sampling import sample


def rel_l2(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.float() - ref.float()).norm() / ref.float().norm()).item()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="JiT-B/16")
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg", type=float, default=2.9)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", nargs="?", const="blocks", default="none", choices=("none", "blocks", "model"),
                   help="torch.compile each block (blocks, also plain --compile) or the whole forward (model)")
    p.add_argument("--kernels", default="auto", choices=kernels.MODES, help="Triton kernels of the fast path")
    args = p.parse_args()
    echo_command()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    overrides = {"input_size": args.img_size} if args.img_size else {}
    ref_model = create_model(args.model, num_classes=1000, **overrides)
    randomize_zero_init(ref_model, std=0.05)
    ref_model = ref_model.to(device).eval()
    fast_model = copy.deepcopy(ref_model)
    if args.compile != "none":
        fast_model.compile_model(args.compile)
    size = ref_model.config.input_size
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, size, size, generator=gen).to(device)
    t = torch.rand(args.batch_size, generator=gen).to(device)
    y = torch.randint(0, 1000, (args.batch_size,), generator=gen).to(device)
    if device.type == "cuda":  # the reference: fp32 without TF32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    noise = torch.randn(args.batch_size, 3, size, size, generator=gen).to(device)
    with kernels.mode("off"), torch.no_grad():  # the reference: PyTorch code, fp32
        ref_out = ref_model(x, t, y)
        ref_img = sample(ref_model, noise, y, steps=args.steps, cfg=args.cfg)
    with kernels.mode(args.kernels), torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        fast_out = fast_model(x, t, y)
        fast_img = sample(fast_model, noise, y, steps=args.steps, cfg=args.cfg)
    net_err, sample_err = rel_l2(fast_out, ref_out), rel_l2(fast_img, ref_img)
    ok = net_err <= 1e-2 and sample_err <= 2e-2
    print(f"{args.model} @ {size}px on {device}, compile {args.compile}, kernels {args.kernels}:")
    print(f"network output rel L2 {net_err:.2e} (<= 1e-2), "
          f"Heun-{args.steps} CFG {args.cfg} sample rel L2 {sample_err:.2e} (<= 2e-2): {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
