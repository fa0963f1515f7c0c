"""The swimmer's goal follower: the navigate NCAP with hard-wired steering, swimming to any world point.

The find task's expert and the spatial brain's fast controller on the swimmer, as the cascaded PID
(:mod:`policies.pid`) is the quadrotor's. :func:`envs.swimmer.find.navigate_observation` turns
``swimmer_find``'s state and a goal point into the ``navigate`` observation; the untrained NCAP with
``task_control="hardcoded"`` (:mod:`policies.ncap`: the oscillator and proprioception make the
wave, a speed unit stops it within 0.12 m of the goal, two turn units bend the head toward it)
swims there. Nothing is learned; the circuit runs through its NumPy forward
(:func:`policies.numpy_inference.ncap_forward`), which is faster than torch at one observation a step.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from envs.swimmer.env import swimmer_layout
from envs.swimmer.find import N_LINKS, NOSE_AHEAD, STATE_LAYOUT, TIME_SCALE_STEPS, navigate_observation
from policies.ncap import NCAP, NCAPConfig
from policies.numpy_inference import ncap_forward


class SwimmerSteering:
    """Swims the 6-link ``swimmer_find`` body to a world point: ``act(obs, goal_xy)`` each control step."""

    def __init__(self, oscillator_period: float = 60.0, carrot: float = 0.3):
        """``oscillator_period``: control steps per head stroke (NCAP's default, 1.8 s at 30 ms); ``carrot``
        (m): a farther goal is steered at through the point this far from the nose on the way to it."""
        if not carrot > 0.12:
            raise ValueError(f"carrot must be a distance in m beyond the circuit's 0.12 m stop radius, got {carrot}")
        self.carrot = float(carrot)
        layout = swimmer_layout(N_LINKS, "navigate", TIME_SCALE_STEPS)
        self.config = NCAPConfig(n_joints=N_LINKS - 1, task_control="hardcoded", oscillator_period=oscillator_period,
                                 joint_slice=layout.joints, joint_limit=layout.joint_limit, time_index=layout.time,
                                 time_scale_steps=layout.time_scale_steps, target_slice=layout.to_target)
        self.module = NCAP(self.config).eval()
        self._forward = ncap_forward(self.module)

    def reset(self) -> None:
        """Nothing to forget: the oscillator's phase comes from the clock in the state."""

    def act(self, obs, goal_xy) -> np.ndarray:
        """The motor controls (float32, in [-1, 1]) toward ``goal_xy`` (world, m), from the env's
        observation (a ``swimmer_find`` Dict) or its ``state`` vector alone."""
        state = np.asarray(obs["state"] if isinstance(obs, Mapping) else obs, dtype=np.float64)
        return self._forward(navigate_observation(state, self.waypoint(state, goal_xy))).astype(np.float32)

    def waypoint(self, state, goal_xy) -> np.ndarray:
        """The point steered at: ``goal_xy`` itself within ``carrot`` m of the nose, else the point
        ``carrot`` m along the way to it."""
        layout = STATE_LAYOUT
        heading = state[slice(*layout.heading)]
        nose = state[slice(*layout.head_position)] + NOSE_AHEAD * heading
        goal = np.asarray(goal_xy, dtype=np.float64)[:2]
        delta = goal - nose
        distance = float(np.hypot(*delta))
        return goal if distance <= self.carrot else nose + delta * (self.carrot / distance)
