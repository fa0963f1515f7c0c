"""robot-launch: run a ROS 2 Python launch file's nodes without the ROS 2 ``launch`` package.

``launch``/``launch_ros`` have no PyPI wheels, so the project's launch files keep their nodes as plain data:
``ARGUMENTS = {name: (default, description)}`` and ``nodes(args) -> [launch_ros.actions.Node kwargs]``. This
launcher (stdlib + PyYAML) reads that data and starts the command lines launch_ros would build::

    <exe> [arguments] --ros-args [ros_arguments] -r __node:=<name> -r __ns:=/<ns> --params-file <yaml> [-r a:=b]

with dict parameters in a temporary YAML keyed ``/<ns>/<name>`` (``/**`` without a name), launch_ros's scheme.
Output lines get launch's ``[<exe>-<N>] `` prefix. SIGINT/SIGTERM, ``--timeout`` or a node failing stops all
nodes like launch does: SIGINT, then SIGTERM after ROBOT_LAUNCH_SIGINT_TIMEOUT seconds, then SIGKILL after
ROBOT_LAUNCH_SIGTERM_TIMEOUT seconds (5 s each by default).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

PROG = "robot-launch"
SUPPORTED_NODE_KWARGS = frozenset(
    {
        "package",
        "executable",
        "name",
        "namespace",
        "parameters",
        "remappings",
        "output",
        "arguments",
        "ros_arguments",
        "additional_env",
    }
)
GRACE_ENV = {signal.SIGINT: "ROBOT_LAUNCH_SIGINT_TIMEOUT", signal.SIGTERM: "ROBOT_LAUNCH_SIGTERM_TIMEOUT"}
DEFAULT_GRACE_S = 5.0
# Exit codes of a node that stopped because we asked it to: 0, killed by / exiting after SIGINT or SIGTERM.
CLEAN_STOP_CODES = frozenset({0, -signal.SIGINT, 128 + signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGTERM})
POLL_S = 0.05
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class LaunchError(Exception):
    """A user error: printed as one ``error: ...`` line, exit code 2, no traceback."""


# --- the launch file -------------------------------------------------------------------------------------


def load_launch_file(path: str):
    """Import the launch file by path; it must not need ROS 2 ``launch`` at import time."""
    file = Path(path)
    if not file.is_file():
        raise LaunchError(f"launch file {path!r} does not exist")
    spec = importlib.util.spec_from_file_location("_robot_launch_file", file)
    if spec is None or spec.loader is None:
        raise LaunchError(f"launch file {path!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look their module up there
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise LaunchError(f"cannot import launch file {path!r}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(getattr(module, "ARGUMENTS", None), dict) or not callable(getattr(module, "nodes", None)):
        raise LaunchError(f"launch file {path!r} defines no ARGUMENTS dict and nodes(args) function")
    return module


def declared_arguments(module) -> dict[str, tuple[str, str]]:
    """ARGUMENTS as {name: (default, description)}; a bare string value is a default without description."""
    declared = {}
    for name, value in module.ARGUMENTS.items():
        default, description = (value, "") if isinstance(value, str) else value
        declared[name] = (str(default), str(description))
    return declared


def resolve_arguments(declared: dict[str, tuple[str, str]], given: list[str]) -> dict[str, str]:
    """Defaults overridden by ``name:=value`` words; unknown names are an error, as in ``ros2 launch``."""
    values = {name: default for name, (default, _) in declared.items()}
    for word in given:
        name, sep, value = word.partition(":=")
        if not sep or not name:
            raise LaunchError(f"launch arguments look like name:=value, got {word!r}")
        if name not in declared:
            raise LaunchError(f"unknown launch argument {name!r} (known: {', '.join(declared)})")
        values[name] = value
    return values


def node_specs(module, args: dict[str, str]) -> list[dict]:
    """Call the launch file's nodes(); its ValueErrors are messages for the user."""
    try:
        specs = module.nodes(args)
    except ValueError as exc:
        raise LaunchError(str(exc)) from exc
    for spec in specs:
        unsupported = sorted(set(spec) - SUPPORTED_NODE_KWARGS)
        if unsupported:
            raise LaunchError(
                f"node {spec.get('name') or spec.get('executable')!r}: Node kwargs {unsupported} are not supported "
                f"by {PROG} (supported: {', '.join(sorted(SUPPORTED_NODE_KWARGS))})"
            )
        for key in ("package", "executable"):
            if not isinstance(spec.get(key), str) or not spec[key]:
                raise LaunchError(f"node {spec!r} needs a {key} string")
        if spec.get("output", "screen") != "screen":
            raise LaunchError(f"node {spec['executable']!r}: only output='screen' is supported by {PROG}")
    return specs


