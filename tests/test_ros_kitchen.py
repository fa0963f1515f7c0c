"""The Franka kitchen arm over ROS 2: its adapter (joint states, images, object state, instruction in;
joint targets out), the sim node, the policy node's Dict-observation path and the launch file.

The adapter is the contract between a Franka stack's messages and the env's Dict observation: what
the sim robot publishes must rebuild exactly the env's own observation, images included; malformed
messages must be rejected with the reason; commands are clamped to the env's bounds and the safe
command holds the arm where it is. Tests that render are gated on a GL probe (skipped without GL on a
developer machine, failing when ``CI`` is set), like the kitchen env's camera tests.
"""

from __future__ import annotations

import copy
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="the ROS 2 tests need the ros extra and the ROS package (README, command B)")
import rclpy
import rclpy.parameter
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger

import envs
from embodied_ros.adapters import InvalidMessage, KitchenAdapter, SwimmerAdapter, make_adapter
from envs.kitchen.experts import make_expert
from envs.kitchen.instructions import INSTRUCTIONS, instruction
from policies.bundle import save_bundle
from policies.mlp import MLPActor, MLPConfig
from policies.protocol import PolicyMeta
from policies.vector_policy import VectorPolicy

from conftest import capturing_policy_node, launch_nodes

T0 = 1_700_000_000_123_456_789  # an arbitrary wall-clock stamp, ns
DT_NS = 80_000_000  # the kitchen's 80 ms control step (12.5 Hz)
MAX_AGE = 200_000_000
ENV = {"name": "kitchen", "id": envs.KITCHEN, "task": "microwave", "paraphrase": 1, "cameras": ["scene", "wrist"],
       "image_size": 96}


@pytest.fixture(scope="module")
def adapter() -> KitchenAdapter:
    return KitchenAdapter(ENV)


@pytest.fixture(scope="module")
def camera_env(gl_available):
    """The kitchen with both cameras (renders: one GL context for the module)."""
    env = envs.make_from_config(ENV).unwrapped
    yield env
    env.close()


@pytest.fixture(scope="module")
def messages(adapter, camera_env) -> dict:
    """What the sim publishes for a state a few random actions from the start (rendered once)."""
    camera_env.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(3):
        camera_env.step(rng.uniform(camera_env.action_space.low, camera_env.action_space.high))
    return adapter.encode_state(camera_env, T0, "")


def fresh(messages: dict, topic: str):
    return copy.deepcopy(messages[topic])


# --- round trip: sim state -> messages -> observation ------------------------------------------------


def test_encoded_state_decodes_to_the_env_observation(adapter, camera_env):
    """Every published state rebuilds the env's own Dict observation exactly, images and dtypes included."""
    env = camera_env
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(1)
    expert = make_expert(env)
    for i in range(12):
        stamp = T0 + i * DT_NS
        msgs = adapter.encode_state(env, stamp, "")
        assert list(msgs) == [t.name for t in adapter.published_topics]
        assert list(msgs) == ["instruction", "object_state", "scene/image_raw", "wrist/image_raw", "joint_states"]
        for t in adapter.topics:
            assert isinstance(msgs[t.name], t.type)
            assert adapter.validate(t.name, msgs[t.name], stamp, MAX_AGE) == stamp
        rebuilt = adapter.observation(msgs, i)
        assert rebuilt.keys() == obs.keys() == {"proprio", "object_state", "scene", "wrist", "instruction"}
        for key, value in obs.items():
            if key == "instruction":
                assert rebuilt[key] == value == env.instruction == instruction("microwave", 1)
                continue
            assert rebuilt[key].dtype == value.dtype and rebuilt[key].shape == value.shape, key
            np.testing.assert_array_equal(rebuilt[key], value, err_msg=f"step {i}: {key}")
        assert adapter.instruction == env.instruction
        action = expert.act(env) if i % 2 else rng.uniform(env.action_space.low, env.action_space.high)
        obs, *_ = env.step(adapter.decode_command(adapter.encode_command(action)))
    assert obs["proprio"][7] > 0.0  # the gripper moved, so the opening is really in play


