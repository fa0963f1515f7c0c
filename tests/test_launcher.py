"""robot-launch and launch/robot.py without ROS: fake nodes in a fake ament prefix, real signals and processes.

The fake nodes are small Python scripts whose behaviour (wait for SIGINT, ignore it, fail, finish) is their first
argument, so one launch file covers every shutdown path of the launcher.
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest
import yaml

pytest.importorskip("rclpy", reason="the ROS 2 tests need the ros extra and the ROS package (README, command B)")

REPO = Path(__file__).resolve().parents[1]
ROS_PACKAGE_SRC = REPO / "ros_ws" / "src" / "embodied_ros"
ROBOT_LAUNCH = REPO / "launch" / "robot.py"

FAKE_NODE = """#!{python}
import json, os, signal, sys, time
mode = sys.argv[1]
params = sys.argv[sys.argv.index("--params-file") + 1] if "--params-file" in sys.argv else None
print("argv " + json.dumps(sys.argv[1:]), flush=True)
print("params-file-exists " + str(params is not None and os.path.isfile(params)), flush=True)
if mode in ("ignore", "stubborn"):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready " + str(os.getpid()), flush=True)
if mode == "finish":
    sys.exit(0)
try:
    deadline = time.monotonic() + (0.5 if mode == "fail" else 60)
    while time.monotonic() < deadline:
        time.sleep(0.02)
except KeyboardInterrupt:
    print("got SIGINT", flush=True)
    sys.exit(0)
sys.exit(1)
"""

FAKE_LAUNCH = """
ARGUMENTS = {
    "talker": ("wait", "behaviour of the talker: wait, ignore, stubborn, fail, finish"),
    "listener": ("wait", "behaviour of the listener"),
    "extra": ("", "respawn: add a Node kwarg robot-launch does not support"),
}


def nodes(args):
    if args["talker"] == "bad":
        raise ValueError("launch argument talker:='bad' is not a behaviour")
    talker = dict(package="fakepkg", executable="talker", name="talker", namespace="ns",
                  parameters=[{"gain": 1.5, "enabled": True, "topics": ["a", "b"]}], output="screen",
                  arguments=[args["talker"]], remappings=[("chatter", "/ns/chat")])
    listener = dict(package="fakepkg", executable="listener", name="listener", namespace="ns",
                    arguments=[args["listener"]], additional_env={"FAKE_ENV": "1"})
    if args["extra"] == "respawn":
        listener["respawn"] = True
    if args["extra"] == "nopkg":
        listener["package"] = "nopkg"
    return [talker, listener]
"""


def launcher_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROS_PACKAGE_SRC), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


@pytest.fixture
def fake_prefix(tmp_path, monkeypatch) -> Path:
    """An ament prefix with lib/fakepkg/{talker,listener} and lib/embodied_ros/<nodes>, first on AMENT_PREFIX_PATH."""
    prefix = tmp_path / "prefix"
    for package, executables in {
        "fakepkg": ("talker", "listener"),
        "embodied_ros": ("sim_robot", "policy_node", "recorder"),
    }.items():
        lib = prefix / "lib" / package
        lib.mkdir(parents=True)
        for name in executables:
            exe = lib / name
            exe.write_text(FAKE_NODE.format(python=sys.executable))
            exe.chmod(0o755)
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    return prefix


@pytest.fixture
def fake_launch(tmp_path) -> Path:
    path = tmp_path / "fake_launch.py"
    path.write_text(FAKE_LAUNCH)
    return path


class Launched:
    """The launcher in its own session, its stdout collected line by line in the background."""

    def __init__(self, *args: str, **env: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "embodied_ros.launcher", *map(str, args)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=launcher_env(**env),
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))

    def wait_for(self, predicate, timeout: float = 10.0) -> list[str]:
        """Lines read so far, once one of them satisfies predicate."""
        deadline = time.monotonic() + timeout
        while not any(predicate(line) for line in self.lines):
            try:
                self.lines.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"no matching line within {timeout} s; got {self.lines}") from None
        return self.lines

    def ready_pids(self, count: int = 2) -> list[int]:
        self.wait_for(lambda _: sum(" ready " in line for line in self.lines) >= count)
        return [int(line.rsplit(" ", 1)[1]) for line in self.lines if " ready " in line]

    def finish(self, timeout: float = 20.0) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise
        self._reader.join(timeout=5)
        while not self._queue.empty():
            self.lines.append(self._queue.get())
        self.stderr = self.proc.stderr.read()
        self.proc.stderr.close()
        self.proc.stdout.close()
        return rc


def run_launcher(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "embodied_ros.launcher", *map(str, args)],
        check=False,
        capture_output=True,
        text=True,
        env=launcher_env(**env),
        timeout=30,
    )


def assert_gone(pids: list[int]) -> None:
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """One ``error:`` line on stderr, exit code 2, no traceback."""
    assert result.returncode == 2, result
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def dry_run_yaml(stdout: str) -> dict[str, dict]:
    """The parameter YAMLs printed after ``--- <path>`` lines, merged into one dict."""
    merged: dict[str, dict] = {}
    for block in stdout.split("\n--- ")[1:]:
        merged.update(yaml.safe_load(block.split("\n", 1)[1]))
    return merged


def load_robot_launch():
    spec = importlib.util.spec_from_file_location("_robot_launch_under_test", ROBOT_LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def robot_args(**overrides: str) -> dict[str, str]:
    module = load_robot_launch()
    return {name: default for name, (default, _) in module.ARGUMENTS.items()} | overrides


# --- arguments and errors ---------------------------------------------------------------------------------


def test_unknown_argument_is_one_line_error(fake_prefix, fake_launch):
    result = run_launcher(fake_launch, "talker:=wait", "nonsense:=1")
    assert_user_error(result, "unknown launch argument 'nonsense'", "talker", "listener")


def test_malformed_argument_and_missing_file(fake_prefix, fake_launch, tmp_path):
    assert_user_error(run_launcher(fake_launch, "talker=wait"), "name:=value")
    assert_user_error(run_launcher(tmp_path / "missing.py"), "does not exist")


def test_value_error_from_nodes_is_user_error(fake_prefix, fake_launch):
    assert_user_error(run_launcher(fake_launch, "talker:=bad"), "talker:='bad' is not a behaviour")


def test_unsupported_node_kwarg_is_rejected(fake_prefix, fake_launch):
    assert_user_error(run_launcher(fake_launch, "extra:=respawn", "--dry-run"), "respawn", "not supported")


def test_missing_executable_names_package_and_install(fake_prefix, fake_launch, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    result = run_launcher(fake_launch, "extra:=nopkg")
    assert_user_error(result, "'listener'", "'nopkg'", "pip install ./ros_ws/src/embodied_ros")


def test_show_args(fake_prefix, fake_launch):
    result = run_launcher(fake_launch, "--show-args")
    assert result.returncode == 0
    assert "'talker':" in result.stdout and "behaviour of the talker" in result.stdout
    assert "(default: 'wait')" in result.stdout


def test_dry_run_of_fake_launch_builds_launch_ros_command_lines(fake_prefix, fake_launch):
    result = run_launcher(fake_launch, "--dry-run", "talker:=ignore")
    assert result.returncode == 0, result.stderr
    talker, listener = result.stdout.splitlines()[:2]
    exe = fake_prefix / "lib" / "fakepkg" / "talker"
    assert talker.startswith(f"{exe} ignore --ros-args -r __node:=talker -r __ns:=/ns --params-file ")
    assert talker.endswith(" -r chatter:=/ns/chat")
    assert listener.startswith("FAKE_ENV=1 ") and listener.endswith("-r __node:=listener -r __ns:=/ns")
    params = dry_run_yaml(result.stdout)
    assert params == {"/ns/talker": {"ros__parameters": {"gain": 1.5, "enabled": True, "topics": ["a", "b"]}}}


# --- launch/robot.py --------------------------------------------------------------------------------------


def test_dry_run_of_robot_launch(fake_prefix, tmp_path):
    result = run_launcher(ROBOT_LAUNCH, "robot:=swimmer", "run:=/some/dir", "rate:=100", "record:=true", "--dry-run")
    assert result.returncode == 0, result.stderr
    commands = result.stdout.split("\n--- ")[0].splitlines()
    assert [Path(cmd.split()[0]).name for cmd in commands] == ["recorder", "sim_robot", "policy_node"]
    assert "--ros-args --log-level info -r __node:=sim -r __ns:=/robot --params-file " in commands[1]
    assert "-r __node:=policy -r __ns:=/robot --params-file " in commands[2]
    params = dry_run_yaml(result.stdout)
    sim = params["/robot/sim"]["ros__parameters"]
    assert sim["rate"] == 100.0 and isinstance(sim["rate"], float)
    assert sim["real_time"] is True and sim["use_sim_time"] is False and sim["seed"] == 0
    assert sim["run_dir"] == "/some/dir" and sim["robot"] == "swimmer"
    assert params["/robot/policy"]["ros__parameters"]["enabled"] is True
    bag = Path(params["/robot/recorder"]["ros__parameters"]["output_dir"])
    assert bag.parent == tmp_path / "bags" and bag.name.startswith("swimmer_")


def test_robot_launch_requires_run(fake_prefix):
    assert_user_error(run_launcher(ROBOT_LAUNCH, "--dry-run"), "run:=<run directory> is required")


@pytest.mark.parametrize(
    ("argument", "fragment"),
    [("rate:=fast", "rate:='fast' is not a number"), ("robot:=ant", "robot:='ant'"), ("use_sim:=maybe", "use_sim")],
)
def test_robot_launch_bad_values(fake_prefix, argument, fragment):
    assert_user_error(run_launcher(ROBOT_LAUNCH, "run:=/some/dir", argument, "--dry-run"), fragment)


def test_robot_nodes_real_robot_has_no_sim():
    specs = load_robot_launch().nodes(robot_args(run="/r", use_sim="false"))
    assert [spec["name"] for spec in specs] == ["policy"]
    assert specs[0]["parameters"][0]["use_sim_time"] is False


def test_robot_nodes_lock_step_uses_sim_time_everywhere():
    specs = load_robot_launch().nodes(robot_args(run="/r", real_time="false", record="true", bag="b", seed="3"))
    assert [spec["name"] for spec in specs] == ["recorder", "sim", "policy"]
    assert all(spec["parameters"][0]["use_sim_time"] is True for spec in specs)
    assert specs[1]["parameters"][0]["real_time"] is False and specs[1]["parameters"][0]["seed"] == 3
    assert all(spec["ros_arguments"] == ["--log-level", "info"] for spec in specs)


def test_generate_launch_description_without_ros2_launch_says_robot_launch():
    """The repo's launch/ folder makes ``import launch`` find a namespace package: that must not pass for ROS 2."""
    spec = importlib.util.find_spec("launch")
    if spec is not None and spec.origin not in (None, "namespace"):
        pytest.skip("a real ROS 2 launch package is installed")
    module = load_robot_launch()
    before = set(sys.modules)
    sys.path.insert(0, str(REPO))
    try:
        with pytest.raises(ImportError, match="robot-launch launch/robot.py"):
            module.generate_launch_description()
    finally:
        sys.path.remove(str(REPO))
        for name in set(sys.modules) - before:
            if name == "launch" or name.startswith(("launch.", "launch_ros")):
                del sys.modules[name]


