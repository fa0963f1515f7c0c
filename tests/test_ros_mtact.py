"""MT-ACT on the kitchen arm through the ROS 2 policy node.

The node must act exactly as the policy does in evaluation (``MTACTPolicy.act`` on the env's own
observation, the instruction included), start its chunk scheduler afresh at every episode boundary it can see
(a new instruction, ``~/reset``) so that no chunk outlives its episode, take a one-hot policy's task
from the instruction's words, and refuse at start-up, in one line, a policy the robot cannot serve.
A tiny image MT-ACT is trained through the CLI once per module; the one-hot state-only variant is
saved untrained (the node's logic does not care what the weights learned).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="the ROS 2 tests need the ros extra and the ROS package (README, command B)")
import rclpy.parameter
import torch
from std_msgs.msg import String
from std_srvs.srv import Trigger

import envs
from embodied_ros.adapters import KitchenAdapter
from envs.kitchen.instructions import INSTRUCTIONS, instruction
from policies.bundle import save_bundle
from policies.mtact import MTACT, MTACTConfig, observation_description
from policies.protocol import PolicyMeta
from policies.registry import load_policy
from policies.run_dir import RunDir

from conftest import TINY_MTACT, Launch, capturing_policy_node, cli_env, write_fake_dataset

TASKS = ["light_switch", "microwave"]


@pytest.fixture(scope="module")
def mtact_run(tmp_path_factory) -> Path:
    """A tiny image MT-ACT (scene + wrist, 32 px, MiniLM language, chunks of 5) trained for 2 steps via the CLI."""
    root = tmp_path_factory.mktemp("mtact")
    data = write_fake_dataset(root / "data", dict.fromkeys(TASKS, 2))
    run = root / "run"
    result = subprocess.run(
        [sys.executable, "-m", "agents.train", "env=kitchen", "policy=mtact", "algo=bc", f"dataset={data}",
         "algo.total_steps=2", "algo.eval_every=2", "algo.eval_episodes=0", "algo.final_eval_episodes=0",
         "threads=1", f"hydra.run.dir={run}", *TINY_MTACT],
        cwd=root, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def _onehot_state_only(directory: Path) -> Path:
    """An untrained state-only, one-hot MT-ACT whose run executed 2 of its 4-action chunks per query."""
    env = {"name": "kitchen", "id": envs.KITCHEN, "cameras": [], "steps_per_task": 8}
    config = MTACTConfig(cameras=(), hidden=16, heads=2, ffn=32, enc_layers=1, dec_layers=1, cvae=False, chunk=4,
                         language="onehot", lang_dim=len(TASKS))
    torch.manual_seed(0)
    bounds = KitchenAdapter(env)
    meta = PolicyMeta(kind="mtact", config=config.to_dict(), env=env, observation=observation_description(config),
                      action_low=bounds.action_low.tolist(), action_high=bounds.action_high.tolist(),
                      extra={"tasks": TASKS, "inference": {"schedule": "execute", "ensemble_m": 0.01,
                                                           "execute_steps": 2}})
    return save_bundle(directory, meta, MTACT(config).state_dict())


def _feed(node, env, say: bool = False) -> None:
    """What the sim publishes for ``env``'s state now, into the node; the instruction only when ``say`` (as the sim
    says it: at an episode start and when the task changes)."""
    subscribed = {t.name for t in node.adapter.topics}
    stamp = node.get_clock().now().nanoseconds
    for topic, msg in node.adapter.encode_state(env, stamp).items():  # the instruction first, joint_states last
        if topic in subscribed and (say or topic != "instruction"):
            node._make_callback(topic)(msg)


def _node(ros_context, run, **params):
    node, published = capturing_policy_node(ros_context, run, robot="kitchen", **params)
    return node, published


# --- in-process: the node acts as the policy does --------------------------------------------------------


def test_node_acts_as_the_policy_and_drops_chunks_at_every_episode_boundary(ros_context, mtact_run, gl_available):
    """Kitchen states (rendered 32 px cameras) in, 8-d joint targets out: the very actions ``MTACTPolicy.act`` gives
    on the env's observation and instruction, with temporal ensembling as trained; a new instruction and
    ``~/reset`` each start the ensemble afresh (a reference that is never reset then disagrees)."""
    node, published = _node(ros_context, mtact_run)
    policy_dir = RunDir(mtact_run).policy()
    reference, unreset = load_policy(policy_dir), load_policy(policy_dir)  # ensemble, m = 0.01
    env = envs.make_from_config({**node.adapter.env_config, "task": "microwave"}).unwrapped  # the run's 32 px cameras
    low, high = node.low, node.high

    def step_and_check(obs, say: bool = False) -> np.ndarray:
        before = len(published)
        _feed(node, env, say)
        assert len(published) == before + 1 and node.rejected == 0, node.last_reject
        command = published[-1]
        expected = reference.act(obs)
        stale = unreset.act(obs)
        assert command.shape == (8,) and np.all(command >= low) and np.all(command <= high)
        np.testing.assert_array_equal(command, np.clip(expected, low, high))
        return command, np.clip(stale, low, high)

    try:
        assert node.backend == "torch" and node.policy.meta.kind == "mtact"
        assert [t.name for t in node.adapter.topics] == ["joint_states", "scene/image_raw", "wrist/image_raw",
                                                         "instruction"]  # the image model reads no object state
        assert node.policy.schedule_description == "temporal ensembling of 5-action chunks (m=0.01)"
        assert node.policy.scheduler.t == 0 and node.policy.queries == 1  # warmed up (encoder loaded), then reset

        obs, _ = env.reset(seed=0, options={"paraphrase": 0})
        reference.reset()
        for i in range(4):
            command, _ = step_and_check(obs, say=i == 0)
            obs, *_ = env.step(command)
        assert node.policy.scheduler.t == 4
        diagnostics = node.diagnostics()
        assert diagnostics["instruction"] == env.instruction == instruction("microwave", 0)
        assert diagnostics["task"] == "microwave" and diagnostics["chunk_queries"] == "5"

        # A new episode (the sim resets and says its instruction again, here in other words): ensembling restarts.
        obs, _ = env.reset(seed=1, options={"paraphrase": 2})
        reference.reset()
        command, stale = step_and_check(obs, say=True)
        assert node.policy.scheduler.t == 1 and not np.array_equal(command, stale)
        obs, *_ = env.step(command)
        step_and_check(obs)

        # ~/reset drops the chunks too (the latched instruction is kept: no need to say it again).
        node._on_reset(Trigger.Request(), Trigger.Response())
        assert node.policy.scheduler.t == 0 and list(node.latest) == ["instruction"]
        reference.reset()
        command, stale = step_and_check(obs)
        assert not np.array_equal(command, stale)
    finally:
        node.destroy_node()
        env.close()


def test_one_hot_state_only_mtact_takes_its_task_from_the_instruction(ros_context, tmp_path):
    """The one-hot policy's task is the one the instruction's words name; words it cannot map, or a task it never
    learned, are rejected with the reason and the arm holds; ``task:=`` overrides the words. The run's schedule
    (execute 2 of 4 per query) is kept, and a new instruction drops the half-executed chunk."""
    run = _onehot_state_only(tmp_path / "onehot")
    node, published = _node(ros_context, run)
    reference = load_policy(run)  # as trained: execute 2 of 4
    env = envs.make_from_config({**node.adapter.env_config, "task": "microwave"}).unwrapped  # state-only: no GL
    say = node._make_callback("instruction")
    try:
        assert [t.name for t in node.adapter.topics] == ["joint_states", "object_state", "instruction"]
        assert node.policy.schedule_description == "execute 2 of 4 actions per query"
        obs, _ = env.reset(seed=0, options={"paraphrase": 1})
        reference.reset()
        for i in range(3):
            _feed(node, env, say=i == 0)
            np.testing.assert_array_equal(published[-1], np.clip(reference.act(obs), node.low, node.high))
            obs, *_ = env.step(published[-1])
        assert node.policy.queries == 1 + 2 and node.policy.task == "microwave"  # warm-up, then one per 2 steps

        say(String(data="make me a cup of tea"))
        _feed(node, env)
        assert "'make me a cup of tea' is none of the known task wordings" in node.last_reject
        assert "set its task option (the node's task parameter)" in node.last_reject
        np.testing.assert_array_equal(published[-1], np.r_[env.proprio()[:7], published[-2][7]])  # hold here
        say(String(data=instruction("kettle", 3)))
        _feed(node, env)
        assert "asks for kettle, and this one-hot MT-ACT was trained on light_switch, microwave only" in node.last_reject

        say(String(data=instruction("light_switch", 4).upper()))  # a held-out wording, shouted
        queries = node.policy.queries
        _feed(node, env)
        assert node.policy.task == "light_switch" and node.policy.queries == queries + 1  # a fresh chunk
        reference.reset()
        told = {**obs, "instruction": instruction("light_switch", 4).upper()}
        np.testing.assert_array_equal(published[-1], np.clip(reference.act(told), node.low, node.high))
    finally:
        node.destroy_node()

    node, published = _node(ros_context, run, task="microwave", chunk_schedule="ensemble")
    try:
        assert node.policy.schedule_description == "temporal ensembling of 4-action chunks (m=0.01)"
        say = node._make_callback("instruction")
        say(String(data="make me a cup of tea"))
        _feed(node, env)
        assert node.rejected == 0 and node.policy.task == "microwave" and len(published) == 1
    finally:
        node.destroy_node()
        env.close()


# --- start-up errors: one line, naming the problem ---------------------------------------------------------


def _edited_copy(mtact_run: Path, tmp_path: Path, env_edit: dict) -> Path:
    directory = tmp_path / "policy"
    shutil.copytree(RunDir(mtact_run).policy(), directory)
    meta = json.loads((directory / "policy.json").read_text())
    meta["env"].update(env_edit)
    (directory / "policy.json").write_text(json.dumps(meta))
    return directory


@pytest.mark.parametrize(("env_edit", "params", "match"), [
    ({"cameras": ["scene"]}, {}, r"does not fit this env: the policy reads observation key 'wrist', the env has "),
    ({"image_size": 48}, {}, r"does not fit this env: scene: the policy reads observations of shape \[32, 32, 3\], "
                             r"the env gives \[48, 48, 3\]$"),
    ({}, {"robot": "swimmer"}, r"trained on env 'kitchen', not on a swimmer \(use robot:=kitchen\)$"),
    ({}, {"robot": "uav"}, r"trained on env 'kitchen', not on a uav \(use robot:=kitchen\)$"),
    ({}, {"chunk_schedule": "later"}, r"chunk schedule must be one of ensemble, execute, got 'later'$"),
    ({}, {"chunk_schedule": "execute", "execute_steps": 9}, r"execute_steps must be in 1\.\.5 \(the chunk length\)"),
    ({}, {"execute_steps": 2}, r"execute_steps=2 needs the execute schedule \(this policy runs ensemble\)$"),
    ({}, {"deterministic": False}, "mtact policy in .* stores none$"),
], ids=["camera", "image_size", "swimmer", "uav", "schedule", "execute_steps", "steps_without_execute", "stochastic"])
def test_startup_errors(ros_context, mtact_run, tmp_path, env_edit, params, match):
    from embodied_ros.policy_node import PolicyNode
    from embodied_ros.process import StartupError

    directory = _edited_copy(mtact_run, tmp_path, env_edit)
    overrides = [rclpy.parameter.Parameter(k, value=v) for k, v in {"run_dir": str(directory), "robot": "kitchen",
                                                                    **params}.items()]
    with pytest.raises(StartupError, match=match) as e:
        PolicyNode(context=ros_context, parameter_overrides=overrides)
    assert "\n" not in str(e.value)


def test_one_hot_task_parameter_must_be_a_trained_task(ros_context, tmp_path):
    from embodied_ros.process import StartupError

    run = _onehot_state_only(tmp_path / "onehot")
    with pytest.raises(StartupError, match=r"task 'kettle': this one-hot MT-ACT was trained on light_switch, "
                                           r"microwave only$"):
        _node(ros_context, run, task="kettle")


def test_sim_simulates_what_the_policy_reads(ros_context, mtact_run):
    """The run's env config has no object state for an image MT-ACT: the sim neither publishes nor awaits it."""
    from embodied_ros.sim_node import SimRobotNode

    params = {"robot": "kitchen", "run_dir": str(mtact_run), "real_time": False}
    node = SimRobotNode(context=ros_context, parameter_overrides=[rclpy.parameter.Parameter(k, value=v)
                                                                  for k, v in params.items()])
    try:
        assert node.awaited == ["joint_states", "scene/image_raw", "wrist/image_raw", "instruction"]
        assert "object_state" not in node.pubs and node.adapter.image_shape == (32, 32)
    finally:
        node.destroy_node()


