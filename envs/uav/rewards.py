"""The UAV reward's shaping functions (the reward itself is the env's ``_get_rew``)."""

from __future__ import annotations

import math

PROGRESS_GAIN = 10.0  # reward per metre closed on the current waypoint


def proximity_reward(distance: float) -> float:
    """In (0, 1]: the wide term pulls from afar, the 5 cm one rewards centimetre precision."""
    return 0.5 * math.exp(-distance / 0.5) + 0.5 * math.exp(-distance / 0.05)