def test_generate_launch_description_with_launch_api(monkeypatch):
    """Stand-ins record how the ROS 2 launch API is called: declared arguments, then Nodes from nodes()."""

    def recorder(*args, **kwargs):
        return types.SimpleNamespace(args=args, kwargs=kwargs)

    class LaunchConfiguration:
        def __init__(self, name):
            self.name = name

        def perform(self, context):
            return context[self.name]

    launch = types.ModuleType("launch")
    launch.__file__ = "/stand-in/launch/__init__.py"
    launch.LaunchDescription = recorder
    launch.actions = types.SimpleNamespace(DeclareLaunchArgument=recorder, OpaqueFunction=recorder)
    launch.substitutions = types.SimpleNamespace(LaunchConfiguration=LaunchConfiguration)
    launch_ros = types.ModuleType("launch_ros")
    launch_ros.actions = types.SimpleNamespace(Node=recorder)
    for name, module in {
        "launch": launch,
        "launch.actions": launch.actions,
        "launch.substitutions": launch.substitutions,
        "launch_ros": launch_ros,
        "launch_ros.actions": launch_ros.actions,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)

    module = load_robot_launch()
    (*declared, opaque) = module.generate_launch_description().args[0]
    assert [(d.args[0], d.kwargs["default_value"]) for d in declared] == [
        (name, default) for name, (default, _) in module.ARGUMENTS.items()
    ]
    context = robot_args(run="/r", use_sim="false")
    spawned = opaque.kwargs["function"](context)
    assert [node.kwargs for node in spawned] == module.nodes(context)


# --- running and stopping ---------------------------------------------------------------------------------


