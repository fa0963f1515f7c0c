"""Worker processes that end with the process that started them.

A pool's workers outlive a parent killed by SIGKILL or SIGTERM (no Python cleanup runs then), and
keep a kitchen env each (hundreds of MB) for nothing. :func:`die_with_parent`, a pool initializer,
asks the Linux kernel to send the worker SIGTERM when its parent exits, whatever ends it.
"""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> None:
    """Pool initializer: SIGTERM to this worker when its parent dies (Linux; elsewhere a no-op)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)
