"""N-link swimmer in a viscous fluid: the DeepMind Control Suite body the NCAP paper used.

## Description
A planar chain of ``n_links`` 0.1 m capsules joined by ``n_links - 1`` motorised hinges swims
through a fluid of density 3000 (MuJoCo's inertia-box fluid model, contacts off). Physics runs
at 2 ms and the agent acts every 30 ms (15 substeps); an episode is 1000 control steps (30 s).
The keyword arguments are the fields of :class:`SwimmerConfig`, each with its unit.

## Tasks
- ``swim`` (the NCAP paper's task): per-step reward ``clip(v_fwd / 0.1, 0, 1)``, where
  ``v_fwd`` is the head's speed along its own heading. Maximum return 1000.
- ``navigate`` (dm_control ``swimmer6``/``swimmer15``): reach a target placed uniformly in a
  4 m box (a 0.6 m box with probability 0.2); reward ``tolerance(d, (0, 0.1), margin 0.5,
  long_tail)`` of the nose-to-target distance ``d``; the target in the head frame is observed.

## Observation (``Box(-inf, inf, (n,), float64)``), in order
- ``joints``: the ``n_links - 1`` hinge angles (rad), head to tail;
- ``to_target`` (navigate only): nose-to-target vector in the head frame (x, y), m;
- ``body_velocities``: for each body, head first, local (vx, vy, ωz) from its velocimeter and gyro;
- ``time``: control steps since reset divided by ``time_scale_steps`` (1000), so a policy can
  recover its oscillator phase from the observation alone. Because it is part of the
  observation, it stays correct under vectorised envs that auto-reset.

``observation_layout`` gives these index ranges so that policies and the ROS node never
hard-code them, and :func:`swimmer_observation` is the one function that assembles the vector.

## Action
``Box(-1, 1, (n_links - 1,), float32)``: motor controls (gear 5e-4 N·m).

## Starting state
Joint angles uniform within their limits, heading uniform in [-π, π), at rest at the origin.

## Info
``forward_speed`` (m/s along the heading), ``distance_travelled`` (m, head from its start),
``distance_to_target`` (m, nose to target), ``x_position``/``y_position`` of the head;
``is_success`` on ``navigate`` (nose within the 0.1 m target); after a step, the reward as its
one term, ``reward_swim`` or ``reward_navigate``.

## Differences from dm_control
dm_control's head row of ``body_velocities`` takes ωz from a subtree linear velocity (always 0
in the plane); here it is the head gyro's ωz, like every other body.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mujoco
import numpy as np
from gymnasium import spaces, utils
from gymnasium.envs.mujoco import MujocoEnv

from envs.physics import SimulationDiverged, instability_warned
from envs.swimmer.model import HEAD_XML, MAX_LINKS, MIN_LINKS, joint_limit, swimmer_mjcf

__all__ = ["SimulationDiverged", "SwimmerEnv", "navigate_reward", "swim_reward", "swimmer_layout", "swimmer_observation"]

TASKS = ("swim", "navigate")
PHYSICS_TIMESTEP = 0.002
TARGET_SIZE = 0.1
SWIM_SPEED = 0.1  # m/s at which the swim reward saturates


@dataclass(frozen=True)
class ObservationLayout:
    """Where each named part lives in the flat observation vector (half-open ranges)."""

    joints: tuple[int, int]
    body_velocities: tuple[int, int]
    time: int
    time_scale_steps: int
    joint_limit: float
    to_target: tuple[int, int] | None = None

    @property
    def size(self) -> int:
        return self.time + 1

    def to_dict(self) -> dict:
        return {
            "joints": list(self.joints),
            "body_velocities": list(self.body_velocities),
            "time": self.time,
            "time_scale_steps": self.time_scale_steps,
            "joint_limit": self.joint_limit,
            "to_target": list(self.to_target) if self.to_target else None,
        }


def swimmer_layout(n_links: int, task: str, time_scale_steps: int = 1000) -> ObservationLayout:
    n_joints = n_links - 1
    offset = n_joints
    to_target = None
    if task == "navigate":
        to_target = (offset, offset + 2)
        offset += 2
    vel = (offset, offset + 3 * n_links)
    return ObservationLayout(
        joints=(0, n_joints),
        body_velocities=vel,
        time=vel[1],
        time_scale_steps=time_scale_steps,
        joint_limit=joint_limit(n_links),
        to_target=to_target,
    )


def swimmer_observation(
    joints: np.ndarray,
    body_velocities: np.ndarray,
    step: int,
    time_scale_steps: int = 1000,
    to_target: np.ndarray | None = None,
) -> np.ndarray:
    """Assemble the observation vector from named state parts (shared with the ROS node).

    Leading batch dimensions are kept (``joints`` (..., J), ``step`` scalar or (...)): the batched
    rollout engine assembles a whole batch with the same function.
    """
    joints, body_velocities = np.asarray(joints), np.asarray(body_velocities)
    lead = joints.shape[:-1] if joints.ndim > 1 else ()
    joints, body_velocities = joints.reshape(*lead, -1), body_velocities.reshape(*lead, -1)
    nj, n_target = joints.shape[-1], 0 if to_target is None else 2
    obs = np.empty((*lead, nj + n_target + body_velocities.shape[-1] + 1))
    obs[..., :nj] = joints
    if to_target is not None:
        obs[..., nj : nj + 2] = np.asarray(to_target).reshape(*lead, 2)
    obs[..., nj + n_target : -1] = body_velocities
    obs[..., -1] = np.asarray(step) / time_scale_steps
    return obs


@dataclass(frozen=True)
class SwimmerConfig:
    """The env's keyword arguments (``SwimmerEnv(**kwargs)``, the keys of ``env=swimmer``), checked on construction.

    ``n_links`` and the fluid are checked where the body is built (:func:`envs.swimmer.model.swimmer_mjcf`).
    """

    task: str = "swim"  # swim | navigate
    n_links: int = 6  # body links, 3 to 15 (the NCAP paper's swimmer has 6)
    fluid_density: float = 3000.0  # kg/m³, dm_control's swimmer fluid
    fluid_viscosity: float = 0.0  # Pa·s
    control_timestep: float = 0.03  # s, the action period: a multiple of the 2 ms physics step
    time_scale_steps: int = 1000  # control steps per unit of the observed clock (an episode's length)
    render_mode: str | None = None  # gymnasium's render mode
    width: int = 256  # px, rendered image width
    height: int = 256  # px, rendered image height
    camera_name: str | None = "tracking"  # the camera render() uses

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"unknown swimmer task {self.task!r}; choose one of {TASKS}")
        if isinstance(self.n_links, bool) or not isinstance(self.n_links, int) or not MIN_LINKS <= self.n_links <= MAX_LINKS:
            raise ValueError(f"n_links must be an integer in [{MIN_LINKS}, {MAX_LINKS}], got {self.n_links!r}")
        for name in ("fluid_density", "fluid_viscosity"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be finite and >= 0, got {getattr(self, name)}")
        if self.frame_skip < 1 or not math.isclose(self.frame_skip * PHYSICS_TIMESTEP, self.control_timestep):
            raise ValueError(
                f"control_timestep must be a multiple of {PHYSICS_TIMESTEP} s, got {self.control_timestep}")

    @property
    def frame_skip(self) -> int:
        """Physics steps per control step."""
        return round(self.control_timestep / PHYSICS_TIMESTEP)


class SwimmerEnv(MujocoEnv, utils.EzPickle):
    metadata = {"render_modes": ["human", "rgb_array", "depth_array", "rgbd_tuple"], "render_fps": 33}

    def __init__(self, **kwargs):
        """``kwargs``: any fields of :class:`SwimmerConfig`."""
        c = SwimmerConfig(**kwargs)
        utils.EzPickle.__init__(self, **kwargs)
        self.config = c
        self.task = c.task
        self.n_links = c.n_links
        self._xml = swimmer_mjcf(c.n_links, c.fluid_density, c.fluid_viscosity, PHYSICS_TIMESTEP)
        self.layout = swimmer_layout(c.n_links, c.task, c.time_scale_steps)
        obs_space = spaces.Box(-np.inf, np.inf, shape=(self.layout.size,), dtype=np.float64)
        self.metadata = {**self.metadata, "render_fps": int(round(1.0 / c.control_timestep))}
        MujocoEnv.__init__(
            self, str(HEAD_XML), c.frame_skip, obs_space, render_mode=c.render_mode,
            width=c.width, height=c.height, camera_name=c.camera_name if c.render_mode else None,
        )
        self._step_count = 0
        self._start_xy = np.zeros(2)
        self._vel_sensor_ids = self._velocity_sensor_ids()
        # Per body (vx, vy, ωz): sensordata indices of the velocimeter's x, y and the gyro's z.
        self._body_vel_index = np.array([[v, v + 1, g + 2] for v, g in zip(*self._vel_sensor_ids)]).ravel()
        # Views into MjData, looked up by name once rather than on the per-step path.
        self._head, self._nose, self._target = self.data.body("head"), self.data.geom("nose"), self.data.geom("target")
        if c.task == "swim":
            self.model.geom_rgba[self.model.geom("target").id, 3] = 0.0  # hidden, as in NCAP's swim

    # --- simulation ----------------------------------------------------------------------
    def _initialize_simulation(self):
        model = mujoco.MjModel.from_xml_string(self._xml)
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
        return model, mujoco.MjData(model)

    def _step_mujoco_simulation(self, ctrl, n_frames):
        self.data.ctrl[:] = ctrl
        mujoco.mj_step(self.model, self.data, nstep=n_frames)
        if instability_warned(self.data):
            # MuJoCo silently resets the state after non-finite positions, velocities or
            # accelerations; stop the episode with a clear error instead.
            raise SimulationDiverged(
                f"swimmer physics diverged at step {self._step_count + 1} (non-finite state, MuJoCo reset "
                "it); check fluid parameters and action scale"
            )
        # mj_step evaluates sensors before its last integration; recompute them for the new state.
        mujoco.mj_forward(self.model, self.data)

    def _velocity_sensor_ids(self) -> tuple[list[int], list[int]]:
        vel = ["head_vel"] + [f"velocimeter_{i}" for i in range(self.n_links - 1)]
        gyro = ["head_gyro"] + [f"gyro_{i}" for i in range(self.n_links - 1)]
        adr = self.model.sensor_adr
        return [int(adr[self.model.sensor(n).id]) for n in vel], [int(adr[self.model.sensor(n).id]) for n in gyro]

    @property
    def step_count(self) -> int:
        """Control steps since the episode began."""
        return self._step_count

    def task_state(self) -> dict:
        """What a snapshot needs beyond MuJoCo's state (see :mod:`envs.snapshot`)."""
        return {
            "step_count": self._step_count,
            "start_xy": self._start_xy.copy(),
            "target_pos": self.model.geom_pos[self.model.geom("target").id].copy(),
        }

    def set_task_state(self, state: dict) -> None:
        self._step_count = int(state["step_count"])
        self._start_xy = np.array(state["start_xy"], dtype=np.float64)
        self.model.geom_pos[self.model.geom("target").id] = state["target_pos"]

    # --- state readouts ------------------------------------------------------------------
    def joint_angles(self) -> np.ndarray:
        return self.data.qpos[3:].copy()

    def body_velocities(self) -> np.ndarray:
        """Local (vx, vy, ωz) of every body, head first."""
        return self.data.sensordata[self._body_vel_index]

    def forward_speed(self) -> float:
        """Head speed along its heading; the head points along its local -y axis."""
        return float(-self.data.sensordata[self._vel_sensor_ids[0][0] + 1])

    def nose_to_target(self) -> np.ndarray:
        """Nose-to-target vector in the head frame (x, y)."""
        delta = self._target.xpos - self._nose.xpos
        return delta @ self._head.xmat.reshape(3, 3)[:, :2]

    def _get_obs(self) -> np.ndarray:
        return swimmer_observation(
            self.joint_angles(), self.body_velocities(), self._step_count, self.layout.time_scale_steps,
            self.nose_to_target() if self.task == "navigate" else None,
        )

    def observation_from_state(self, qpos, qvel, step: int, target_xy=None) -> np.ndarray:
        """The observation this env would give in the physical state ``(qpos, qvel)`` at ``step``.

        The ROS 2 policy node rebuilds observations from robot messages with this, so deployment
        and training share one observation function. It overwrites this env's state.
        """
        if target_xy is not None:
            self.model.geom_pos[self.model.geom("target").id, :2] = target_xy
        m, d = self.model, self.data
        d.qpos[:] = qpos
        d.qvel[:] = qvel
        # Only the stages the observation reads (positions, then velocity sensors), not a full
        # mj_forward: on the ROS node's hot path the dynamics stages would be wasted work.
        mujoco.mj_kinematics(m, d)
        mujoco.mj_comPos(m, d)
        mujoco.mj_comVel(m, d)
        mujoco.mj_sensorVel(m, d)
        self._step_count = int(step)
        return self._get_obs()

    # --- gymnasium API -------------------------------------------------------------------
    def reset_model(self) -> np.ndarray:
        qpos = self.init_qpos.copy()
        qpos[2] = self.np_random.uniform(-np.pi, np.pi)
        lim = joint_limit(self.n_links)
        qpos[3:] = self.np_random.uniform(-lim, lim, size=self.n_links - 1)
        box = 0.3 if self.np_random.random() < 0.2 else 2.0
        target_xy = self.np_random.uniform(-box, box, size=2)
        self.model.geom_pos[self.model.geom("target").id, :2] = target_xy
        self.set_state(qpos, np.zeros(self.model.nv))
        self._step_count = 0
        self._start_xy = self._head.xpos[:2].copy()
        return self._get_obs()

    def _get_reset_info(self) -> dict:
        return self._info()

    def _info(self) -> dict:
        head, start, target, nose = self._head.xpos, self._start_xy, self._target.xpos, self._nose.xpos
        dist = math.hypot(target[0] - nose[0], target[1] - nose[1])
        info = {
            "forward_speed": self.forward_speed(),
            "distance_travelled": math.hypot(head[0] - start[0], head[1] - start[1]),
            "distance_to_target": dist,
            "x_position": float(head[0]),
            "y_position": float(head[1]),
        }
        if self.task == "navigate":
            info["is_success"] = dist <= TARGET_SIZE
        return info

    def _get_rew(self, forward_speed: float, distance_to_target: float) -> tuple[float, dict[str, float]]:
        """The reward and its one named term: the task's (``swim`` or ``navigate``)."""
        if self.task == "swim":
            reward = swim_reward(forward_speed)
        else:
            reward = navigate_reward(distance_to_target)
        return reward, {self.task: reward}

    # --- batched stepping (agents.batched_rollout) -------------------------------------------
    def _advance(self, action: np.ndarray) -> None:
        """The physics of :meth:`step` (MuJoCo releases the GIL here: safe and useful on a worker thread)."""
        self._step_mujoco_simulation(action, self.frame_skip)
        self._step_count += 1

    @staticmethod
    def step_batch(envs: list[SwimmerEnv], actions: np.ndarray, run_chunks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`step` for many swimmers of one config: (observations, rewards, terminated), the same numbers.

        ``run_chunks(fn)`` calls ``fn(indices)`` on disjoint chunks of ``range(len(envs))``, possibly on
        worker threads. Only the physics runs per env; the observation and reward are computed for
        the whole batch at once, which takes the per-env Python that serialises threads off the path.
        """
        actions = np.asarray(actions, dtype=np.float64)
        first = envs[0]
        if actions.shape != (len(envs), first.model.nu):
            raise ValueError(f"swimmer actions must have shape ({len(envs)}, {first.model.nu}), got {actions.shape}")
        if not np.isfinite(actions).all():
            raise ValueError("swimmer actions contain NaN or inf")

        def advance(chunk) -> None:
            for i in chunk:
                envs[i]._advance(actions[i])

        run_chunks(advance)
        sensors = np.stack([e.data.sensordata for e in envs])
        joints = np.stack([e.data.qpos[3:] for e in envs])
        steps = np.array([e._step_count for e in envs])
        to_target = np.stack([e.nose_to_target() for e in envs]) if first.task == "navigate" else None
        obs = swimmer_observation(joints, sensors[:, first._body_vel_index], steps, first.layout.time_scale_steps,
                                  to_target)
        if not np.isfinite(obs).all():
            bad = int(np.flatnonzero(~np.isfinite(obs).all(axis=1))[0])
            raise SimulationDiverged(f"swimmer physics diverged at step {steps[bad]} of batch env {bad} (non-finite "
                                     "state); check fluid parameters and action scale")
        if first.task == "swim":
            rewards = swim_reward(-sensors[:, first._vel_sensor_ids[0][0] + 1])
        else:
            tips = np.stack([np.r_[e._target.xpos[:2], e._nose.xpos[:2]] for e in envs])
            rewards = navigate_reward(np.hypot(tips[:, 0] - tips[:, 2], tips[:, 1] - tips[:, 3]))
        return obs, rewards, np.zeros(len(envs), dtype=bool)

    def checked_action(self, action) -> np.ndarray:
        """The action as float64, or a ValueError naming what is wrong with it (shape, NaN or inf)."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (self.model.nu,):
            raise ValueError(f"swimmer action must have shape ({self.model.nu},), got {action.shape}")
        if not np.isfinite(action).all():
            raise ValueError(f"swimmer action contains NaN or inf: {action}")
        return action

    def step(self, action):
        action = self.checked_action(action)
        self._step_mujoco_simulation(action, self.frame_skip)
        self._step_count += 1
        obs = self._get_obs()
        if not np.isfinite(obs).all():
            raise SimulationDiverged(
                f"swimmer physics diverged at step {self._step_count} (non-finite state); "
                "check fluid parameters and action scale"
            )
        info = self._info()
        reward, reward_info = self._get_rew(info["forward_speed"], info["distance_to_target"])
        info.update({f"reward_{name}": value for name, value in reward_info.items()})
        if self.render_mode == "human":
            self.render()
        return obs, reward, False, False, info


def _float_or_array(x: np.ndarray):
    return float(x) if x.ndim == 0 else x


def swim_reward(forward_speed):
    """``clip(v_fwd / 0.1, 0, 1)``, for a float or an array."""
    return _float_or_array(np.clip(np.divide(forward_speed, SWIM_SPEED), 0.0, 1.0))


def navigate_reward(distance):
    """dm_control ``tolerance(d, bounds=(0, 0.1), margin=0.5, sigmoid='long_tail')``, for a float or an array."""
    distance = np.asarray(distance, dtype=np.float64)
    x = (distance - TARGET_SIZE) / (5 * TARGET_SIZE)
    scale = math.sqrt(1.0 / 0.1 - 1.0)  # value 0.1 at one margin
    return _float_or_array(np.where(distance <= TARGET_SIZE, 1.0, 1.0 / ((x * scale) ** 2 + 1.0)))
