"""Shared pieces of the benchmark scripts: timing, device facts, a synthetic dataset, random weights."""

from __future__ import annotations

import platform
import shlex
import sys
import time

import numpy as np
import torch


def echo_command() -> None:
    """Print the exact command line and the machine, so every number can be reproduced."""
    print("$ python " + " ".join(shlex.quote(a) for a in sys.argv))
    print(f"torch {torch.__version__}, python {platform.python_version()}, {device_name()}")


def device_name(device: str | torch.device | None = None) -> str:
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, warmup: int, iters: int) -> list[float]:
    """Seconds per call of ``fn`` after ``warmup`` untimed calls (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


class SyntheticDataset(torch.utils.data.Dataset):
    """Random uint8 images with labels, shaped like a real dataset (for throughput only)."""

    def __init__(self, n: int, image_size: int, num_classes: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.images = torch.from_numpy(rng.integers(0, 256, (n, 3, image_size, image_size), dtype=np.uint8))
        self.labels = np.arange(n) % max(1, num_classes)
        self.num_classes, self.image_size = num_classes, image_size
        self.class_names = [str(i) for i in range(num_classes)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


@torch.no_grad()
def randomize_zero_init(model: torch.nn.Module, std: float = 0.02, seed: int = 0) -> None:
    """Give the zero-initialised adaLN and output layers random weights, so outputs are not trivial."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if ("adaLN_modulation" in name or "final_layer.linear" in name) and not p.any():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
