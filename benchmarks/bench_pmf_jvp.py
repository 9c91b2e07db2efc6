"""Cost of the pMF training forward (u, v and du/dt by forward-mode AD) plus backward, per attention JVP route.

    OMP_NUM_THREADS=1 python benchmarks/bench_pmf_jvp.py --model pMF-Ti/4 --image-size 32 --batch-size 16
    python benchmarks/bench_pmf_jvp.py --model pMF-B/16 --batch-size 32 --device cuda

Routes: ``function`` (SDPA + an explicit attention JVP rule) and ``math`` (matmul/softmax attention that
forward AD differentiates op by op); ``no-jvp`` is the plain forward (u and v) + backward for reference.
Prints ms per step (median of the timed steps, the routes timed in turn) and the ratio to no-jvp.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from common import device_name, echo_command, timed

from jit_diffusion.models.pmf import create_pmf_model


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="pMF-Ti/4")
    p.add_argument("--image-size", type=int, default=None, help="default: the preset's")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="bf16: autocast, as training on CUDA")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    echo_command()
    device = torch.device(args.device)
    extra = {"input_size": args.image_size} if args.image_size else {}
    torch.manual_seed(0)
    model = create_pmf_model(args.model, num_classes=10, **extra).to(device)
    with torch.no_grad():  # non-zero gates and outputs, as after some training
        for name, p in model.named_parameters():
            if name.endswith("_scale") or "final_layer.linear" in name:
                p.normal_(0, 0.1)
    B, size = args.batch_size, model.config.input_size
    z, tangent = torch.randn(B, 3, size, size, device=device), torch.randn(B, 3, size, size, device=device)
    rows = lambda lo, hi: torch.rand(B, device=device) * (hi - lo) + lo  # noqa: E731
    t, h, omega = rows(0.2, 1.0), rows(0.0, 0.2), rows(1.0, 8.0)
    t_min, t_max, y = rows(0.0, 0.5), rows(0.5, 1.0), torch.randint(0, 10, (B,), device=device)

    def step(route: str):
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, torch.bfloat16, enabled=args.precision == "bf16"):
            loss = forward(route)
        loss.backward()

    def forward(route: str) -> torch.Tensor:
        if route == "no-jvp":
            u, v = model(z, t, h, omega, t_min, t_max, y)
        else:
            model.set_jvp_mode(route)
            u, v, du_dt = model(z, t, h, omega, t_min, t_max, y, jvp_tangent=tangent)
            u = u + h.view(-1, 1, 1, 1) * du_dt
        return u.float().square().mean() + v.float().square().mean()

    print(f"{args.model} at {size} px ({model.grid_size**2 + model.num_prefix} tokens), batch {B}, "
          f"{model.num_params() / 1e6:.1f}M params, {args.precision}, {device_name(device)}")  # fmt: skip
    routes = ("no-jvp", "function", "math")
    times: dict[str, list[float]] = {route: [] for route in routes}
    for route in routes:
        timed(lambda r=route: step(r), device, args.warmup, 0)
    for _ in range(args.iters):  # round robin, so that a change in machine load hits every route alike
        for route in routes:
            times[route] += timed(lambda r=route: step(r), device, 0, 1)
    base = 1000 * statistics.median(times["no-jvp"])
    for route in routes:
        ms = 1000 * statistics.median(times[route])
        print(f"  {route:9s} {ms:8.1f} ms/step   x{ms / base:.2f}")


if __name__ == "__main__":
    main()
