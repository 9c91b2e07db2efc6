"""Preemption: a signal (SIGTERM from SLURM or Kubernetes, SIGUSR1, ...) asks the run to save and stop.

The handler only records the request; the loop finishes its step, every rank agrees on the stop
step, one checkpoint is written atomically and the process exits. Further signals while that happens
are recorded and otherwise ignored, so they cannot interrupt the save.
"""

from __future__ import annotations

import signal
import threading

from ..core.errors import UserError

DEFAULT_SIGNALS = "SIGTERM,SIGUSR1"


def parse_signals(text: str | None) -> list[signal.Signals]:
    """``"SIGTERM,SIGUSR1"`` (or ``TERM,USR1``) -> signals; ``""`` or ``"none"`` -> none."""
    if not text or text.strip().lower() == "none":
        return []
    found = []
    for name in (part.strip().upper() for part in text.split(",") if part.strip()):
        full = name if name.startswith("SIG") else f"SIG{name}"
        if full not in signal.Signals.__members__ or full in ("SIGKILL", "SIGSTOP"):
            raise UserError(f"--preempt-signals: {name!r} is not a signal that can be caught "
                            f"(use names like SIGTERM,SIGUSR1, or none)")  # fmt: skip
        found.append(signal.Signals[full])
    return found


def ignore_signals(numbers: list[int], worker_id: int | None = None) -> None:
    """Ignore these signals in this process (a DataLoader ``worker_init_fn``: the main process handles them)."""
    for number in numbers:
        signal.signal(number, signal.SIG_IGN)


class Preemption:
    """Records a stop request from any of ``signals``; ``install()`` for the run, ``restore()`` after."""

    def __init__(self, signals: str | None = DEFAULT_SIGNALS):
        self.signals = parse_signals(signals)
        self.received: str | None = None  # name of the first signal
        self._previous: dict[signal.Signals, object] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def _handle(self, signum: int, frame) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name

    def install(self) -> None:
        """Handle the signals in this process (only possible from the main thread; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        """Put back the handlers that were there before :meth:`install`."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
