"""Robot adapters: the one place that maps between ROS messages and an env's observation.

Each robot publishes standard messages and takes a ``std_msgs/Float64MultiArray`` command (what
ros2_control's forward_command_controller expects). An adapter knows, for one robot:

- which state topics exist and how to validate each message (names, lengths, finite values,
  stamps); a rejected message raises :class:`InvalidMessage` and never reaches the policy;
- how to rebuild the env's observation from the latest valid messages, by handing the physical
  state to the env's own observation function (no second copy of the observation code);
- how the simulated robot encodes its state into the same messages (so sim and real robot share
  one contract), and which command is safe (zero torque for the swimmer, motors off for the UAV);
- how env actions map to the robot's command units and back (identity for the swimmer, newtons
  per rotor for the UAV), and what the policy node last sent, for observations that contain the
  previous action (:meth:`RobotAdapter.commanded`).

Adapters depend on ``envs`` but not on rclpy's executor, so they are unit-testable in-process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mujoco
import numpy as np
from geometry_msgs.msg import PointStamped, PoseStamped
from nav_msgs.msg import Odometry, Path
from sensor_msgs.msg import Imu, JointState

import envs
from envs.uav import action_from_thrust, thrust_from_action, uav_observation


class InvalidMessage(ValueError):
    """A state message that must not reach the policy; the text says why (for a throttled log)."""


def stamp_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def set_stamp(header, ns: int, frame_id: str) -> None:
    header.stamp.sec, header.stamp.nanosec = divmod(int(ns), 1_000_000_000)
    header.frame_id = frame_id


MAX_ABS_VALUE = 1e3  # m, rad, m/s, rad/s: anything larger is a corrupt message, not a robot state


def _finite(values, what: str, limit: float = MAX_ABS_VALUE) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise InvalidMessage(f"{what} contains NaN or inf")
    if arr.size and np.abs(arr).max() > limit:
        raise InvalidMessage(f"{what} has an implausible value {np.abs(arr).max():.3g} (limit {limit:g})")
    return arr


def check_stamp(ns: int, now_ns: int, max_age_ns: int, topic: str) -> None:
    """Reject unstamped, stale and future-dated messages (clocks of both ends share one host or PTP)."""
    if ns == 0:
        raise InvalidMessage(f"{topic}: header.stamp is zero (unstamped message)")
    age = now_ns - ns
    if age > max_age_ns:
        raise InvalidMessage(f"{topic}: stale stamp, {age / 1e6:.1f} ms old (limit {max_age_ns / 1e6:.1f} ms)")
    if age < -max_age_ns:
        raise InvalidMessage(f"{topic}: stamp {-age / 1e6:.1f} ms in the future")


def joint_state_arrays(msg: JointState, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Positions and velocities in ``names`` order; JointState may list joints in any order."""
    n = len(msg.name)
    if len(msg.position) != n or len(msg.velocity) != n:
        raise InvalidMessage(
            f"joint_states: {n} names but {len(msg.position)} positions and {len(msg.velocity)} velocities"
        )
    index = {name: i for i, name in enumerate(msg.name)}
    if len(index) != n:
        raise InvalidMessage("joint_states: duplicate joint names")
    missing = [name for name in names if name not in index]
    if missing:
        raise InvalidMessage(f"joint_states: missing joints {missing[:3]}{'...' if len(missing) > 3 else ''}")
    order = [index[name] for name in names]
    pos = _finite(np.asarray(msg.position)[order], "joint_states.position")
    vel = _finite(np.asarray(msg.velocity)[order], "joint_states.velocity")
    return pos, vel


@dataclass(frozen=True)
class Topic:
    name: str  # relative to the robot's namespace
    type: type


