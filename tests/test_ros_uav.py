"""The UAV over ROS 2: its adapter (odometry and gyro in, rotor thrusts out), the nodes, the launch file.

The adapter is the contract between the vehicle's messages and the policy's observation: what the
sim robot publishes must decode to exactly the env's own observation (including the last action,
which the policy node remembers for the adapter), malformed or badly framed messages must be
rejected, and thrust commands must map to the env's normalised action and back. The last test
flies a tiny trained policy through the sim and policy nodes in lock-step and checks the vehicle
follows the in-process rollout of the same policy step for step.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("rclpy", reason="the ROS 2 tests need the ros extra and the ROS package (README, command B)")
from nav_msgs.msg import Path as PathMsg
from std_srvs.srv import SetBool, Trigger

import envs  # noqa: F401  (registers the embodied/ env ids)
from embodied_ros.adapters import InvalidMessage, SwimmerAdapter, UAVAdapter, make_adapter
from envs.uav.model import preset
from policies.bundle import read_meta
from policies.pid import pid_for_env
from policies.protocol import EnvInterface
from policies.registry import load_policy
from policies.run_dir import RunDir

from conftest import TINY, Launch, capturing_policy_node, launch_nodes, train_in_process

T0 = 1_700_000_000_123_456_789  # an arbitrary wall-clock stamp, ns
DT_NS = 10_000_000  # the UAV's 10 ms control step
MAX_AGE = 100_000_000  # 100 ms


def env_config(task: str = "hover", vehicle: str = "cf2", **kwargs) -> dict:
    return {"name": f"uav_{task}", "id": "embodied/UAV-v0", "task": task, "vehicle": vehicle, **kwargs}


_ADAPTERS: dict[tuple[str, str], UAVAdapter] = {}


def adapter_for(task: str = "hover", vehicle: str = "cf2") -> UAVAdapter:
    """A fresh-memory adapter per task and vehicle (building one compiles an MJCF model)."""
    key = (task, vehicle)
    if key not in _ADAPTERS:
        _ADAPTERS[key] = UAVAdapter(env_config(task, vehicle))
    _ADAPTERS[key].reset()
    return _ADAPTERS[key]


def state_messages(task: str = "hover", stamp: int = T0, steps: int = 5, seed: int = 0) -> dict:
    """Messages of a vehicle moved off its initial state by a few random actions."""
    env = gym.make("embodied/UAV-v0", task=task)
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        env.step(rng.uniform(-0.2, 0.2, 4))
    msgs = adapter_for(task).encode_state(env.unwrapped, stamp, "")
    env.close()
    return msgs


# --- round trip: sim state -> messages -> observation -> command -> sim -----------------------------


@pytest.mark.parametrize(("task", "vehicle"), [("hover", "cf2"), ("hover", "x2"), ("waypoints", "cf2")])
def test_encoded_state_decodes_to_the_env_observation(task, vehicle):
    """What the sim publishes rebuilds the env's observation to 1e-9, last action included, in closed loop.

    The cascaded PID flies on the adapter's observations and its commands go through the thrust
    encoding and back, as over ROS; it must fly as well as in-process (hover held, waypoints passed).
    """
    adapter = adapter_for(task, vehicle)
    env = gym.make("embodied/UAV-v0", task=task, vehicle=vehicle)
    raw = env.unwrapped
    obs, _ = env.reset(seed=7)
    pid = pid_for_env(env)
    rng = np.random.default_rng(0)
    lo, hi = raw.layout.last_action
    reached, errors = 0, []
    try:
        for i in range(500):
            if i == 250:  # a new episode: new state and course; the policy node's ~/reset
                obs, _ = env.reset(seed=8)
                adapter.reset()
                pid.reset()
            stamp = T0 + i * DT_NS
            msgs = adapter.encode_state(raw, stamp, "")
            assert list(msgs) == [t.name for t in adapter.published_topics]
            for t in adapter.topics:
                assert isinstance(msgs[t.name], t.type)
                assert adapter.validate(t.name, msgs[t.name], stamp, MAX_AGE) == stamp
            rebuilt = adapter.observation(msgs, i)
            assert rebuilt.shape == obs.shape == (adapter.obs_dim,)
            np.testing.assert_allclose(rebuilt, obs, atol=1e-9, rtol=0, err_msg=f"step {i}")
            if i % 250 > 0:
                assert np.any(rebuilt[lo:hi] != 0.0)  # the last action is really in play
            action = np.clip(pid.act(rebuilt) + (rng.normal(0.0, 0.05, 4) if i % 250 < 20 else 0.0), -1.0, 1.0)
            thrust = adapter.encode_command(action)  # what the policy node publishes
            adapter.commanded(action)
            obs, _, terminated, _, info = env.step(adapter.decode_command(thrust))  # what the sim applies
            assert not info["crash"] and not info["out_of_bounds"], f"step {i}: {info}"
            reached = max(reached, info["waypoints_reached"])
            errors.append(info["position_error"])
            if terminated:  # the course is done
                break
    finally:
        env.close()
    if task == "hover":
        assert errors[249] < 0.1 and errors[-1] < 0.1, (errors[249], errors[-1])  # the env's success radius
    else:
        assert reached >= 2, "the PID should pass waypoints through the adapter (goal path switching)"


def test_twist_is_in_the_body_frame():
    """REP-105: the twist is in child_frame_id (base_link, FLU) axes; pose and goal in odom (ENU)."""
    adapter = adapter_for("waypoints")
    env = gym.make("embodied/UAV-v0", task="waypoints").unwrapped
    env.reset(seed=0)
    yaw = math.pi / 2  # nose along world +y
    qpos = np.array([0.5, -0.25, 1.5, math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)])
    qvel = np.array([1.0, 0.0, 0.25, 0.0, 0.0, 0.3])  # flying along world +x: to the vehicle's right
    env.set_state(qpos, qvel)
    msgs = adapter.encode_state(env, T0, "uav1/")
    odom, imu, goal = msgs["odom"], msgs["imu"], msgs["goal"]
    assert (odom.header.frame_id, odom.child_frame_id) == ("uav1/odom", "uav1/base_link")
    assert imu.header.frame_id == "uav1/base_link" and goal.header.frame_id == "uav1/odom"
    p, q, v = odom.pose.pose.position, odom.pose.pose.orientation, odom.twist.twist.linear
    assert (p.x, p.y, p.z) == (0.5, -0.25, 1.5)
    assert (q.x, q.y) == (0.0, 0.0) and q.z == pytest.approx(math.sin(yaw / 2)) and q.w == pytest.approx(math.cos(yaw / 2))
    np.testing.assert_allclose([v.x, v.y, v.z], [0.0, -1.0, 0.25], atol=1e-12)  # forward 0, left -1 (right), up
    assert odom.twist.twist.angular.z == pytest.approx(0.3)
    assert imu.angular_velocity.z == pytest.approx(0.3, abs=1e-12)
    assert imu.linear_acceleration.z == pytest.approx(9.81, abs=0.05)  # level vehicle: the specific force
    np.testing.assert_allclose([goal.poses[0].pose.position.x, goal.poses[0].pose.position.y,
                                goal.poses[0].pose.position.z], env.target, atol=0)
    assert len(goal.poses) == 1 + env.layout.n_lookahead


def test_goal_path_shorter_or_longer_than_the_lookahead():
    """A path shorter than 1 + n_lookahead repeats its last pose (as the env does); extra poses are ignored."""
    adapter = adapter_for("waypoints")
    msgs = state_messages("waypoints")
    goal = msgs["goal"]
    n = adapter.n_lookahead
    la = slice(*adapter.layout["lookahead"])
    full = adapter.observation(msgs, 0)
    extra = PathMsg(header=goal.header, poses=[*goal.poses, *goal.poses])
    np.testing.assert_array_equal(adapter.observation({**msgs, "goal": extra}, 0), full)
    short = PathMsg(header=goal.header, poses=[goal.poses[0]])
    assert adapter.validate("goal", short, T0, MAX_AGE) == T0
    obs = adapter.observation({**msgs, "goal": short}, 0)
    np.testing.assert_allclose(obs[la], np.tile(obs[0:3], n), atol=1e-12)  # lookahead = the current waypoint


def test_last_action_is_what_the_node_sent():
    """The observation's last action is what the adapter was told; reset() forgets it (a fresh env's zeros)."""
    adapter = adapter_for()
    msgs = state_messages()
    lo, hi = adapter.layout["last_action"]
    assert not adapter.observation(msgs, 0)[lo:hi].any()
    adapter.commanded(np.array([0.5, -0.25, 1.5, -3.0]))
    np.testing.assert_array_equal(adapter.observation(msgs, 0)[lo:hi], [0.5, -0.25, 1.0, -1.0])  # env clipping
    adapter.commanded(adapter.safe_command())
    np.testing.assert_array_equal(adapter.observation(msgs, 0)[lo:hi], -np.ones(4))
    adapter.reset()
    assert not adapter.observation(msgs, 0)[lo:hi].any()


# --- commands ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("vehicle", ["cf2", "x2"])
def test_thrust_commands(vehicle):
    """-1, 0, +1 are 0 N, hover thrust and thrust_max per rotor; newtons decode back to the action."""
    adapter = adapter_for("hover", vehicle)
    p = preset(vehicle)
    np.testing.assert_allclose(adapter.encode_command(np.array([-1.0, 0.0, 1.0, 0.5])),
                               [0.0, p.hover_thrust, p.thrust_max, (p.hover_thrust + p.thrust_max) / 2], rtol=1e-12)
    actions = np.random.default_rng(0).uniform(-1, 1, (100, 4))
    for a in actions:
        np.testing.assert_allclose(adapter.decode_command(adapter.encode_command(a)), a, atol=1e-12)
    # The motors saturate: below 0 N or above thrust_max is the nearest limit.
    np.testing.assert_array_equal(adapter.decode_command(np.array([-5.0, 0.0, p.thrust_max, 100.0])),
                                  [-1.0, -1.0, 1.0, 1.0])
    safe = adapter.safe_command()
    assert np.all(adapter.encode_command(safe) == 0.0)  # motors off
    assert adapter.command_size == 4
    # Rotor order of the command: front-right, back-right, back-left, front-left (x forward, y left).
    assert [(np.sign(x), np.sign(y)) for x, y in adapter.params.rotor_xy] == [(1, -1), (-1, -1), (-1, 1), (1, 1)]


# --- validation ---------------------------------------------------------------------------------------


def rejects(adapter, topic, msg, match, now=T0):
    with pytest.raises(InvalidMessage, match=match):
        adapter.validate(topic, msg, now, MAX_AGE)


def _set(msg, path: str, value) -> None:
    *parents, leaf = path.split(".")
    for name in parents:
        msg = getattr(msg, name)
    setattr(msg, leaf, value)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize(("topic", "field", "what"), [
    ("odom", "pose.pose.position.z", r"odom\.pose\.position"),
    ("odom", "pose.pose.orientation.x", r"odom\.pose\.orientation"),
    ("odom", "twist.twist.linear.y", r"odom\.twist\.linear"),
    ("odom", "twist.twist.angular.x", r"odom\.twist\.angular"),
    ("imu", "angular_velocity.z", r"imu\.angular_velocity"),
    ("imu", "linear_acceleration.x", r"imu\.linear_acceleration"),
])
def test_non_finite_values_are_rejected(topic, field, what, bad):
    adapter = adapter_for()
    msg = state_messages()[topic]
    _set(msg, field, bad)
    rejects(adapter, topic, msg, rf"{what} contains NaN or inf")


@pytest.mark.parametrize(("topic", "field", "value", "what"), [
    ("odom", "pose.pose.position.x", 1.5e3, r"odom\.pose\.position has an implausible value 1\.5e\+03 \(limit 1000\)"),
    ("odom", "twist.twist.linear.x", 150.0, r"odom\.twist\.linear has an implausible value 150 \(limit 100\)"),
    ("odom", "twist.twist.angular.z", -150.0, r"odom\.twist\.angular has an implausible value 150"),
    ("imu", "angular_velocity.y", 150.0, r"imu\.angular_velocity has an implausible value 150 \(limit 100\)"),
])
def test_implausible_values_are_rejected(topic, field, value, what):
    adapter = adapter_for()
    msg = state_messages()[topic]
    _set(msg, field, value * 0.6)  # within the limit: accepted
    assert adapter.validate(topic, msg, T0, MAX_AGE) == T0
    _set(msg, field, value)
    rejects(adapter, topic, msg, what)


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.01])
def test_non_unit_quaternion_is_rejected(scale):
    adapter = adapter_for()
    odom = state_messages()["odom"]
    q = odom.pose.pose.orientation
    q.w, q.x, q.y, q.z = q.w * scale, q.x * scale, q.y * scale, q.z * scale
    rejects(adapter, "odom", odom, r"odom\.pose\.orientation is not a unit quaternion \(norm ")


def test_nearly_unit_quaternion_is_normalised():
    """A float32 driver's quaternion (|q| off by ~1e-7) is accepted and normalised."""
    adapter = adapter_for()
    msgs = state_messages()
    expected = adapter.observation(msgs, 0)
    q = msgs["odom"].pose.pose.orientation
    q.w, q.x, q.y, q.z = (float(np.float32(v * (1 + 1e-4))) for v in (q.w, q.x, q.y, q.z))
    assert adapter.validate("odom", msgs["odom"], T0, MAX_AGE) == T0
    np.testing.assert_allclose(adapter.observation(msgs, 0), expected, atol=1e-6)


