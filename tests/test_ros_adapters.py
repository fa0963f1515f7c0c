"""The swimmer's ROS adapter (embodied_ros/adapters.py) and typed node parameters (params.py).

The adapter is the contract between robot messages and the policy's observation: what the sim
robot encodes must decode to exactly the env's observation, and a malformed or badly stamped
message must be rejected before it can reach the policy. All in-process, no ROS graph needed
except for the parameter tests (one node in an isolated context).
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401  (registers the embodied/ env ids)

pytest.importorskip("rclpy", reason="the ROS 2 tests need the ros extra and the ROS package (README, command B)")
from embodied_ros import params
from embodied_ros.adapters import (
    InvalidMessage,
    SwimmerAdapter,
    make_adapter,
    stamp_ns,
)

T0 = 1_700_000_000_123_456_789  # an arbitrary wall-clock stamp, ns
DT_NS = 30_000_000  # the swimmer's 30 ms control step
MAX_AGE = 100_000_000  # 100 ms


def env_config(task: str = "swim", n_links: int = 6) -> dict:
    return {"name": "swimmer", "id": "embodied/Swimmer-v0", "task": task, "n_links": n_links}


_ADAPTERS: dict[tuple[str, int], SwimmerAdapter] = {}


def adapter_for(task: str = "swim", n_links: int = 6) -> SwimmerAdapter:
    """One adapter per body and task for the module (building one compiles an MJCF model)."""
    key = (task, n_links)
    if key not in _ADAPTERS:
        _ADAPTERS[key] = SwimmerAdapter(env_config(task, n_links))
    return _ADAPTERS[key]


def stepped_env(task: str = "swim", n_links: int = 6, steps: int = 40, seed: int = 0):
    """A swimmer env moved off its initial state by random actions (so every velocity is nonzero)."""
    env = gym.make("embodied/Swimmer-v0", task=task, n_links=n_links)
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        env.step(rng.uniform(-1.0, 1.0, size=env.action_space.shape))
    return env


def state_messages(task: str = "swim", n_links: int = 6, stamp: int = T0) -> dict:
    env = stepped_env(task, n_links)
    msgs = adapter_for(task, n_links).encode_state(env.unwrapped, stamp, "")
    env.close()
    return msgs


# --- round trip: sim state -> messages -> observation -------------------------------------------


@pytest.mark.parametrize("n_links", [4, 6, 9])
@pytest.mark.parametrize("task", ["swim", "navigate"])
def test_encoded_state_decodes_to_the_env_observation(task, n_links):
    """What the sim robot publishes rebuilds the env's own observation, step by step (and after a reset)."""
    adapter = adapter_for(task, n_links)
    env = gym.make("embodied/Swimmer-v0", task=task, n_links=n_links)
    rng = np.random.default_rng(n_links)
    obs, _ = env.reset(seed=n_links)
    raw = env.unwrapped
    try:
        for i in range(300):
            if i == 150:  # a new episode: new pose, new target, clock back to zero
                obs, _ = env.reset(seed=100 + n_links)
            stamp = T0 + i * DT_NS
            msgs = adapter.encode_state(raw, stamp, "")
            assert list(msgs)[: len(adapter.topics)] == [t.name for t in adapter.topics]
            for t in adapter.topics:
                assert isinstance(msgs[t.name], t.type)
                assert adapter.validate(t.name, msgs[t.name], stamp, MAX_AGE) == stamp
            rebuilt = adapter.observation(msgs, raw._step_count)
            assert rebuilt.shape == obs.shape == (adapter.obs_dim,)
            np.testing.assert_allclose(rebuilt, obs, atol=1e-9, rtol=0, err_msg=f"step {i}")
            obs, *_ = env.step(rng.uniform(-1.0, 1.0, size=env.action_space.shape))
    finally:
        env.close()


def test_joint_states_in_any_order():
    """JointState may list joints in any order: a consistent shuffle gives the same observation."""
    adapter = adapter_for("navigate", 6)
    msgs = state_messages("navigate", 6)
    expected = adapter.observation(msgs, 123)
    js = msgs["joint_states"]
    rng = np.random.default_rng(0)
    for _ in range(5):
        order = rng.permutation(len(js.name))
        shuffled = type(js)()
        shuffled.header = js.header
        shuffled.name = [js.name[i] for i in order]
        shuffled.position = [js.position[i] for i in order]
        shuffled.velocity = [js.velocity[i] for i in order]
        assert adapter.validate("joint_states", shuffled, T0, MAX_AGE) == T0
        np.testing.assert_array_equal(adapter.observation({**msgs, "joint_states": shuffled}, 123), expected)