def test_message_fields_and_joint_order(adapter, messages):
    """Standard fields a Franka stack fills; joint_states may list its joints in any order, with extras."""
    js = messages["joint_states"]
    assert js.name == [f"robot:panda0_joint{i}" for i in range(1, 8)] + ["robot:panda0_finger_joint1",
                                                                           "robot:panda0_finger_joint2"]
    assert len(js.position) == len(js.velocity) == 9 and not js.effort
    image = messages["scene/image_raw"]
    assert (image.height, image.width, image.step, image.encoding) == (96, 96, 288, "rgb8")
    assert image.header.frame_id == "scene_camera_optical_frame"
    assert messages["wrist/image_raw"].header.frame_id == "wrist_camera_optical_frame"
    assert len(messages["object_state"].data) == 17 and messages["object_state"].layout.dim[0].size == 17
    expected = adapter.observation(messages, 0)

    shuffled = JointState(header=js.header, name=[*reversed(js.name), "extra_joint"],
                          position=[*reversed(js.position), 0.5], velocity=[*reversed(js.velocity), 0.0])
    assert adapter.validate("joint_states", shuffled, T0, MAX_AGE) == T0
    np.testing.assert_array_equal(adapter.observation({**messages, "joint_states": shuffled}, 0)["proprio"],
                                  expected["proprio"])
    # Rows padded to 300 bytes, as the message allows: the same pixels.
    image = fresh(messages, "scene/image_raw")
    rows = np.frombuffer(image.data, dtype=np.uint8).reshape(96, 288)
    image.step, image.data = 300, np.pad(rows, ((0, 0), (0, 12)), constant_values=7).tobytes()
    assert adapter.validate("scene/image_raw", image, T0, MAX_AGE) == T0
    np.testing.assert_array_equal(adapter.observation({**messages, "scene/image_raw": image}, 0)["scene"],
                                  expected["scene"])


def test_image_policies_can_go_without_object_state(messages):
    """An env config with ``object_state: false`` (an image policy's): not published, not subscribed, no entry."""
    blind = make_adapter("kitchen", {**ENV, "object_state": False})
    assert [t.name for t in blind.topics] == ["joint_states", "scene/image_raw", "wrist/image_raw", "instruction"]
    assert "object_state" not in [t.name for t in blind.published_topics]
    msgs = {k: v for k, v in messages.items() if k != "object_state"}
    keys = {"proprio", "scene", "wrist", "instruction"}
    assert blind.observation(msgs, 0).keys() == keys == blind.zero_observation().keys()


# --- validation ---------------------------------------------------------------------------------------


def rejects(adapter, topic, msg, match, now=T0):
    with pytest.raises(InvalidMessage, match=match):
        adapter.validate(topic, msg, now, MAX_AGE)


def _drop_finger(msg):
    msg.name, msg.position, msg.velocity = msg.name[:-1], msg.position[:-1], msg.velocity[:-1]


def _nan_position(msg):
    msg.position = [*msg.position[:3], math.nan, *msg.position[4:]]


def _zero_stamp(msg):
    msg.header.stamp.sec, msg.header.stamp.nanosec = 0, 0


def _stale(msg):
    msg.header.stamp.sec -= 5