@pytest.mark.parametrize("topic", ["odom", "imu", "goal"])
def test_bad_stamps_are_rejected(topic):
    adapter = adapter_for("waypoints")
    msg = state_messages("waypoints")[topic]
    assert adapter.validate(topic, msg, T0 + MAX_AGE, MAX_AGE) == T0
    rejects(adapter, topic, msg, f"{topic}: stale stamp, 100.0 ms old", now=T0 + MAX_AGE + 1)
    rejects(adapter, topic, msg, f"{topic}: stamp 500.0 ms in the future", now=T0 - 500_000_000)
    msg.header.stamp.sec, msg.header.stamp.nanosec = 0, 0
    rejects(adapter, topic, msg, f"{topic}: header.stamp is zero")


def test_frame_ids_are_checked():
    """The twist must be in a body frame, and gyro and goal in the frames the observation assumes."""
    adapter = adapter_for("waypoints")
    msgs = state_messages("waypoints")
    for topic in ("odom", "imu", "goal"):
        msg = state_messages("waypoints")[topic]
        msg.header.frame_id = ""
        rejects(adapter, topic, msg, f"{topic}: header.frame_id is empty")
    odom = state_messages("waypoints")["odom"]
    odom.child_frame_id = "odom"  # a twist in the world frame, not REP-105's
    rejects(adapter, "odom", odom, r"odom: child_frame_id 'odom' must name the body frame .* REP-105")
    odom.child_frame_id = ""
    rejects(adapter, "odom", odom, "child_frame_id '' must name the body frame")

    imu = state_messages("waypoints")["imu"]
    imu.header.frame_id = "imu_link"
    assert adapter.validate("imu", imu, T0, MAX_AGE) == T0  # on its own a valid message...
    with pytest.raises(InvalidMessage, match="imu: frame_id 'imu_link' is not odom's body frame 'base_link'"):
        adapter.observation({**msgs, "imu": imu}, 0)  # ...but not in the body frame
    goal = state_messages("waypoints")["goal"]
    goal.header.frame_id = "map"
    with pytest.raises(InvalidMessage, match="goal: frame_id 'map' is not odom's 'odom'"):
        adapter.observation({**msgs, "goal": goal}, 0)


