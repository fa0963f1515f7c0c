"""Robot adapters: the one place that maps between ROS messages and an env's observation.

Each robot publishes standard messages and takes a ``std_msgs/Float64MultiArray`` command (what
ros2_control's forward_command_controller expects). An adapter knows, for one robot:

- which state topics exist and how to validate each message (names, lengths, finite values,
  stamps); a rejected message raises :class:`InvalidMessage` and never reaches the policy;
- how to rebuild the env's observation from the latest valid messages, by handing the physical
  state to the env's own observation function (no second copy of the observation code);
- how the simulated robot encodes its state into the same messages (so sim and real robot share
  one contract), and which command is safe (zero torque for the swimmer, motors off for the UAV,
  hold here for the kitchen arm);
- how env actions map to the robot's command units and back (identity for the swimmer and the
  kitchen arm, newtons per rotor for the UAV), and what the policy node last sent, for
  observations that contain the previous action (:meth:`RobotAdapter.commanded`).

Observations are flat vectors (``obs_dim`` long) except the kitchen's, which is the env's Dict of
proprioception, object state and camera images (``obs_dim`` is None there).

Adapters depend on ``envs`` but not on rclpy's executor, so they are unit-testable in-process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mujoco
import numpy as np
from geometry_msgs.msg import PointStamped, PoseStamped
from gymnasium.spaces import Box
from nav_msgs.msg import Odometry, Path
from sensor_msgs.msg import Image, Imu, JointState
from std_msgs.msg import Float64MultiArray, MultiArrayDimension, String

import envs
from envs.kitchen import instructions
from envs.kitchen.env import FRAME_SKIP, OBJECT_STATE_SIZE, PHYSICS_TIMESTEP, proprio_from_joints
from envs.kitchen.model import ARM_JOINTS, FINGER_ACTUATORS, FINGER_JOINTS, FINGER_TRAVEL
from envs.uav.control import action_from_thrust, thrust_from_action
from envs.uav.observation import uav_observation


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
    # Part of each state sample: stamped like the trigger (within half a period). Off for context
    # that changes rarely or carries no header (a goal, an instruction): the latest one is used.
    synced: bool = True
    # Published once per change with transient-local (latched) QoS, so a late subscriber still gets it.
    latched: bool = False


class RobotAdapter:
    """What the nodes ask of every robot; a subclass sets the attributes and writes the messages.

    Attributes: ``robot``, ``trigger`` (the topic whose arrival completes a state sample),
    ``topics`` (what the policy subscribes to), ``published_topics`` (what the sim publishes, in
    publishing order), ``task``, ``control_dt``, ``command_size``, ``action_low``/``action_high``
    (env action bounds), ``obs_dim`` (None for a Dict observation), ``layout``. Methods:
    ``encode_state``, ``validate``, ``observation``, ``safe_command`` and the defaults below.
    """

    hold_until_command = False  # sim: keep the initial state until the first command arrives

    @staticmethod
    def with_rate(env_config: dict, rate: float) -> dict:
        """The env config at another control rate (Hz); the sim's ``rate`` parameter."""
        raise NotImplementedError

    @staticmethod
    def sim_env_config(env_config: dict) -> dict:
        """The config of the env the sim robot steps (the same env, unless the adapter renders itself)."""
        return dict(env_config)

    def safe_command(self, env=None) -> np.ndarray | None:
        """The command that makes the robot safe; ``env``: the simulated robot, where the command depends
        on its state. None: nothing is known yet to make a command from (send none)."""
        raise NotImplementedError

    def zero_observation(self):
        """An observation of the right shapes and types, to warm up inference."""
        return np.zeros(self.obs_dim)

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
            self.topics.append(Topic("goal", PointStamped, synced=False))
        self.published_topics = [*self.topics, Topic("odom", Odometry)]  # what the robot publishes, in order

    @property
    def env(self):
        return self._env

    @staticmethod
    def with_rate(env_config: dict, rate: float) -> dict:
        return {**env_config, "control_timestep": 1.0 / rate}

    def safe_command(self, env=None) -> np.ndarray:
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
    ``envs/uav/model.py``). ``odom`` (nav_msgs/Odometry) gives the position and orientation
    of ``base_link`` in ``odom`` and, as REP-105 says, its twist in ``child_frame_id`` axes (the
    body frame); the adapter rotates the linear velocity to the world with the message's own
    orientation before handing the state to :func:`envs.uav.observation.uav_observation`. ``imu``
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
            self.topics.append(Topic("goal", Path, synced=False))
        # The goal and the gyro before the odometry that completes the sample.
        self.published_topics = [*self.topics[2:], Topic("imu", Imu), Topic("odom", Odometry)]

    @property
    def env(self):
        return self._env

    @staticmethod
    def with_rate(env_config: dict, rate: float) -> dict:
        return {**env_config, "control_hz": rate}

    # --- commands ------------------------------------------------------------------------
    def safe_command(self, env=None) -> np.ndarray:
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


