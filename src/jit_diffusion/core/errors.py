"""Exceptions meant for the user: the CLI prints them as one line, without a traceback."""

from __future__ import annotations

import argparse
from collections.abc import Callable


class UserError(Exception):
    """An error caused by the user's input or environment (bad flag, missing file, ...)."""


def check_count(value: int, minimum: int, flag: str) -> int:
    """``value`` when it is an integer >= ``minimum``; a one-line UserError naming ``flag`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{flag} must be an integer >= {minimum}, got {value!r}")
    return value


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` for a count flag: an integer >= ``minimum`` (argparse names the flag)."""

    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    count.__name__ = f"integer >= {minimum}"
    return count
