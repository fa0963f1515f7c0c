"""User errors: reported as one line naming the problem, never as a traceback."""

from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """Bad input from the user (config, run directory, checkpoint): print one line, exit 2."""


def report_user_errors(fn):
    """Turn ``UserError`` (and the loaders' ``ValueError`` subclasses they wrap) into one line."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapper
