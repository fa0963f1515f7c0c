"""The recorder node as a separate process: what it records, and that it never presents a half bag."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("rclpy", reason="the ROS 2 tests need the ros extra and the ROS package (README, command B)")
from embodied_ros.bag import read_bag

N = 50
TIMEOUT = 10.0


def start_recorder(bag: Path, env: dict, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "embodied_ros.recorder", "--ros-args", "-r", "__ns:=/robot",
         "-p", f"output_dir:={bag}", *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen) -> None:
    """Last-resort cleanup: never leave a recorder running after a test."""
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=TIMEOUT)


def wait_matched(publishers, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not all(pub.get_subscription_count() > 0 for pub in publishers):
        if proc.poll() is not None:
            pytest.fail(f"recorder exited early with {proc.returncode}: {proc.communicate()[1]}")
        if time.monotonic() > deadline:
            pytest.fail("the recorder's subscriptions never matched")
        time.sleep(0.02)


def partials(bag: Path) -> list[Path]:
    return sorted(bag.parent.glob(f".{bag.name}.partial-*"))


@pytest.fixture
def test_node(ros_context):
    """A publisher-side node on the test's graph (publishing needs no spinning; the executor is for later use)."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    node = Node("recorder_test", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    yield node
    executor.shutdown()
    node.destroy_node()


def test_records_published_messages_in_order(tmp_path, ros_env, test_node):
    from rclpy.duration import Duration
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray

    bag = tmp_path / "bags" / "run1"  # parent does not exist yet: the recorder creates it
    proc = start_recorder(bag, ros_env)
    try:
        # Depth >= N so a reliable publisher keeps every sample until the recorder acknowledged it.
        joints = test_node.create_publisher(JointState, "/robot/joint_states", N)
        commands = test_node.create_publisher(Float64MultiArray, "/robot/commands", N)
        wait_matched([joints, commands], proc)
        for i in range(N):
            joints.publish(JointState(name=["a", "b"], position=[float(i), -float(i)]))
            commands.publish(Float64MultiArray(data=[float(i), 2.0 * i]))
            time.sleep(0.001)
        for pub in (joints, commands):
            assert pub.wait_for_all_acked(Duration(seconds=TIMEOUT))
        time.sleep(0.3)  # acknowledged = in the recorder's queue; let its executor write them
        assert partials(bag) and not bag.exists()  # still recording: nothing presented as complete
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, err
    finally:
        stop(proc)

    assert f"recorded {2 * N} messages on 5 topics to {bag}" in err
    assert not partials(bag)
    assert (bag / "metadata.yaml").is_file()
    storage = [p for p in bag.iterdir() if p.name != "metadata.yaml"]
    assert [p.name for p in storage] == ["run1.mcap"]

    msgs = read_bag(bag)
    assert set(msgs) == {"/robot/joint_states", "/robot/odom", "/robot/commands", "/robot/goal", "/diagnostics"}
    assert [m.position.tolist() for _, m in msgs["/robot/joint_states"]] == [[float(i), -float(i)] for i in range(N)]
    assert all(m.name == ["a", "b"] for _, m in msgs["/robot/joint_states"])
    assert [m.data.tolist() for _, m in msgs["/robot/commands"]] == [[float(i), 2.0 * i] for i in range(N)]
    for topic in ("/robot/joint_states", "/robot/commands"):
        stamps = [t for t, _ in msgs[topic]]
        assert stamps == sorted(stamps) and stamps[0] > 0
    assert msgs["/robot/odom"] == [] and msgs["/diagnostics"] == []


def test_existing_output_dir_is_refused(tmp_path, ros_env):
    bag = tmp_path / "bag"
    bag.mkdir()
    (bag / "keep.txt").write_text("precious")
    proc = start_recorder(bag, ros_env)
    try:
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        stop(proc)
    assert proc.returncode == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "exists already" in lines[0] and str(bag) in lines[0], err
    assert sorted(p.name for p in bag.iterdir()) == ["keep.txt"]
    assert (bag / "keep.txt").read_text() == "precious"
    assert not partials(bag)


def test_sigkill_leaves_only_a_partial_dir(tmp_path, ros_env, test_node):
    from sensor_msgs.msg import JointState

    bag = tmp_path / "bag"
    # UDP only: a SIGKILLed Fast DDS participant would otherwise leave its shared-memory segments behind.
    proc = start_recorder(bag, {**ros_env, "FASTDDS_BUILTIN_TRANSPORTS": "UDPv4"})
    try:
        joints = test_node.create_publisher(JointState, "/robot/joint_states", N)
        wait_matched([joints], proc)
        joints.publish(JointState(name=["a"], position=[1.0]))
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == -signal.SIGKILL
    finally:
        stop(proc)
    assert not bag.exists()
    assert [p.name for p in partials(bag)] == [f".bag.partial-{proc.pid}"]
    inside = partials(bag)[0] / "bag"
    assert (inside / "bag.mcap").is_file() and not (inside / "metadata.yaml").exists()
