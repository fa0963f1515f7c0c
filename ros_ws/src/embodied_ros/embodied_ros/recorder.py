"""Record topics into a rosbag2 directory (MCAP storage) without rosbag2.

rosbag2 has no wheels, so this node writes with ``rosbags``: subscriptions are ``raw=True`` so
the received CDR bytes go into the bag as they are (no deserialise/serialise round trip), and
the connection message definitions come from the ``ROS2_JAZZY`` typestore. The bag is written
as ``<name>/`` inside a hidden ``.<name>.partial-<pid>`` sibling of ``output_dir`` and moved to
``output_dir`` only after the writer closed cleanly, so a crashed or killed recorder never
leaves a bag that looks complete. (Nested so the storage file is ``<name>.mcap``, the name
metadata.yaml records, rather than one named after the temporary directory.)
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import rclpy
import rclpy.logging
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosbags.rosbag2 import StoragePlugin, Writer, WriterError
from rosbags.typesys import Stores, get_typestore

from embodied_ros.process import StartupError, init_with_shutdown_on_signals, spin_until_shutdown

DEFAULT_TOPICS = ["joint_states", "odom", "commands", "goal", "/diagnostics"]
DEFAULT_TYPES = [
    "sensor_msgs/msg/JointState",
    "nav_msgs/msg/Odometry",
    "std_msgs/msg/Float64MultiArray",
    "geometry_msgs/msg/PointStamped",
    "diagnostic_msgs/msg/DiagnosticArray",
]
# Reliable so nothing a reliable publisher sends is dropped; a deep queue so bursts survive a
# slow write. Best-effort publishers (sensor-data QoS) do not match this profile.
RECORD_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=ReliabilityPolicy.RELIABLE)


def partial_dir(output_dir: Path, pid: int | None = None) -> Path:
    """The hidden sibling that holds the bag (as ``<name>/``) until it is complete."""
    return output_dir.parent / f".{output_dir.name}.partial-{os.getpid() if pid is None else pid}"


def normalise_type(name: str) -> str:
    """'pkg/msg/Name' (or 'pkg/Name') -> 'pkg/msg/Name', the form rosbag2 stores."""
    parts = name.strip("/").split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3 or parts[1] != "msg" or not all(parts):
        raise StartupError(f"bad message type {name!r}: expected 'pkg/msg/Name'")
    return "/".join(parts)


def import_type(name: str):
    """The rosidl Python class for 'pkg/msg/Name' (rosidl_runtime_py has no wheel)."""
    pkg, _, cls = name.split("/")
    try:
        return getattr(importlib.import_module(f"{pkg}.msg"), cls)
    except (ImportError, AttributeError) as exc:
        raise StartupError(f"cannot import message type {name}: {exc}") from None


class Recorder(Node):
    """Subscribes to the configured topics and writes every received message into the bag."""

    def __init__(self, name: str = "recorder", **kwargs):
        super().__init__(name, **kwargs)
        topics = self.declare_parameter("topics", DEFAULT_TOPICS).value
        types = self.declare_parameter("types", DEFAULT_TYPES).value
        output = self.declare_parameter("output_dir", "").value
        robot = self.declare_parameter("robot", "").value
        if not output:
            raise StartupError("parameter output_dir is required (the bag directory to create)")
        if len(topics) != len(types):
            raise StartupError(f"topics ({len(topics)}) and types ({len(types)}) must have the same length")
        self.output_dir = Path(output).expanduser().absolute()
        if self.output_dir.exists():
            raise StartupError(f"{self.output_dir} exists already, not overwriting")

        typestore = get_typestore(Stores.ROS2_JAZZY)
        resolved = []
        for topic, type_name in zip(topics, types, strict=True):
            type_name = normalise_type(type_name)
            if type_name not in typestore.fielddefs:
                raise StartupError(f"message type {type_name} is not in the ROS2_JAZZY typestore")
            resolved.append((self.resolve_topic_name(topic), type_name, import_type(type_name)))
        if len({topic for topic, _, _ in resolved}) != len(resolved):
            raise StartupError(f"duplicate topics after resolution: {[topic for topic, _, _ in resolved]}")

        self.partial = partial_dir(self.output_dir)
        try:
            self.output_dir.parent.mkdir(parents=True, exist_ok=True)
            self.writer = Writer(self.partial / self.output_dir.name, version=9, storage_plugin=StoragePlugin.MCAP)
            self.writer.open()
        except (OSError, WriterError) as exc:
            raise StartupError(f"cannot create the bag in {self.partial}: {exc}") from None
        self.counts: dict[str, int] = {}
        for topic, type_name, msg_class in resolved:
            connection = self.writer.add_connection(topic, type_name, typestore=typestore)
            self.counts[topic] = 0
            self.create_subscription(msg_class, topic, self._callback(topic, connection), RECORD_QOS, raw=True)
        self.get_logger().info(
            f"recording {len(resolved)} topics{f' of {robot}' if robot else ''} to {self.output_dir}: "
            + ", ".join(topic for topic, _, _ in resolved)
        )

    def _callback(self, topic, connection):
        def write(data: bytes) -> None:
            # Receive time on the node's clock, so a bag recorded under use_sim_time has sim stamps.
            self.writer.write(connection, self.get_clock().now().nanoseconds, data)
            self.counts[topic] += 1

        return write

    def finish(self) -> Path:
        """Close the writer and publish the bag under output_dir; returns output_dir."""
        self.writer.close()
        if self.output_dir.exists():  # appeared while recording: keep the partial rather than clobber it
            raise FileExistsError(f"{self.output_dir} appeared while recording; the bag stays in {self.partial}")
        os.rename(self.partial / self.output_dir.name, self.output_dir)
        self.partial.rmdir()
        return self.output_dir

    def abort(self) -> None:
        """Stop writing after an error; the partial directory stays for inspection."""
        self.writer.abort()

    def summary(self) -> str:
        return f"recorded {sum(self.counts.values())} messages on {len(self.counts)} topics to {self.output_dir}"


def main(argv: list[str] | None = None) -> int:
    """Run the recorder until SIGINT/SIGTERM; 0 after a clean close, 2 on bad configuration.

    SIGINT/SIGTERM shut the context down (:func:`init_with_shutdown_on_signals`) rather than raise
    KeyboardInterrupt wherever the main thread is: raised inside ``writer.write`` it left a half
    record in the MCAP chunk, and the closed bag failed to read back ("Truncated record").
    """
    init_with_shutdown_on_signals(argv)
    try:
        try:
            node = Recorder()
        except StartupError as exc:
            print(f"recorder: error: {exc}", file=sys.stderr)
            return 2
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            spin_until_shutdown(executor)  # also quiet when shutdown lands as the wait set is built
        except BaseException:
            node.abort()
            raise
        logger = rclpy.logging.get_logger(node.get_logger().name)
        executor.shutdown()
        node.destroy_node()  # first, so the lines below do not try /rosout on a shut-down context
        try:
            node.finish()
        except OSError as exc:
            logger.error(str(exc))
            return 1
        logger.info(node.summary())
        return 0
    finally:
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
