"""Sim robot node: the project's MuJoCo env as a stand-in robot on the real robot's topics.

Each tick it applies the latest command (held like ros2_control's forward command controller
holds it), advances the physics by one control period and publishes the state messages of the
robot's adapter. ``real_time:=true`` paces ticks by the wall clock; ``real_time:=false`` runs
lock-step, as fast as the policy answers, and publishes ``/clock`` so nodes with
``use_sim_time`` follow simulated time. ``~/reset`` (std_srvs/Trigger) starts a new episode.
A robot that cannot wait passively (the UAV, in the air at its initial state) is held there until
the first command of the episode arrives, as a real vehicle waits on the pad until armed; in
lock-step the held state keeps its stamp, so the policy answers it once; the kitchen arm likewise
stays still until the policy speaks. An episode that ends (the UAV crashed or left the flight
volume, the kitchen's tasks are done) is logged and the physics runs on; ``~/reset`` starts the
next. Latched topics (the kitchen's ``instruction``) go out at each episode start and whenever
they change. ``task``, ``level`` and ``cameras`` choose the kitchen's scene.

The physics loop runs on the main thread with its own deadline timing and serves ROS callbacks
(commands, reset) while it waits for the next tick. The node measures what a robot would feel: for every state it
publishes, the delay until the first command after it arrives, and the ticks that came without a
fresh command (missed ticks). ``stats_file`` receives them as JSON at shutdown.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile
from rosgraph_msgs.msg import Clock
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger

import envs
from embodied_ros.adapters import adapter_class, make_adapter
from embodied_ros.params import declare_parameters
from embodied_ros.process import StartupError, run_node
from envs.physics import SimulationDiverged
from policies.atomic import atomic_write
from policies.protocol import PolicyError
from policies.run_dir import RunDir

DEFAULT_ENVS = {
    "swimmer": {"name": "swimmer", "id": envs.SWIMMER, "task": "swim", "n_links": 6},
    "uav": {"name": "uav_hover", "id": envs.UAV, "task": "hover", "vehicle": "cf2"},
    # configs/env/kitchen.yaml's scene
    "kitchen": {"name": "kitchen", "id": envs.KITCHEN, "task": "microwave", "paraphrase": None, "level": "L0",
                "cameras": ["scene", "wrist"], "image_size": 96},
}
SCENE_PARAMETERS = ("task", "level", "cameras")  # the kitchen's; empty = the run's (or the default) env


def env_config_for(robot: str, run_dir: str) -> dict:
    """The env the run's policy was trained on, so the sim matches it; the robot's default without a run."""
    if run_dir:
        try:
            return RunDir.env_config_of(run_dir)
        except PolicyError as e:
            raise StartupError(str(e)) from None
    if robot not in DEFAULT_ENVS:
        raise StartupError(f"unknown robot {robot!r} (known: {', '.join(DEFAULT_ENVS)})")
    return dict(DEFAULT_ENVS[robot])


def scene_overrides(robot: str, params: dict) -> dict:
    """The env config keys set by the kitchen's ``task``, ``level`` and ``cameras`` parameters.

    ``task`` may name a sequence (``kettle,light_switch``); ``cameras:=none`` is state-only. A run's
    policy sees the cameras it was trained with, so ``cameras`` needs the default env.
    """
    given = {name: params[name].strip() for name in SCENE_PARAMETERS if params[name].strip()}
    if given and robot != "kitchen":
        raise StartupError(f"parameters {', '.join(given)} choose the kitchen's scene; robot {robot} takes none")
    if "cameras" in given and params["run_dir"]:
        raise StartupError(
            "parameter cameras needs run_dir empty: the run's policy sees the cameras it was trained with")
    out = {}
    if "task" in given:
        tasks = [t.strip() for t in given["task"].split(",")]
        out["task"] = tasks[0] if len(tasks) == 1 else tasks
    if "level" in given:
        out["level"] = given["level"]
    if "cameras" in given:
        out["cameras"] = [] if given["cameras"].lower() == "none" else [c.strip() for c in given["cameras"].split(",")]
    return out


class SimRobotNode(Node):
    def __init__(self, **kwargs):
        super().__init__("sim", **kwargs)
        p = self._declare_parameters()
        env_cfg = {**env_config_for(p["robot"], p["run_dir"]), **scene_overrides(p["robot"], p)}
        try:
            if p["rate"] > 0:
                env_cfg = adapter_class(p["robot"]).with_rate(env_cfg, p["rate"])
            self.adapter = make_adapter(p["robot"], env_cfg)
            self.env = envs.make_from_config(self.adapter.sim_env_config(env_cfg)).unwrapped
        except (ValueError, TypeError, gym.error.Error) as e:
            raise StartupError(f"cannot build the {p['robot']} sim: {e}") from None
        # Whom to wait for (await_subscribers): the env config says which state topics exist.
        self.awaited = [t.name for t in self.adapter.topics]
        self.dt = float(self.env.dt)
        self.real_time = p["real_time"]
        self.lockstep_timeout = p["lockstep_timeout"]
        self.seed = p["seed"]
        self.episode_steps = p["episode_steps"]
        self.stats_file = p["stats_file"]
        self.warmup_ticks = p["warmup_ticks"]
        self.stop_after_ticks = p["stop_after_ticks"]
        self.counted = 0  # ticks counted in the statistics
        self.frame_prefix = p["frame_prefix"]
        self.await_subscribers = p["await_subscribers"]
        self.await_timeout = p["await_timeout"]

        # Callbacks run on the loop's own thread (see _serve_until): no locking needed.
        self.command = self.adapter.safe_command(self.env)
        self.holding = False  # the state is held until the episode's first command
        self.first_command_after_state: float | None = None  # set: the last state has been answered
        self.commands_received = 0
        self.rejected_commands = 0
        self._last_reject_log = 0.0
        self.reset_requested = False

        self.ticks = 0
        self.missed = 0
        self.overruns = 0
        self.resets = 0
        self.terminations = 0  # episodes that ended (crash, out of bounds, course done)
        self.episode_end = ""  # why the current episode ended, if it did
        self.latencies: list[float] = []  # last state message handed to DDS -> first command after it
        self.sample_latencies: list[float] = []  # physics sample (before encoding) -> first command
        self.state_sampled_at: float | None = None
        self.state_published_at: float | None = None

        qos = QoSProfile(depth=100)  # deep enough that a recorder stalling briefly loses nothing
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.pubs = {t.name: self.create_publisher(t.type, t.name, latched if t.latched else qos)
                     for t in self.adapter.published_topics}
        self.latched = {t.name for t in self.adapter.published_topics if t.latched}
        self.latched_sent: dict[str, object] = {}  # what each latched topic last said this episode
        self.clock_pub = None if self.real_time else self.create_publisher(Clock, "/clock", qos)
        self.create_subscription(Float64MultiArray, "commands", self._on_command, QoSProfile(depth=1))
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.get_logger().info(
            f"{p['robot']} sim ({env_cfg['id']}, {json.dumps({k: v for k, v in env_cfg.items() if k not in ('name', 'id')})}) "
            f"at {1.0 / self.dt:.1f} Hz, {'real time' if self.real_time else 'lock-step with /clock'}"
        )

    def _declare_parameters(self) -> dict:
        defaults = {
            "robot": ("swimmer", "which robot to simulate"),
            "run_dir": ("", "simulate the env this run was trained on (else the robot's default env)"),
            "rate": (0.0, "control rate in Hz (sets the env's control timestep); 0 = the env's own"),
            "real_time": (True, "pace ticks by the wall clock; false = lock-step and publish /clock"),
            "lockstep_timeout": (0.1, "lock-step: seconds to wait for a command before stepping anyway"),
            "seed": (0, "seed of the first episode's initial state"),
            "episode_steps": (0, "start a new episode after this many ticks; 0 = never"),
            "stats_file": ("", "write latency and missed-tick statistics here (JSON) at shutdown"),
            "warmup_ticks": (0, "ticks after the first command left out of the statistics"),
            "stop_after_ticks": (0, "exit after this many counted ticks (benchmarks); 0 = run until stopped"),
            "realtime_priority": (0, "SCHED_FIFO priority of the node's threads (1-99; needs CAP_SYS_NICE); 0 = off"),
            "frame_prefix": ("", "prefix of the frame ids (odom/base_link, camera frames)"),
            "task": ("", "kitchen: task, or a comma-separated sequence; empty = the run's (else microwave)"),
            "level": ("", "kitchen: generalisation level L0-L3; empty = the run's (else L0)"),
            "cameras": ("", "kitchen without run_dir: comma-separated cameras, 'none' = state-only; "
                            "empty = scene,wrist"),
            "await_subscribers": (0, "before the first step, wait until each state topic has this many subscribers "
                                     "(the policy, a recorder), so nothing is lost to DDS discovery; 0 = don't wait"),
            "await_timeout": (10.0, "seconds to wait for those subscribers before starting anyway (with a warning)"),
        }
        return declare_parameters(self, defaults)

    # --- callbacks (executor thread) -------------------------------------------------------
    def _on_command(self, msg: Float64MultiArray) -> None:
        received = time.perf_counter()
        data = np.asarray(msg.data, dtype=np.float64)
        if data.shape != (self.adapter.command_size,) or not np.all(np.isfinite(data)):
            self.rejected_commands += 1
            if received - self._last_reject_log > 1.0:
                self._last_reject_log = received
                self.get_logger().warning(
                    f"rejected command with {data.size} values (need {self.adapter.command_size} finite values)"
                )
            return
        self.command = self.adapter.decode_command(data)
        self.holding = False
        self.commands_received += 1
        if self.first_command_after_state is None:
            self.first_command_after_state = received

    def _on_reset(self, request, response):
        self.reset_requested = True
        response.success = True
        response.message = "new episode at the next tick"
        return response

    # --- physics loop (main thread) ---------------------------------------------------------
    def _reset_env(self) -> None:
        self.env.reset(seed=self.seed + self.resets)
        self.resets += 1
        self.command = self.adapter.safe_command(self.env)
        self.holding = self.adapter.hold_until_command
        self.episode_end = ""
        self.latched_sent.clear()  # a new episode says its latched topics again

    def _stamp(self) -> int:
        if self.real_time:
            return self.get_clock().now().nanoseconds
        return int(round(self.ticks * self.dt * 1e9)) + 1  # sim time; never the "unstamped" zero

    def _publish_state(self) -> None:
        stamp = self._stamp()
        if self.clock_pub is not None:
            clock = Clock()
            clock.clock.sec, clock.clock.nanosec = divmod(stamp, 1_000_000_000)
            self.clock_pub.publish(clock)
        sampled = time.perf_counter()
        msgs = self.adapter.encode_state(self.env, stamp, self.frame_prefix)
        self.first_command_after_state = None
        self.state_sampled_at = sampled
        for topic, msg in msgs.items():  # in the adapter's order; the trigger completes the sample
            if topic in self.latched:
                if self.latched_sent.get(topic) == msg:
                    continue
                self.latched_sent[topic] = msg
            self.pubs[topic].publish(msg)
            if topic == self.adapter.trigger:
                self.state_published_at = time.perf_counter()

    def _take_command(self) -> tuple[np.ndarray, bool]:
        """The command to apply now and whether a reset was requested; accounts for the last state."""
        answered = self.first_command_after_state
        published = self.state_published_at
        sampled = self.state_sampled_at
        command = self.command.copy()
        reset = self.reset_requested
        self.reset_requested = False
        if published is not None and self.commands_received > 0:  # the policy is up: count this tick
            self.counted += 1
            if self.counted <= self.warmup_ticks:
                pass
            elif answered is not None:
                self.latencies.append(answered - published)
                self.sample_latencies.append(answered - sampled)
            else:
                self.missed += 1
        return command, reset

    def _tick(self) -> None:
        """One control period: a new episode's first state on reset, else one step of physics.

        A held robot (no command yet this episode) publishes its state again without stepping;
        lock-step time stands still with it.
        """
        command, reset = self._take_command()
        if reset or (self.episode_steps and self.env.step_count >= self.episode_steps):
            self._reset_env()
        elif self.holding:
            self._publish_state()
            return
        else:
            try:
                _, _, terminated, _, info = self.env.step(command)
            except SimulationDiverged as e:
                self.get_logger().error(f"{e}; starting a new episode")
                self._reset_env()
            else:
                if terminated and not self.episode_end:
                    self._end_episode(info)
        self.ticks += 1  # sim time advances on resets too, so every state has a new stamp
        self._publish_state()

    def _end_episode(self, info: dict) -> None:
        reasons = [key for key in ("crash", "out_of_bounds", "is_success") if info.get(key)]
        self.episode_end = ", ".join(reasons) or "terminated"
        self.terminations += 1
        self.get_logger().warning(
            f"episode over after {self.env.step_count} steps ({self.episode_end}); the physics runs on, "
            "~/reset starts a new episode"
        )

    def _serve_until(self, executor, deadline: float, until_command: bool = False) -> None:
        """Handle ROS callbacks (commands, reset) on this thread until ``deadline`` (perf_counter).

        Waiting in the executor rather than sleeping beside a spinner thread saves a thread
        hand-off on every command: the command is taken the moment DDS delivers it.
        """
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or (until_command and self.first_command_after_state is not None):
                return
            executor.spin_once(timeout_sec=remaining)

    def _await_subscribers(self, executor) -> None:
        """Hold the first step until the policy (and a recorder) have matched every state topic.

        Lock-step runs at hundreds of ticks per second, faster than DDS discovery between processes:
        without this a bag recorded from launch misses the first seconds of the episode.
        """
        if self.await_subscribers <= 0:
            return
        deadline = time.perf_counter() + self.await_timeout
        short = dict.fromkeys(self.awaited)
        while rclpy.ok(context=self.context):
            short = {name: n for name in short if (n := self.pubs[name].get_subscription_count()) < self.await_subscribers}
            if not short or time.perf_counter() >= deadline:
                break
            executor.spin_once(timeout_sec=0.02)
        if short:
            counts = ", ".join(f"{name} has {n}" for name, n in short.items())
            self.get_logger().warning(
                f"starting after {self.await_timeout:g} s without all {self.await_subscribers} subscribers ({counts})"
            )

    def run(self, executor) -> None:
        self._await_subscribers(executor)
        self._reset_env()
        self._publish_state()
        next_tick = time.perf_counter() + self.dt
        while rclpy.ok(context=self.context):
            if self.stop_after_ticks and self.counted >= self.warmup_ticks + self.stop_after_ticks:
                break
            try:
                if self.real_time:
                    if next_tick - time.perf_counter() < -self.dt:
                        self.overruns += 1
                        next_tick = time.perf_counter()
                    self._serve_until(executor, next_tick)
                    next_tick += self.dt
                else:
                    self._serve_until(executor, time.perf_counter() + self.lockstep_timeout, until_command=True)
                self._tick()
            except Exception:
                if self.context.ok():
                    raise
                break  # a signal shut the context down mid-tick

    def statistics(self) -> dict:
        lat = np.asarray(self.latencies) * 1e3
        pct = (lambda q: float(np.percentile(lat, q))) if lat.size else (lambda q: math.nan)
        sample = np.asarray(self.sample_latencies) * 1e3
        return {
            "ticks": self.ticks,
            "answered": int(lat.size),
            "missed_ticks": self.missed,
            "overruns": self.overruns,
            "commands_received": self.commands_received,
            "rejected_commands": self.rejected_commands,
            "resets": self.resets,
            "terminations": self.terminations,
            "episode_end": self.episode_end,
            "rate_hz": 1.0 / self.dt,
            "latency_ms_p50": pct(50),
            "latency_ms_p99": pct(99),
            "latency_ms_max": float(lat.max()) if lat.size else math.nan,
            "sample_latency_ms_p50": float(np.percentile(sample, 50)) if sample.size else math.nan,
            "sample_latency_ms_p99": float(np.percentile(sample, 99)) if sample.size else math.nan,
            "latencies_us": [round(float(v) * 1e3) for v in lat],
            "sample_latencies_us": [round(float(v) * 1e3) for v in sample],
            **self.adapter.summary(self.env),
        }

    def write_statistics(self) -> None:
        if not self.stats_file:
            return
        path = Path(self.stats_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.statistics())
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _farewell(node: SimRobotNode) -> None:
    """The summary on stderr: the node's logger would try /rosout on a context a signal has already shut down."""
    s = node.statistics()
    print(f"sim stopped after {s['ticks']} ticks: {s['answered']} answered, {s['missed_ticks']} missed, "
          f"latency p50 {s['latency_ms_p50']:.3f} ms p99 {s['latency_ms_p99']:.3f} ms", file=sys.stderr, flush=True)
    node.write_statistics()


def main(argv: list[str] | None = None) -> int:
    return run_node(argv, SimRobotNode, lambda node, executor: node.run(executor), _farewell)


if __name__ == "__main__":
    sys.exit(main())
