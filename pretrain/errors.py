"""The one error convention of every command.

`InputError` marks a problem with what the user gave: a config key or value, a dataset, an image, a
checkpoint of the wrong kind, a NaN loss on their data. Every stage entry point (pretrain.frame.guard)
prints such an error as one line naming the file, key or value and exits with code 2, having written
nothing it would lose. Any other exception is an internal error: it keeps its traceback and exits with 1.

Each module keeps its own specific error class (ConfigError, DataError, ...) and derives it from
InputError as well as from the builtin it always was, so `except ValueError` callers keep working.
"""
from __future__ import annotations

EXIT_BAD_INPUT = 2


class InputError(Exception):
    """Bad input: reported as one line and exit code 2 by every command."""
