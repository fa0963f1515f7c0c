"""User errors: reported as one line naming the problem, never as a traceback."""

from __future__ import annotations

import functools
import sys

from envs.physics import SimulationDiverged
from policies.protocol import PolicyError


class UserError(Exception):
    """Bad input from the user (config, run directory, checkpoint): print one line, exit 2.

    :class:`~policies.protocol.PolicyError` (a bad bundle or run directory) is reported the same way.
    """


def report_user_errors(fn):
    """Turn user errors into one line and exit 2; a diverged simulation into one line and exit 3."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (UserError, PolicyError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except SimulationDiverged as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(3)

    return wrapper
