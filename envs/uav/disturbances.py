"""What the air does to the vehicle: drag against the moving air, and the wind and gusts that move it.

Drag ``F = −c₁·v_rel − c₂·|v_rel|·v_rel`` acts on the vehicle, with ``v_rel`` its velocity relative
to the air and the preset's coefficients (``drag_linear``, ``drag_quadratic``). The air moves with
a constant wind plus discrete gusts: after exponentially distributed pauses a gust blows in a
random horizontal direction with a 1−cos profile (the MIL-F-8785C discrete-gust shape).
"""

from __future__ import annotations

import math

import numpy as np

from envs.uav.model import QuadrotorParams


def drag_force(velocity: np.ndarray, air: np.ndarray, p: QuadrotorParams) -> np.ndarray:
    """World-frame drag (N) on a vehicle moving at ``velocity`` through air moving at ``air`` (m/s)."""
    v_rel = velocity - air
    return -(p.drag_linear + p.drag_quadratic * np.linalg.norm(v_rel)) * v_rel


class GustField:
    """Constant wind plus 1−cos discrete gusts at exponentially distributed times."""

    def __init__(self, wind, gust_speed: float, gust_interval: float, gust_duration: tuple[float, float], rng,
                 schedule: dict | None = None):
        self.wind = np.asarray(wind, dtype=np.float64)
        self.speed = float(gust_speed)
        self.interval = float(gust_interval)
        self.duration = (float(gust_duration[0]), float(gust_duration[1]))
        self.rng = rng
        if schedule is None:
            self.start = self._next_start(0.0)
            self.length, self.direction = self._draw()
        else:  # restored from a snapshot: nothing drawn
            self.start, self.length = float(schedule["start"]), float(schedule["length"])
            self.direction = np.array(schedule["direction"], dtype=np.float64)

    def schedule(self) -> dict:
        """The current gust (start, length, direction): with the rng state, all a snapshot needs."""
        return {"start": self.start, "length": self.length, "direction": self.direction.copy()}

    def _next_start(self, after: float) -> float:
        return after + (self.rng.exponential(self.interval) if self.speed > 0 else math.inf)

    def _draw(self) -> tuple[float, np.ndarray]:
        heading = self.rng.uniform(-math.pi, math.pi)
        return self.rng.uniform(*self.duration), np.array([math.cos(heading), math.sin(heading), 0.0])

    def velocity(self, t: float) -> np.ndarray:
        if t >= self.start + self.length:
            self.start = self._next_start(self.start + self.length)
            self.length, self.direction = self._draw()
        if t < self.start:
            return self.wind
        phase = (t - self.start) / self.length
        return self.wind + self.direction * (0.5 * self.speed * (1.0 - math.cos(2.0 * math.pi * phase)))
