"""The ``jit`` entry point: help for every subcommand and flag, one-line errors, ``jit presets``."""

import argparse
import os
import subprocess
import sys

import pytest
import torch

from jit_diffusion import cli
from jit_diffusion.cli import build_parser, main, one_line
from jit_diffusion.models.config import PRESETS
from jit_diffusion.models.pmf_config import PMF_PRESETS

COMMANDS = ["presets", "train", "sample", "edit", "eval", "fid-stats", "classifier", "data", "convert", "toy",
            "studio"]


def _subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """(path, parser) of every subcommand, nested ones (``classifier train``) included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _subcommands(sub, (*prefix, name))


def test_every_command_is_listed():
    parser = build_parser()
    assert [path[0] for path, _ in _subcommands(parser) if len(path) == 1] == COMMANDS
    help_text = parser.format_help()
    assert all(name in help_text for name in COMMANDS)


def test_every_subcommand_and_flag_has_help():
    parser = build_parser()
    missing = []
    top = {a.dest: a for a in parser._actions if isinstance(a, argparse._SubParsersAction)}["command"]
    documented = {choice.dest for choice in top._choices_actions}
    missing += [f"{name}: no help" for name in top.choices if name not in documented]
    for path, sub in _subcommands(parser):
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not (action.help or "").strip():
                missing.append(f"jit {' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


@pytest.mark.parametrize("path", [["presets"], *[[c] for c in COMMANDS[1:]], ["classifier", "train"],
                                  ["classifier", "score"], ["data", "info"]])  # fmt: skip
def test_help_exits_cleanly(path, capsys):
    with pytest.raises(SystemExit) as done:
        main([*path, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: jit {' '.join(path)}")


def test_no_command_prints_help_and_version(capsys):
    assert main([]) == 0
    assert "COMMAND" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("jit-diffusion ")


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["sample", "{missing}", "--grid", "{tmp}/grid.png"], "does not exist"),
        (["eval", "{missing}", "--out", "{tmp}/eval", "--num", "4", "--metrics", "none"], "does not exist"),
        (["eval", "{missing}", "--out", "{tmp}/eval", "--num", "4", "--metrics", "kid"], "unknown metric 'kid'"),
        (["eval", "{missing}", "--out", "{tmp}/eval", "--num", "4", "--metrics", "none", "--cfg", "1,x"],
         "--cfg expects comma-separated numbers"),
        (["convert", "{missing}", "{tmp}/export"], "does not exist"),
        (["classifier", "score", "--classifier", "{tmp}"], "exactly one of --npz"),
        (["classifier", "score", "--npz", "{missing}", "--classifier", "{tmp}"], "does not exist"),
        (["toy", "--quick", "--dims", "1,8", "--out", "{tmp}/toy"], "every dimension must be >= 2"),
        (["data", "info", "{missing}", "--img-size", "16"], "not found: expected 'emoji'"),
    ],
    ids=["sample", "eval-model", "eval-metric", "eval-cfg", "convert", "classifier-args", "classifier-npz", "toy",
         "data"],
)  # fmt: skip
def test_errors_are_one_line(argv, expected, tmp_path, capsys):
    argv = [a.format(missing=tmp_path / "missing", tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"jit {argv[0]}: error: ") and expected in err


def test_debug_mode_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("JIT_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["sample", str(tmp_path / "missing"), "--grid", str(tmp_path / "grid.png")])


def test_interrupt_exits_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_presets", interrupted)
    assert main(["presets"]) == 130
    assert capsys.readouterr().err.strip() == "jit presets: interrupted"


def test_one_line_of_a_worker_error():
    worker = ValueError("Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                        "last):\n  File \"x.py\", line 1\nValueError: image a.png is truncated\n")  # fmt: skip
    assert one_line(worker) == "image a.png is truncated"
    assert one_line(ValueError("first line\n  second line")) == "first line second line"


@pytest.mark.slow
def test_presets_table(capsys):
    assert main(["presets"]) == 0
    jit_table, pmf_table = capsys.readouterr().out.strip().split("\n\n")
    lines = jit_table.splitlines()
    assert lines[0].split() == ["preset", "image", "depth", "width", "heads", "bneck", "ctx", "params"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert list(rows) == list(PRESETS)
    params = {name: float(row[-1].rstrip("M")) for name, row in rows.items()}
    # the paper's model sizes: B 131M, L 459M, H 953M, G 2B parameters
    assert params["JiT-B/16"] == pytest.approx(131, rel=0.01)
    assert params["JiT-L/16"] == pytest.approx(459, rel=0.01)
    assert params["JiT-H/16"] == pytest.approx(953, rel=0.01)
    assert params["JiT-G/16"] == pytest.approx(2000, rel=0.01)
    header, *pmf_rows = pmf_table.splitlines()
    assert header.split() == ["preset", "image", "depth", "width", "heads", "bneck", "head", "noise", "params"]
    pmf = {row.split()[0]: row.split() for row in pmf_rows}
    assert list(pmf) == list(PMF_PRESETS)
    noise = {name: float(pmf[f"pMF-{name}"][7]) for name in ("B/16", "B/32", "L/16", "L/32", "H/16", "H/32")}
    assert noise == {"B/16": 1, "B/32": 2, "L/16": 1, "L/32": 4, "H/16": 2, "H/32": 4}  # the public noise scales
    assert rows["JiT-B/16"][1:7] == ["256", "12", "768", "12", "128", "32/4"]


def _jit_env(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jit_diffusion.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env}, timeout=300)  # fmt: skip


@pytest.mark.slow
def test_jit_triton_in_any_case_and_a_bad_value_as_one_line():
    """JIT_TRITON is read case-insensitively; a bad value is a one-line error when a command runs, not a
    traceback at import (which broke every command)."""
    code = "from jit_diffusion.core import kernels; print(kernels.get_mode())"
    for value in ("OFF", " Off", "on", "AUTO"):
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "JIT_TRITON": value})  # fmt: skip
        assert res.returncode == 0 and res.stdout.strip() == value.strip().lower(), res.stderr
    assert _jit_env({"JIT_TRITON": "OFF"}, "presets").returncode == 0
    bad = _jit_env({"JIT_TRITON": "fast"}, "presets")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr == "jit presets: error: JIT_TRITON must be one of auto, on, off (any case), got 'fast'\n"


def test_a_device_this_machine_lacks_is_one_line(tmp_path, capsys):
    device, expected = ("cuda:99", "this machine has") if torch.cuda.is_available() else ("cuda", "no CUDA GPU")
    for argv in (["sample", str(tmp_path / "missing"), "--grid", str(tmp_path / "g.png")],
                 ["train", "--out", str(tmp_path / "run"), "--steps", "1"]):  # fmt: skip
        assert main([*argv, "--device", device]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"jit {argv[0]}: error: --device {device}: {expected}") and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_a_bad_interval_gets_our_message(tmp_path, capsys):
    for text, message in [("abc", "expects two comma-separated numbers like 0.1,1.0, got 'abc'"),
                          ("0.9,0.1", "must satisfy 0 <= min <= max <= 1, got 0.9,0.1")]:  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            main(["sample", str(tmp_path), "--grid", str(tmp_path / "g.png"), "--interval", text])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err == f"jit sample: error: argument --interval: {message}"