class KitchenAdapter(RobotAdapter):
    """The Franka arm of the kitchen: joint states, camera images, object state and instruction in;
    joint position targets out.

    State topics (what a Franka stack publishes; the sim publishes them in this order, so
    ``joint_states``, the trigger, completes a sample):

    - ``instruction`` (std_msgs/String): the current task's words. Latched (transient-local QoS):
      published at each episode start and whenever the current task changes (a task sequence),
      so a policy that starts late still gets it. No header: the latest one is used, and the
      policy node keeps it across its ``~/reset``. :attr:`instruction` holds the one that went
      with the last observation.
    - ``object_state`` (std_msgs/Float64MultiArray, 17 values in the env's order, see
      ``envs/kitchen/env.py``): on a real robot it comes from perception. It has no header, so it
      cannot be matched to a sample or aged: the latest one is used, as a goal is. An env config
      with ``object_state: false`` (an image policy's) has no such topic and no such entry.
    - ``<camera>/image_raw`` (sensor_msgs/Image, rgb8, the trained size; rows may be padded
      (``step``), as the message allows) per camera of the env config, stamped like the joint
      states, ``frame_id`` ``<camera>_camera_optical_frame``.
    - ``joint_states`` (sensor_msgs/JointState): the 7 arm joints and the 2 finger joints (m), named
      as in the kitchen MJCF, positions and velocities; other joints may be listed too.

    The observation is the env's own Dict (proprio with the gripper opening of
    :func:`envs.kitchen.env.proprio_from_joints`, object_state, one ``uint8 (H, W, 3)`` image per
    camera, the instruction's words). The command is ``std_msgs/Float64MultiArray``: 7 joint position targets (rad) and
    the gripper command in [0, 1] (0 closed, 1 open), what ros2_control's forward position
    controller takes. The safe command holds the arm where it is (see :meth:`safe_command`).
    """

    robot = "kitchen"
    trigger = "joint_states"  # published last by the sim: its arrival completes a sample
    hold_until_command = True  # the arm stays still until the policy speaks
    ENV_IDS = (envs.KITCHEN,)
    ENCODING = "rgb8"
    MAX_INSTRUCTION_CHARS = instructions.MAX_CHARS

    def __init__(self, env_config: dict):
        if env_config.get("id", envs.KITCHEN) not in self.ENV_IDS:
            raise ValueError(
                f"the kitchen adapter serves the Franka kitchen env (env=kitchen), not {env_config.get('id')}")
        self.env_config = dict(env_config)
        # Never reset or stepped: it renders nothing and opens no GL context.
        self._env = envs.make_from_config({"id": envs.KITCHEN, **env_config}).unwrapped
        env = self._env
        self.task = ",".join(env.tasks)
        self.control_dt = float(env.dt)
        self.cameras = tuple(env.cameras)
        self.image_shape = tuple(env.image_shape)
        self.joint_names = [*ARM_JOINTS, *FINGER_JOINTS]
        self.command_size = int(env.action_space.shape[0])
        self.action_low = env.action_space.low.astype(np.float64)
        self.action_high = env.action_space.high.astype(np.float64)
        self.obs_dim = None  # a Dict observation, not a vector
        self.uses_object_state = "object_state" in env.observation_space.spaces
        self.layout = {name: list(space.shape) for name, space in env.observation_space.spaces.items()
                       if isinstance(space, Box)}
        self.instruction = ""
        self._positions: np.ndarray | None = None  # the last valid joint_states, arm then fingers
        self._gripper: float | None = None  # the last gripper command sent
        self.image_topics = {cam: f"{cam}/image_raw" for cam in self.cameras}
        images = [Topic(name, Image) for name in self.image_topics.values()]
        objects = Topic("object_state", Float64MultiArray, synced=False)
        instruction = Topic("instruction", String, synced=False, latched=True)
        objects = [objects] if self.uses_object_state else []
        self.topics = [Topic("joint_states", JointState), *images, *objects, instruction]
        self.published_topics = [instruction, *objects, *images, Topic("joint_states", JointState)]

    @property
    def env(self):
        return self._env

    @staticmethod
    def with_rate(env_config: dict, rate: float) -> dict:
        native = 1.0 / (PHYSICS_TIMESTEP * FRAME_SKIP)
        if not math.isclose(rate, native):
            raise ValueError(f"the kitchen acts at a fixed {native:g} Hz (the benchmark's {FRAME_SKIP} physics steps "
                             f"of {PHYSICS_TIMESTEP * 1e3:g} ms), not {rate:g} Hz: use rate:=0")
        return dict(env_config)

    @staticmethod
    def sim_env_config(env_config: dict) -> dict:
        """No cameras in the stepped env: :meth:`encode_state` renders each published frame once."""
        return {**env_config, "cameras": []}

    # --- commands ------------------------------------------------------------------------
    def safe_command(self, env=None) -> np.ndarray | None:
        """Hold here: the arm's current joint angles, and the gripper's last command (a grasp keeps squeezing).

        From ``env`` (the sim) its state and finger targets; otherwise the last valid
        ``joint_states`` and the last command sent (the measured opening before any). None
        before any joint state: nothing to hold yet, and a position controller keeps its target.
        """
        if env is not None:
            arm = env.data.qpos[env.layout["arm"]]
            gripper = np.mean([env.data.actuator(name).ctrl[0] for name in FINGER_ACTUATORS]) / FINGER_TRAVEL
        elif self._positions is not None:
            arm = self._positions[:7]
            gripper = self._gripper if self._gripper is not None else proprio_from_joints(arm, self._positions[7:])[7]
        else:
            return None
        return np.clip(np.r_[arm, gripper], self.action_low, self.action_high)

    def commanded(self, action: np.ndarray) -> None:
        self._gripper = float(np.clip(action[7], self.action_low[7], self.action_high[7]))

    def reset(self) -> None:
        self._gripper = None

    # --- robot side: state -> messages ---------------------------------------------------
    def encode_state(self, env, stamp: int, frame_prefix: str = "") -> dict[str, object]:
        """Messages for the current state of a kitchen env, its camera frames rendered now."""
        out = {"instruction": String(data=env.instruction)}
        if self.uses_object_state:
            objects = Float64MultiArray(data=env.object_state().tolist())
            size = OBJECT_STATE_SIZE
            objects.layout.dim = [MultiArrayDimension(label="object_state", size=size, stride=size)]
            out["object_state"] = objects
        for cam, image in env.render_cameras(self.cameras).items():
            msg = Image()
            set_stamp(msg.header, stamp, f"{frame_prefix}{cam}_camera_optical_frame")
            msg.height, msg.width = int(image.shape[0]), int(image.shape[1])
            msg.encoding = self.ENCODING
            msg.step = 3 * msg.width
            msg.data = image.tobytes()
            out[self.image_topics[cam]] = msg
        model = env.model
        ids = [model.joint(name).id for name in self.joint_names]
        js = JointState()
        set_stamp(js.header, stamp, "")
        js.name = list(self.joint_names)
        js.position = env.data.qpos[model.jnt_qposadr[ids]].tolist()
        js.velocity = env.data.qvel[model.jnt_dofadr[ids]].tolist()
        out["joint_states"] = js  # last: it completes the sample
        return out

    # --- policy side: messages -> observation ---------------------------------------------
    def validate(self, topic: str, msg, now_ns: int, max_age_ns: int) -> int:
        """Check one message on arrival; returns its stamp (ns; arrival time for header-less ones) or raises."""
        if topic == "instruction":
            self._instruction(msg)
            return now_ns
        if topic == "object_state":
            self._object_state(msg)
            return now_ns
        ns = stamp_ns(msg.header.stamp)
        check_stamp(ns, now_ns, max_age_ns, topic)
        if topic == "joint_states":
            positions, _ = joint_state_arrays(msg, self.joint_names)
            self._positions = positions  # for the hold-here safe command
        elif topic in self.image_topics.values():
            self._image(topic, msg)
        return ns

    def _instruction(self, msg: String) -> str:
        text = msg.data
        if not text.strip():
            raise InvalidMessage("instruction: empty text")
        if len(text) > self.MAX_INSTRUCTION_CHARS:
            raise InvalidMessage(f"instruction: {len(text)} characters (limit {self.MAX_INSTRUCTION_CHARS})")
        return text

    def _object_state(self, msg: Float64MultiArray) -> np.ndarray:
        if len(msg.data) != OBJECT_STATE_SIZE:
            raise InvalidMessage(
                f"object_state: {len(msg.data)} values (need {OBJECT_STATE_SIZE}, see envs/kitchen/env.py)")
        return _finite(msg.data, "object_state")

    def _image(self, topic: str, msg: Image) -> np.ndarray:
        """The ``uint8 (H, W, 3)`` array of a valid image message (row padding dropped)."""
        h, w = self.image_shape
        if msg.encoding != self.ENCODING:
            raise InvalidMessage(f"{topic}: encoding {msg.encoding!r} (need {self.ENCODING})")
        if (msg.height, msg.width) != (h, w):
            raise InvalidMessage(f"{topic}: {msg.height}x{msg.width} image (the env config's is {h}x{w})")
        if msg.step < 3 * w:
            raise InvalidMessage(
                f"{topic}: step {msg.step} is shorter than a row of {w} {self.ENCODING} pixels ({3 * w})")
        if len(msg.data) != msg.step * h:
            raise InvalidMessage(f"{topic}: {len(msg.data)} bytes of data (need step x height = {msg.step * h})")
        if not msg.header.frame_id:
            raise InvalidMessage(f"{topic}: header.frame_id is empty")
        rows = np.frombuffer(msg.data, dtype=np.uint8).reshape(h, msg.step)
        return rows[:, : 3 * w].reshape(h, w, 3).copy()

    def observation(self, msgs: dict[str, object], step: int) -> dict[str, np.ndarray]:
        """The env's Dict observation for validated messages (``step`` is unused: no clock in it)."""
        positions, _ = joint_state_arrays(msgs["joint_states"], self.joint_names)
        obs = {"proprio": proprio_from_joints(positions[:7], positions[7:])}
        if self.uses_object_state:
            obs["object_state"] = self._object_state(msgs["object_state"])
        for cam, topic in self.image_topics.items():
            obs[cam] = self._image(topic, msgs[topic])
        obs["instruction"] = self.instruction = self._instruction(msgs["instruction"])
        return obs

    def zero_observation(self) -> dict[str, np.ndarray | str]:
        spaces = self._env.observation_space.spaces
        return {**{name: np.zeros(spaces[name].shape, dtype=spaces[name].dtype) for name in self.layout},
                "instruction": ""}

    def summary(self, env) -> dict:
        return {"proprio": env.proprio().tolist(), "task": env.current_task,
                "tasks_completed": int(np.sum(env.task_state()["done"]))}


ADAPTERS = {"swimmer": SwimmerAdapter, "uav": UAVAdapter, "kitchen": KitchenAdapter}


def adapter_class(robot: str) -> type[RobotAdapter]:
    if robot not in ADAPTERS:
        raise ValueError(f"unknown robot {robot!r} (known: {', '.join(ADAPTERS)})")
    return ADAPTERS[robot]


def make_adapter(robot: str, env_config: dict, **options):
    """The adapter for ``robot``, built for the env the policy was trained on (``options``: the adapter's own)."""
    adapter = adapter_class(robot)
    name = str(env_config.get("name") or "")
    if name and not name.startswith(robot):
        other = next((r for r in ADAPTERS if name.startswith(r)), None)
        hint = f" (use robot:={other})" if other else ""
        raise ValueError(f"the policy was trained on env '{name}', not on a {robot}{hint}")
    return adapter(env_config, **options)