def test_bad_goal_paths_are_rejected():
    adapter = adapter_for("waypoints")
    goal = state_messages("waypoints")["goal"]
    goal.poses[1].pose.position.y = math.nan
    rejects(adapter, "goal", goal, r"goal\.poses\.position contains NaN or inf")
    goal.poses[1].pose.position.y = -1e6
    rejects(adapter, "goal", goal, r"goal\.poses\.position has an implausible value 1e\+06")
    goal.poses = []
    rejects(adapter, "goal", goal, r"goal: 0 poses \(need 1 to 10000: the current waypoint first\)")


# --- construction -------------------------------------------------------------------------------------


def test_topics_and_publishing_order():
    """The policy needs odom and imu (and goal on waypoints); odom, the trigger, is published last."""
    hover, course = adapter_for("hover"), adapter_for("waypoints")
    assert [t.name for t in hover.topics] == ["odom", "imu"] and hover.trigger == "odom"
    assert [t.name for t in course.topics] == ["odom", "imu", "goal"]
    assert [t.name for t in course.published_topics] == ["goal", "imu", "odom"]
    assert list(state_messages("waypoints")) == ["goal", "imu", "odom"]
    assert hover.control_dt == pytest.approx(0.01) and hover.obs_dim == 22 and course.obs_dim == 25