def test_extra_joints_are_ignored():
    """A driver may publish more joints than the swimmer's (e.g. a gripper); only ours are read."""
    adapter = adapter_for()
    msgs = state_messages()
    expected = adapter.observation(msgs, 5)
    js = msgs["joint_states"]
    js.name = ["camera_pan", *js.name]
    js.position = [3.0, *js.position]
    js.velocity = [-1.0, *js.velocity]
    assert adapter.validate("joint_states", js, T0, MAX_AGE) == T0
    np.testing.assert_array_equal(adapter.observation(msgs, 5), expected)


def test_observation_clock_comes_from_the_step_argument():
    """The observed clock is step / time_scale_steps, whatever the message stamps say."""
    adapter = adapter_for()
    msgs = state_messages()
    t = adapter.layout["time"]
    assert adapter.observation(msgs, 0)[t] == 0.0
    assert adapter.observation(msgs, 437)[t] == pytest.approx(0.437)


# --- validation ------------------------------------------------------------------------------


def rejects(adapter, topic, msg, match, now=T0):
    with pytest.raises(InvalidMessage, match=match):
        adapter.validate(topic, msg, now, MAX_AGE)


def test_valid_message_returns_its_stamp():
    """A good message is accepted and its stamp (ns) returned, up to max_age in either direction."""
    adapter = adapter_for()
    js = state_messages()["joint_states"]
    assert stamp_ns(js.header.stamp) == T0
    assert adapter.validate("joint_states", js, T0, MAX_AGE) == T0
    assert adapter.validate("joint_states", js, T0 + MAX_AGE, MAX_AGE) == T0  # exactly max_age old
    assert adapter.validate("joint_states", js, T0 - MAX_AGE, MAX_AGE) == T0  # clock skew within the limit


def test_missing_joint_is_rejected():
    adapter = adapter_for()
    js = state_messages()["joint_states"]
    i = js.name.index("joint_2")
    js.name = js.name[:i] + js.name[i + 1 :]
    js.position = list(js.position[:i]) + list(js.position[i + 1 :])
    js.velocity = list(js.velocity[:i]) + list(js.velocity[i + 1 :])
    rejects(adapter, "joint_states", js, r"missing joints \['joint_2'\]")


def test_missing_root_joints_are_rejected():
    """Without the motion-capture root joints the body velocities cannot be computed."""
    adapter = adapter_for()
    js = state_messages()["joint_states"]
    js.name, js.position, js.velocity = js.name[3:], list(js.position[3:]), list(js.velocity[3:])
    rejects(adapter, "joint_states", js, r"missing joints \['rootx', 'rooty', 'rootz'\]")


def test_duplicate_joint_names_are_rejected():
    adapter = adapter_for()
    js = state_messages()["joint_states"]
    js.name = [*js.name[:-1], js.name[0]]
    rejects(adapter, "joint_states", js, "duplicate joint names")


@pytest.mark.parametrize("field", ["position", "velocity"])
def test_length_mismatch_is_rejected(field):
    adapter = adapter_for()
    js = state_messages()["joint_states"]
    setattr(js, field, list(getattr(js, field))[:-1])
    rejects(adapter, "joint_states", js, r"8 names but \d+ positions and \d+ velocities")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("field", ["position", "velocity"])
def test_non_finite_joint_values_are_rejected(field, bad):
    adapter = adapter_for()
    js = state_messages()["joint_states"]
    values = list(getattr(js, field))
    values[4] = bad
    setattr(js, field, values)
    rejects(adapter, "joint_states", js, rf"joint_states\.{field} contains NaN or inf")


@pytest.mark.parametrize("field", ["position", "velocity"])
def test_implausible_joint_values_are_rejected(field):
    """Finite but absurd values (a corrupt message, not a robot state) never reach the policy."""
    adapter = adapter_for()
    js = state_messages()["joint_states"]
    values = list(getattr(js, field))
    values[1] = 999.0  # within the limit: accepted
    setattr(js, field, values)
    assert adapter.validate("joint_states", js, T0, MAX_AGE) == T0
    values[1] = -1e4
    setattr(js, field, values)
    rejects(adapter, "joint_states", js, rf"joint_states\.{field} has an implausible value 1e\+04")


