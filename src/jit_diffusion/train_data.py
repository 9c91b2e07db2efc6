"""What a training step sees: the data order (which images, on which rank) and the per-sample draws.

Epoch e visits ``randperm(n)`` seeded by (seed, e), and every draw of a sample (flip, label drop,
time, noise) is a function of (seed, step, position in the global batch), so neither depends on the
number of processes, the accumulation steps or on what ran before a resume.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from . import rng
from .flow import FlowMatching


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields this rank's micro-batches of indices from global step ``start_step`` on, forever.

    Epoch e is ``randperm(n)`` seeded by (seed, e); global step s of the epoch takes the slice
    [s*B, (s+1)*B) (the tail shorter than B is dropped). Rank r owns positions [r*B/W, (r+1)*B/W)
    of that slice, split into ``accum`` consecutive micro-batches.
    """

    def __init__(self, n: int, global_batch: int, world: int, rank: int, accum: int, seed: int, start_step: int):
        self.n, self.B, self.world, self.rank, self.accum = n, global_batch, world, rank, accum
        self.seed, self.start_step = seed, start_step
        self.steps_per_epoch = n // global_batch
        self.local = global_batch // world
        self.micro = self.local // accum

    def epoch_order(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.n, generator=gen)

    def first_position(self, micro_index: int) -> int:
        """Position in the global batch of the first image of this rank's micro-batch ``micro_index``."""
        return self.rank * self.local + micro_index * self.micro

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            epoch, within = divmod(step, self.steps_per_epoch)
            order = self.epoch_order(epoch)
            for s in range(within, self.steps_per_epoch):
                lo = s * self.B + self.first_position(0)
                for a in range(self.accum):
                    yield order[lo + a * self.micro : lo + (a + 1) * self.micro].tolist()
            step = (epoch + 1) * self.steps_per_epoch


class Augment:
    """Per-sample draws of a step from the counter-based RNG, on the batch's device: a horizontal flip
    here, label drop, time and noise from the objective (:meth:`FlowMatching.counter_draws`)."""

    def __init__(self, objective: FlowMatching, seed: int, null_label: int):
        self.objective, self.seed, self.null_label = objective, seed, null_label

    def __call__(self, x_uint8: torch.Tensor, y: torch.Tensor, step: int, positions: torch.Tensor):
        """uint8 images -> flipped [-1, 1] fp32, dropped labels, t (B,), unit noise (B, C, H, W)."""
        x = x_uint8.float() / 127.5 - 1.0  # [0, 255] -> [-1, 1]
        flip = rng.uniform(self.seed, step, rng.STREAM_FLIP, positions)[:, 0] < 0.5  # (B,)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        y, t, noise = self.objective.counter_draws(y, tuple(x.shape[1:]), self.null_label, self.seed, step, positions)
        return x, y, t, noise


def default_workers(device: torch.device) -> int:
    """Loader processes when ``--num-workers`` is not given: 4 on CUDA, none elsewhere."""
    return 4 if device.type == "cuda" else 0


def make_loader(dataset, sampler: StepBatchSampler, workers: int, device: torch.device) -> Iterator:
    """An endless iterator over this rank's micro-batches ``(uint8 images, labels)``."""
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda",
        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
    )  # fmt: skip
    return iter(loader)
