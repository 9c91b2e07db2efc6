"""``jit train``: the training flags (:mod:`jit_diffusion.train.flags`) -> a :class:`Trainer` run."""

from __future__ import annotations

import argparse

from ..train.flags import add_parser, config_from_args
from ..train.trainer import Trainer


def add_cli(sub) -> None:
    """Register ``jit train``."""
    add_parser(sub).set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    """``jit train``: 0 when done, ``--requeue-exit-code`` (default 0) after a preemption stop."""
    cfg, resume = config_from_args(args)
    trainer = Trainer(cfg, resume=resume, overwrite=args.overwrite)
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    if summary.get("preempted") and cfg.requeue_exit_code is not None:
        return cfg.requeue_exit_code
    return 0