@pytest.mark.parametrize(("topic", "damage", "match"), [
    ("joint_states", _drop_finger, r"joint_states: missing joints \['robot:panda0_finger_joint2'\]"),
    ("joint_states", lambda m: setattr(m, "velocity", m.velocity[:8]), "9 names but 9 positions and 8 velocities"),
    ("joint_states", _nan_position, r"joint_states\.position contains NaN or inf"),
    ("joint_states", _zero_stamp, r"joint_states: header\.stamp is zero \(unstamped message\)"),
    ("joint_states", _stale, r"joint_states: stale stamp, 5000\.0 ms old"),
    ("scene/image_raw", lambda m: setattr(m, "encoding", "bgr8"), r"scene/image_raw: encoding 'bgr8' \(need rgb8\)"),
    ("scene/image_raw", lambda m: setattr(m, "height", 48), r"48x96 image \(the env config's is 96x96\)"),
    ("wrist/image_raw", lambda m: setattr(m, "step", 96), r"wrist/image_raw: step 96 is shorter than a row .* \(288\)"),
    ("wrist/image_raw", lambda m: setattr(m, "data", bytes(100)), r"100 bytes of data \(need step x height = 27648\)"),
    ("wrist/image_raw", lambda m: setattr(m.header, "frame_id", ""), r"wrist/image_raw: header\.frame_id is empty"),
    ("scene/image_raw", _stale, r"scene/image_raw: stale stamp"),
    ("object_state", lambda m: setattr(m, "data", m.data[:16]), r"object_state: 16 values \(need 17"),
    ("object_state", lambda m: setattr(m, "data", [math.inf, *m.data[1:]]), r"object_state contains NaN or inf"),
    ("instruction", lambda m: setattr(m, "data", "  "), r"instruction: empty text"),
    ("instruction", lambda m: setattr(m, "data", "x" * 1001), r"instruction: 1001 characters \(limit 1000\)"),
])
def test_malformed_messages_are_rejected(adapter, messages, topic, damage, match):
    msg = fresh(messages, topic)
    assert adapter.validate(topic, msg, T0, MAX_AGE) is not None  # intact: accepted
    damage(msg)
    rejects(adapter, topic, msg, match)


# --- commands -----------------------------------------------------------------------------------------


def test_commands_are_clamped_and_the_safe_command_holds_here(messages):
    """Joint targets beyond the joint ranges and gripper commands beyond [0, 1] saturate; safe = hold here."""
    adapter = KitchenAdapter(ENV)  # fresh memory
    low, high = adapter.action_low, adapter.action_high
    assert adapter.command_size == 8 and adapter.obs_dim is None and adapter.hold_until_command
    assert (low[7], high[7]) == (0.0, 1.0) and np.all(low[:7] < high[:7])
    inside = (low + high) / 2
    np.testing.assert_array_equal(adapter.decode_command(adapter.encode_command(inside)), inside)
    np.testing.assert_array_equal(adapter.decode_command(np.r_[high[:7] + 1.0, 2.0]), high)
    np.testing.assert_array_equal(adapter.decode_command(np.r_[low[:7] - 1.0, -0.5]), low)

    assert adapter.safe_command() is None  # no joint state yet: nothing to hold
    js = messages["joint_states"]
    adapter.validate("joint_states", js, T0, MAX_AGE)
    positions = np.asarray(js.position)
    opening = adapter.observation(messages, 0)["proprio"][7]
    np.testing.assert_array_equal(adapter.safe_command(), np.r_[positions[:7], opening])
    adapter.commanded(np.r_[inside[:7], 0.25])
    np.testing.assert_array_equal(adapter.safe_command(), np.r_[positions[:7], 0.25])  # the grasp stays commanded
    adapter.reset()
    np.testing.assert_array_equal(adapter.safe_command()[7], opening)


def test_sim_safe_command_holds_the_arm_still():
    """In the sim, the safe command is the arm's current angles and the fingers' current targets."""
    adapter = KitchenAdapter(ENV)
    env = envs.make_from_config(KitchenAdapter.sim_env_config(ENV)).unwrapped
    env.reset(seed=4)
    start = env.proprio()
    env.step(np.r_[start[:7], 0.6])  # fingers told to open
    hold = adapter.safe_command(env)
    np.testing.assert_allclose(hold[:7], env.proprio()[:7], atol=0)
    assert hold[7] == pytest.approx(0.6)
    before = env.proprio()
    for _ in range(5):
        env.step(hold)
    np.testing.assert_allclose(env.proprio()[:7], before[:7], atol=2e-3)
    env.close()