def test_make_adapter_matches_robot_and_env():
    assert isinstance(make_adapter("uav", env_config("waypoints")), UAVAdapter)
    with pytest.raises(ValueError, match=r"trained on env 'swimmer', not on a uav \(use robot:=swimmer\)"):
        make_adapter("uav", {"name": "swimmer", "id": "embodied/Swimmer-v0"})
    with pytest.raises(ValueError, match=r"trained on env 'uav_hover', not on a swimmer \(use robot:=uav\)"):
        make_adapter("swimmer", env_config())
    with pytest.raises(ValueError, match="the uav adapter serves the quadrotor envs"):
        make_adapter("uav", {"name": "uav_x", "id": "embodied/Swimmer-v0"})
    with pytest.raises(ValueError, match="dm_control swimmer"):
        make_adapter("swimmer", {"name": "swimmer", "id": "embodied/UAV-v0"})
    with pytest.raises(ValueError, match=r"per-rotor thrusts \(action_mode=rotor\); this env has action_mode=ctbr"):
        make_adapter("uav", env_config(action_mode="ctbr"))
    assert UAVAdapter.with_rate(env_config(), 250.0)["control_hz"] == 250.0
    assert SwimmerAdapter.with_rate({"name": "swimmer"}, 50.0)["control_timestep"] == pytest.approx(0.02)


