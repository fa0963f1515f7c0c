"""Gymnasium's stock ``Swimmer-v5`` with a time feature, for comparison with RL Zoo numbers.

The stock observation has no clock, which NCAP's oscillator needs, so the normalised episode
time (steps / 1000) is appended as the last element, as on the project's own swimmer.
"""

from __future__ import annotations

import gymnasium as gym
from gymnasium.wrappers import TimeAwareObservation

from envs.swimmer.env import ObservationLayout

GYM_JOINT_LIMIT = 1.7453292519943295  # ±100°, the range of motor1_rot / motor2_rot


def make_gym_swimmer(render_mode: str | None = None, **kwargs) -> gym.Env:
    env = gym.make("Swimmer-v5", render_mode=render_mode, **kwargs)
    env = TimeAwareObservation(env, normalize_time=True)
    steps = env.spec.max_episode_steps if env.spec and env.spec.max_episode_steps else 1000
    # obs: [front angle, joint 1, joint 2, 5 velocities, time]
    env.layout = ObservationLayout(
        joints=(1, 3), body_velocities=(3, 8), time=8, time_scale_steps=steps, joint_limit=GYM_JOINT_LIMIT,
    )
    return env