def test_rate_config_and_make_adapter():
    assert KitchenAdapter.with_rate(ENV, 12.5) == ENV
    with pytest.raises(ValueError, match=r"fixed 12\.5 Hz .* not 25 Hz: use rate:=0"):
        KitchenAdapter.with_rate(ENV, 25.0)
    with pytest.raises(ValueError, match=r"trained on env 'kitchen', not on a swimmer \(use robot:=kitchen\)"):
        make_adapter("swimmer", ENV)
    with pytest.raises(ValueError, match="the kitchen adapter serves the Franka kitchen env"):
        make_adapter("kitchen", {"name": "kitchen_x", "id": envs.UAV})
    assert KitchenAdapter.sim_env_config(ENV)["cameras"] == []
    adapter = KitchenAdapter({"name": "kitchen", "id": envs.KITCHEN, "cameras": ["wrist"], "image_size": [64, 80]})
    assert [t.name for t in adapter.topics] == ["joint_states", "wrist/image_raw", "object_state", "instruction"]
    assert adapter.layout == {"object_state": [17], "proprio": [8], "wrist": [64, 80, 3]}
    assert adapter.control_dt == pytest.approx(0.08)


# --- the sim node (in-process) ------------------------------------------------------------------------


def test_sim_node_says_the_instruction_per_episode_and_task_and_ends_on_success(ros_context):
    """The instruction goes out at the episode start and when the sequence moves on, not every tick;
    success ends the episode like the other robots' ends; a new episode holds until the first command."""
    from embodied_ros.sim_node import SimRobotNode

    params = {"robot": "kitchen", "task": "light_switch,slide_cabinet", "cameras": "none", "level": "L1",
              "real_time": False}
    overrides = [rclpy.parameter.Parameter(k, value=v) for k, v in params.items()]
    node = SimRobotNode(context=ros_context, parameter_overrides=overrides)
    sent = {name: [] for name in node.pubs}
    for name, pub in node.pubs.items():
        pub.publish = lambda msg, name=name: sent[name].append(msg)
    try:
        assert node.env.cameras == () and node.env.level == "L1" and node.env.tasks == ("light_switch", "slide_cabinet")
        node._reset_env()
        node._publish_state()
        node._tick()  # held: the same state again, no physics
        assert len(sent["joint_states"]) == 2 and sent["joint_states"][0] == sent["joint_states"][1]  # stamp too
        expert = make_expert(node.env)
        k = node.env.episode_paraphrase  # paraphrase null: drawn per episode
        for _ in range(300):
            node._on_command(Float64MultiArray(data=expert.act(node.env).tolist()))
            node._tick()
            if node.episode_end:
                break
        assert node.episode_end == "is_success" and node.terminations == 1
        said = [m.data for m in sent["instruction"]]
        assert said == [instruction("light_switch", k), instruction("slide_cabinet", k)]
        assert len(sent["object_state"]) == len(sent["joint_states"]) > 40
        stats = node.statistics()
        assert stats["tasks_completed"] == 2 and stats["task"] == "slide_cabinet" and stats["rejected_commands"] == 0

        node._on_command(Float64MultiArray(data=[0.0] * 7))  # 7 values: rejected
        node._on_command(Float64MultiArray(data=[math.nan] * 8))
        assert node.rejected_commands == 2
        node._on_reset(Trigger.Request(), Trigger.Response())
        node._tick()
        node._tick()
        k = node.env.episode_paraphrase
        assert [m.data for m in sent["instruction"]][2:] == [instruction("light_switch", k)]  # once per episode
        assert sent["joint_states"][-1].position == sent["joint_states"][-2].position  # held again
    finally:
        node.destroy_node()


# --- the policy node's Dict path ----------------------------------------------------------------------


