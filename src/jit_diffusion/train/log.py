"""What a run reports between two log lines: mean loss, img/s, a NaN flag; the progress bar and TensorBoard."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from ..core.distributed import DistInfo, all_reduce_mean


class LogWindow:
    """Losses of the steps since the last log line, kept on the device (no host sync per step)."""

    def __init__(self, device: torch.device, images_per_step: int):
        self.images_per_step = images_per_step
        self.loss_sum = torch.zeros((), device=device)
        self.steps = 0
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor) -> None:
        self.loss_sum += loss
        self.steps += 1

    @property
    def nonfinite(self) -> torch.Tensor:
        """Whether a loss of the window was NaN or infinite (both carry through the sum), on the device."""
        return ~torch.isfinite(self.loss_sum)

    def restart_clock(self) -> None:
        """Keep img/s about training only (call after checkpoints and sample grids)."""
        self.start = time.perf_counter()

    def close(self, dist: DistInfo) -> dict:
        """Mean loss over ranks and steps, img/s; starts the next window."""
        mean_loss = (all_reduce_mean(self.loss_sum, dist) / max(self.steps, 1)).item()
        img_s = self.steps * self.images_per_step / max(time.perf_counter() - self.start, 1e-9)
        self.loss_sum.zero_()
        self.steps = 0
        self.restart_clock()
        return {"loss": mean_loss, "img_per_sec": img_s}


class RunLog:
    """The progress bar (rank 0 draws it) and the TensorBoard writer (rank 0 only)."""

    def __init__(self, run_dir: Path, dist: DistInfo, total_steps: int, start_step: int):
        from tqdm.auto import tqdm

        self.is_main = dist.is_main
        self.writer = None
        if dist.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tb"))
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not dist.is_main, unit="step",
                        dynamic_ncols=True, file=sys.stdout)  # fmt: skip

    def scalars(self, step: int, **values: float) -> None:
        """TensorBoard scalars ``train/NAME`` at ``step``."""
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"train/{name}", value, step)

    def say(self, line: str) -> None:
        """Print a line on rank 0 without breaking the progress bar."""
        if self.is_main:
            self.bar.write(line, file=sys.stdout)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
