"""Quadrotor hover and waypoint flight with wind, gusts and vehicle randomisation.

## Description
One quadrotor (``vehicle`` preset ``cf2`` or ``x2``, see ``envs/uav/model.py``) above a ground
plane. Physics runs at 500 Hz (2 ms, MuJoCo Euler); the agent acts at ``control_hz`` (100 Hz by
default). Rotor thrusts follow the command through the model's first-order motor lag. The
keyword arguments are the fields of :class:`UAVConfig`, each with its unit.

## Tasks
- ``hover``: reach and hold ``target`` (m, world) from a random initial state: position offset
  uniform in ±``init_pos_range`` m per axis, velocity ±``init_vel_range`` m/s, roll and pitch
  ±``init_tilt_deg``, any yaw, body rates ±``init_rate_range`` rad/s. ``episode_seconds`` 10.
- ``waypoints``: pass ``n_waypoints`` 3-D waypoints in order, each within ``waypoint_radius`` m,
  before ``episode_seconds`` (15) run out. The course starts where the vehicle starts; each leg
  is ``waypoint_spacing`` m long in a random direction, inside the flight volume with a 0.5 m
  margin. Success: the last waypoint passed; the vehicle then holds there until the time is up.

## Observation (``Box(-inf, inf, (n,), float64)``), body frame, in order (``layout`` has the ranges)
- ``position_error`` (3): target (or current waypoint) minus position, in the body frame, m;
- ``velocity`` (3): linear velocity in the body frame, m/s;
- ``attitude`` (9): rotation matrix body→target-heading frame, row-major (world frame when the
  target yaw is 0, always on ``waypoints``);
- ``angular_velocity`` (3): gyro, rad/s;
- ``last_action`` (4): the previous action;
- ``lookahead`` (3 per waypoint, ``waypoints`` only): the next ``n_lookahead`` waypoints after
  the current one, relative to the vehicle, in the body frame (repeats the last one at the end).
Optional Gaussian noise: ``position_noise`` (m), ``velocity_noise`` (m/s), ``gyro_noise`` (rad/s).
``error_clip`` (m) shortens the observed position error to that length (a carrot on the way to a
far waypoint, inside the range a hover policy was trained on); the reward uses the true error.

## Action (``Box(-1, 1, (4,), float32)``)
- ``action_mode=rotor``: per-rotor thrust commands; -1 is 0 N, 0 is the nominal hover thrust
  and +1 is ``thrust_max``, linear in between (so an untrained policy starts near hover).
- ``action_mode=ctbr``: collective thrust (same map, on the total) and body-rate setpoints
  (±``max_body_rate`` rad/s), tracked by :class:`envs.uav.control.RateLoop` and the mixer at the
  physics rate.

## Reward (per control step)
- ``hover``: ``p(d) − rate_penalty·‖ω‖² − smoothness_penalty·‖Δa‖²`` with the proximity
  ``p(d) = 0.5·exp(−d/0.5) + 0.5·exp(−d/0.05)`` of the position error ``d`` (m): the wide term
  pulls from afar, the narrow one rewards centimetre precision. Penalty weights 0.005 and 0.002.
- ``waypoints``: ``k + p(d) + 10·(d_prev − d)`` with the same penalties, ``k`` the waypoints passed
  so far, ``d`` the distance to the current one (the last one once the course is done, where the
  vehicle then holds) and ``d_prev`` the same distance a step earlier. Progress pulls from afar,
  where ``p`` is flat, and sums to nothing around a loop; since ``p ≤ 1``, passing a waypoint
  always pays more than lingering before it, and finishing early pays ``N + p`` for every
  remaining step.
- Both: ``−crash_penalty`` (10) when the episode ends in a crash or leaves the flight volume.

``info`` carries every term as ``reward_<term>``, each its signed share, summing to the reward:
``reward_rate_penalty``, ``reward_smoothness_penalty``, on ``waypoints`` ``reward_progress`` and
``reward_waypoint_bonus`` (``k``), then ``reward_proximity`` (``p(d)``) and ``reward_crash_penalty``
(0 unless the episode ends in a crash or out of the volume).

## Termination
Crash (any ground contact, or tilted past 90°) or leaving the flight volume
(``|x|, |y| > arena_half_width`` or ``z > ceiling``). Truncation after ``episode_seconds``; a
finished course does not end the episode (``is_success`` stays true while the vehicle holds).

## Disturbances (:mod:`envs.uav.disturbances`)
Air drag ``F = −c₁·v_rel − c₂·|v_rel|·v_rel`` on the vehicle, with ``v_rel`` its velocity relative
to the air and the preset's coefficients. The air moves with constant ``wind`` (m/s, world) plus
discrete gusts: after exponentially distributed pauses (mean ``gust_interval`` s) a gust of peak
``gust_speed`` m/s blows in a random horizontal direction with a 1−cos profile lasting
``gust_duration`` s (uniform in the range; the MIL-F-8785C discrete-gust shape). Per episode,
mass (and inertia with it) scales by ``mass_scale``, inertia further by ``inertia_scale``, and each
motor's thrust by ``motor_strength`` (ranges sampled uniformly).

## Info
``position_error`` (m), ``hover_rmse`` (RMS position error over the last ``rmse_window`` s),
``control_effort`` (episode mean of Σ|T_i − T_hover| / (4·T_hover)), ``crash``,
``out_of_bounds``, ``is_success`` (hover: RMSE below ``success_radius`` at the end of the episode;
waypoints: all passed), ``waypoints_reached``, ``time_to_complete`` (s, present once the course is done), ``wind``
(the air velocity, m/s); after a step, the reward terms (``reward_*``, see Reward).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from functools import reduce

import mujoco
import numpy as np
from gymnasium import spaces, utils
from gymnasium.envs.mujoco import MujocoEnv

from envs.physics import SimulationDiverged, instability_warned
from envs.uav.control import RATE_GAINS, Mixer, RateLoop, thrust_from_action
from envs.uav.disturbances import GustField, drag_force
from envs.uav.model import QuadrotorParams, preset, quadrotor_mjcf
from envs.uav.observation import UAVLayout, uav_observation
from envs.uav.rewards import PROGRESS_GAIN, proximity_reward

TASKS = ("hover", "waypoints")
ACTION_MODES = ("rotor", "ctbr")
PHYSICS_TIMESTEP = 0.002


@dataclass(frozen=True)
class UAVConfig:
    """The env's keyword arguments (``UAVEnv(**kwargs)``, the keys of ``env=uav_*``), checked on construction."""

    task: str = "hover"  # hover | waypoints
    vehicle: str = "cf2"  # preset of envs.uav.model: cf2 (27 g) | x2 (1.3 kg)
    action_mode: str = "rotor"  # rotor: per-rotor thrusts | ctbr: collective thrust + body rates
    control_hz: float = 100.0  # Hz, the action rate; must divide the 500 Hz physics rate
    episode_seconds: float | None = None  # s; None: 10 on hover, 15 on waypoints
    target: tuple[float, float, float] = (0.0, 0.0, 1.5)  # m, world frame: the hover target
    target_yaw: float = 0.0  # rad, the heading the attitude is observed against
    init_pos_range: float = 1.0  # m, hover start offset from the target, uniform per axis
    init_vel_range: float = 0.5  # m/s, initial velocity, uniform per axis
    init_tilt_deg: float = 30.0  # deg, initial roll and pitch, each uniform
    init_rate_range: float = 1.0  # rad/s, initial body rates, uniform per axis
    n_waypoints: int = 4  # waypoints per course
    waypoint_radius: float = 0.15  # m, a waypoint counts as passed within this distance
    waypoint_spacing: tuple[float, float] = (1.0, 2.0)  # m, range of each leg's length
    n_lookahead: int = 1  # waypoints observed after the current one (waypoints only)
    error_clip: float | None = None  # m, longest observed position error; None: not clipped
    arena_half_width: float = 3.0  # m, the flight volume's |x| and |y| limit
    ceiling: float = 4.0  # m, the flight volume's top
    wind: tuple[float, float, float] = (0.0, 0.0, 0.0)  # m/s, world frame, constant
    gust_speed: float = 0.0  # m/s, each gust's peak; 0: no gusts
    gust_interval: float = 2.0  # s, mean pause between gusts (exponential)
    gust_duration: tuple[float, float] = (0.5, 2.0)  # s, range of a gust's length
    mass_scale: tuple[float, float] = (1.0, 1.0)  # range of the per-episode mass factor (inertia follows)
    inertia_scale: tuple[float, float] = (1.0, 1.0)  # range of a further per-episode inertia factor
    motor_strength: tuple[float, float] = (1.0, 1.0)  # range of each motor's per-episode thrust factor
    position_noise: float = 0.0  # m, std of the observed position
    velocity_noise: float = 0.0  # m/s, std of the observed velocity
    gyro_noise: float = 0.0  # rad/s, std of the observed body rates
    accel_noise: float = 0.0  # m/s², std of the accelerometer (imu() only)
    success_radius: float = 0.1  # m, hover succeeds with a final RMSE below it
    rmse_window: float = 2.0  # s, the window of hover_rmse
    crash_penalty: float = 10.0  # reward lost on a crash or on leaving the flight volume
    rate_penalty: float = 0.005  # weight of ‖ω‖² (ω in rad/s)
    smoothness_penalty: float = 0.002  # weight of ‖Δa‖² (action units)
    render_mode: str | None = None  # gymnasium's render mode
    width: int = 320  # px, rendered image width
    height: int = 240  # px, rendered image height
    camera_name: str | None = "chase"  # the camera render() uses

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"unknown uav task {self.task!r}; choose one of {TASKS}")
        if self.action_mode not in ACTION_MODES:
            raise ValueError(f"unknown action_mode {self.action_mode!r}; choose one of {ACTION_MODES}")
        if not self.control_hz > 0:
            raise ValueError(f"control_hz must be positive, got {self.control_hz}")
        if self.n_waypoints < 1:
            raise ValueError(f"n_waypoints must be >= 1, got {self.n_waypoints}")
        if self.n_lookahead < 0:
            raise ValueError(f"n_lookahead must be >= 0, got {self.n_lookahead}")
        for name in ("init_pos_range", "init_vel_range", "init_tilt_deg", "init_rate_range"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        frame_skip = self.frame_skip
        if frame_skip < 1 or not math.isclose(frame_skip * PHYSICS_TIMESTEP * self.control_hz, 1.0):
            raise ValueError(
                f"control_hz must divide the {1 / PHYSICS_TIMESTEP:.0f} Hz physics rate, got {self.control_hz}")
        for name in ("mass_scale", "inertia_scale", "motor_strength", "gust_duration", "waypoint_spacing"):
            rng = getattr(self, name)
            if len(rng) != 2 or not 0 < rng[0] <= rng[1]:
                raise ValueError(f"{name} must be a range [low, high] with 0 < low <= high, got {list(rng)}")
        for name in ("target", "wind"):
            if len(getattr(self, name)) != 3:
                raise ValueError(f"{name} must be a 3-vector, got {list(getattr(self, name))}")
        preset(self.vehicle)  # names the known presets
        if self.error_clip is not None and not self.error_clip > 0:
            raise ValueError(f"error_clip must be a positive distance in m or null, got {self.error_clip}")

    @property
    def frame_skip(self) -> int:
        """Physics steps per control step."""
        return round(1.0 / (self.control_hz * PHYSICS_TIMESTEP))


class UAVEnv(MujocoEnv, utils.EzPickle):
    metadata = {"render_modes": ["human", "rgb_array", "depth_array", "rgbd_tuple"], "render_fps": 50}

    def __init__(self, **kwargs):
        """``kwargs``: any fields of :class:`UAVConfig`."""
        c = UAVConfig(**kwargs)
        utils.EzPickle.__init__(self, **kwargs)
        self.config = c
        frame_skip = c.frame_skip
        self.task = c.task
        self.params: QuadrotorParams = preset(c.vehicle)
        self.action_mode = c.action_mode
        self.control_dt = frame_skip * PHYSICS_TIMESTEP
        seconds = c.episode_seconds if c.episode_seconds is not None else (10.0 if c.task == "hover" else 15.0)
        self.max_steps = int(round(seconds / self.control_dt))
        self.nominal_target = np.asarray(c.target, dtype=np.float64)
        self.target_yaw = float(c.target_yaw)
        self.init = dict(pos=c.init_pos_range, vel=c.init_vel_range, tilt=math.radians(c.init_tilt_deg),
                         rate=c.init_rate_range)
        self.n_waypoints = int(c.n_waypoints)
        self.waypoint_radius = float(c.waypoint_radius)
        self.waypoint_spacing = tuple(c.waypoint_spacing)
        self.error_clip = None if c.error_clip is None else float(c.error_clip)
        self.arena_half_width = float(c.arena_half_width)
        self.ceiling = float(c.ceiling)
        self.wind_config = dict(wind=c.wind, gust_speed=c.gust_speed, gust_interval=c.gust_interval,
                                gust_duration=tuple(c.gust_duration))
        self.randomisation = dict(mass=tuple(c.mass_scale), inertia=tuple(c.inertia_scale),
                                  motor=tuple(c.motor_strength))
        self.noise = dict(position=c.position_noise, velocity=c.velocity_noise, gyro=c.gyro_noise, accel=c.accel_noise)
        self.success_radius = float(c.success_radius)
        self.rmse_steps = max(1, int(round(c.rmse_window / self.control_dt)))
        self.crash_penalty = float(c.crash_penalty)
        self.penalties = (float(c.rate_penalty), float(c.smoothness_penalty))
        self.layout = UAVLayout(n_lookahead=int(c.n_lookahead) if c.task == "waypoints" else 0)

        self._xml = quadrotor_mjcf(self.params, PHYSICS_TIMESTEP)
        obs_space = spaces.Box(-np.inf, np.inf, shape=(self.layout.size,), dtype=np.float64)
        self.metadata = {**self.metadata, "render_fps": int(round(1.0 / self.control_dt))}
        MujocoEnv.__init__(  # the path only passes MujocoEnv's existence check; the model is built from XML
            self, __file__, frame_skip, obs_space, render_mode=c.render_mode, width=c.width, height=c.height,
            camera_name=c.camera_name if c.render_mode else None,
        )
        self.action_space = spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        self._body = self.model.body("quad").id
        self._target_site = self.model.site("target").id
        self._nominal = dict(mass=self.model.body_mass[self._body], inertia=self.model.body_inertia[self._body].copy(),
                             gain=self.model.actuator_gainprm[:, 0].copy())
        self.mixer = Mixer(self.params)
        self.rate_loop = RateLoop(self.params, RATE_GAINS[self.params.name])
        self._gusts: GustField | None = None
        self._reset_episode_state()

    # --- simulation ----------------------------------------------------------------------
    def _initialize_simulation(self):
        model = mujoco.MjModel.from_xml_string(self._xml)
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
        return model, mujoco.MjData(model)

    def _reset_episode_state(self) -> None:
        self._step_count = 0
        self._last_action = np.zeros(4)
        self._waypoints = self.nominal_target[None, :].copy()
        self._wp_index = 0
        self._sq_errors = np.zeros(self.rmse_steps)
        self._effort_sum = 0.0
        self._completed_at = math.nan
        self._air = np.zeros(3)

    @property
    def step_count(self) -> int:
        """Control steps since the episode began."""
        return self._step_count

    def task_state(self) -> dict:
        """What a snapshot needs beyond MuJoCo's state (see :mod:`envs.snapshot`): episode counters,
        the course, the gust schedule and this episode's randomised vehicle."""
        gusts = self._gusts.schedule() if self._gusts is not None else None
        m, body = self.model, self._body
        return {
            "step_count": self._step_count,
            "last_action": self._last_action.copy(),
            "waypoints": self._waypoints.copy(),
            "wp_index": self._wp_index,
            "sq_errors": self._sq_errors.copy(),
            "effort_sum": self._effort_sum,
            "completed_at": self._completed_at,
            "air": self._air.copy(),
            "gusts": gusts,
            "mass": float(m.body_mass[body]),
            "inertia": m.body_inertia[body].copy(),
            "gain": m.actuator_gainprm[:, 0].copy(),
        }

    def set_task_state(self, state: dict) -> None:
        self._step_count = int(state["step_count"])
        self._last_action = np.array(state["last_action"], dtype=np.float64)
        self._waypoints = np.array(state["waypoints"], dtype=np.float64)
        self._wp_index = int(state["wp_index"])
        self._sq_errors = np.array(state["sq_errors"], dtype=np.float64)
        self._effort_sum = float(state["effort_sum"])
        self._completed_at = float(state["completed_at"])
        self._air = np.array(state["air"], dtype=np.float64)
        gusts = state["gusts"]
        self._gusts = None if gusts is None else GustField(rng=self.np_random, schedule=gusts, **self.wind_config)
        m, body = self.model, self._body
        m.body_mass[body] = state["mass"]
        m.body_inertia[body] = state["inertia"]
        m.actuator_gainprm[:, 0] = state["gain"]
        m.site_pos[self._target_site] = self.target

    @property
    def time(self) -> float:
        return float(self.data.time)

    @property
    def target(self) -> np.ndarray:
        return self._waypoints[min(self._wp_index, len(self._waypoints) - 1)]

    def state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """True (position, world velocity, body→world rotation, body rates)."""
        q = self.data.qpos
        rot = np.empty(9)
        mujoco.mju_quat2Mat(rot, q[3:7])
        return q[:3].copy(), self.data.qvel[:3].copy(), rot.reshape(3, 3), self.data.qvel[3:6].copy()

    def imu(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(orientation quaternion w-x-y-z, gyro rad/s, accelerometer m/s²) for the current state, with noise."""
        mujoco.mj_forward(self.model, self.data)
        mujoco.mj_rnePostConstraint(self.model, self.data)
        s = self.data.sensordata
        gyro = s[0:3] + self.np_random.normal(0.0, self.noise["gyro"], 3) if self.noise["gyro"] else s[0:3].copy()
        accel = s[3:6] + self.np_random.normal(0.0, self.noise["accel"], 3) if self.noise["accel"] else s[3:6].copy()
        return s[6:10].copy(), gyro, accel

    def _apply_drag(self) -> None:
        self._air = self._gusts.velocity(self.time) if self._gusts is not None else np.zeros(3)
        self.data.xfrc_applied[self._body, :3] = drag_force(self.data.qvel[:3], self._air, self.params)

    def _step_physics(self, action: np.ndarray) -> np.ndarray:
        """Advance one control period; returns the mean rotor thrust command."""
        p = self.params
        self._apply_drag()
        if self.action_mode == "rotor":
            thrust = thrust_from_action(action, p.hover_thrust, p.thrust_max)
            self.data.ctrl[:] = thrust
            mujoco.mj_step(self.model, self.data, nstep=self.frame_skip)
        else:
            n = len(p.rotor_xy)
            collective = float(thrust_from_action(action[0], p.weight, n * p.thrust_max))
            rates = np.asarray(action[1:4], dtype=np.float64) * p.max_body_rate
            thrust = np.zeros(n)
            for _ in range(self.frame_skip):
                torque = self.rate_loop.torque(rates, self.data.qvel[3:6])
                self.data.ctrl[:] = self.mixer(collective, torque)
                thrust += self.data.ctrl
                mujoco.mj_step(self.model, self.data)
            thrust /= self.frame_skip
        if instability_warned(self.data) or not np.isfinite(self.data.qpos).all():
            raise SimulationDiverged(f"quadrotor physics diverged at step {self._step_count + 1} (non-finite state)")
        return thrust

    # --- observation ---------------------------------------------------------------------
    def upcoming_waypoints(self, count: int) -> list[np.ndarray]:
        """The ``count`` waypoints after the current one (the last repeats at the end of the course)."""
        last = len(self._waypoints) - 1
        return [self._waypoints[min(self._wp_index + k, last)] for k in range(1, count + 1)]

    def sensed_state(self, true_state: tuple | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`state` (or ``true_state``, already read) as the sensors report it: with the configured
        position, velocity and gyro noise."""
        pos, vel, rot, rate = true_state if true_state is not None else self.state()
        rng, noise = self.np_random, self.noise
        if noise["position"]:
            pos = pos + rng.normal(0.0, noise["position"], 3)
        if noise["velocity"]:
            vel = vel + rng.normal(0.0, noise["velocity"], 3)
        if noise["gyro"]:
            rate = rate + rng.normal(0.0, noise["gyro"], 3)
        return pos, vel, rot, rate

    def _get_obs(self, true_state: tuple | None = None) -> np.ndarray:
        pos, vel, rot, rate = self.sensed_state(true_state)
        return uav_observation(pos, vel, rot, rate, self._last_action, self.target,
                               self.upcoming_waypoints(self.layout.n_lookahead), self.target_yaw, self.error_clip)

    # --- episode ---------------------------------------------------------------------------
    def _randomise_vehicle(self) -> None:
        rng, r, nom = self.np_random, self.randomisation, self._nominal
        mass = rng.uniform(*r["mass"])
        self.model.body_mass[self._body] = nom["mass"] * mass
        self.model.body_inertia[self._body] = nom["inertia"] * mass * rng.uniform(*r["inertia"])
        self.model.actuator_gainprm[:, 0] = nom["gain"] * rng.uniform(*r["motor"], size=len(nom["gain"]))

    def _random_course(self, start: np.ndarray) -> np.ndarray:
        lo = np.array([-self.arena_half_width + 0.5, -self.arena_half_width + 0.5, 0.5])
        hi = np.array([self.arena_half_width - 0.5, self.arena_half_width - 0.5, self.ceiling - 0.5])
        points, prev = [], start
        while len(points) < self.n_waypoints:
            direction = self.np_random.normal(size=3)
            direction[2] *= 0.5  # mostly horizontal legs
            nxt = prev + direction / np.linalg.norm(direction) * self.np_random.uniform(*self.waypoint_spacing)
            if np.all(nxt >= lo) and np.all(nxt <= hi):
                points.append(nxt)
                prev = nxt
        return np.array(points)

    def reset_model(self) -> np.ndarray:
        rng, init = self.np_random, self.init
        self._reset_episode_state()
        self._randomise_vehicle()
        if self.task == "hover":
            start = self.nominal_target + rng.uniform(-init["pos"], init["pos"], 3)
            start[2] = max(start[2], 0.3)
        else:
            half = self.arena_half_width - 1.5
            start = np.array([rng.uniform(-half, half), rng.uniform(-half, half), rng.uniform(1.0, 2.0)])
            self._waypoints = self._random_course(start)
        roll, pitch = rng.uniform(-init["tilt"], init["tilt"], 2)
        yaw = rng.uniform(-math.pi, math.pi)
        quat = np.empty(4)
        mujoco.mju_euler2Quat(quat, np.array([roll, pitch, yaw]), "xyz")
        qpos = np.concatenate([start, quat])
        qvel = np.concatenate([rng.uniform(-init["vel"], init["vel"], 3), rng.uniform(-init["rate"], init["rate"], 3)])
        self.set_state(qpos, qvel)
        self.data.act[:] = self.params.hover_thrust  # motors spinning at hover speed
        self._gusts = GustField(rng=rng, **self.wind_config)
        self._air = self._gusts.velocity(0.0)
        self.model.site_pos[self._target_site] = self.target
        return self._get_obs()

    def _get_reset_info(self) -> dict:
        return self._info(crash=False, out_of_bounds=False, error=float(np.linalg.norm(self.target - self.data.qpos[:3])))

    def _crashed(self, rot: np.ndarray) -> bool:
        return self.data.ncon > 0 or rot[2, 2] < 0.0

    def _out_of_bounds(self, pos: np.ndarray) -> bool:
        return abs(pos[0]) > self.arena_half_width or abs(pos[1]) > self.arena_half_width or pos[2] > self.ceiling

    def _info(self, crash: bool, out_of_bounds: bool, error: float) -> dict:
        n = min(self._step_count, self.rmse_steps)
        rmse = math.sqrt(self._sq_errors.sum() / n) if n else error
        done_all = self._wp_index >= len(self._waypoints)
        if self.task == "hover":
            success = self._step_count >= self.max_steps and not crash and rmse < self.success_radius
        else:
            success = done_all
        info = {
            "position_error": error,
            "hover_rmse": rmse,
            "control_effort": self._effort_sum / max(self._step_count, 1),
            "crash": bool(crash),
            "out_of_bounds": bool(out_of_bounds),
            "is_success": bool(success),
            "waypoints_reached": int(self._wp_index) if self.task == "waypoints" else 0,
            "wind": self._air.copy(),
        }
        if not math.isnan(self._completed_at):
            info["time_to_complete"] = self._completed_at
        return info

    def _pass_waypoints(self, pos: np.ndarray, error: float) -> float:
        """Count every waypoint now within ``waypoint_radius`` as passed; returns the distance to the current one."""
        while self._wp_index < len(self._waypoints) and error <= self.waypoint_radius:
            self._wp_index += 1
            if self._wp_index == len(self._waypoints):
                self._completed_at = self._step_count * self.control_dt
            error = float(np.linalg.norm(self.target - pos))
        self.model.site_pos[self._target_site] = self.target
        return error

    def _get_rew(self, action: np.ndarray, rate: np.ndarray, before: float, after: float, error: float,
                 failed: bool) -> tuple[float, dict[str, float]]:
        """The reward and its named terms, each its signed share of the reward.

        ``before`` and ``after`` are the distances (m) to the waypoint the step started with, at the
        step's start and end; ``error`` is the distance to the current one; ``failed``: a crash or
        leaving the flight volume. The terms are added left to right in the order written here.
        """
        w_rate, w_smooth = self.penalties
        terms = {
            "rate_penalty": -w_rate * float(rate @ rate),
            "smoothness_penalty": -w_smooth * float(np.sum((action - self._last_action) ** 2)),
        }
        if self.task == "waypoints":
            terms["progress"] = PROGRESS_GAIN * (before - after)
            terms["waypoint_bonus"] = float(self._wp_index)  # every waypoint passed adds 1 to each later step
        terms["proximity"] = proximity_reward(error)
        terms["crash_penalty"] = -self.crash_penalty if failed else 0.0
        return reduce(operator.add, terms.values()), terms

    @staticmethod
    def checked_action(action) -> np.ndarray:
        """The action as 4 numbers in [-1, 1]; ValueError unless it is 4 finite numbers."""
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (4,) or not np.all(np.isfinite(action)):
            raise ValueError(f"uav action must be 4 finite numbers, got {action}")
        return np.clip(action, -1.0, 1.0)

    def step(self, action):
        action = self.checked_action(action)
        before = float(np.linalg.norm(self.target - self.data.qpos[:3]))
        thrust = self._step_physics(action)
        self._step_count += 1
        true_state = self.state()
        pos, _, rot, rate = true_state
        after = float(np.linalg.norm(self.target - pos))
        self._sq_errors[self._step_count % self.rmse_steps] = after**2
        hover = self.params.hover_thrust
        self._effort_sum += float(np.abs(thrust - hover).sum() / (len(thrust) * hover))
        error = self._pass_waypoints(pos, after) if self.task == "waypoints" else after
        crash = self._crashed(rot)
        out = not crash and self._out_of_bounds(pos)
        terminated = crash or out
        reward, reward_info = self._get_rew(action, rate, before, after, error, terminated)
        self._last_action = action
        info = self._info(crash, out, error)
        info.update({f"reward_{name}": value for name, value in reward_info.items()})
        truncated = not terminated and self._step_count >= self.max_steps
        if self.render_mode == "human":
            self.render()
        return self._get_obs(true_state), float(reward), bool(terminated), bool(truncated), info