def test_implausible_goal_is_rejected():
    adapter = adapter_for("navigate")
    goal = state_messages("navigate")["goal"]
    goal.point.y = 1e6
    rejects(adapter, "goal", goal, r"goal\.point has an implausible value")


@pytest.mark.parametrize("topic", ["joint_states", "goal"])
def test_unstamped_message_is_rejected(topic):
    adapter = adapter_for("navigate")
    msg = state_messages("navigate")[topic]
    msg.header.stamp.sec, msg.header.stamp.nanosec = 0, 0
    rejects(adapter, topic, msg, f"{topic}: header.stamp is zero")


@pytest.mark.parametrize("topic", ["joint_states", "goal"])
def test_stale_message_is_rejected(topic):
    adapter = adapter_for("navigate")
    msg = state_messages("navigate")[topic]
    rejects(adapter, topic, msg, f"{topic}: stale stamp, 100.0 ms old", now=T0 + MAX_AGE + 1)
    rejects(adapter, topic, msg, "stale stamp, 2000.0 ms old", now=T0 + 2_000_000_000)


@pytest.mark.parametrize("topic", ["joint_states", "goal"])
def test_future_message_is_rejected(topic):
    adapter = adapter_for("navigate")
    msg = state_messages("navigate")[topic]
    rejects(adapter, topic, msg, f"{topic}: stamp 500.0 ms in the future", now=T0 - 500_000_000)


@pytest.mark.parametrize("axis", ["x", "y", "z"])
def test_goal_with_nan_is_rejected(axis):
    adapter = adapter_for("navigate")
    goal = state_messages("navigate")["goal"]
    assert adapter.validate("goal", goal, T0, MAX_AGE) == T0
    setattr(goal.point, axis, math.nan)
    rejects(adapter, "goal", goal, r"goal\.point contains NaN or inf")


def test_navigate_needs_a_goal_topic():
    """Only navigate subscribes to goal; the sim publishes odom last, off the policy's path."""
    swim, nav = adapter_for("swim"), adapter_for("navigate")
    assert [t.name for t in swim.topics] == ["joint_states"]
    assert [t.name for t in nav.topics] == ["joint_states", "goal"]
    assert [t.name for t in nav.published_topics] == ["joint_states", "goal", "odom"]
    assert list(state_messages("navigate")) == ["joint_states", "goal", "odom"]
    assert list(state_messages("swim")) == ["joint_states", "odom"]


# --- construction ----------------------------------------------------------------------------


def test_make_adapter_unknown_robot():
    with pytest.raises(ValueError, match="unknown robot 'quadruped'"):
        make_adapter("quadruped", env_config())


def test_make_adapter_refuses_another_env():
    """A policy trained on Gymnasium's swimmer cannot drive the dm_control swimmer."""
    with pytest.raises(ValueError, match="dm_control swimmer"):
        make_adapter("swimmer", {"name": "swimmer_gym", "id": "embodied/SwimmerGym-v5"})
    with pytest.raises(ValueError, match="not on a swimmer"):
        make_adapter("swimmer", {"name": "cheetah", "id": "embodied/Swimmer-v0"})


def test_make_adapter_builds_the_trained_body():
    adapter = make_adapter("swimmer", {"name": "swimmer_navigate", **env_config("navigate", 5)})
    assert isinstance(adapter, SwimmerAdapter)
    assert adapter.task == "navigate" and adapter.obs_dim == 4 + 2 + 15 + 1
    assert adapter.control_dt == pytest.approx(0.03)


@pytest.mark.parametrize("n_links", [4, 6, 9])
def test_command_and_joint_names(n_links):
    """One command per hinge, zero torque is safe, and the root joints come first."""
    adapter = adapter_for("swim", n_links)
    assert adapter.command_size == n_links - 1
    safe = adapter.safe_command()
    assert safe.shape == (n_links - 1,) and safe.dtype == np.float64 and not safe.any()
    assert adapter.joint_names[:3] == ["rootx", "rooty", "rootz"]
    assert adapter.joint_names[3:] == [f"joint_{i}" for i in range(n_links - 1)]
    np.testing.assert_array_equal(adapter.action_low, -np.ones(n_links - 1))
    np.testing.assert_array_equal(adapter.action_high, np.ones(n_links - 1))


# --- odometry --------------------------------------------------------------------------------


