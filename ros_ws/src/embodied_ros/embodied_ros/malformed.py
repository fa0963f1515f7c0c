"""Random malformed ``JointState`` messages, for robustness checks of the policy node.

Each message breaks the contract in one way a buggy driver or a hostile publisher might: missing,
renamed or duplicate joints, mismatched lengths, NaN/inf/absurd values, zero, stale or future
stamps. Used by the tests (in-process) and by ``benchmarks/ros_latency.py`` (over DDS).
"""

from __future__ import annotations

import numpy as np
from sensor_msgs.msg import JointState

KINDS = 10


def random_malformed(rng: np.random.Generator, good: JointState, now_ns: int) -> JointState:
    """A copy of ``good`` (a valid state) with one random defect, stamped ``now_ns`` unless that is the defect."""
    msg = JointState()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now_ns, 1_000_000_000)
    names, pos, vel = list(good.name), list(good.position), list(good.velocity)
    kind = rng.integers(0, KINDS)
    if kind == 0:
        names = names[: rng.integers(0, len(names))]
    elif kind == 1:
        names[rng.integers(0, len(names))] = "bogus"
    elif kind == 2:
        names[1] = names[0]
    elif kind == 3:
        pos = pos[:-1]
    elif kind == 4:
        vel = vel + [0.0]
    elif kind == 5:
        pos[rng.integers(0, len(pos))] = float(rng.choice([np.nan, np.inf, -np.inf]))
    elif kind == 6:
        vel[rng.integers(0, len(vel))] = float(rng.choice([np.nan, np.inf, -np.inf, 1e300]))
    elif kind == 7:
        msg.header.stamp.sec, msg.header.stamp.nanosec = 0, 0
    elif kind == 8:
        stale = now_ns - int(rng.uniform(1.0, 1e4) * 1e9)
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(max(stale, 1), 1_000_000_000)
    else:
        msg.header.stamp.sec += int(rng.integers(1, 1000))
    msg.name, msg.position, msg.velocity = names, pos, vel
    return msg