# --- command lines ---------------------------------------------------------------------------------------


def full_namespace(namespace: str | None) -> str | None:
    """launch_ros makes a relative namespace absolute; validate it here rather than in every node."""
    if namespace is None:
        return None
    ns = "/" + namespace.strip("/")
    if ns != "/" and not all(_NAME.match(token) for token in ns[1:].split("/")):
        raise LaunchError(f"invalid namespace {namespace!r}")
    return ns


def params_key(name: str | None, namespace: str | None) -> str:
    """launch_ros's key of dict parameters: the full node name, or ``/**`` when the node is unnamed."""
    if name is None:
        return "/**"
    return f"{namespace.rstrip('/') if namespace else ''}/{name}"


def _plain(value, where: str):
    """A parameter value as YAML-safe data; ROS parameters are bool/int/float/str, lists, nested dicts."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item, where) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item, f"{where}.{key}") for key, item in value.items()}
    raise LaunchError(f"parameter {where} has unsupported type {type(value).__name__}")


def parameter_files(spec: dict, key: str, tmpdir: Path, tag: str) -> list[tuple[str, str | None]]:
    """(path, yaml text) per ``parameters`` entry: dicts are written to tmpdir, strings are existing files."""
    files = []
    for i, entry in enumerate(spec.get("parameters") or [], start=1):
        if isinstance(entry, dict):
            text = yaml.safe_dump(
                {key: {"ros__parameters": _plain(entry, spec["executable"])}}, default_flow_style=False, sort_keys=False
            )
            path = tmpdir / f"{tag}_{i}.yaml"
            path.write_text(text)
            files.append((str(path), text))
        elif isinstance(entry, (str, os.PathLike)):
            if not Path(entry).is_file():
                raise LaunchError(f"node {spec['executable']!r}: parameter file {str(entry)!r} does not exist")
            files.append((str(entry), None))
        else:
            raise LaunchError(f"node {spec['executable']!r}: parameters entries are dicts or file paths")
    return files


def find_executable(package: str, executable: str) -> str | None:
    """Where launch_ros looks (``lib/<package>/<exe>`` under the ament prefixes), then sys.prefix, then PATH."""
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p] + [sys.prefix]
    for prefix in prefixes:
        candidate = Path(prefix) / "lib" / package / executable
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(executable)


def command_line(spec: dict, exe: str, namespace: str | None, param_files: list[str]) -> list[str]:
    """The argv launch_ros would run for this Node."""
    cmd = [exe, *map(str, spec.get("arguments") or []), "--ros-args", *map(str, spec.get("ros_arguments") or [])]
    if spec.get("name") is not None:
        cmd += ["-r", f"__node:={spec['name']}"]
    if namespace is not None:
        cmd += ["-r", f"__ns:={namespace}"]
    for path in param_files:
        cmd += ["--params-file", path]
    for source, target in spec.get("remappings") or []:
        cmd += ["-r", f"{source}:={target}"]
    return cmd


@dataclass
class Plan:
    """One node ready to start: its launch label, argv, environment additions and generated YAML."""

    label: str
    name: str
    argv: list[str]
    env: dict[str, str]
    yaml_files: list[tuple[str, str]]


def plan_node(index: int, spec: dict, tmpdir: Path, *, need_executable: bool) -> Plan:
    name = spec.get("name")
    if name is not None and not _NAME.match(str(name)):
        raise LaunchError(f"invalid node name {name!r}")
    namespace = full_namespace(spec.get("namespace"))
    exe = find_executable(spec["package"], spec["executable"])
    if exe is None:
        message = (
            f"executable {spec['executable']!r} of package {spec['package']!r} not found in lib/{spec['package']}/ "
            f"under AMENT_PREFIX_PATH or {sys.prefix}, nor on PATH; install the package: "
            "pip install ./ros_ws/src/embodied_ros"
        )
        if need_executable:
            raise LaunchError(message)
        print(f"warning: {message}", file=sys.stderr)
        exe = spec["executable"]
    label = f"{spec['executable']}-{index}"
    files = parameter_files(spec, params_key(name, namespace), tmpdir, label)
    env = {str(k): str(v) for k, v in (spec.get("additional_env") or {}).items()}
    argv = command_line(spec, exe, namespace, [path for path, _ in files])
    generated = [(path, text) for path, text in files if text is not None]
    return Plan(label, str(name or label), argv, env, generated)


# --- running ---------------------------------------------------------------------------------------------


class Console:
    """Line-buffered stdout shared by the reader threads and the launcher's own messages."""

    def __init__(self):
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        with self._lock:
            sys.stdout.write(line if line.endswith("\n") else line + "\n")
            sys.stdout.flush()

    def say(self, message: str) -> None:
        self.write(f"[{PROG}] {message}")


