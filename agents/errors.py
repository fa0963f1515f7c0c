"""User errors: reported as one line naming the problem, never as a traceback."""

from __future__ import annotations

import errno
import functools
import sys

from envs.physics import SimulationDiverged
from policies.protocol import PolicyError


class UserError(Exception):
    """Bad input from the user (config, run directory, checkpoint): print one line, exit 2.

    :class:`~policies.protocol.PolicyError` (a bad bundle or run directory) is reported the same way.
    """


# A file system that refuses a path the user chose (read-only, full, no permission, no such folder): the
# user's to fix, so one line naming the path. Other OSErrors are bugs and keep their traceback.
FILESYSTEM_ERRORS = (errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR,
                     errno.EISDIR, errno.ENAMETOOLONG)


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
        except OSError as e:
            if e.errno not in FILESYSTEM_ERRORS or not e.filename:
                raise
            print(f"error: cannot write or read {e.filename}: {e.strerror}", file=sys.stderr)
            sys.exit(2)

    return wrapper