class RobotAdapter:
    """What the nodes ask of every robot; a subclass sets the attributes and writes the messages.

    Attributes: ``robot``, ``trigger`` (the topic whose arrival completes a state sample),
    ``topics`` (what the policy subscribes to), ``published_topics`` (what the sim publishes, in
    publishing order), ``task``, ``control_dt``, ``command_size``, ``action_low``/``action_high``
    (env action bounds), ``obs_dim``, ``layout``. Methods: ``encode_state``, ``validate``,
    ``observation``, ``safe_command`` and the defaults below.
    """

    hold_until_command = False  # sim: keep the initial state until the first command arrives

    @staticmethod
    def with_rate(env_config: dict, rate: float) -> dict:
        """The env config at another control rate (Hz); the sim's ``rate`` parameter."""
        raise NotImplementedError

    def safe_command(self) -> np.ndarray:
        raise NotImplementedError

    def encode_command(self, action: np.ndarray) -> np.ndarray:
        """Env action units -> the robot's command units (before the node's ``command_scale``)."""
        return np.asarray(action, dtype=np.float64).copy()

    def decode_command(self, command: np.ndarray) -> np.ndarray:
        """A received command -> the env action the sim applies, clamped to the action bounds."""
        return np.clip(np.asarray(command, dtype=np.float64), self.action_low, self.action_high)

    def commanded(self, action: np.ndarray) -> None:
        """The policy node published ``action`` (env units, after clamping); nothing to remember here."""

    def reset(self) -> None:
        """Forget per-episode memory (the policy node's ``~/reset``)."""

    def summary(self, env) -> dict:
        """Where the simulated robot is, for the sim node's statistics."""
        return {}


