"""Exceptions meant for the user: the CLI prints them as one line, without a traceback."""


class UserError(Exception):
    """An error caused by the user's input or environment (bad flag, missing file, ...)."""