def _vector_policy(directory: Path, env_config: dict, obs_dim: int, action_dim: int) -> Path:
    """A tiny untrained MLP policy directory (no training needed to build a node)."""
    config = MLPConfig(obs_dim=obs_dim, action_dim=action_dim, hidden=[4])
    meta = PolicyMeta(kind="mlp", config=config.to_dict(), env=env_config, observation={"shape": [obs_dim]},
                      action_low=[-1.0] * action_dim, action_high=[1.0] * action_dim)
    policy = VectorPolicy(MLPActor(config), meta)
    return save_bundle(directory, meta, policy.tensors())


def test_policy_node_refuses_a_flat_policy_for_the_kitchen(ros_context, tmp_path):
    from embodied_ros.policy_node import PolicyNode
    from embodied_ros.process import StartupError

    run = _vector_policy(tmp_path / "kitchen", ENV, 25, 8)
    with pytest.raises(StartupError, match=r"does not fit this env: the policy reads a \[25\] array, the env gives "
                                           r"a Dict$") as e:
        PolicyNode(context=ros_context, parameter_overrides=[rclpy.parameter.Parameter("run_dir", value=str(run)),
                                                             rclpy.parameter.Parameter("robot", value="kitchen")])
    assert "\n" not in str(e.value)


def test_policy_node_carries_the_dict_observation_and_the_instruction(ros_context, tmp_path, adapter, camera_env):
    """What a Dict policy sees in the node: the env's observation and the instruction; hold-here on the watchdog.

    The node is built for a tiny vector policy and then given the kitchen adapter and a recording forward, so
    this checks the node's Dict path without any model (tests/test_ros_mtact.py runs a real MT-ACT).
    """
    swimmer = {"name": "swimmer", "id": envs.SWIMMER, "task": "swim", "n_links": 6}
    run = _vector_policy(tmp_path / "swimmer", swimmer, SwimmerAdapter(swimmer).obs_dim, 5)
    node, published = capturing_policy_node(ros_context, run, robot="swimmer", watchdog_periods=2)
    kitchen = KitchenAdapter(ENV)
    seen = []
    node.adapter, node.low, node.high = kitchen, kitchen.action_low, kitchen.action_high
    node.latched = {t.name for t in kitchen.topics if t.latched}
    node.period_ns = int(kitchen.control_dt * 1e9)
    node.watchdog_ns = 2 * node.period_ns
    node.forward = lambda obs: seen.append((obs, obs["instruction"])) or np.full(8, 10.0)  # beyond every bound
    env = camera_env
    obs, _ = env.reset(seed=5)

    def feed(skip=(), back: int = 0):
        stamp = node.get_clock().now().nanoseconds - back * node.period_ns
        for topic, msg in kitchen.encode_state(env, stamp).items():
            if topic not in skip:
                node._make_callback(topic)(msg)

    try:
        assert node.forward(kitchen.zero_observation()) is not None and seen.pop()
        feed(back=1)
        assert len(seen) == 1 and node.rejected == 0, node.last_reject
        got, words = seen[0]
        assert got.keys() == obs.keys() and all(np.array_equal(got[k], obs[k]) for k in obs if k != "instruction")
        assert words == env.instruction
        np.testing.assert_array_equal(published[-1], kitchen.action_high)  # clamped to the env's bounds

        feed(skip=("scene/image_raw", "wrist/image_raw"))  # new joint states, images a period old: not a sample
        assert len(seen) == 1
        node.last_valid_wall -= 3 * node.period_ns  # no state for three periods
        node._on_timer()
        assert node.watchdog_tripped
        np.testing.assert_array_equal(published[-1], np.r_[env.proprio()[:7], 1.0])  # hold here, gripper as sent

        node._on_reset(Trigger.Request(), Trigger.Response())
        assert list(node.latest) == ["instruction"]  # said once per episode: kept
        feed(skip=("instruction",))  # state is back: the watchdog resumes the policy on its next tick
        node._on_timer()
        assert not node.watchdog_tripped
        feed(skip=("instruction",))
        assert len(seen) > 1 and all(words == env.instruction for _, words in seen[1:]), node.last_reject
    finally:
        node.destroy_node()


