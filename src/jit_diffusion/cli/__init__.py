"""The ``jit`` command line: one entry point, one subcommand per job.

Each command module of this package exposes ``add_cli(subparsers)``, which registers its subcommand(s)
and sets ``func`` to the function that runs them: flags in, calls of library functions that take plain
arguments, printing out. Errors meant for the user are raised as :class:`UserError` (or
ValueError/FileNotFoundError from our own checks) and printed as one line; set ``JIT_DEBUG=1`` to see
the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from ..core.errors import UserError

# modules that register subcommands, in the order they appear in `jit --help`
_COMMAND_MODULES = [
    "jit_diffusion.cli.train",
    "jit_diffusion.cli.sample",
    "jit_diffusion.cli.edit",
    "jit_diffusion.cli.eval",
    "jit_diffusion.cli.classifier",
    "jit_diffusion.cli.data",
    "jit_diffusion.cli.convert",
    "jit_diffusion.cli.toy",
    "jit_diffusion.cli.studio",
]


def one_line(err: BaseException) -> str:
    """The message of ``err`` as one line; an error re-raised from a DataLoader worker carries the
    worker's traceback in its message, whose last line is the original error."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if "Original Traceback" in str(err) and lines:
        return lines[-1].split(": ", 1)[-1]
    return " ".join(lines)


def _presets(args: argparse.Namespace) -> None:
    import torch

    from ..models.config import PRESETS
    from ..models.jit import create_model

    print(f"{'preset':<10} {'image':>5} {'depth':>5} {'width':>5} {'heads':>5} {'bneck':>5} {'ctx':>7} {'params':>9}")
    for name, p in PRESETS.items():
        with torch.device("meta"):
            n = create_model(name).num_params()
        ctx = f"{p['in_context_len']}/{p['in_context_start']}"
        print(
            f"{name:<10} {p['input_size']:>5} {p['depth']:>5} {p['hidden_size']:>5} {p['num_heads']:>5} "
            f"{p['bottleneck_dim']:>5} {ctx:>7} {n / 1e6:>8.2f}M"
        )
    _pmf_presets()


def _pmf_presets() -> None:
    """The pMF presets: the trunk's depth, the u and v heads' depth each, the noise scale."""
    import torch

    from ..models.pmf import create_pmf_model
    from ..models.pmf_config import PMF_DEFAULTS, PMF_PRESETS

    print(f"\n{'preset':<10} {'image':>5} {'depth':>5} {'width':>5} {'heads':>5} {'bneck':>5} {'head':>5} {'noise':>5} "
          f"{'params':>9}")  # fmt: skip
    for name in PMF_PRESETS:
        with torch.device("meta"):
            model = create_pmf_model(name)
        c, noise = model.config, PMF_DEFAULTS[name].noise_scale
        print(f"{name:<10} {c.input_size:>5} {c.depth:>5} {c.hidden_size:>5} {c.num_heads:>5} {c.bottleneck:>5} "
              f"{c.aux_head_depth:>5} {noise:>5g} {model.num_params() / 1e6:>8.2f}M")  # fmt: skip


class _StderrLines(logging.Handler):
    """Log records as plain lines on the current ``sys.stderr`` (looked up at each line)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


def show_info_lines() -> None:
    """Let the package's INFO lines (e.g. the layout of a diffusers model being opened) reach stderr."""
    logger = logging.getLogger("jit_diffusion")
    logger.setLevel(logging.INFO)
    if not any(isinstance(h, _StderrLines) for h in logger.handlers):
        logger.addHandler(_StderrLines())


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="jit",
        description="JiT: pixel-space diffusion with plain image Transformers (train, sample, evaluate, convert).",
    )
    parser.add_argument("--version", action="version", version=f"jit-diffusion {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("presets", help="list the model presets")
    p.set_defaults(func=_presets)
    for module_name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name == module_name:
                continue
            raise
        if hasattr(module, "add_cli"):
            module.add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    show_info_lines()
    try:
        from ..core.kernels import check_mode

        check_mode()  # a bad JIT_TRITON: one line before any work
        result = args.func(args)
    except (UserError, ValueError, FileNotFoundError) as err:
        if os.environ.get("JIT_DEBUG"):
            raise
        print(f"jit {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jit {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
