"""What can end a run early, agreed on by every rank: a NaN loss, a preemption signal, ``--max-minutes``,
too many images that do not decode; and the one-line message for running out of memory.

A single process looks at its host-side flags after every step (no device sync) and at the loss only
at log and checkpoint steps. Under torchrun every check happens at log and checkpoint steps, with one
all-reduce of a few numbers (plus a gather of the new bad image records on the rare steps that have
some), so all ranks stop at the same step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..core.distributed import DistInfo, all_gather_objects, all_reduce_sum
from .config import TrainConfig
from .draws import BadImage
from .log import LogWindow
from .signals import Preemption

# why a run stopped early; any other reason is the name of the signal that asked for it
STOP_MAX_MINUTES = "max_minutes"
STOP_BAD_IMAGES = "bad_images"


def preempted(stop: str | None) -> bool:
    """Whether a stop reason is a preemption signal (the run then saves and exits, nothing else)."""
    return stop is not None and stop not in (STOP_MAX_MINUTES, STOP_BAD_IMAGES)


def default_bad_image_limit(num_images: int) -> int:
    """``--max-bad-images`` when not given: 0.1% of the dataset, but at least 10 files."""
    return max(10, num_images // 1000)


class BadImageLedger:
    """The distinct images that failed to decode so far (the same on every rank once merged)."""

    def __init__(self, dataset, limit: int):
        self.paths = getattr(dataset, "paths", None)
        self.limit = limit
        self.seen: dict[int, BadImage] = {}
        self.pending: list[BadImage] = []  # this rank's new ones, not merged yet

    def name(self, index: int) -> str:
        return str(self.paths[index]) if self.paths is not None else f"item {index} of the data"

    def note(self, records: list[BadImage]) -> None:
        """Remember this rank's substitutions of a micro-batch (first sight of each image only)."""
        for record in records:
            if record.index not in self.seen and all(p.index != record.index for p in self.pending):
                self.pending.append(record)

    def merge(self, records: list[BadImage]) -> list[BadImage]:
        """Add every rank's pending records; returns the images not seen before, in order."""
        self.pending = []
        new = []
        for record in records:
            if record.index not in self.seen:
                self.seen[record.index] = record
                new.append(record)
        return new

    @property
    def count(self) -> int:
        return len(self.seen)

    @property
    def over_limit(self) -> bool:
        return self.count > self.limit

    def describe(self, record: BadImage) -> str:
        return (f"bad image {self.name(record.index)} ({record.reason}): replaced by "
                f"{self.name(record.substitute)} (this message appears once per file)")  # fmt: skip


@dataclass
class Health:
    """What a poll found; ``stop`` names why the run should stop here (None: go on)."""

    diverged: bool = False
    stop: str | None = None  # the signal's name, STOP_MAX_MINUTES or STOP_BAD_IMAGES
    new_bad: list[BadImage] = field(default_factory=list)


class RunHealth:
    """Polls the loss window, the preemption flag, the clock and the bad-image ledger."""

    def __init__(self, dist: DistInfo, window: LogWindow, preemption: Preemption, ledger: BadImageLedger,
                 max_minutes: float | None):  # fmt: skip
        self.dist, self.window, self.preemption, self.ledger = dist, window, preemption, ledger
        self.max_minutes = max_minutes
        self.start = time.perf_counter()

    def _out_of_time(self) -> bool:
        return bool(self.max_minutes) and time.perf_counter() - self.start > 60 * self.max_minutes

    def _stop(self, preempted: bool, out_of_time: bool) -> str | None:
        if preempted:
            return self.preemption.received or "signal"
        if out_of_time:
            return STOP_MAX_MINUTES
        return STOP_BAD_IMAGES if self.ledger.over_limit else None

    def poll(self, at_sync: bool) -> Health:
        """Check after a step; ``at_sync``: a log or checkpoint step (the loss is checked only then,
        or when stopping)."""
        if not self.dist.enabled:
            new_bad = self.ledger.merge(self.ledger.pending)
            stop = self._stop(self.preemption.requested, self._out_of_time())
            diverged = (at_sync or stop is not None) and bool(self.window.nonfinite)
            return Health(diverged=diverged, stop=stop, new_bad=new_bad)
        if not at_sync:
            return Health()
        local = [float(self.preemption.requested), float(self._out_of_time()), float(len(self.ledger.pending))]
        flags = torch.cat([self.window.nonfinite.float().reshape(1), torch.tensor(local, device=self.dist.device)])
        nonfinite, preempted, out_of_time, new_count = all_reduce_sum(flags, self.dist).tolist()
        new_bad = []
        if new_count > 0:  # rare: share the records so every rank keeps the same ledger
            gathered = all_gather_objects(self.ledger.pending, self.dist)
            new_bad = self.ledger.merge([record for rank_records in gathered for record in rank_records])
        if preempted and self.preemption.received is None:
            self.preemption.received = "a preemption signal (on another rank)"
        return Health(diverged=nonfinite > 0, stop=self._stop(preempted > 0, out_of_time > 0), new_bad=new_bad)


def out_of_memory_message(cfg: TrainConfig, world_size: int, image_size: int, step: int, device) -> str:
    """One line for an out-of-memory error: what was being trained and what would use less memory."""
    per_pass = cfg.batch_size // (world_size * cfg.grad_accum)
    return (f"out of memory on {device} at step {step}: {cfg.model} at {image_size}x{image_size} px, --batch-size "
            f"{cfg.batch_size} ({per_pass} images per forward pass on each of {world_size} process(es)). "
            f"Try --grad-accum {2 * cfg.grad_accum} (same batch, half the images per pass), --grad-checkpointing, "
            f"--fsdp under torchrun, or a smaller --batch-size")  # fmt: skip