# --- launch file --------------------------------------------------------------------------------------


def test_launch_file_runs_the_uav():
    specs = launch_nodes(robot="uav", run="/r", real_time="false", record="true", bag="b")
    assert [s["name"] for s in specs] == ["recorder", "sim", "policy"]
    assert all(s["parameters"][0]["robot"] == "uav" and s["parameters"][0]["use_sim_time"] for s in specs)
    recorder = specs[0]["parameters"][0]
    assert recorder["topics"] == ["odom", "imu", "goal", "commands", "/diagnostics"]
    assert recorder["types"][:3] == ["nav_msgs/msg/Odometry", "sensor_msgs/msg/Imu", "nav_msgs/msg/Path"]
    (policy,) = launch_nodes(robot="uav", run="/r", use_sim="false", odom_topic="/mavros/local_position/odom",
                              imu_topic="/mavros/imu/data")
    assert policy["remappings"] == [("odom", "/mavros/local_position/odom"), ("imu", "/mavros/imu/data")]
    with pytest.raises(ValueError, match="state_topic remaps the swimmer's joint_states; robot:=uav reads "
                                         "odom_topic, imu_topic"):
        launch_nodes(robot="uav", run="/r", use_sim="false", state_topic="/joint_states")
    with pytest.raises(ValueError, match="odom_topic remaps the uav's odom"):
        launch_nodes(robot="swimmer", run="/r", use_sim="false", odom_topic="/odom")


# --- the nodes ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uav_run(tmp_path_factory) -> Path:
    """MLP + PPO on uav_hover, 2048 env steps: it does not fly yet, but it is a real trained run."""
    run = tmp_path_factory.mktemp("runs") / "uav"
    train_in_process(run, ["env=uav_hover", "policy=mlp", "algo=ppo", "algo.total_timesteps=2048", "seed=0", *TINY])
    return run


def _policy_node(ros_context, run, **params):
    return capturing_policy_node(ros_context, run, robot="uav", **params)


def _feed(node, env, stamp: int) -> None:
    """The sim's messages for env's state, in its publishing order, through the node's callbacks."""
    for topic, msg in node.adapter.encode_state(env, stamp).items():
        node._make_callback(topic)(msg)