def test_odom_pose_and_twist():
    """odom: base_link at the yaw axis with the body's yaw; twist in base_link axes."""
    adapter = adapter_for()
    env = stepped_env(steps=80, seed=3)
    raw = env.unwrapped
    qpos, qvel = raw.data.qpos.copy(), raw.data.qvel.copy()
    assert abs(qvel[0]) > 1e-4 and abs(qvel[1]) > 1e-4 and abs(qpos[2]) > 0.1
    odom = adapter.encode_state(raw, T0, "robot1/")["odom"]
    assert odom.header.frame_id == "robot1/odom" and odom.child_frame_id == "robot1/base_link"
    assert stamp_ns(odom.header.stamp) == T0

    q = odom.pose.pose.orientation
    assert (q.x, q.y) == (0.0, 0.0)
    assert q.z**2 + q.w**2 == pytest.approx(1.0)
    assert q.z == pytest.approx(math.sin(qpos[2] / 2)) and q.w == pytest.approx(math.cos(qpos[2] / 2))
    yaw = 2 * math.atan2(q.z, q.w)
    assert math.remainder(yaw - qpos[2], 2 * math.pi) == pytest.approx(0.0, abs=1e-12)
    # base_link is the yaw joint's anchor, wherever the body has swum and turned.
    anchor = raw.data.xanchor[raw.model.joint("rootz").id]
    p = odom.pose.pose.position
    assert (p.x, p.y) == (pytest.approx(anchor[0], abs=1e-12), pytest.approx(anchor[1], abs=1e-12))

    t = odom.twist.twist
    c, s = math.cos(yaw), math.sin(yaw)
    world = (c * t.linear.x - s * t.linear.y, s * t.linear.x + c * t.linear.y)
    np.testing.assert_allclose(world, qvel[0:2], atol=1e-12)
    assert t.angular.z == qvel[2]
    env.close()


def test_head_xy_is_the_head_body_position():
    """head_xy (used for distances from recorded states) is the head body's world position."""
    adapter = adapter_for()
    env = stepped_env(steps=80, seed=3)
    raw = env.unwrapped
    js = adapter.encode_state(raw, T0, "")["joint_states"]
    np.testing.assert_allclose(adapter.head_xy(js), raw.data.body("head").xpos[:2], atol=1e-9)
    env.close()


# --- typed parameters ------------------------------------------------------------------------


@pytest.fixture
def make_node(ros_context):
    """A node in the test's isolated context with the given parameter overrides, destroyed after."""
    import rclpy.node
    from rclpy.parameter import Parameter

    nodes = []

    def _make(**overrides):
        node = rclpy.node.Node(
            "t", context=ros_context,
            parameter_overrides=[Parameter(name, value=value) for name, value in overrides.items()],
        )
        nodes.append(node)
        return node

    yield _make
    for node in nodes:
        node.destroy_node()


DEFAULTS = {
    "rate": (50.0, "control rate, Hz"),
    "enabled": (False, "start enabled"),
    "seed": (0, "noise seed"),
    "robot": ("swimmer", "robot kind"),
}


def test_parameters_keep_defaults_and_types(make_node):
    values = params.declare_parameters(make_node(), DEFAULTS)
    assert values == {"rate": 50.0, "enabled": False, "seed": 0, "robot": "swimmer"}
    assert [type(v) for v in values.values()] == [float, bool, int, str]


def test_float_parameter_accepts_an_int(make_node):
    """``-p rate:=100`` arrives as an INTEGER; a float parameter takes it as 100.0."""
    values = params.declare_parameters(make_node(rate=100), DEFAULTS)
    assert values["rate"] == 100.0 and type(values["rate"]) is float


@pytest.mark.parametrize("text, expected", [("true", True), ("false", False), ("True", True), ("FALSE", False)])
def test_bool_parameter_accepts_true_false_strings(make_node, text, expected):
    values = params.declare_parameters(make_node(enabled=text), DEFAULTS)
    assert values["enabled"] is expected


@pytest.mark.parametrize("name, value", [
    ("rate", "fast"),
    ("rate", True),  # a bool is no number of Hz
    ("enabled", "yes"),
    ("enabled", 1),
    ("seed", 2.5),
    ("robot", 3),
])
def test_wrong_type_is_a_parameter_error(make_node, name, value):
    """A value that does not convert is a one-line ParameterError naming the parameter."""
    with pytest.raises(params.ParameterError, match=rf"parameter {name}:=.* should be a "):
        params.declare_parameters(make_node(**{name: value}), DEFAULTS)
