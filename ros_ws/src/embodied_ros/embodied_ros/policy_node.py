"""Policy node: a trained run directory driving a robot over ROS 2.

Subscribes to the robot's state topics (see :mod:`embodied_ros.adapters`), rebuilds the env's
observation with the env's own function, runs the policy and publishes
``std_msgs/Float64MultiArray`` on ``commands`` in the robot's units (the adapter's
``encode_command``: env action units for the swimmer, rotor thrusts in newtons for the UAV). It
tells the adapter every command it sent, so observations that hold the previous action (the
UAV's) see what the robot was actually told.

Timing. With ``trigger:=state`` (default) each state sample (the adapter's trigger topic, e.g.
``joint_states`` or the UAV's ``odom``, with the other state topics of the same stamp; context
topics such as a goal or the kitchen's instruction may be older) is answered at once, so the
robot's state stream sets the control rate and state->command latency is only transport plus
inference. With ``trigger:=timer`` a timer at ``rate`` acts on the latest fresh state. Either way
a ``rate`` timer runs the watchdog.

Safety. Commands are clamped to the env's action bounds times ``action_limit`` (the robot's safe
command is sent as its adapter defines it, never clamped); every state message is validated
(names, lengths, NaN/inf, stale or future stamps) and rejected with a throttled warning; when no
valid state arrives for ``watchdog_periods`` periods the node publishes the robot's safe command
every period and reports it; ``~/enable`` (SetBool) takes effect on the next tick (disabling
sends one safe command, then silence); ``~/reset`` (Trigger) restarts the policy clock and the
adapter's memory of the last command (latched context, such as an instruction, is kept).
Diagnostics go to ``/diagnostics`` once a second.

The policy is whatever the run's bundle holds, loaded through :mod:`policies.registry` and driven
through the one policy interface (``reset``, ``act``): the node never asks its kind. Observations
are what the adapter's ``observation`` returns, the env's own: a vector for the swimmer and the
UAV, the kitchen's Dict (images, proprio, the instruction's words). Where the policy offers a
NumPy forward the node uses it (``inference:=numpy``). A stateful policy (MT-ACT's action chunks)
starts afresh at every episode boundary the node sees: ``~/reset``, re-enabling, the watchdog's
recovery and each message on a latched topic (the kitchen's ``instruction``, said at every episode
start and task change). ``chunk_schedule``, ``execute_steps`` and ``task`` are passed to the
policy's loader as its options; a policy that takes none refuses them.
"""

from __future__ import annotations

import sys
import time
from collections import deque

import numpy as np
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_sensor_data
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import SetBool, Trigger

from embodied_ros.adapters import InvalidMessage, make_adapter
from embodied_ros.params import declare_parameters
from embodied_ros.process import StartupError, run_node, spin_until_shutdown
from policies.bundle import read_meta
from policies.language import LanguageModelMissing
from policies.protocol import EnvInterface, PolicyError
from policies.registry import load_policy
from policies.run_dir import RunDir

TRIGGERS = ("state", "timer")
INFERENCE = ("numpy", "torch")
# Node parameters that are the policy loader's options (policies.registry), by option name.
POLICY_OPTIONS = {"schedule": "chunk_schedule", "execute_steps": "execute_steps", "task": "task"}
LATENCY_WINDOW = 2000  # samples kept for the diagnostics percentiles


def _percentiles_ms(samples) -> tuple[float, float, float]:
    if not samples:
        return 0.0, 0.0, 0.0
    arr = np.fromiter(samples, dtype=np.float64) * 1e3
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99)), float(arr.max())