class SwimmerAdapter(RobotAdapter):
    """The N-link swimmer: one ``joint_states`` message holds its whole planar state.

    The swimmer has no fixed base: as in its MJCF, the head moves on three virtual joints
    ``rootx``, ``rooty`` (slides along the world x/y axes, m) and ``rootz`` (yaw about the head's
    rear joint axis, rad), listed in ``joint_states`` before the hinges ``joint_0..``. A real
    swimmer's driver fills them from motion capture. The per-link velocities the policy observes
    are the rigid-body kinematics of that state, computed by MuJoCo exactly as in training. One
    message per sample keeps the state->command path to one delivery. The sim also publishes
    ``odom`` (nav_msgs/Odometry of ``base_link`` at the yaw axis) for visualisation and bags;
    the policy does not need it. On ``navigate`` the target arrives on ``goal``
    (geometry_msgs/PointStamped, odom frame).
    """

    robot = "swimmer"
    trigger = "joint_states"  # one observation per joint_states message
    ROOT_JOINTS = ("rootx", "rooty", "rootz")

    ENV_IDS = (envs.SWIMMER, envs.SWIMMER_SWIM, envs.SWIMMER_NAVIGATE)

    def __init__(self, env_config: dict):
        if env_config.get("id", envs.SWIMMER) not in self.ENV_IDS:
            raise ValueError(
                f"the swimmer adapter serves the dm_control swimmer envs (env=swimmer, env=swimmer_navigate), "
                f"not {env_config.get('id')}"
            )
        self.env_config = dict(env_config)
        self._env = envs.make_from_config({"id": envs.SWIMMER, **env_config}).unwrapped
        env = self._env
        self.task = env.task
        self.control_dt = float(env.dt)
        self.joint_names = [env.model.joint(i).name for i in range(env.model.njnt)]  # root joints first
        self.command_size = env.model.nu
        self.action_low = env.action_space.low.astype(np.float64)
        self.action_high = env.action_space.high.astype(np.float64)
        self.obs_dim = int(env.observation_space.shape[0])
        self.layout = env.layout.to_dict()
        self._head0 = env.model.body("head").pos[:2].copy()
        rootz = env.model.joint("rootz")
        # base_link origin in the world at qpos = 0 (the head body's position plus the joint anchor).
        self._base0 = env.model.body("head").pos[:2] + env.model.jnt_pos[rootz.id][:2]
        self.topics = [Topic("joint_states", JointState)]  # what the policy subscribes to
        if self.task == "navigate":
            self.topics.append(Topic("goal", PointStamped))
        self.published_topics = [*self.topics, Topic("odom", Odometry)]  # what the robot publishes, in order

    @property
    def env(self):
        return self._env

    @staticmethod
    def with_rate(env_config: dict, rate: float) -> dict:
        return {**env_config, "control_timestep": 1.0 / rate}

    def safe_command(self) -> np.ndarray:
        return np.zeros(self.command_size)

    # --- robot side: state -> messages ---------------------------------------------------
    def encode_state(self, env, stamp: int, frame_prefix: str = "") -> dict[str, object]:
        """Messages for the current state of a swimmer env (the sim robot publishes these)."""
        qpos, qvel = env.data.qpos, env.data.qvel
        js = JointState()
        set_stamp(js.header, stamp, "")
        js.name = list(self.joint_names)
        js.position = qpos.tolist()
        js.velocity = qvel.tolist()

        odom = Odometry()
        set_stamp(odom.header, stamp, f"{frame_prefix}odom")
        odom.child_frame_id = f"{frame_prefix}base_link"
        yaw = float(qpos[2])
        odom.pose.pose.position.x = float(self._base0[0] + qpos[0])
        odom.pose.pose.position.y = float(self._base0[1] + qpos[1])
        odom.pose.pose.orientation.z = math.sin(yaw / 2)
        odom.pose.pose.orientation.w = math.cos(yaw / 2)
        c, s = math.cos(yaw), math.sin(yaw)
        vx, vy = float(qvel[0]), float(qvel[1])
        odom.twist.twist.linear.x = c * vx + s * vy  # world -> base_link axes
        odom.twist.twist.linear.y = -s * vx + c * vy
        odom.twist.twist.angular.z = float(qvel[2])
        out = {"joint_states": js}
        if self.task == "navigate":
            goal = PointStamped()
            set_stamp(goal.header, stamp, f"{frame_prefix}odom")
            target = env.model.geom_pos[env.model.geom("target").id]
            goal.point.x, goal.point.y = float(target[0]), float(target[1])
            out["goal"] = goal
        out["odom"] = odom  # last: not on the policy's path
        return out

    # --- policy side: messages -> observation ---------------------------------------------
    def validate(self, topic: str, msg, now_ns: int, max_age_ns: int) -> int:
        """Check one message on arrival; returns its stamp (ns) or raises InvalidMessage."""
        ns = stamp_ns(msg.header.stamp)
        check_stamp(ns, now_ns, max_age_ns, topic)
        if topic == "joint_states":
            joint_state_arrays(msg, self.joint_names)
        elif topic == "goal":
            _finite([msg.point.x, msg.point.y, msg.point.z], "goal.point")
        return ns

    def observation(self, msgs: dict[str, object], step: int) -> np.ndarray:
        """The env's observation for validated messages at ``step`` control steps since reset."""
        qpos, qvel = joint_state_arrays(msgs["joint_states"], self.joint_names)
        target = None
        if self.task == "navigate":
            goal = msgs["goal"].point
            target = (goal.x, goal.y)
        return self._env.observation_from_state(qpos, qvel, step, target)

    def head_xy(self, msg: JointState) -> np.ndarray:
        """World position of the head body (for distance measurements from recorded states)."""
        qpos, _ = joint_state_arrays(msg, self.joint_names)
        c, s = math.cos(qpos[2]), math.sin(qpos[2])
        offset = self._head0 - self._base0  # the head origin seen from the yaw axis, at yaw 0
        return self._base0 + qpos[:2] + np.array([c * offset[0] - s * offset[1], s * offset[0] + c * offset[1]])

    def summary(self, env) -> dict:
        head = env.data.body("head").xpos
        return {"head_xy": [float(head[0]), float(head[1])]}


def _xyz(v) -> list[float]:
    return [v.x, v.y, v.z]


def _set_xyz(v, values) -> None:
    v.x, v.y, v.z = (float(x) for x in values)


def _diagonal(variance: float) -> list[float]:
    return [variance, 0.0, 0.0, 0.0, variance, 0.0, 0.0, 0.0, variance]


