"""What a training step sees: the data order (which images, on which rank) and the per-sample draws.

Epoch e visits ``randperm(n)`` seeded by (seed, e), and every draw of a sample (flip, label drop,
time, noise) is a function of (seed, step, position in the global batch), so neither depends on the
number of processes, the accumulation steps or on what ran before a resume.

An image that fails to decode mid-run is replaced by another image of its class chosen from
(seed, step, position) as well (:class:`SubstitutingDataset`), so such a run is exact too.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import default_collate

from ..core import rng
from ..data.image_folder import BAD_IMAGE_ERRORS, CorruptImageError, failure_reason
from ..diffusion.flow import FlowMatching
from ..diffusion.meanflow import PMFObjective
from .signals import ignore_signals

MAX_SUBSTITUTE_TRIES = 16


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

    def micro_batches(self) -> Iterator[tuple[int, int, list[int]]]:
        """(global step, micro-batch index, dataset indices) from ``start_step`` on, forever."""
        step = self.start_step
        while True:
            epoch, within = divmod(step, self.steps_per_epoch)
            order = self.epoch_order(epoch)
            for s in range(within, self.steps_per_epoch):
                lo = s * self.B + self.first_position(0)
                for a in range(self.accum):
                    indices = order[lo + a * self.micro : lo + (a + 1) * self.micro].tolist()
                    yield epoch * self.steps_per_epoch + s, a, indices
            step = (epoch + 1) * self.steps_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        for _, _, indices in self.micro_batches():
            yield indices


class KeyedStepSampler(StepBatchSampler):
    """:class:`StepBatchSampler` whose micro-batches hold ``(index, step, position)`` keys, the items of
    :class:`SubstitutingDataset`."""

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for step, micro_index, indices in self.micro_batches():
            first = self.first_position(micro_index)
            yield [(index, step, first + i) for i, index in enumerate(indices)]


class Augment:
    """Per-sample draws of a step from the counter-based RNG, on the batch's device: a horizontal flip
    here, label drop, time and noise from the objective (:meth:`FlowMatching.counter_draws`)."""

    def __init__(self, objective: FlowMatching, seed: int, null_label: int):
        self.objective, self.seed, self.null_label = objective, seed, null_label

    def __call__(self, x_uint8: torch.Tensor, y: torch.Tensor, step: int, positions: torch.Tensor):
        """uint8 images -> flipped [-1, 1] fp32, dropped labels, t (B,), unit noise (B, C, H, W)."""
        x = flipped(x_uint8, self.seed, step, positions)
        y, t, noise = self.objective.counter_draws(y, tuple(x.shape[1:]), self.null_label, self.seed, step, positions)
        return x, y, t, noise


class PMFAugment:
    """The pMF step's draws: the flip of :class:`Augment` and :meth:`PMFObjective.counter_draws` (times,
    noise, guidance, the flow-matching share and class dropout decided over the global batch)."""

    def __init__(self, objective: PMFObjective, seed: int, global_batch: int):
        self.objective, self.seed, self.global_batch = objective, seed, global_batch

    def __call__(self, x_uint8: torch.Tensor, y: torch.Tensor, step: int, positions: torch.Tensor):
        """uint8 images -> flipped [-1, 1] fp32, labels (dropout is in the draws), :class:`MeanFlowDraws`."""
        x = flipped(x_uint8, self.seed, step, positions)
        return x, y, self.objective.counter_draws(self.seed, step, positions, self.global_batch, tuple(x.shape[1:]))


def flipped(x_uint8: torch.Tensor, seed: int, step: int, positions: torch.Tensor) -> torch.Tensor:
    """uint8 images -> [-1, 1] fp32, each flipped horizontally with probability 1/2 (counter draws)."""
    x = x_uint8.float() / 127.5 - 1.0  # [0, 255] -> [-1, 1]
    flip = rng.uniform(seed, step, rng.STREAM_FLIP, positions)[:, 0] < 0.5  # (B,)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


class BadImage(NamedTuple):
    """An image that did not decode at a draw, and the one used instead."""

    index: int
    substitute: int
    reason: str


class SubstitutingDataset(torch.utils.data.Dataset):
    """Items ``(image, label, BadImage | None)`` for keys ``(index, step, position)``.

    An image that fails to decode is replaced by another image of the same class (any image for
    unconditional data) picked from (seed, step, position), so the replacement is the same on any
    number of processes and after a resume. ``strict``: re-raise the error instead.
    """

    def __init__(self, dataset, seed: int, strict: bool = False):
        self.dataset, self.seed, self.strict = dataset, seed, strict
        self.labels = np.asarray(dataset.labels)
        self._members: dict[int, np.ndarray] = {}  # class -> its indices, built on first need

    def __len__(self) -> int:
        return len(self.dataset)

    def _pick(self, index: int, step: int, position: int, attempt: int) -> int | None:
        """The substitute of ``attempt`` for ``index``: uniform over the other images of its class."""
        label = int(self.labels[index])
        if label not in self._members:
            self._members[label] = np.flatnonzero(self.labels == label)
        others = self._members[label][self._members[label] != index]
        if len(others) == 0:
            return None
        u = rng.uniform(self.seed, step, rng.STREAM_SUBSTITUTE, torch.tensor([position]), attempt + 1)[0, attempt]
        return int(others[min(int(u * len(others)), len(others) - 1)])

    def __getitem__(self, key: tuple[int, int, int]):
        index, step, position = key
        try:
            return (*self.dataset[index], None)
        except BAD_IMAGE_ERRORS as err:
            if self.strict:
                raise
            reason = failure_reason(err)
        for attempt in range(MAX_SUBSTITUTE_TRIES):
            substitute = self._pick(index, step, position, attempt)
            if substitute is None:
                break
            try:
                return (*self.dataset[substitute], BadImage(index, substitute, reason))
            except BAD_IMAGE_ERRORS:
                continue
        raise CorruptImageError(f"image {index} of the data does not decode ({reason}) and no other image of "
                                f"its class could replace it")  # fmt: skip


def collate_with_bad(items: list) -> tuple[torch.Tensor, torch.Tensor, list[BadImage]]:
    """(uint8 images (B, 3, H, W), labels (B,), the substitutions made in this micro-batch)."""
    images, labels = default_collate([(image, label) for image, label, _ in items])
    return images, labels, [bad for _, _, bad in items if bad is not None]


def default_workers(device: torch.device) -> int:
    """Loader processes when ``--num-workers`` is not given: 4 on CUDA, none elsewhere."""
    return 4 if device.type == "cuda" else 0


def make_loader(
    dataset, sampler: KeyedStepSampler, workers: int, device: torch.device, seed: int, strict: bool = False,
    ignored_signals: tuple[int, ...] = (),
) -> Iterator:  # fmt: skip
    """An endless iterator over this rank's micro-batches ``(uint8 images, labels, [BadImage])``.

    Worker processes ignore ``ignored_signals`` (the main process handles them)."""
    loader = torch.utils.data.DataLoader(
        SubstitutingDataset(dataset, seed, strict), batch_sampler=sampler, num_workers=workers,
        collate_fn=collate_with_bad, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=functools.partial(ignore_signals, list(ignored_signals)) if ignored_signals else None,
    )  # fmt: skip
    return iter(loader)
