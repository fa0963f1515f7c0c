"""Read a recorded bag back (tests, benchmarks) without rosbag2: rosbags' AnyReader does it."""

from __future__ import annotations

from pathlib import Path

from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore


def read_bag(path: str | Path) -> dict[str, list]:
    """Per topic, the list of (receive timestamp ns, deserialised message) in timestamp order.

    Every recorded topic is a key, also one without messages. Messages are rosbags dataclasses
    (field names as in the .msg), not rclpy objects. The Jazzy typestore is the default for
    types a bag does not define itself.
    """
    out: dict[str, list] = {}
    with AnyReader([Path(path)], default_typestore=get_typestore(Stores.ROS2_JAZZY)) as reader:
        for connection in reader.connections:
            out.setdefault(connection.topic, [])
        for connection, timestamp, raw in reader.messages():
            out[connection.topic].append((timestamp, reader.deserialize(raw, connection.msgtype)))
    return out