def test_policy_node_sends_newtons_and_remembers_them(uav_run, ros_context):
    """Each state gets four thrusts in newtons; the next observation holds exactly that command."""
    node, published = _policy_node(ros_context, uav_run, action_limit=0.5)
    env = envs.make_from_config(RunDir.env_config_of(uav_run)).unwrapped
    env.reset(seed=1)
    p = env.params
    lo, hi = env.layout.last_action
    try:
        for i in range(5):
            _feed(node, env, node.get_clock().now().nanoseconds)
            assert len(published) == i + 1, node.last_reject
            thrust = published[-1]
            assert thrust.shape == (4,)
            assert np.all(thrust >= p.hover_thrust * 0.5 - 1e-12)  # action_limit 0.5: at least half hover thrust
            assert np.all(thrust <= p.hover_thrust + 0.5 * (p.thrust_max - p.hover_thrust) + 1e-12)
            action = node.adapter.decode_command(thrust)
            np.testing.assert_allclose(node.adapter.last_action, action, atol=1e-12)
            obs = node.adapter.observation(node.latest, 0)
            np.testing.assert_allclose(obs[lo:hi], action, atol=1e-12)
            env.step(action)
        assert node.rejected == 0
        node._on_reset(Trigger.Request(), Trigger.Response())
        assert not node.adapter.last_action.any()
    finally:
        node.destroy_node()


def test_uav_safe_command_is_motors_off_whatever_the_action_limit(uav_run, ros_context):
    """Disabling, the watchdog and a NaN from the network all send 0 N, not a clamped action."""
    node, published = _policy_node(ros_context, uav_run, action_limit=0.5, watchdog_periods=2)
    env = envs.make_from_config(RunDir.env_config_of(uav_run)).unwrapped
    env.reset(seed=2)
    try:
        _feed(node, env, node.get_clock().now().nanoseconds)
        assert len(published) == 1 and np.all(published[0] > 0.0)
        node._on_enable(SetBool.Request(data=False), SetBool.Response())
        node._on_timer()
        assert len(published) == 2 and np.all(published[-1] == 0.0)
        np.testing.assert_array_equal(node.adapter.last_action, -np.ones(4))  # the sim applied motors off too

        node._on_enable(SetBool.Request(data=True), SetBool.Response())
        node.last_valid_wall -= 3 * node.period_ns  # no state for three periods
        node._on_timer()
        assert node.watchdog_tripped and len(published) == 3 and np.all(published[-1] == 0.0)

        node.forward = lambda obs: np.full(4, math.nan)
        env.step(np.zeros(4))
        _feed(node, env, node.get_clock().now().nanoseconds)
        node._on_timer()  # state is back
        env.step(np.zeros(4))
        _feed(node, env, node.get_clock().now().nanoseconds)
        assert np.all(published[-1] == 0.0) and "non-finite" in node.last_reject
    finally:
        node.destroy_node()


