"""Sweeps of ``jit eval``: the settings a sweep visits and the summary files of its results.

A :class:`Setting` is one point of the sweep; its fields are the sweep's axes. A row is the record of
one scored setting (``setting`` name, the setting's fields, ``num``, ``metrics``); the writers take a
list of rows and write ``sweep.md`` (a table), ``sweep.csv`` and ``sweep.png`` (each metric against
the guidance weight, one line per combination of the other axes; when the sweep varies the solver or
its steps, against network evaluations instead). A new axis is a new field of :class:`Setting` (and a
part of its name): the table, the CSV and the figure's legend pick it up.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core.fileio import atomic_write_bytes


@dataclass(frozen=True)
class Setting:
    """One point of a sweep: which weights, guidance weight, solver, number of steps and (pMF) class scale."""

    ema: str
    cfg: float
    method: str = "heun"
    steps: int = 50
    class_scale: float = 1.0
    # the solver and steps are part of the folder name only when the sweep varies them
    name_sampler: bool = dataclasses.field(default=False, compare=False, repr=False)

    @property
    def name(self) -> str:
        """Folder name of the setting's samples and metrics, e.g. ``ema1-cfg2.9``, ``ema1-cfg2.9-dpm++2m-10`` or
        (a class scale other than 1) ``ema1-cfg1-cs1.5``."""
        sampler = f"-{self.method}-{self.steps}" if self.name_sampler else ""
        return f"{self.ema}-cfg{self.cfg:g}{sampler}" + (f"-cs{self.class_scale:g}" if self.class_scale != 1 else "")

    def fields(self) -> dict:
        """The setting's axes and their values, in declaration order."""
        return {a: getattr(self, a) for a in AXES}


AXES = ("ema", "cfg", "method", "steps", "class_scale")


def sweep_settings(emas: Sequence[str], cfgs: Sequence[float], methods: Sequence[str] = ("heun",),
                   steps: Sequence[int] = (50,), class_scales: Sequence[float] = (1.0,)) -> list[Setting]:  # fmt: skip
    """Every combination of the axes' values, the first axis slowest."""
    methods, steps = list(dict.fromkeys(methods)), list(dict.fromkeys(steps))
    name_sampler = len(methods) > 1 or len(steps) > 1
    axes = itertools.product(emas, cfgs, methods, steps, dict.fromkeys(class_scales))
    return [Setting(*values, name_sampler=name_sampler) for values in axes]


def parse_list(text: str, flag: str, kind=str, example: str = "") -> list:
    """``"10,20"`` -> [10, 20] (``kind`` converts each item); a one-line error naming ``flag`` (and an
    ``example`` of numbers it takes) otherwise."""
    try:
        values = [kind(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise ValueError(f"{flag} expects comma-separated numbers like {example}, got {text!r}") from err
    if not values:
        raise ValueError(f"{flag} is empty")
    return values


def format_value(value) -> str:
    """A metric as table text: 4 decimals for floats, empty for missing values."""
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _axis_text(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def metric_names(rows: list[dict]) -> list[str]:
    """The metrics of all rows, in order of first appearance."""
    names: list[str] = []
    for row in rows:
        names += [k for k in row["metrics"] if k not in names]
    return names


def write_sweep(out_dir: str | Path, rows: list[dict]) -> list[Path]:
    """``sweep.md``, ``sweep.csv`` and ``sweep.png`` of ``rows`` in ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    return [*write_sweep_tables(out_dir, rows), plot_sweep(out_dir / "sweep.png", rows)]


def write_sweep_tables(out_dir: Path, rows: list[dict]) -> list[Path]:
    """``sweep.md`` (values formatted for reading) and ``sweep.csv`` (values as recorded)."""
    metrics = metric_names(rows)
    header = ["setting", *AXES, "nfe", "num", *metrics]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["setting"], *(_axis_text(r[a]) for a in AXES), str(r.get("network_evaluations", "")), str(r["num"])]
        md.append("| " + " | ".join(cells + [format_value(r["metrics"].get(k)) for k in metrics]) + " |")
    atomic_write_bytes(out_dir / "sweep.md", lambda f: f.write(("\n".join(md) + "\n").encode()))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[r["setting"], *(r[a] for a in AXES), r.get("network_evaluations", ""), r["num"],
                       *(r["metrics"].get(k, "") for k in metrics)] for r in rows])  # fmt: skip
    atomic_write_bytes(out_dir / "sweep.csv", lambda f: f.write(text.getvalue().encode()))
    return [out_dir / "sweep.md", out_dir / "sweep.csv"]


def plot_sweep(path: Path, rows: list[dict]) -> Path:
    """One panel per metric (``num`` when there is none) against the CFG weight, a line per combination of
    the other axes; a sweep over solvers or steps plots against network evaluations (log scale), a line per
    solver and the other axes. The legend names only the axes that vary."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    by_nfe = len({(r["method"], r["steps"]) for r in rows}) > 1
    x = "network_evaluations" if by_nfe else "cfg"
    others = [a for a in AXES if a != "steps"] if by_nfe else [a for a in AXES if a != "cfg"]
    shown = [a for a in others if len({r[a] for r in rows}) > 1] or others[:1]
    lines = dict.fromkeys(tuple(r[a] for a in others) for r in rows)
    plotted = [k for k in metric_names(rows) if not k.endswith("_std")] or ["num"]
    fig = Figure(figsize=(4.5 * len(plotted), 3.5), layout="constrained")
    FigureCanvasAgg(fig)
    for i, key in enumerate(plotted):
        ax = fig.add_subplot(1, len(plotted), i + 1)
        for line in lines:
            members = [r for r in rows if tuple(r[a] for a in others) == line]
            values = [(r[x], r["num"] if key == "num" else r["metrics"].get(key)) for r in members]
            pts = sorted((c, v) for c, v in values if v is not None)
            label = " ".join(_axis_text(v) for a, v in zip(others, line) if a in shown)
            ax.plot([c for c, _ in pts], [v for _, v in pts], marker="o", label=label)
        if by_nfe:
            ax.set_xscale("log")
        ax.set_xlabel("network evaluations per image" if by_nfe else "CFG weight")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    atomic_write_bytes(path, lambda f: f.write(png.getvalue()))
    return path
