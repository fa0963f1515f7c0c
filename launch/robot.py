"""Run a trained policy on a robot: the MuJoCo sim robot (or a real one), the policy node and an optional recorder.

A standard ROS 2 Python launch file (``ros2 launch launch/robot.py run:=runs/...``). ROS 2 ``launch`` and
``launch_ros`` have no PyPI wheels, so the node list is plain data (ARGUMENTS and nodes()) that the project
launcher runs without them: ``robot-launch launch/robot.py run:=runs/... [--dry-run]``. Both start the same
processes with the same parameters.

``robot:=kitchen`` runs the Franka kitchen arm with an MT-ACT run (``algo=bc``); ``task`` and ``level`` choose its
simulated scene, ``chunk_schedule`` and ``execute_steps`` how the policy executes its action chunks. Without ``run``
it starts the sim alone (``cameras`` then chooses its cameras): the arm holds still until something publishes on
``commands``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

PACKAGE = "embodied_ros"
ROBOTS = ("swimmer", "uav", "kitchen")
LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")
# The policy's state topics per robot and the launch argument that remaps each for a real robot.
STATE_TOPICS = {"swimmer": {"joint_states": "state_topic"}, "uav": {"odom": "odom_topic", "imu": "imu_topic"},
                "kitchen": {"joint_states": "state_topic"}}
SCENE_ARGUMENTS = ("task", "level", "cameras")  # the kitchen sim's; see ARGUMENTS
CHUNK_ARGUMENTS = {"chunk_schedule": "", "execute_steps": "0"}  # the kitchen's MT-ACT policy's, with their defaults
CHUNK_SCHEDULES = ("ensemble", "execute")
KITCHEN_CAMERAS = "scene,wrist"  # the kitchen env's default cameras
# What record:=true records per robot (topic, type); the recorder's own defaults are the swimmer's.
RECORDED = {
    "uav": [
        ("odom", "nav_msgs/msg/Odometry"),
        ("imu", "sensor_msgs/msg/Imu"),
        ("goal", "nav_msgs/msg/Path"),
        ("commands", "std_msgs/msg/Float64MultiArray"),
        ("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray"),
    ],
    "kitchen": [  # and <camera>/image_raw (sensor_msgs/msg/Image) per camera
        ("joint_states", "sensor_msgs/msg/JointState"),
        ("object_state", "std_msgs/msg/Float64MultiArray"),
        ("instruction", "std_msgs/msg/String"),
        ("commands", "std_msgs/msg/Float64MultiArray"),
        ("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray"),
    ],
}

# name: (default, description); every value is a string, as on the launch command line.
ARGUMENTS = {
    "robot": ("swimmer", f"robot to run, one of: {', '.join(ROBOTS)}"),
    "run": ("", "run directory with the trained policy (required, except for the kitchen: empty runs its sim alone)"),
    "rate": ("0", "control rate in Hz; 0 = the robot's native control rate"),
    "use_sim": ("true", "true: start the MuJoCo sim robot node; false: a real robot provides the topics"),
    "real_time": ("true", "false: lock-step sim as fast as the policy answers, publishing /clock; nodes use sim time"),
    "record": ("false", "true: record the robot's topics to a bag"),
    "bag": ("", "bag directory; empty = bags/<robot>_<YYYYmmdd_HHMMSS> under the current directory"),
    "namespace": ("robot", "ROS namespace of all nodes"),
    "seed": ("0", "seed of the sim robot (initial state, noise)"),
    "enabled": ("true", "true: policy output is enabled at start; false: it starts disabled"),
    "log_level": ("info", f"log level of all nodes, one of: {', '.join(LOG_LEVELS)}"),
    "realtime_priority": ("0", "SCHED_FIFO priority (1-99) for the sim and policy nodes; 0 = normal scheduling"),
    "state_topic": ("joint_states", "swimmer, kitchen: topic the policy reads joint states from (e.g. /joint_states)"),
    "odom_topic": ("odom", "uav: topic of the vehicle's nav_msgs/Odometry (twist in the body frame)"),
    "imu_topic": ("imu", "uav: topic of the vehicle's sensor_msgs/Imu (gyro in the body frame)"),
    "command_topic": ("commands", "topic the policy commands (e.g. /forward_effort_controller/commands)"),
    "command_scale": ("1.0", "factor on the commands (swimmer: env units, 5e-4 for N·m; uav: newtons per rotor)"),
    "task": ("", "kitchen sim: task or comma-separated sequence (microwave, kettle, ...); empty = the run's, "
                 "else microwave"),
    "level": ("", "kitchen sim: generalisation level L0-L3; empty = the run's, else L0"),
    "cameras": ("", "kitchen sim without run: comma-separated cameras (scene, wrist, left_cap, right_cap), 'none' for "
                    "state-only; empty = scene,wrist"),
    "chunk_schedule": ("", "kitchen MT-ACT: ensemble (query every step, temporal ensembling) or execute "
                           "(execute_steps actions per query); empty = as trained"),
    "execute_steps": ("0", "kitchen MT-ACT with chunk_schedule:=execute: actions per query; 0 = as trained"),
}

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def _bool(args: dict[str, str], name: str) -> bool:
    """Launch conditions accept true/false (and 1/0); anything else is a typo worth reporting."""
    value = args[name].strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"launch argument {name}:={args[name]!r} must be true or false")


def _rate(args: dict[str, str]) -> float:
    """A ROS double parameter: a finite, non-negative number of Hz."""
    try:
        rate = float(args["rate"])
    except ValueError:
        raise ValueError(f"launch argument rate:={args['rate']!r} is not a number (Hz; 0 = native rate)") from None
    if not math.isfinite(rate) or rate < 0:
        raise ValueError(f"launch argument rate:={args['rate']!r} must be a finite number >= 0 (Hz)")
    return rate


def _float(args: dict[str, str], name: str) -> float:
    try:
        value = float(args[name])
    except ValueError:
        raise ValueError(f"launch argument {name}:={args[name]!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"launch argument {name}:={args[name]!r} must be finite")
    return value


def _int(args: dict[str, str], name: str) -> int:
    try:
        return int(args[name])
    except ValueError:
        raise ValueError(f"launch argument {name}:={args[name]!r} is not an integer") from None


def _choice(args: dict[str, str], name: str, choices: tuple[str, ...]) -> str:
    value = args[name].strip().lower() if name == "log_level" else args[name]
    if value not in choices:
        raise ValueError(f"launch argument {name}:={args[name]!r} is not one of: {', '.join(choices)}")
    return value


def _run_dir(args: dict[str, str], robot: str) -> str:
    """Absolute, so that the nodes do not depend on the directory they are started from ("" for a kitchen sim alone)."""
    if not args["run"].strip():
        if robot == "kitchen":
            return ""
        raise ValueError("launch argument run:=<run directory> is required (the trained policy to run)")
    return str(Path(args["run"]).expanduser().absolute())


def _bag_dir(args: dict[str, str], robot: str) -> str:
    bag = args["bag"].strip() or f"bags/{robot}_{time.strftime('%Y%m%d_%H%M%S')}"
    return str(Path(bag).expanduser().absolute())


def nodes(args: dict[str, str]) -> list[dict]:
    """The processes to start, as ``launch_ros.actions.Node`` kwargs with typed parameters.

    ``args`` maps every name in ARGUMENTS to its string value. Raises ValueError (one line) on a bad value.
    """
    robot = _choice(args, "robot", ROBOTS)
    run_dir = _run_dir(args, robot)
    rate = _rate(args)
    use_sim = _bool(args, "use_sim")
    real_time = _bool(args, "real_time")
    record = _bool(args, "record")
    enabled = _bool(args, "enabled")
    seed = _int(args, "seed")
    log_level = _choice(args, "log_level", LOG_LEVELS)
    priority = _int(args, "realtime_priority")
    if not 0 <= priority <= 99:
        raise ValueError(f"launch argument realtime_priority:={priority} must be 0 (off) or 1-99")
    if not use_sim and not real_time:
        raise ValueError("launch argument real_time:=false needs use_sim:=true (a real robot runs in real time)")
    sim_time = use_sim and not real_time  # lock-step sim publishes /clock
    scene = {name: args[name].strip() for name in SCENE_ARGUMENTS if args[name].strip()}
    if scene and robot != "kitchen":
        raise ValueError(f"launch arguments {', '.join(scene)} choose the kitchen's scene; robot:={robot} takes none")
    if scene and not use_sim:
        raise ValueError(f"launch arguments {', '.join(scene)} choose the simulated kitchen; they need use_sim:=true")
    if "cameras" in scene and run_dir:
        raise ValueError(
            "launch argument cameras needs run empty: the run's policy sees the cameras it was trained with")
    if not run_dir and not use_sim:
        raise ValueError("robot:=kitchen without run:= starts only the sim robot, which needs use_sim:=true")
    chunking = {name: args[name].strip() for name, default in CHUNK_ARGUMENTS.items() if args[name].strip() != default}
    if chunking and (robot != "kitchen" or not run_dir):
        raise ValueError(f"launch arguments {', '.join(chunking)} choose how the kitchen's MT-ACT policy executes its "
                         f"chunks; they need robot:=kitchen and run:=<run>")
    if chunking.get("chunk_schedule", "ensemble") not in CHUNK_SCHEDULES:
        raise ValueError(f"launch argument chunk_schedule:={args['chunk_schedule']!r} is not one of: "
                         f"{', '.join(CHUNK_SCHEDULES)}")

    def node(executable: str, name: str, parameters: dict) -> dict:
        return {
            "package": PACKAGE,
            "executable": executable,
            "name": name,
            "namespace": args["namespace"],
            "parameters": [{"robot": robot, **parameters, "use_sim_time": sim_time}],
            "output": "screen",
            "ros_arguments": ["--log-level", log_level],
        }

    specs = []
    if record:  # first, so that it is subscribed by the time the robot starts publishing
        recorded = {"output_dir": _bag_dir(args, robot)}
        if robot in RECORDED:
            topics = list(RECORDED[robot])
            if robot == "kitchen":
                cameras = scene.get("cameras", KITCHEN_CAMERAS)
                cameras = [] if cameras.lower() == "none" else [c.strip() for c in cameras.split(",")]
                topics += [(f"{cam}/image_raw", "sensor_msgs/msg/Image") for cam in cameras]
            recorded["topics"] = [topic for topic, _ in topics]
            recorded["types"] = [type_name for _, type_name in topics]
        specs.append(node("recorder", "recorder", recorded))
    if use_sim:
        specs.append(node("sim_robot", "sim", {"run_dir": run_dir, "rate": rate, "real_time": real_time, "seed": seed,
                                                "realtime_priority": priority, **scene,
                                                # policy (+ recorder)
                                                "await_subscribers": int(bool(run_dir)) + int(record)}))
    own = set(STATE_TOPICS[robot].values())
    for other, topics in STATE_TOPICS.items():
        for name, arg in topics.items():
            if other != robot and arg not in own and args[arg] != name:
                raise ValueError(f"launch argument {arg} remaps the {other}'s {name}; robot:={robot} reads "
                                 f"{', '.join(STATE_TOPICS[robot].values())}")
    remaps = [(name, args[arg]) for name, arg in [*STATE_TOPICS[robot].items(), ("commands", "command_topic")]
              if args[arg] != name]
    if remaps and use_sim:
        raise ValueError("state_topic/command_topic remap a real robot's topics; they need use_sim:=false")
    if not run_dir:  # the kitchen sim alone
        return specs
    policy = node("policy_node", "policy", {"run_dir": run_dir, "rate": rate, "enabled": enabled,
                                              "command_scale": _float(args, "command_scale"),
                                              "realtime_priority": priority})
    if robot == "kitchen":
        policy["parameters"][0].update(chunk_schedule=args["chunk_schedule"].strip(),
                                       execute_steps=_int(args, "execute_steps"))
    if remaps:
        policy["remappings"] = remaps
    specs.append(policy)
    return specs


def _ros2_launch_api():
    """Import launch / launch_ros, or say why not.

    Without a ROS 2 install, ``import launch`` may still succeed: this very folder (``launch/``, no
    ``__init__.py``) is then imported as an empty namespace package whenever the repo root is on sys.path.
    """
    hint = "ROS 2 `launch`/`launch_ros` are not installed; run this file with `robot-launch launch/robot.py ...`"
    try:
        import launch
    except ImportError as exc:
        raise ImportError(f"{hint} ({exc})") from exc
    if getattr(launch, "__file__", None) is None or not hasattr(launch, "LaunchDescription"):
        raise ImportError(f"{hint} (`import launch` found only the namespace package {list(launch.__path__)})")
    try:
        import launch.actions
        import launch.substitutions
        import launch_ros.actions
    except ImportError as exc:
        missing = (getattr(exc, "name", None) or "").split(".")[0]
        if missing and missing not in ("launch", "launch_ros"):  # they are there; one of their dependencies is not
            raise ImportError(f"ROS 2 `launch`/`launch_ros` are installed but their dependency `{missing}` is not "
                              f"(install its ros-<distro>-{missing.replace('_', '-')} package); or run this file "
                              "with `robot-launch launch/robot.py ...`") from exc
        raise ImportError(f"{hint} ({exc})") from exc
    return launch, launch_ros


def generate_launch_description():
    """Entry point of ``ros2 launch``: declare ARGUMENTS, then build the nodes once they are known."""
    launch, launch_ros = _ros2_launch_api()

    def _spawn(context):
        args = {name: launch.substitutions.LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
        return [launch_ros.actions.Node(**spec) for spec in nodes(args)]

    declared = [
        launch.actions.DeclareLaunchArgument(name, default_value=default, description=description)
        for name, (default, description) in ARGUMENTS.items()
    ]
    return launch.LaunchDescription([*declared, launch.actions.OpaqueFunction(function=_spawn)])
