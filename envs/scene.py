"""What a spatial question is asked about: the objects of a scene, the agent and its camera.

Every env the spatial brain works in (``uav_find``, ``swimmer_find``, ``kitchen_point``, the
generic QA arenas) describes its current state as a :class:`Scene` through
``env.unwrapped.scene()``. Spatial questions and their answers are computed from it by geometry
alone (``envs/spatial_qa.py``), so labels need no annotation and no download.

Frames: world is MuJoCo's (x forward/east, y left/north, z up, REP-103). The agent's frame
turns the world by ``agent_yaw`` about z (its x axis is where it faces). The camera follows
MuJoCo's convention: ``camera_rotation`` maps camera-frame vectors to world, and the camera
looks along its own -z with +y up and +x to the right of the image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SHAPES = ("box", "pillar", "sphere", "cone", "ring")


@dataclass(frozen=True)
class SceneObject:
    """One nameable object: what it is called by, and where it is."""

    name: str  # unique within the scene, e.g. "red_box_1"
    shape: str  # one of SHAPES, or an object word of the embodiment (e.g. "kettle", "microwave")
    colour: str  # one of COLOURS, or "" when colour does not name it
    position: np.ndarray  # world xyz of its centre, metres
    size: float  # its largest half-extent, metres
    geom_ids: tuple[int, ...] = ()  # the MuJoCo geoms drawn for it (a camera's pixels name it by these)


@dataclass(frozen=True)
class Scene:
    """A snapshot of an env for spatial questions (copied: later steps do not change it)."""

    embodiment: str  # "uav", "swimmer", "kitchen" or "generic"
    objects: tuple[SceneObject, ...]
    agent_position: np.ndarray  # world xyz of the agent (the UAV's body, the swimmer's head, the gripper)
    agent_yaw: float  # radians, the agent's heading in the world xy-plane
    camera_position: np.ndarray  # world xyz of the camera the brain sees through
    camera_rotation: np.ndarray  # 3x3, camera frame -> world (looks along -z, +y up)
    extras: dict = field(default_factory=dict)  # embodiment-specific facts (e.g. the arena's half-size)

    def object(self, name: str) -> SceneObject:
        for obj in self.objects:
            if obj.name == name:
                return obj
        raise KeyError(f"no object {name!r} in the scene ({', '.join(o.name for o in self.objects)})")

    def in_agent_frame(self, point: np.ndarray) -> np.ndarray:
        """``point`` (world) relative to the agent, in the agent's yaw-turned frame."""
        c, s = np.cos(self.agent_yaw), np.sin(self.agent_yaw)
        d = np.asarray(point, dtype=np.float64) - self.agent_position
        return np.array([c * d[0] + s * d[1], -s * d[0] + c * d[1], d[2]])

    def in_camera_frame(self, point: np.ndarray) -> np.ndarray:
        """``point`` (world) in the camera's frame (x right, y up, -z forward)."""
        return self.camera_rotation.T @ (np.asarray(point, dtype=np.float64) - self.camera_position)
