"""A run folder as the studio shows it: the preview grids training wrote (``samples/step_XXXXXXXX.png``)
and the loss curve from its TensorBoard event files (``tb/``, tag ``train/loss``)."""

from __future__ import annotations

import re
from pathlib import Path

PREVIEW = re.compile(r"step_(\d+)\.png$")
LOSS_TAG = "train/loss"


def is_run_folder(path: str | Path) -> bool:
    """Whether ``path`` is a training run's folder (it has preview grids or event files)."""
    path = Path(path)
    return path.is_dir() and ((path / "samples").is_dir() or (path / "tb").is_dir())


def preview_grids(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of each preview grid, by step."""
    folder = Path(run_dir) / "samples"
    found = [(int(m.group(1)), p) for p in folder.glob("step_*.png") if (m := PREVIEW.search(p.name))]
    return sorted(found)


def nearest_preview(grids: list[tuple[int, Path]], step: float) -> tuple[int, Path] | None:
    """The grid at the last step <= ``step`` (the first grid when ``step`` is before all)."""
    if not grids:
        return None
    before = [g for g in grids if g[0] <= step]
    return before[-1] if before else grids[0]


def loss_curve(run_dir: str | Path, tag: str = LOSS_TAG) -> list[tuple[int, float]]:
    """(step, value) of ``tag`` over every event file of ``tb/``; a step logged again after a resume keeps
    its last value."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    by_step: dict[int, float] = {}
    for events in sorted((Path(run_dir) / "tb").glob("events.out.tfevents.*"), key=_written):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags().get("scalars", []):
            by_step.update((int(e.step), float(e.value)) for e in acc.Scalars(tag))
    return sorted(by_step.items())


def _written(path: Path) -> tuple[int, str]:
    """An event file's creation time, from its name (``events.out.tfevents.<unix time>.<host>...``)."""
    stamp = path.name.split(".")[3]
    return (int(stamp) if stamp.isdigit() else 0, path.name)


def loss_figure(points: list[tuple[int, float]], title: str = "training loss"):
    """A matplotlib figure of the loss against the step (log scale when the loss is positive)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.2), layout="tight")
    ax = fig.add_subplot()
    if points:
        steps, values = zip(*points)
        ax.plot(steps, values, lw=1.2)
        if min(values) > 0:
            ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no loss logged yet", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.grid(alpha=0.3)
    return fig