class PolicyNode(Node):
    def __init__(self, **kwargs):
        super().__init__("policy", **kwargs)
        p = self._declare_parameters()
        if p["trigger"] not in TRIGGERS:
            raise StartupError(f"parameter trigger must be one of {TRIGGERS}, got {p['trigger']!r}")
        if not p["run_dir"]:
            raise StartupError("parameter run_dir is required (a run directory written by agents.train)")
        if not 0.0 < p["action_limit"] <= 1.0:
            raise StartupError(f"parameter action_limit must be in (0, 1], got {p['action_limit']}")
        if p["watchdog_periods"] < 1:
            raise StartupError(f"parameter watchdog_periods must be >= 1, got {p['watchdog_periods']}")
        if p["inference"] not in INFERENCE:
            raise StartupError(f"parameter inference must be 'numpy' or 'torch', got {p['inference']!r}")
        try:
            directory = RunDir.find_policy(p["run_dir"], p["checkpoint"])
            self._load(directory, p)
        except (PolicyError, ValueError) as e:
            raise StartupError(str(e)) from None
        self.rng = np.random.default_rng(p["seed"])
        self.rate = p["rate"] if p["rate"] > 0 else 1.0 / self.adapter.control_dt
        self.period_ns = int(1e9 / self.rate)
        self.watchdog_ns = p["watchdog_periods"] * self.period_ns
        self.trigger = p["trigger"]
        self.enabled = p["enabled"]
        self.low = self.adapter.action_low * p["action_limit"]
        self.high = self.adapter.action_high * p["action_limit"]
        self.command_scale = p["command_scale"]

        # Latest valid message per topic, its stamp, and the clock origin of the policy.
        self.latest: dict[str, object] = {}
        self.stamps: dict[str, int] = {}
        self.last_processed = 0
        self.clock_origin: int | None = None
        self.last_valid_wall = None  # monotonic ns of the last valid trigger message
        self.watchdog_tripped = False
        self.pending_safe = False  # one safe command after disabling

        # Counters for diagnostics.
        self.ticks = 0
        self.missed = 0
        self.rejected = 0
        self.last_reject = ""
        self._last_reject_log = 0.0
        self.inference_s = deque(maxlen=LATENCY_WINDOW)
        self.state_to_command_s = deque(maxlen=LATENCY_WINDOW)
        self.jitter_s = deque(maxlen=LATENCY_WINDOW)
        self.state_age_s = deque(maxlen=LATENCY_WINDOW)  # stamp -> callback: transport and queueing
        self._last_trigger_stamp = None
        self._last_timer_wall = None

        qos = QoSProfile(depth=1, reliability=qos_profile_sensor_data.reliability,
                         history=qos_profile_sensor_data.history)
        reliable = QoSProfile(depth=10)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)  # gets what was said before
        self.pub = self.create_publisher(Float64MultiArray, "commands", reliable)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", reliable)
        # Latched topics first: when one and a state sample are ready together, the executor takes them in this
        # order, so a new episode's instruction restarts the policy before that episode's first state is answered.
        self.latched = {t.name for t in self.adapter.topics if t.latched}
        self.subs = [
            self.create_subscription(t.type, t.name, self._make_callback(t.name),
                                     latched if t.latched else qos if p["best_effort"] else reliable)
            for t in sorted(self.adapter.topics, key=lambda t: not t.latched)
        ]
        self.create_service(SetBool, "~/enable", self._on_enable)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.timer = self.create_timer(1.0 / self.rate, self._on_timer)
        self.create_timer(p["diagnostics_period"], self._publish_diagnostics)
        # One thread is enough for these tiny networks and avoids pool wake-up jitter.
        torch.set_num_threads(1)
        # Warm up: the first call allocates (MT-ACT also loads its sentence encoder) now, not at the first state.
        try:
            self.policy.warm_up(self.adapter.zero_observation())
        except LanguageModelMissing as e:
            raise StartupError(str(e)) from None
        details = "".join(f", {k} {v}" for k, v in self.policy.diagnostics().items() if k == "chunk_schedule")
        self.get_logger().info(
            f"policy {self.policy.meta.kind} from {directory} driving {self.adapter.robot} at {self.rate:.1f} Hz "
            f"(trigger={self.trigger}, {self.backend} inference{details}, "
            f"output {'enabled' if self.enabled else 'disabled'})"
        )

    def _load(self, directory, p: dict) -> None:
        """The bundle's policy on the adapter of the env it was trained on; NumPy inference where it has one."""
        meta = read_meta(directory)
        self.adapter = make_adapter(p["robot"], meta.env)
        options = {name: p[param] for name, param in POLICY_OPTIONS.items()}
        self.policy = load_policy(directory, EnvInterface.of(self.adapter.env), options)
        if not p["deterministic"] and self.policy.meta.action_std is None:
            raise StartupError(f"deterministic:=false samples around a trained Gaussian's std, and the "
                               f"{meta.kind} policy in {directory} stores none")
        self.forward, self.backend = self.policy.act, "torch"
        if p["inference"] == "numpy":
            fast = self.policy.numpy_forward()
            if fast is not None:
                self.forward, self.backend = fast, "numpy"
        self.action_std = None if p["deterministic"] else np.asarray(self.policy.meta.action_std)

    def _declare_parameters(self) -> dict:
        defaults = {
            "run_dir": ("", "run directory (or policy directory) written by agents.train"),
            "checkpoint": ("final", "checkpoint name inside the run directory"),
            "robot": ("swimmer", "robot adapter"),
            "rate": (0.0, "control rate in Hz; 0 = the env's control rate"),
            "trigger": ("state", "'state': act on each state sample; 'timer': act at rate on the latest state"),
            "deterministic": (True, "mean action; false samples from the trained Gaussian"),
            "seed": (0, "seed of the action noise when deterministic is false"),
            "action_limit": (1.0, "fraction of the env's action bounds commands are clamped to"),
            "command_scale": (1.0, "factor on the adapter's command (swimmer: env action units; uav: newtons)"),
            "enabled": (True, "publish commands from the start"),
            "watchdog_periods": (5, "periods without valid state before the safe command is sent"),
            "best_effort": (False, "best-effort (sensor data) QoS for state topics"),
            "diagnostics_period": (1.0, "seconds between /diagnostics messages"),
            "realtime_priority": (0, "SCHED_FIFO priority of the node's threads (1-99; needs CAP_SYS_NICE); 0 = off"),
            "inference": ("numpy", "'numpy' (checked against torch at start; faster on a cold cache) or 'torch'; "
                                   "MT-ACT runs in torch"),
            "chunk_schedule": ("", "MT-ACT: 'ensemble' (query every step, temporal ensembling) or 'execute' "
                                   "(execute_steps actions per query); empty = as trained"),
            "execute_steps": (0, "MT-ACT with chunk_schedule execute: actions per query (1..chunk); 0 = as trained"),
            "task": ("", "one-hot MT-ACT: the task to do (microwave, kettle, ...); empty = the task whose wording the "
                         "instruction is"),
        }
        return declare_parameters(self, defaults)

    # --- inputs --------------------------------------------------------------------------
    def _make_callback(self, topic: str):
        def callback(msg):
            now = self.get_clock().now().nanoseconds
            try:
                stamp = self.adapter.validate(topic, msg, now, self.watchdog_ns)
            except InvalidMessage as e:
                self._reject(str(e))
                return
            except Exception as e:  # noqa: BLE001 - a message must never crash the node
                self._reject(f"{topic}: unreadable message ({type(e).__name__}: {e})")
                return
            self.latest[topic] = msg
            self.stamps[topic] = stamp
            if topic in self.latched:  # said at each episode start and task change
                self._restart_policy()
            if topic == self.adapter.trigger:
                self.state_age_s.append((now - stamp) / 1e9)
                self.last_valid_wall = time.monotonic_ns()
                if self._last_trigger_stamp is not None:
                    gap = stamp - self._last_trigger_stamp
                    if gap > 1.5 * self.period_ns:
                        self.missed += int(round(gap / self.period_ns)) - 1
                    self.jitter_s.append(abs(gap - self.period_ns) / 1e9)
                self._last_trigger_stamp = stamp
            if self.trigger == "state":
                self._act(time.perf_counter())
        return callback

    def _reject(self, reason: str) -> None:
        self.rejected += 1
        self.last_reject = reason
        now = time.monotonic()
        if now - self._last_reject_log > 1.0:
            self._last_reject_log = now
            self.get_logger().warning(f"rejected state message ({self.rejected} so far): {reason}")

    def _synchronised(self) -> bool:
        """All state topics present, the synced ones sharing the trigger's stamp within half a period, and new."""
        stamp = self.stamps.get(self.adapter.trigger)
        if stamp is None or stamp <= self.last_processed:
            return False
        return all(
            t.name in self.stamps and abs(self.stamps[t.name] - stamp) <= self.period_ns // 2
            for t in self.adapter.topics if t.synced
        ) and all(t.name in self.latest for t in self.adapter.topics)

    # --- control -------------------------------------------------------------------------
    def _act(self, received: float) -> None:
        if not self.enabled or self.watchdog_tripped or not self._synchronised():
            return
        stamp = self.stamps[self.adapter.trigger]
        self.last_processed = stamp
        if self.clock_origin is None:
            self.clock_origin = stamp
        step = int(round((stamp - self.clock_origin) / (self.adapter.control_dt * 1e9)))
        start = time.perf_counter()
        try:
            obs = self.adapter.observation(self.latest, step)  # a Dict for the kitchen
        except InvalidMessage as e:
            self._reject(str(e))
            return
        try:
            action = self.forward(obs)
        except (InvalidMessage, PolicyError) as e:  # an instruction the policy cannot follow (an unknown task)
            self._reject(str(e))
            self._publish(self.adapter.safe_command(), safe=True)
            return
        if self.action_std is not None:
            action = action + self.action_std * self.rng.standard_normal(action.shape)
        self.inference_s.append(time.perf_counter() - start)
        if np.all(np.isfinite(action)):
            self._publish(action)
        else:
            self._reject("policy produced a non-finite action; sent the safe command")
            self._publish(self.adapter.safe_command(), safe=True)
        self.ticks += 1
        self.state_to_command_s.append(time.perf_counter() - received)

    def _publish(self, action: np.ndarray | None, safe: bool = False) -> None:
        """Clamp (unless it is the safe command), convert to the robot's units, send, tell the adapter.

        A safe command of None (the kitchen arm's hold-here before any joint state) sends nothing.
        """
        if action is None:
            return
        action = np.asarray(action, dtype=np.float64)
        if not safe:
            action = np.clip(action, self.low, self.high)
        command = self.adapter.encode_command(action) * self.command_scale
        self.pub.publish(Float64MultiArray(data=command.tolist()))
        self.adapter.commanded(action)

    def _on_timer(self) -> None:
        now = time.monotonic_ns()
        if self._last_timer_wall is not None and self.trigger == "timer":
            late = now - self._last_timer_wall - self.period_ns
            self.jitter_s.append(abs(late) / 1e9)
            if late > self.period_ns:
                self.missed += int(late // self.period_ns)
        self._last_timer_wall = now
        if self.pending_safe:
            self.pending_safe = False
            self._publish(self.adapter.safe_command(), safe=True)
        stale = self.last_valid_wall is None or now - self.last_valid_wall > self.watchdog_ns
        if stale and self.last_valid_wall is not None and not self.watchdog_tripped:
            self.watchdog_tripped = True
            self.get_logger().error(
                f"watchdog: no valid state for {(now - self.last_valid_wall) / 1e6:.0f} ms "
                f"(> {self.watchdog_ns / 1e6:.0f} ms); sending the safe command"
            )
        elif not stale and self.watchdog_tripped:
            self.watchdog_tripped = False
            self._restart_policy()  # chunks predicted before the gap are stale
            self.get_logger().info("watchdog: state is back; resuming the policy")
        if self.watchdog_tripped:
            if self.enabled:
                self._publish(self.adapter.safe_command(), safe=True)
            return
        if self.trigger == "timer":
            self._act(time.perf_counter())

    def _on_enable(self, request, response):
        if self.enabled and not request.data:
            self.pending_safe = True
        if not self.enabled and request.data:
            self.clock_origin = None  # enabling starts a new episode for the policy's clock
            self._restart_policy()
        self.enabled = bool(request.data)
        response.success = True
        response.message = f"output {'enabled' if self.enabled else 'disabled'}"
        self.get_logger().info(response.message)
        return response

    def _on_reset(self, request, response):
        self.clock_origin = None
        self.last_processed = 0
        for name in [name for name in self.latest if name not in self.latched]:  # latched: said once, kept
            del self.latest[name]
            self.stamps.pop(name, None)
        self.adapter.reset()
        self._restart_policy()
        response.success = True
        response.message = "policy clock reset, policy restarted"
        return response

    def _restart_policy(self) -> None:
        """A new episode for a stateful (chunking) policy: nothing predicted before it is executed after it."""
        self.policy.reset()

    # --- diagnostics ---------------------------------------------------------------------
    def diagnostics(self) -> dict[str, str]:
        inf50, inf99, infmax = _percentiles_ms(self.inference_s)
        lat50, lat99, latmax = _percentiles_ms(self.state_to_command_s)
        _, jit99, jitmax = _percentiles_ms(self.jitter_s)
        age50, age99, _ = _percentiles_ms(self.state_age_s)
        return {
            "enabled": str(self.enabled).lower(),
            "watchdog": "tripped" if self.watchdog_tripped else ("waiting" if self.last_valid_wall is None else "ok"),
            "ticks": str(self.ticks),
            "missed_ticks": str(self.missed),
            "rejected_messages": str(self.rejected),
            "last_rejection": self.last_reject,
            "inference_ms_p50": f"{inf50:.3f}", "inference_ms_p99": f"{inf99:.3f}", "inference_ms_max": f"{infmax:.3f}",
            "state_to_command_ms_p50": f"{lat50:.3f}", "state_to_command_ms_p99": f"{lat99:.3f}",
            "state_to_command_ms_max": f"{latmax:.3f}",
            "state_age_ms_p50": f"{age50:.3f}", "state_age_ms_p99": f"{age99:.3f}",
            "loop_jitter_ms_p99": f"{jit99:.3f}", "loop_jitter_ms_max": f"{jitmax:.3f}",
            "rate_hz": f"{self.rate:.3f}",
            **self.policy.diagnostics(),
        }

    def _publish_diagnostics(self) -> None:
        values = self.diagnostics()
        status = DiagnosticStatus(name=f"{self.get_fully_qualified_name()}: policy", hardware_id=self.adapter.robot)
        if self.watchdog_tripped:
            status.level, status.message = DiagnosticStatus.ERROR, "watchdog tripped: no valid state, safe command"
        elif not self.enabled:
            status.level, status.message = DiagnosticStatus.WARN, "output disabled"
        elif self.last_valid_wall is None:
            status.level, status.message = DiagnosticStatus.WARN, "waiting for state"
        else:
            status.level, status.message = DiagnosticStatus.OK, "running"
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(msg)


def _farewell(node: PolicyNode) -> None:
    d = node.diagnostics()
    print(
        f"policy stopped: {d['ticks']} commands, {d['missed_ticks']} missed ticks, {d['rejected_messages']} "
        f"rejected messages, inference p50/p99 {d['inference_ms_p50']}/{d['inference_ms_p99']} ms, "
        f"state->command p50/p99 {d['state_to_command_ms_p50']}/{d['state_to_command_ms_p99']} ms, "
        f"state age on arrival p50/p99 {d['state_age_ms_p50']}/{d['state_age_ms_p99']} ms",
        file=sys.stderr, flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    return run_node(argv, PolicyNode, lambda node, executor: spin_until_shutdown(executor), _farewell)


if __name__ == "__main__":
    sys.exit(main())