def _start_node(module: str, params: dict, env: dict, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", f"embodied_ros.{module}", "--ros-args", "-r", "__ns:=/robot"]
    for key, value in params.items():
        cmd += ["-p", f"{key}:={json.dumps(value) if isinstance(value, bool) else value}"]
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _in_process_rollout(policy_dir: Path, seed: int, steps: int) -> tuple[dict, int]:
    """The policy flown in-process with the node's inference and the thrust round trip; (state, crash step)."""
    meta = read_meta(policy_dir)
    adapter = UAVAdapter(meta.env)
    policy = load_policy(policy_dir, EnvInterface.of(adapter.env))
    forward = policy.numpy_forward() or policy.act
    env = envs.make_from_config(meta.env).unwrapped
    obs, _ = env.reset(seed=seed)
    ended = 0
    for i in range(1, steps + 1):
        action = np.clip(forward(obs), -1.0, 1.0)
        obs, _, terminated, _, _ = env.step(adapter.decode_command(adapter.encode_command(action)))
        if terminated:
            ended = i
            break
    return adapter.summary(env), ended


def test_lock_step_flight_over_ros_matches_in_process(uav_run, ros_env, tmp_path):
    """sim_node (lock-step) + policy_node fly the run's policy; the vehicle follows the in-process rollout.

    A 2048-step policy cannot hover yet, so this compares rather than demands good flight: for 200
    ticks, or up to the crash if the in-process flight crashes first, the ROS-driven vehicle must end
    where the in-process one does (every command delivered, none late, none rejected).
    """
    policy_dir = RunDir(uav_run).policy()
    reference, crash_step = _in_process_rollout(policy_dir, seed=0, steps=200)
    ticks = crash_step or 200
    stats_file = tmp_path / "stats.json"
    sim = _start_node("sim_node", {"robot": "uav", "run_dir": uav_run, "real_time": False, "lockstep_timeout": 1.0,
                                   "stop_after_ticks": ticks, "stats_file": stats_file}, ros_env, tmp_path / "sim.log")
    policy = _start_node("policy_node", {"robot": "uav", "run_dir": uav_run, "use_sim_time": True}, ros_env,
                         tmp_path / "policy.log")
    try:
        sim.wait(timeout=90)
    except subprocess.TimeoutExpired:
        sim.send_signal(signal.SIGINT)
        sim.wait(timeout=15)
        raise AssertionError(f"the sim did not finish {ticks} ticks:\n{(tmp_path / 'sim.log').read_text()[-3000:]}\n"
                             f"{(tmp_path / 'policy.log').read_text()[-3000:]}") from None
    finally:
        if policy.poll() is None:
            policy.send_signal(signal.SIGINT)
        rc_policy = policy.wait(timeout=30)
    sim_log, policy_log = (tmp_path / "sim.log").read_text(), (tmp_path / "policy.log").read_text()
    assert sim.returncode == 0 and rc_policy == 0, sim_log[-3000:] + policy_log[-3000:]
    assert "Traceback" not in sim_log + policy_log
    assert "driving uav" in policy_log and "0 rejected messages" in policy_log
    stats = json.loads(stats_file.read_text())
    assert stats["ticks"] == ticks and stats["answered"] == ticks and stats["missed_ticks"] == 0, stats
    assert stats["rejected_commands"] == 0
    np.testing.assert_allclose(stats["position"], reference["position"], atol=1e-6)
    np.testing.assert_allclose(stats["velocity"], reference["velocity"], atol=1e-6)
    if crash_step:
        assert stats["terminations"] == 1 and stats["episode_end"] in ("crash", "out_of_bounds"), stats
    else:
        assert stats["terminations"] == 0, stats["episode_end"]


def test_robot_launch_flies_the_uav_lock_step_and_records_it(uav_run, ros_env, ros_context, tmp_path):
    """``robot-launch launch/robot.py robot:=uav real_time:=false record:=true``: thrusts flow, the bag reads back."""
    from nav_msgs.msg import Odometry

    from embodied_ros.bag import read_bag
    from embodied_ros.monitor import RobotMonitor

    bag = tmp_path / "bag"
    launch = Launch(ros_env, tmp_path, "robot:=uav", f"run:={uav_run}", "real_time:=false", "record:=true", f"bag:={bag}")
    probe = RobotMonitor(ros_context, name="probe", state_topic="odom", state_type=Odometry)
    probe.abort_if = launch.died
    try:
        probe.wait_for(lambda: len(probe.commands) > 150, 60, "150 lock-step thrust commands")
        time.sleep(2.0)  # lock-step outruns DDS discovery: give the recorder time to match and record
    finally:
        probe.close()
        rc = launch.stop()
    out = launch.output()
    assert "Failed to publish log message" not in out, out[-3000:]  # nothing logged to a shut-down context
    assert rc == 0 and "Traceback" not in out, out[-3000:]
    thrust_max = preset("cf2").thrust_max
    with probe.lock:
        commands = [c for _, c in probe.commands]
    assert all(c.shape == (4,) and np.all(c >= 0.0) and np.all(c <= thrust_max) for c in commands)
    messages = read_bag(bag)
    odom, imu, recorded = messages["/robot/odom"], messages["/robot/imu"], messages["/robot/commands"]
    assert len(odom) > 50 and len(imu) > 50 and len(recorded) > 50, {k: len(v) for k, v in messages.items()}
    assert odom[-1][1].child_frame_id == "base_link" and imu[-1][1].header.frame_id == "base_link"
    assert messages["/robot/goal"] == []  # hover: no goal topic
    # The sim waited for the recorder (await_subscribers): the bag holds the episode from its first state.
    first = odom[0][1].header.stamp
    assert first.sec == 0 and first.nanosec == 1, first