# --- the launch file, lock-step --------------------------------------------------------------------------


def test_robot_launch_runs_mtact_on_the_kitchen(mtact_run, gl_available, ros_env, ros_context, tmp_path):
    """``robot-launch launch/robot.py robot:=kitchen run:=<run> real_time:=false``: joint targets flow, the policy
    reports the instruction it follows, and SIGINT stops every node cleanly."""
    from embodied_ros.monitor import RobotMonitor

    launch = Launch(ros_env, tmp_path, "robot:=kitchen", f"run:={mtact_run}", "real_time:=false")
    probe = RobotMonitor(ros_context, name="probe")
    probe.abort_if = launch.died
    try:
        probe.wait_for(lambda: len(probe.commands) >= 30 and probe.diagnostics, 120,
                       "30 lock-step joint targets and the policy's diagnostics")
    finally:
        probe.close()
        rc = launch.stop()
    out = launch.output()
    assert "Failed to publish log message" not in out, out[-3000:]  # nothing logged to a shut-down context
    assert rc == 0 and "Traceback" not in out, out[-3000:]
    assert "policy mtact from" in out and "temporal ensembling of 5-action chunks" in out, out[-3000:]
    assert "starting after" not in out  # the sim did not wait for an object_state subscriber that never comes
    adapter = KitchenAdapter({"name": "kitchen", "id": envs.KITCHEN, "cameras": []})
    commands = [c for _, c in probe.commands]
    assert all(c.shape == (8,) and np.all(c >= adapter.action_low) and np.all(c <= adapter.action_high)
               for c in commands)
    diagnostics = probe.diagnostics[-1]
    assert diagnostics["instruction"] in INSTRUCTIONS[diagnostics["task"]] and diagnostics["rejected_messages"] == "0"
