"""The memory a run is about to ask for, estimated before it allocates and checked against the machine.

Estimates are coarse and on the high side of what was measured on this project's envs and models:
their job is to stop a typo (``algo.n_envs=100000``, a batch of 10^8) with one line before the
kernel's OOM killer stops the run minutes later, not to budget memory to the megabyte.
"""

from __future__ import annotations

import os

from agents.errors import UserError

MB = 1 << 20
# Resident memory of one env, by id (MuJoCo model and data, renderer buffers); the kitchen's scene is
# large. Others: the swimmers and the quadrotor.
ENV_BYTES = {"embodied/Kitchen-v0": 300 * MB}
DEFAULT_ENV_BYTES = 30 * MB
PROCESS_BYTES = 400 * MB  # a worker process that imports torch, MuJoCo and gymnasium


def available_bytes() -> int:
    """Memory the kernel can give without swapping (MemAvailable), or the physical memory where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def env_bytes(env_id: str) -> int:
    return ENV_BYTES.get(env_id, DEFAULT_ENV_BYTES)


def _gb(n: float) -> str:
    return f"{n / (1 << 30):.1f} GB" if n >= 1 << 30 else f"{n / MB:.0f} MB"


def require(parts: dict[str, float], available: int | None = None) -> None:
    """UserError (one line) when the estimated ``parts`` (what -> bytes) add up to more than the memory available."""
    need = sum(parts.values())
    available = available_bytes() if available is None else available
    if need > available:
        biggest = max(parts, key=parts.get)
        detail = ", ".join(f"{what} {_gb(n)}" for what, n in parts.items() if n)
        raise UserError(f"this run would need about {_gb(need)} of memory ({detail}), more than the {_gb(available)} "
                        f"available; lower {biggest}")
