"""The UAV observation: its layout and the one function that assembles it.

The env, the cascaded PID (``policies/pid.py``) and the ROS 2 adapter all build or read the
vector through this module, so the simulator and the robot cannot drift apart. The contract
(parts, frames, units) is in the env's docstring (:mod:`envs.uav.env`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class UAVLayout:
    """Half-open index ranges of the observation's parts."""

    position_error: tuple[int, int] = (0, 3)
    velocity: tuple[int, int] = (3, 6)
    attitude: tuple[int, int] = (6, 15)
    angular_velocity: tuple[int, int] = (15, 18)
    last_action: tuple[int, int] = (18, 22)
    n_lookahead: int = 0

    @property
    def lookahead(self) -> tuple[int, int]:
        return (22, 22 + 3 * self.n_lookahead)

    @property
    def size(self) -> int:
        return 22 + 3 * self.n_lookahead

    def to_dict(self) -> dict:
        return {
            "position_error": list(self.position_error), "velocity": list(self.velocity),
            "attitude": list(self.attitude), "angular_velocity": list(self.angular_velocity),
            "last_action": list(self.last_action), "lookahead": list(self.lookahead), "size": self.size,
        }


def yaw_rotation(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def uav_observation(position, velocity, rotation, angular_velocity, last_action, target,
                    lookahead=(), target_yaw: float = 0.0, error_clip: float | None = None) -> np.ndarray:
    """The observation from world-frame state (shared with the ROS 2 adapter).

    ``rotation`` maps body to world, ``velocity`` is world-frame, ``angular_velocity`` body-frame.
    ``error_clip`` (m) shortens a longer position error to that length, same direction.
    """
    r = np.asarray(rotation, dtype=np.float64).reshape(3, 3)
    p = np.asarray(position, dtype=np.float64)
    error = np.asarray(target, dtype=np.float64) - p
    if error_clip is not None:
        norm = float(np.linalg.norm(error))
        if norm > error_clip:
            error = error * (error_clip / norm)
    parts = [
        r.T @ error,
        r.T @ np.asarray(velocity, dtype=np.float64),
        (yaw_rotation(target_yaw).T @ r).ravel() if target_yaw else r.ravel(),
        np.asarray(angular_velocity, dtype=np.float64),
        np.asarray(last_action, dtype=np.float64),
    ]
    parts += [r.T @ (np.asarray(w, dtype=np.float64) - p) for w in lookahead]
    return np.concatenate(parts)
