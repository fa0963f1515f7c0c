"""Robot adapters: the one place that maps between ROS messages and an env's observation.

Each robot publishes standard messages and takes a ``std_msgs/Float64MultiArray`` command (what
ros2_control's forward_command_controller expects). An adapter knows, for one robot:

- which state topics exist and how to validate each message (names, lengths, finite values,
  stamps); a rejected message raises :class:`InvalidMessage` and never reaches the policy;
- how to rebuild the env's observation from the latest valid messages, by handing the physical
  state to the env's own observation function (no second copy of the observation code);
- how the simulated robot encodes its state into the same messages (so sim and real robot share
  one contract), and which command is safe (zero torque for the swimmer).

Adapters depend on ``envs`` but not on rclpy's executor, so they are unit-testable in-process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from geometry_msgs.msg import PointStamped
from nav_msgs.msg import Odometry
from sensor_msgs.msg import JointState

import envs


class InvalidMessage(ValueError):
    """A state message that must not reach the policy; the text says why (for a throttled log)."""


def stamp_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def set_stamp(header, ns: int, frame_id: str) -> None:
    header.stamp.sec, header.stamp.nanosec = divmod(int(ns), 1_000_000_000)
    header.frame_id = frame_id


MAX_ABS_VALUE = 1e3  # m, rad, m/s, rad/s: anything larger is a corrupt message, not a robot state


def _finite(values, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise InvalidMessage(f"{what} contains NaN or inf")
    if arr.size and np.abs(arr).max() > MAX_ABS_VALUE:
        raise InvalidMessage(f"{what} has an implausible value {np.abs(arr).max():.3g} (limit {MAX_ABS_VALUE:g})")
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


class SwimmerAdapter:
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


ADAPTERS = {"swimmer": SwimmerAdapter}


def make_adapter(robot: str, env_config: dict):
    """The adapter for ``robot``, built for the env the policy was trained on."""
    if robot not in ADAPTERS:
        raise ValueError(f"unknown robot {robot!r} (known: {', '.join(ADAPTERS)})")
    adapter = ADAPTERS[robot]
    if env_config.get("name") and not str(env_config["name"]).startswith(robot):
        raise ValueError(f"the policy was trained on env '{env_config['name']}', not on a {robot}")
    return adapter(env_config)
