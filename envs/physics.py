"""What every project env checks after integrating: did the physics blow up?"""

from __future__ import annotations

import mujoco

_BADQPOS, _BADQVEL, _BADQACC = (
    int(w) for w in (mujoco.mjtWarning.mjWARN_BADQPOS, mujoco.mjtWarning.mjWARN_BADQVEL, mujoco.mjtWarning.mjWARN_BADQACC)
)


class SimulationDiverged(RuntimeError):
    """The physics produced non-finite numbers (unstable parameters or actions)."""


def instability_warned(data: mujoco.MjData) -> bool:
    """True if MuJoCo met non-finite positions, velocities or accelerations (it then silently resets the state).

    Reads the warning counters as one array: indexing ``data.warning[w]`` builds an object per
    warning, on every env step.
    """
    counts = data.warning.number
    return bool(counts[_BADQPOS] or counts[_BADQVEL] or counts[_BADQACC])
