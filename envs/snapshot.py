"""Snapshot and restore a project env: full physics plus the task's own state.

Population methods (GRPO groups, ES pairs) start G rollouts from one identical state. MuJoCo's
``mj_getState`` covers the simulator (``mjSTATE_INTEGRATION``: time, positions, velocities,
actuator states, controls, applied forces and the solver's warm start, so the next step is
bit-identical); the env's ``task_state()`` covers what MuJoCo does not know (step counters,
targets, waypoints, gust schedules, randomised masses). The RNG state travels too, so sensor
noise and gusts replay exactly; pass ``rng=False`` to keep the env's own stream instead.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import mujoco
import numpy as np

STATE_SPEC = mujoco.mjtState.mjSTATE_INTEGRATION


@dataclass(frozen=True)
class EnvSnapshot:
    physics: np.ndarray
    task: dict = field(default_factory=dict)
    rng: dict | None = None
    obs: np.ndarray | None = None  # the observation in this state, when the caller had it (sensor noise is drawn once)


def _unwrap(env):
    env = getattr(env, "unwrapped", env)
    if not hasattr(env, "task_state") or not hasattr(env, "set_task_state"):
        raise TypeError(f"{type(env).__name__} has no task_state()/set_task_state(): it cannot be snapshotted")
    return env


def take_snapshot(env, obs: np.ndarray | None = None) -> EnvSnapshot:
    env = _unwrap(env)
    physics = np.empty(mujoco.mj_stateSize(env.model, STATE_SPEC))
    mujoco.mj_getState(env.model, env.data, physics, STATE_SPEC)
    rng = copy.deepcopy(env.np_random.bit_generator.state)
    obs = None if obs is None else np.array(obs, copy=True)
    return EnvSnapshot(physics=physics, task=copy.deepcopy(env.task_state()), rng=rng, obs=obs)


def restore_snapshot(env, snapshot: EnvSnapshot, rng: bool = True) -> None:
    """Put ``env`` back into ``snapshot``'s state (also an env other than the one it came from)."""
    env = _unwrap(env)
    size = mujoco.mj_stateSize(env.model, STATE_SPEC)
    if snapshot.physics.shape != (size,):
        raise ValueError(f"snapshot has {snapshot.physics.size} physics values, this env's model needs {size}")
    env.set_task_state(copy.deepcopy(snapshot.task))  # first: it may change the model (masses, target sites)
    mujoco.mj_setState(env.model, env.data, snapshot.physics, STATE_SPEC)
    mujoco.mj_forward(env.model, env.data)  # derived quantities (sensors, contacts) for the restored state
    if rng and snapshot.rng is not None:
        env.np_random.bit_generator.state = copy.deepcopy(snapshot.rng)