@dataclass
class NodeProcess:
    """A started node: its process, output reader and what we did to stop it."""

    plan: Plan
    popen: subprocess.Popen
    reader: threading.Thread
    signals_sent: list[int] = field(default_factory=list)
    returncode: int | None = None

    @classmethod
    def start(cls, plan: Plan, console: Console) -> NodeProcess:
        """Own session: a terminal's Ctrl-C reaches only the launcher, which then stops the nodes in order."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **plan.env}
        popen = subprocess.Popen(
            plan.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        reader = threading.Thread(target=_copy_output, args=(popen.stdout, f"[{plan.label}] ", console), daemon=True)
        reader.start()
        return cls(plan, popen, reader)

    @property
    def running(self) -> bool:
        return self.returncode is None

    def poll(self) -> bool:
        """True when the process has just exited."""
        if self.returncode is None:
            self.returncode = self.popen.poll()
            return self.returncode is not None
        return False

    def send(self, sig: int) -> None:
        """Signal the node's whole process group, so a wrapper script's children get it too."""
        self.signals_sent.append(sig)
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    @property
    def clean(self) -> bool:
        """Exited 0, or stopped by our first SIGINT with a graceful code; escalation or own failure is not."""
        if self.returncode == 0:
            return True
        return self.signals_sent == [signal.SIGINT] and self.returncode in CLEAN_STOP_CODES

    def finish(self) -> None:
        """Kill what is left of the process group (orphaned grandchildren) and drain the output."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.reader.join(timeout=2.0)
        self.popen.stdout.close()


def _copy_output(pipe, prefix: str, console: Console) -> None:
    for raw in iter(pipe.readline, b""):
        console.write(prefix + raw.decode("utf-8", errors="replace").rstrip("\r\n"))


class StopRequest:
    """Set by SIGINT/SIGTERM to the launcher; a repeated signal cuts the current grace period short."""

    def __init__(self):
        self.count = 0
        self.reason = ""

    def __call__(self, signum, _frame) -> None:
        self.count += 1
        self.reason = self.reason or f"received {signal.Signals(signum).name}"

    def install(self) -> dict:
        return {sig: signal.signal(sig, self) for sig in (signal.SIGINT, signal.SIGTERM)}


def grace_period(sig: int) -> float:
    value = os.environ.get(GRACE_ENV[sig], "")
    try:
        return float(value) if value else DEFAULT_GRACE_S
    except ValueError:
        raise LaunchError(f"{GRACE_ENV[sig]}={value!r} is not a number of seconds") from None