# --- the sim node process and a probe ------------------------------------------------------------------


def test_sim_node_publishes_the_arm_and_follows_a_command(ros_env, ros_context, tmp_path, adapter):
    """``python -m embodied_ros.sim_node`` (robot kitchen, real time): a probe gets joint states, both camera
    streams, the object state and (subscribing late) the latched instruction, all valid; the arm holds still
    until the probe commands it, then moves to the commanded joint targets."""
    log = tmp_path / "sim.log"
    sim = subprocess.Popen(
        [sys.executable, "-m", "embodied_ros.sim_node", "--ros-args", "-r", "__ns:=/robot", "-p", "robot:=kitchen",
         "-p", "task:=microwave", "-p", "seed:=2"],
        env=ros_env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    node = rclpy.create_node("probe", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    latest: dict[str, list] = {t.name: [] for t in adapter.topics}
    for t in adapter.topics:
        if not t.latched:
            node.create_subscription(t.type, f"/robot/{t.name}", latest[t.name].append, QoSProfile(depth=50))
    commands = node.create_publisher(Float64MultiArray, "/robot/commands", QoSProfile(depth=10))

    def spin_until(predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
            if predicate():
                return
            if sim.poll() is not None:
                raise AssertionError(f"the sim exited while waiting for {what}:\n{log.read_text()[-3000:]}")
        raise AssertionError(f"timed out after {timeout} s waiting for {what}:\n{log.read_text()[-3000:]}")

    try:
        streams = [t.name for t in adapter.topics if not t.latched]
        spin_until(lambda: len(latest["joint_states"]) >= 4 and all(latest[name] for name in streams), 60,
                   "the arm's state")
        now = node.get_clock().now().nanoseconds
        msgs = {name: received[-1] for name, received in latest.items() if received}
        for name, msg in msgs.items():
            adapter.validate(name, msg, now, 2_000_000_000)
        # Late: the sim said the instruction long ago, once; transient-local QoS delivers it anyway.
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        node.create_subscription(String, "/robot/instruction", latest["instruction"].append, latched)
        spin_until(lambda: bool(latest["instruction"]), 10, "the latched instruction")
        msgs["instruction"] = latest["instruction"][-1]
        assert msgs["instruction"].data in INSTRUCTIONS["microwave"]
        obs = adapter.observation(msgs, 0)
        assert obs["scene"].std() > 5 and obs["wrist"].std() > 5  # rendered pictures, not blank frames
        held = [tuple(m.position) for m in latest["joint_states"]]
        assert len(set(held)) == 1, "the arm must hold still until the first command"

        start = obs["proprio"]
        step = np.r_[0.3, 0.0, 0.0, 0.3, 0.0, -0.3, 0.0, 1.0]
        target = np.clip(start + step, adapter.action_low, adapter.action_high)
        spin_until(lambda: commands.get_subscription_count() > 0, 10, "the sim's command subscription")
        commands.publish(Float64MultiArray(data=target.tolist()))
        first_error = np.abs(target[:7] - start[:7]).max()

        def arrived() -> bool:
            if not latest["joint_states"]:
                return False
            proprio = adapter.observation({**msgs, "joint_states": latest["joint_states"][-1]}, 0)["proprio"]
            return np.abs(target[:7] - proprio[:7]).max() < 0.2 * first_error and proprio[7] > start[7] + 0.5

        latest["joint_states"].clear()
        spin_until(arrived, 20, "the arm to reach the commanded joint targets")
    finally:
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        if sim.poll() is None:
            sim.send_signal(signal.SIGINT)
        rc = sim.wait(timeout=30)
    out = log.read_text()
    assert rc == 0 and "Traceback" not in out, out[-3000:]
    assert "kitchen sim (embodied/Kitchen-v0" in out and "at 12.5 Hz, real time" in out


# --- launch file --------------------------------------------------------------------------------------


def test_launch_file_runs_the_kitchen():
    """robot:=kitchen without run starts the sim alone; scene arguments reach it; chunk arguments reach the policy."""
    (sim,) = launch_nodes(robot="kitchen", task="kettle,light_switch", level="L2", cameras="wrist")
    params = sim["parameters"][0]
    assert sim["name"] == "sim" and params["robot"] == "kitchen" and params["run_dir"] == ""
    assert (params["task"], params["level"], params["cameras"]) == ("kettle,light_switch", "L2", "wrist")
    assert params["await_subscribers"] == 0  # no policy to wait for
    recorder, sim = launch_nodes(robot="kitchen", record="true", bag="b", cameras="scene,left_cap")
    assert sim["parameters"][0]["await_subscribers"] == 1
    topics = recorder["parameters"][0]["topics"]
    assert topics[:3] == ["joint_states", "object_state", "instruction"]
    assert topics[-2:] == ["scene/image_raw", "left_cap/image_raw"]
    assert recorder["parameters"][0]["types"][-1] == "sensor_msgs/msg/Image"
    sim, policy = launch_nodes(robot="kitchen", run="/r", task="kettle")
    assert policy["name"] == "policy" and sim["parameters"][0]["await_subscribers"] == 1
    assert (policy["parameters"][0]["chunk_schedule"], policy["parameters"][0]["execute_steps"]) == ("", 0)
    _, policy = launch_nodes(robot="kitchen", run="/r", chunk_schedule="execute", execute_steps="5")
    assert (policy["parameters"][0]["chunk_schedule"], policy["parameters"][0]["execute_steps"]) == ("execute", 5)
    with pytest.raises(ValueError, match="chunk_schedule:='chunky' is not one of: ensemble, execute"):
        launch_nodes(robot="kitchen", run="/r", chunk_schedule="chunky")
    with pytest.raises(ValueError, match="arguments execute_steps choose how the kitchen's MT-ACT .* need robot:=kitchen"):
        launch_nodes(robot="swimmer", run="/r", execute_steps="3")
    with pytest.raises(ValueError, match="launch arguments task, level choose the kitchen's scene; robot:=uav"):
        launch_nodes(robot="uav", run="/r", task="kettle", level="L1")
    with pytest.raises(ValueError, match="cameras needs run empty"):
        launch_nodes(robot="kitchen", run="/r", cameras="scene")
    with pytest.raises(ValueError, match="without run:= starts only the sim robot, which needs use_sim:=true"):
        launch_nodes(robot="kitchen", use_sim="false")
    with pytest.raises(ValueError, match="run:=<run directory> is required"):
        launch_nodes(robot="swimmer")
    (policy,) = launch_nodes(robot="kitchen", run="/r", use_sim="false", state_topic="/franka/joint_states")
    assert policy["remappings"] == [("joint_states", "/franka/joint_states")]
    with pytest.raises(ValueError, match="odom_topic remaps the uav's odom"):
        launch_nodes(robot="kitchen", run="/r", use_sim="false", odom_topic="/odom")


def test_sim_node_rejects_scene_parameters_it_cannot_honour():
    from embodied_ros.process import StartupError
    from embodied_ros.sim_node import scene_overrides

    base = {"task": "", "level": "", "cameras": "", "run_dir": ""}
    assert scene_overrides("kitchen", base) == {}
    assert scene_overrides("kitchen", {**base, "task": "kettle, light_switch", "cameras": "none"}) == {
        "task": ["kettle", "light_switch"], "cameras": []}
    with pytest.raises(StartupError, match="parameters task choose the kitchen's scene; robot swimmer takes none"):
        scene_overrides("swimmer", {**base, "task": "navigate"})
    with pytest.raises(StartupError, match="cameras needs run_dir empty"):
        scene_overrides("kitchen", {**base, "cameras": "scene", "run_dir": "/r"})
