"""The yardstick for a deployment: the same policy run in-process from a robot's recorded state.

Given a ``joint_states`` message taken from a live robot, :func:`in_process_distance` sets a
fresh env to exactly that physical state, runs the policy for the same number of control steps
without ROS, and returns how far the head swam. Over ROS 2 the robot should come close.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sensor_msgs.msg import JointState

import envs
from embodied_ros.adapters import SwimmerAdapter, joint_state_arrays
from policies.bundle import read_meta
from policies.protocol import EnvInterface
from policies.registry import load_policy


def in_process_distance(policy_dir: Path, start: JointState, steps: int) -> float:
    meta = read_meta(policy_dir)
    adapter = SwimmerAdapter(meta.env)
    policy = load_policy(policy_dir, EnvInterface.of(adapter.env))
    env = envs.make_from_config(meta.env).unwrapped
    env.reset(seed=0)
    qpos, qvel = joint_state_arrays(start, adapter.joint_names)
    obs = env.observation_from_state(qpos, qvel, 0)  # same physical state, policy clock at 0
    env.set_state(qpos, qvel)
    policy.reset()
    xy0 = env.data.body("head").xpos[:2].copy()
    for _ in range(steps):
        obs, *_ = env.step(policy.act(obs))
    return float(np.linalg.norm(env.data.body("head").xpos[:2] - xy0))
