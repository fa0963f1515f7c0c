"""A client of a running deployment: watches the robot's topics and calls the nodes' services.

Tests, benchmarks and user scripts use it to observe a robot driven by the policy node (states,
commands, the policy's diagnostics) and to enable, disable or reset it. It spins its own node on
a background thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray


class RobotMonitor:
    def __init__(self, context, namespace: str = "/robot", name: str = "monitor", state_topic: str = "joint_states",
                 state_type: type = JointState):
        """``state_topic``/``state_type``: the robot's state stream to keep (the UAV's: ``odom``, Odometry)."""
        self.node = Node(name, context=context)
        self.ns = namespace.rstrip("/")
        self.lock = threading.Lock()
        self.states: list = []
        self.commands: list[tuple[float, np.ndarray]] = []  # (monotonic receive time, command)
        self.diagnostics: list[dict] = []  # the policy node's status values, plus "level"
        self.abort_if: Callable[[], str | None] | None = None  # waiting fails fast when this says why
        qos = QoSProfile(depth=100)
        self.node.create_subscription(state_type, f"{self.ns}/{state_topic}", self._on_state, qos)
        self.node.create_subscription(Float64MultiArray, f"{self.ns}/commands", self._on_command, qos)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, qos)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001 - the context was shut down under us
            pass

    def _on_state(self, msg) -> None:
        with self.lock:
            self.states.append(msg)

    def _on_command(self, msg: Float64MultiArray) -> None:
        with self.lock:
            self.commands.append((time.monotonic(), np.asarray(msg.data)))

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith(f"{self.ns}/policy"):
                with self.lock:
                    self.diagnostics.append({"level": status.level, **{kv.key: kv.value for kv in status.values}})

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``predicate`` (called under the lock) until true; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate():
                    return
            reason = self.abort_if() if self.abort_if is not None else None
            if reason:
                raise AssertionError(f"{reason} while waiting for {what}")
            time.sleep(0.02)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def call(self, srv_type, name: str, request, timeout: float = 10.0):
        client = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise AssertionError(f"service {name} not available after {timeout} s")
            future = client.call_async(request)
            deadline = time.monotonic() + timeout
            while not future.done() and time.monotonic() < deadline:
                time.sleep(0.005)
            if not future.done():
                raise AssertionError(f"service {name} did not answer within {timeout} s")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