def test_sigint_stops_nodes_cleanly(fake_prefix, fake_launch, tmp_path):
    launched = Launched(fake_launch)
    pids = launched.ready_pids()
    launched.proc.send_signal(signal.SIGINT)
    assert launched.finish() == 0, launched.stderr
    assert_gone(pids)
    assert "[talker-1] got SIGINT" in launched.lines and "[listener-2] got SIGINT" in launched.lines
    assert launched.lines[-1] == "[robot-launch] all processes exited (codes: talker=0, listener=0)"
    argv = json.loads(next(line for line in launched.lines if line.startswith("[talker-1] argv "))[16:])
    assert argv[:7] == ["wait", "--ros-args", "-r", "__node:=talker", "-r", "__ns:=/ns", "--params-file"]
    assert "[talker-1] params-file-exists True" in launched.lines
    assert not list(tmp_path.glob("robot_launch_*")), "temporary parameter files were left behind"


def test_node_ignoring_sigint_is_escalated(fake_prefix, fake_launch):
    launched = Launched(fake_launch, "talker:=ignore", ROBOT_LAUNCH_SIGINT_TIMEOUT="0.5")
    pids = launched.ready_pids()
    start = time.monotonic()
    launched.proc.send_signal(signal.SIGTERM)
    assert launched.finish() == 1
    assert time.monotonic() - start < 4
    assert_gone(pids)
    assert any("escalating to SIGTERM: talker-1" in line for line in launched.lines)
    assert launched.lines[-1].endswith(f"(codes: talker={-signal.SIGTERM}, listener=0)")


def test_node_ignoring_sigint_and_sigterm_is_killed(fake_prefix, fake_launch):
    timeouts = {"ROBOT_LAUNCH_SIGINT_TIMEOUT": "0.3", "ROBOT_LAUNCH_SIGTERM_TIMEOUT": "0.3"}
    launched = Launched(fake_launch, "talker:=stubborn", "--timeout", "0.5", **timeouts)
    pids = launched.ready_pids()
    assert launched.finish() == 1
    assert_gone(pids)
    assert launched.lines[-1].endswith(f"(codes: talker={-signal.SIGKILL}, listener=0)")


def test_failing_node_stops_the_others(fake_prefix, fake_launch):
    launched = Launched(fake_launch, "talker:=fail")
    pids = launched.ready_pids()
    assert launched.finish() == 1
    assert_gone(pids)
    assert "[listener-2] got SIGINT" in launched.lines
    assert launched.lines[-1].endswith("(codes: talker=1, listener=0)")


def test_finished_node_leaves_others_running_until_timeout(fake_prefix, fake_launch):
    launched = Launched(fake_launch, "talker:=finish", "--timeout", "1")
    pids = launched.ready_pids()
    launched.wait_for(lambda line: "process has finished: talker-1, exit code 0" in line)
    assert launched.proc.poll() is None
    assert launched.finish() == 0
    assert_gone(pids)
    assert any("timeout of 1 s reached" in line for line in launched.lines)
    assert launched.lines[-1].endswith("(codes: talker=0, listener=0)")


def test_robot_nodes_remap_a_real_robots_topics():
    """A real robot's topics (e.g. ros2_control's) are remapped onto the policy's, with unit scaling."""
    specs = load_robot_launch().nodes(robot_args(
        run="/r", use_sim="false", state_topic="/joint_states",
        command_topic="/forward_effort_controller/commands", command_scale="5e-4"))
    (policy,) = specs
    assert policy["remappings"] == [("joint_states", "/joint_states"),
                                    ("commands", "/forward_effort_controller/commands")]
    assert policy["parameters"][0]["command_scale"] == 5e-4


def test_robot_nodes_remaps_need_a_real_robot():
    with pytest.raises(ValueError, match="use_sim:=false"):
        load_robot_launch().nodes(robot_args(run="/r", command_topic="/x"))


def test_a_missing_launch_ros_dependency_is_named(monkeypatch):
    """launch and launch_ros installed, one of their dependencies not: the error names it, not 'not installed'."""
    import builtins

    launch = types.ModuleType("launch")
    launch.__file__ = "/stand-in/launch/__init__.py"
    launch.LaunchDescription = object
    launch.actions = types.SimpleNamespace()
    launch.substitutions = types.SimpleNamespace()
    for name, module in {"launch": launch, "launch.actions": launch.actions,
                         "launch.substitutions": launch.substitutions}.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "launch_ros", raising=False)
    monkeypatch.delitem(sys.modules, "launch_ros.actions", raising=False)
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("launch_ros"):
            raise ModuleNotFoundError("No module named 'composition_interfaces'", name="composition_interfaces")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    module = load_robot_launch()
    with pytest.raises(ImportError, match=r"installed but their dependency `composition_interfaces` is not"):
        module.generate_launch_description()