class UAVAdapter(RobotAdapter):
    """A quadrotor: ``odom`` and ``imu`` in, four rotor thrusts in newtons out.

    Frames follow REP-103/105: ``odom`` is the world frame (ENU, z up, the env's world), the body
    frame ``base_link`` is FLU (x forward, y left, z up, the rotor layout of
    ``envs/quadrotor_model.py``). ``odom`` (nav_msgs/Odometry) gives the position and orientation
    of ``base_link`` in ``odom`` and, as REP-105 says, its twist in ``child_frame_id`` axes (the
    body frame); the adapter rotates the linear velocity to the world with the message's own
    orientation before handing the state to :func:`envs.uav.uav_observation`. ``imu``
    (sensor_msgs/Imu, in ``base_link``: no tf here, so the IMU must be published in the body
    frame) gives the body rates from the gyro; its orientation and acceleration are published by
    the sim but not used. On ``waypoints`` the course arrives on ``goal`` (nav_msgs/Path in the
    odom frame): ``poses[0]`` is the current waypoint, the next ones follow; a shorter path
    repeats its last pose, as the env does at the end of its course. On ``hover`` the target is
    the env config's ``target``.

    The observation holds the previous action, which no robot reports: the policy node tells the
    adapter what it sent (:meth:`commanded`), safe commands included. The command is
    ``std_msgs/Float64MultiArray`` with one thrust per rotor in newtons, front-right, back-right,
    back-left, front-left; the safe command is 0 N (motors off, see the README).
    """

    robot = "uav"
    trigger = "odom"  # published last by the sim: its arrival completes a sample
    hold_until_command = True  # a free-flying vehicle cannot wait passively in the air
    ENV_IDS = (envs.UAV, envs.UAV_HOVER, envs.UAV_WAYPOINTS)
    MAX_SPEED = 100.0  # m/s: faster is a corrupt message, not a small multirotor
    MAX_BODY_RATE = 100.0  # rad/s: beyond the range of MEMS gyros (2000-4000 deg/s)
    QUATERNION_TOLERANCE = 1e-3  # | |q| - 1 | accepted (float32 drivers), then normalised
    MAX_PATH_POSES = 10_000

    def __init__(self, env_config: dict):
        if env_config.get("id", envs.UAV) not in self.ENV_IDS:
            raise ValueError(f"the uav adapter serves the quadrotor envs (env=uav_hover, env=uav_waypoints), "
                             f"not {env_config.get('id')}")
        self.env_config = dict(env_config)
        self._env = envs.make_from_config({"id": envs.UAV, **env_config}).unwrapped
        env = self._env
        if env.action_mode != "rotor":
            raise ValueError(f"the uav adapter sends per-rotor thrusts (action_mode=rotor); this env has "
                             f"action_mode={env.action_mode}")
        self.task = env.task
        self.params = env.params
        self.control_dt = float(env.dt)
        self.command_size = len(self.params.rotor_xy)
        self.action_low = env.action_space.low.astype(np.float64)
        self.action_high = env.action_space.high.astype(np.float64)
        self.obs_dim = int(env.observation_space.shape[0])
        self.layout = env.layout.to_dict()
        self.n_lookahead = env.layout.n_lookahead
        self.target = env.nominal_target.copy()
        self.target_yaw = env.target_yaw
        self.error_clip = env.error_clip
        self.last_action = np.zeros(self.command_size)  # a fresh env's, hover thrust
        self.topics = [Topic("odom", Odometry), Topic("imu", Imu)]
        if self.task == "waypoints":
            self.topics.append(Topic("goal", Path))
        # The goal and the gyro before the odometry that completes the sample.
        self.published_topics = [*self.topics[2:], Topic("imu", Imu), Topic("odom", Odometry)]

    @property
    def env(self):
        return self._env

    @staticmethod
    def with_rate(env_config: dict, rate: float) -> dict:
        return {**env_config, "control_hz": rate}

    # --- commands ------------------------------------------------------------------------
    def safe_command(self) -> np.ndarray:
        """Motors off: action -1 is 0 N on every rotor."""
        return -np.ones(self.command_size)

    def encode_command(self, action: np.ndarray) -> np.ndarray:
        p = self.params
        return np.asarray(thrust_from_action(np.asarray(action, dtype=np.float64), p.hover_thrust, p.thrust_max),
                          dtype=np.float64)

    def decode_command(self, command: np.ndarray) -> np.ndarray:
        """Rotor thrusts (N) -> the env's normalised action; thrusts saturate at 0 and thrust_max."""
        p = self.params
        return np.asarray(action_from_thrust(np.asarray(command, dtype=np.float64), p.hover_thrust, p.thrust_max),
                          dtype=np.float64)

    def commanded(self, action: np.ndarray) -> None:
        self.last_action = np.clip(np.asarray(action, dtype=np.float64), self.action_low, self.action_high)

    def reset(self) -> None:
        self.last_action = np.zeros(self.command_size)

    # --- robot side: state -> messages ---------------------------------------------------
    def encode_state(self, env, stamp: int, frame_prefix: str = "") -> dict[str, object]:
        """Messages for the current state of a UAV env, with the env's sensor noise if configured."""
        pos, vel, rot, rate = env.sensed_state()
        noise = env.noise
        quat, gyro, accel = env.imu()  # gyro and accelerometer noise come from the env
        odom_frame, body_frame = f"{frame_prefix}odom", f"{frame_prefix}base_link"
        out = {}
        if self.task == "waypoints":
            goal = Path()
            set_stamp(goal.header, stamp, odom_frame)
            for waypoint in [env.target, *env.upcoming_waypoints(self.n_lookahead)]:
                pose = PoseStamped()
                pose.header = goal.header
                _set_xyz(pose.pose.position, waypoint)
                goal.poses.append(pose)
            out["goal"] = goal

        imu = Imu()
        set_stamp(imu.header, stamp, body_frame)
        w, x, y, z = quat
        imu.orientation.w, imu.orientation.x, imu.orientation.y, imu.orientation.z = float(w), float(x), float(y), float(z)
        _set_xyz(imu.angular_velocity, gyro)
        _set_xyz(imu.linear_acceleration, accel)
        imu.angular_velocity_covariance = _diagonal(noise["gyro"] ** 2)
        imu.linear_acceleration_covariance = _diagonal(noise["accel"] ** 2)
        out["imu"] = imu

        odom = Odometry()
        set_stamp(odom.header, stamp, odom_frame)
        odom.child_frame_id = body_frame
        _set_xyz(odom.pose.pose.position, pos)
        w, x, y, z = env.data.qpos[3:7]  # the pose's own quaternion (state()'s rotation), w-x-y-z
        q = odom.pose.pose.orientation
        q.w, q.x, q.y, q.z = float(w), float(x), float(y), float(z)
        _set_xyz(odom.twist.twist.linear, rot.T @ vel)  # world -> base_link axes (REP-105)
        _set_xyz(odom.twist.twist.angular, rate)
        odom.pose.covariance[0] = odom.pose.covariance[7] = odom.pose.covariance[14] = noise["position"] ** 2
        odom.twist.covariance[0] = odom.twist.covariance[7] = odom.twist.covariance[14] = noise["velocity"] ** 2
        out["odom"] = odom  # last: it completes the sample
        return out

    # --- policy side: messages -> observation ---------------------------------------------
    def validate(self, topic: str, msg, now_ns: int, max_age_ns: int) -> int:
        """Check one message on arrival; returns its stamp (ns) or raises InvalidMessage."""
        ns = stamp_ns(msg.header.stamp)
        check_stamp(ns, now_ns, max_age_ns, topic)
        if not msg.header.frame_id:
            raise InvalidMessage(f"{topic}: header.frame_id is empty")
        if topic == "odom":
            self._odometry(msg)
        elif topic == "imu":
            _finite(_xyz(msg.angular_velocity), "imu.angular_velocity", self.MAX_BODY_RATE)
            _finite(_xyz(msg.linear_acceleration), "imu.linear_acceleration")
        elif topic == "goal":
            self._course(msg)
        return ns

    def _odometry(self, msg: Odometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(position, body-to-world rotation, body-frame velocity) of a valid Odometry."""
        if not msg.child_frame_id or msg.child_frame_id == msg.header.frame_id:
            raise InvalidMessage(
                f"odom: child_frame_id {msg.child_frame_id!r} must name the body frame (the twist is in it, REP-105), "
                f"not the odom frame {msg.header.frame_id!r}"
            )
        pose, twist = msg.pose.pose, msg.twist.twist
        position = _finite(_xyz(pose.position), "odom.pose.position")
        q = _finite([pose.orientation.w, pose.orientation.x, pose.orientation.y, pose.orientation.z],
                    "odom.pose.orientation")
        norm = float(np.linalg.norm(q))
        if abs(norm - 1.0) > self.QUATERNION_TOLERANCE:
            raise InvalidMessage(f"odom.pose.orientation is not a unit quaternion (norm {norm:.6g})")
        velocity = _finite(_xyz(twist.linear), "odom.twist.linear", self.MAX_SPEED)
        _finite(_xyz(twist.angular), "odom.twist.angular", self.MAX_BODY_RATE)
        rotation = np.empty(9)
        mujoco.mju_quat2Mat(rotation, q / norm)
        return position, rotation.reshape(3, 3), velocity

    def _course(self, msg: Path) -> tuple[np.ndarray, list[np.ndarray]]:
        """(current waypoint, the n_lookahead after it) of a valid goal Path."""
        n = len(msg.poses)
        if not 1 <= n <= self.MAX_PATH_POSES:
            raise InvalidMessage(f"goal: {n} poses (need 1 to {self.MAX_PATH_POSES}: the current waypoint first)")
        points = _finite([_xyz(p.pose.position) for p in msg.poses], "goal.poses.position")
        return points[0], [points[min(k, n - 1)] for k in range(1, self.n_lookahead + 1)]

    def observation(self, msgs: dict[str, object], step: int) -> np.ndarray:
        """The env's observation for validated messages (``step`` is unused: no clock in it)."""
        odom, imu = msgs["odom"], msgs["imu"]
        if imu.header.frame_id != odom.child_frame_id:
            raise InvalidMessage(
                f"imu: frame_id {imu.header.frame_id!r} is not odom's body frame {odom.child_frame_id!r} "
                "(no tf here: publish the gyro in the body frame)"
            )
        position, rotation, velocity_body = self._odometry(odom)
        rate = _finite(_xyz(imu.angular_velocity), "imu.angular_velocity", self.MAX_BODY_RATE)
        target, lookahead = self.target, []
        if self.task == "waypoints":
            goal = msgs["goal"]
            if goal.header.frame_id != odom.header.frame_id:
                raise InvalidMessage(f"goal: frame_id {goal.header.frame_id!r} is not odom's {odom.header.frame_id!r}")
            target, lookahead = self._course(goal)
        return uav_observation(position, rotation @ velocity_body, rotation, rate, self.last_action, target,
                               lookahead, self.target_yaw, self.error_clip)

    def summary(self, env) -> dict:
        pos, vel, _, _ = env.state()
        return {"position": pos.tolist(), "velocity": vel.tolist()}


ADAPTERS = {"swimmer": SwimmerAdapter, "uav": UAVAdapter}


def adapter_class(robot: str) -> type[RobotAdapter]:
    if robot not in ADAPTERS:
        raise ValueError(f"unknown robot {robot!r} (known: {', '.join(ADAPTERS)})")
    return ADAPTERS[robot]


def make_adapter(robot: str, env_config: dict):
    """The adapter for ``robot``, built for the env the policy was trained on."""
    adapter = adapter_class(robot)
    name = str(env_config.get("name") or "")
    if name and not name.startswith(robot):
        other = next((r for r in ADAPTERS if name.startswith(r)), None)
        hint = f" (use robot:={other})" if other else ""
        raise ValueError(f"the policy was trained on env '{name}', not on a {robot}{hint}")
    return adapter(env_config)