class Supervisor:
    """Starts the nodes, watches them, and stops them all like launch does."""

    def __init__(self, plans: list[Plan], console: Console, stop: StopRequest, timeout: float | None):
        self.plans = plans
        self.console = console
        self.stop = stop
        self.timeout = timeout
        self.grace = {sig: grace_period(sig) for sig in GRACE_ENV}
        self.procs: list[NodeProcess] = []
        self.failed = False

    def run(self) -> int:
        try:
            self._start_all()
            self._watch()
        finally:
            self._shutdown()
            for proc in self.procs:
                proc.finish()
        codes = ", ".join(f"{p.plan.name}={p.returncode}" for p in self.procs)
        self.console.say(f"all processes exited (codes: {codes})")
        failed = self.failed or not all(proc.clean for proc in self.procs)
        return 1 if failed else 0

    def _start_all(self) -> None:
        for plan in self.plans:
            if self.stop.count:
                return
            try:
                proc = NodeProcess.start(plan, self.console)
            except OSError as exc:
                self.console.say(f"cannot start {plan.label} ({shlex.join(plan.argv)}): {exc}")
                self.failed = True
                return
            self.procs.append(proc)
            self.console.say(f"process started with pid [{proc.popen.pid}]: {plan.label}")

    def _watch(self) -> None:
        """Until all nodes exited, a node failed, the timeout passed or a stop signal came."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while self.procs and not self.stop.count and not self.failed:
            self._reap()
            if not any(proc.running for proc in self.procs):
                return
            if deadline is not None and time.monotonic() >= deadline:
                self.stop.reason = f"timeout of {self.timeout:g} s reached"
                return
            time.sleep(POLL_S)

    def _reap(self) -> None:
        for proc in self.procs:
            if proc.poll():
                self.console.say(f"process has finished: {proc.plan.label}, exit code {proc.returncode}")
                if proc.returncode != 0 and not proc.signals_sent:
                    self.failed = True
                    self.stop.reason = self.stop.reason or f"{proc.plan.label} failed"

    def _shutdown(self) -> None:
        """SIGINT, then SIGTERM, then SIGKILL to whatever still runs, each after its grace period."""
        self._reap()
        if any(proc.running for proc in self.procs):
            self.console.say(f"shutting down ({self.stop.reason or 'launcher exiting'})")
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            running = [proc for proc in self.procs if proc.running]
            if not running:
                return
            if sig != signal.SIGINT:
                names = ", ".join(proc.plan.label for proc in running)
                self.console.say(f"escalating to {signal.Signals(sig).name}: {names}")
            for proc in running:
                proc.send(sig)
            self._wait(running, self.grace.get(sig))

    def _wait(self, procs: list[NodeProcess], grace: float | None) -> None:
        """Wait for procs to exit, at most grace seconds (None: no limit) or until another stop signal."""
        deadline = None if grace is None else time.monotonic() + grace
        count = self.stop.count
        while True:
            self._reap()
            if not any(proc.running for proc in procs):
                return
            if deadline is not None and (time.monotonic() >= deadline or self.stop.count > count):
                return
            time.sleep(POLL_S)


# --- command line ----------------------------------------------------------------------------------------


def parse_cli(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run the nodes of a ROS 2 Python launch file (ARGUMENTS + nodes()) without ROS 2 launch.",
    )
    parser.add_argument("launch_file", help="launch file, e.g. launch/robot.py")
    parser.add_argument("launch_arguments", nargs="*", metavar="name:=value", help="launch arguments")
    parser.add_argument("--dry-run", action="store_true", help="print the command lines and parameters; start nothing")
    parser.add_argument("--timeout", type=float, metavar="SECONDS", help="stop all nodes after this many seconds")
    parser.add_argument("--show-args", action="store_true", help="print the launch file's arguments and exit")
    return parser.parse_intermixed_args(argv)


def show_arguments(declared: dict[str, tuple[str, str]]) -> None:
    print("Arguments (pass arguments as '<name>:=<value>'):")
    for name, (default, description) in declared.items():
        print(f"\n    '{name}':\n        {description or 'no description given'}\n        (default: '{default}')")


def print_dry_run(plans: list[Plan]) -> None:
    """Command lines first (copy-pasteable), then each generated YAML after a ``--- <path>`` line."""
    for plan in plans:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in plan.env.items())
        print(f"{env} {shlex.join(plan.argv)}" if env else shlex.join(plan.argv))
    for plan in plans:
        for path, text in plan.yaml_files:
            print(f"--- {path}")
            print(text, end="")


def run(options: argparse.Namespace, tmpdir: Path) -> int:
    if options.timeout is not None and options.timeout < 0:
        raise LaunchError("--timeout must be >= 0 seconds")
    module = load_launch_file(options.launch_file)
    declared = declared_arguments(module)
    if options.show_args:
        show_arguments(declared)
        return 0
    args = resolve_arguments(declared, options.launch_arguments)
    specs = node_specs(module, args)
    plans = [plan_node(i, spec, tmpdir, need_executable=not options.dry_run) for i, spec in enumerate(specs, 1)]
    if options.dry_run:
        print_dry_run(plans)
        return 0
    stop = StopRequest()
    previous = stop.install()
    try:
        return Supervisor(plans, Console(), stop, options.timeout).run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    options = parse_cli(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    tmpdir = Path(tempfile.mkdtemp(prefix="robot_launch_"))
    try:
        return run(options, tmpdir)
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before any node started
        return 128 + signal.SIGINT
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
