"""Random arenas of coloured shapes: camera images plus a :class:`~envs.scene.Scene` for spatial QA.

The spatial brain's scaffold learns spatial questions before any embodiment (ACE-Brain's Stage 1,
small scale). This module draws the generic part of that data: a floor and 3-8 objects, each one
of :data:`~envs.scene.SHAPES` in one of :data:`~envs.scene.COLOURS`, at random places and
heights, seen by a free camera that looks into the arena. Labels come from the Scene
(:mod:`envs.spatial_qa`); images come from :class:`~envs.raycast_camera.RaycastCamera` (no GL).

## Layout (world frame: x east, y north, z up; metres)
- Floor: a grey plane reaching past the camera's range; the objects stand in the square
  ``|x|, |y| <= arena`` (default 2.5 m).
- Objects: largest half-extent ``size`` in [0.2, 0.45] m (a few pixels or more at 32x32); half of
  them stand on the floor, the others float with their lowest point 0.3-1.5 m up; their
  footprints keep 0.1 m apart.
  Shapes: ``box`` (a cuboid), ``pillar`` (an upright cylinder of radius 0.35 size), ``sphere``,
  ``cone`` (upright, base radius 0.7 size), ``ring`` (an upright torus of 12 capsules).
- Camera: 0.5-2 m outside the arena's edge at a random bearing, 0.6-2.5 m high, looking at a
  random point near the arena's centre (so a few objects may be out of view).
- Agent (the "you" of the questions): with probability ``ego_probability`` the camera itself
  (heading the camera's horizontal direction, as a drone's onboard camera), otherwise a point
  0.3-1.5 m high with a random heading (perspective-taking questions), anywhere in the arena or,
  half the time, 0.1-0.6 m beside an object at about its height (so near distances are not
  rare). It is not drawn; the state vector says where it is.

## Observation
- ``image`` uint8 (H, W, 3), ``depth`` float32 (H, W) metres along the optical axis (``max_depth``
  where nothing is hit), from the raycast camera.
- ``state`` float32 (7,), :data:`STATE_FIELDS`: the agent's position in the camera frame (x right,
  y up, z backward; m), the cos and sin of its heading relative to the camera's heading, the
  camera's height above the floor (m) and its pitch (rad, negative looking down). Everything a
  question about "you" needs beyond the image, in the frame the image is in.

The Scene's ``extras`` carry ``camera_fovy_deg``, ``camera_aspect``, ``camera_max_depth``,
``visible_pixels`` (object name -> pixels it covers) for :func:`envs.spatial_qa.view_status`, and
``arena`` (the half-size). A new MuJoCo model is compiled per sample (a few milliseconds): sizes
and meshes differ between layouts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mujoco
import numpy as np

from envs.scene import COLOURS, SHAPES, Scene, SceneObject

RGB = {"red": (0.85, 0.12, 0.10), "green": (0.15, 0.65, 0.20), "blue": (0.12, 0.25, 0.85),
       "yellow": (0.95, 0.85, 0.10), "purple": (0.55, 0.20, 0.70), "orange": (0.98, 0.50, 0.05),
       "white": (0.97, 0.97, 0.97), "black": (0.06, 0.06, 0.06)}
FLOOR_RGB = (0.50, 0.50, 0.48)
STATE_FIELDS = ("agent_x_cam", "agent_y_cam", "agent_z_cam", "cos_rel_yaw", "sin_rel_yaw", "camera_height",
                "camera_pitch")
RING_SEGMENTS = 12
CONE_SIDES = 16


@dataclass(frozen=True)
class Placed:
    """One object of a layout: what it is, where its centre is, its largest half-extent and its yaw."""

    shape: str
    colour: str
    position: np.ndarray
    size: float
    yaw: float


def _fmt(values) -> str:
    return " ".join(f"{v:.6g}" for v in values)


def sample_layout(rng: np.random.Generator, arena: float = 2.5, min_objects: int = 3,
                  max_objects: int = 8) -> list[Placed]:
    """Random objects in the arena with footprints at least 0.1 m apart (fewer if the arena is full)."""
    count = int(rng.integers(min_objects, max_objects + 1))
    placed: list[Placed] = []
    for _ in range(count * 30):
        if len(placed) == count:
            break
        size = float(rng.uniform(0.2, 0.45))
        xy = rng.uniform(-arena, arena, size=2)
        if any(np.hypot(*(xy - p.position[:2])) < size + p.size + 0.1 for p in placed):
            continue
        bottom = 0.0 if rng.random() < 0.5 else float(rng.uniform(0.3, 1.5))
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        half_height = 0.9 * size if shape == "box" else size  # the box is 0.9 size tall (_geoms_xml)
        placed.append(Placed(shape, COLOURS[int(rng.integers(len(COLOURS)))],
                             np.array([xy[0], xy[1], bottom + half_height]), size,
                             float(rng.uniform(-math.pi, math.pi))))
    return placed


def _geoms_xml(i: int, p: Placed) -> tuple[str, str, int]:
    """(asset xml, body xml, number of geoms) of object ``i``; geoms are named ``obj{i}_{k}``."""
    rgba = _fmt((*RGB[p.colour], 1.0))
    s = p.size
    asset = ""
    if p.shape == "box":
        geoms = [f'<geom type="box" size="{_fmt((s, 0.8 * s, 0.9 * s))}"/>']
    elif p.shape == "pillar":
        geoms = [f'<geom type="cylinder" size="{_fmt((0.35 * s, s))}"/>']
    elif p.shape == "sphere":
        geoms = [f'<geom type="sphere" size="{s:.6g}"/>']
    elif p.shape == "cone":
        angles = np.linspace(0, 2 * math.pi, CONE_SIDES, endpoint=False)
        verts = [(0.7 * s * math.cos(a), 0.7 * s * math.sin(a), -s) for a in angles] + [(0.0, 0.0, s)]
        asset = f'<mesh name="cone{i}" vertex="{_fmt(np.ravel(verts))}"/>'
        geoms = [f'<geom type="mesh" mesh="cone{i}"/>']
    elif p.shape == "ring":  # in the body's xz-plane: upright, facing along the body's y
        radius, tube = 0.75 * s, 0.25 * s
        angles = np.linspace(0, 2 * math.pi, RING_SEGMENTS + 1)
        pts = [(radius * math.cos(a), 0.0, radius * math.sin(a)) for a in angles]
        geoms = [f'<geom type="capsule" size="{tube:.6g}" fromto="{_fmt((*pts[k], *pts[k + 1]))}"/>'
                 for k in range(RING_SEGMENTS)]
    else:
        raise ValueError(f"unknown shape {p.shape!r}; choose from {SHAPES}")
    named = [g.replace("<geom ", f'<geom name="obj{i}_{k}" rgba="{rgba}" contype="0" conaffinity="0" ', 1)
             for k, g in enumerate(geoms)]
    body = (f'<body name="obj{i}" pos="{_fmt(p.position)}" euler="0 0 {p.yaw:.6g}">' + "".join(named) + "</body>")
    return asset, body, len(geoms)


def arena_xml(layout: list[Placed], floor: float) -> str:
    """The MJCF of a layout: a floor plane of half-size ``floor`` (m) and one static body per object."""
    parts = [_geoms_xml(i, p) for i, p in enumerate(layout)]
    assets = "".join(a for a, _, _ in parts)
    bodies = "".join(b for _, b, _ in parts)
    plane = f'<geom name="floor" type="plane" size="{_fmt((floor, floor, 0.1))}" rgba="{_fmt((*FLOOR_RGB, 1))}"/>'
    return (f'<mujoco model="generic_arena"><asset>{assets}</asset>'
            f"<worldbody>{plane}{bodies}</worldbody></mujoco>")


def look_at(position: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The camera-to-world rotation of a camera at ``position`` looking at ``target`` with the world's z up."""
    forward = np.asarray(target, dtype=np.float64) - position
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    back = -forward
    up = np.cross(back, right)
    return np.stack([right, up, back], axis=1)


class GenericSceneSampler:
    """Draws (observation, Scene) pairs of random arenas; ``sample(rng)`` is a QA data source."""

    embodiment = "generic"

    def __init__(self, width: int = 32, height: int = 32, seed: int = 0, fovy_deg: float = 60.0,
                 max_depth: float = 15.0, arena: float = 2.5, min_objects: int = 3, max_objects: int = 8,
                 ego_probability: float = 0.5):
        if int(width) < 1 or int(height) < 1:
            raise ValueError(f"width and height must be >= 1 px, got {width}x{height}")
        if not 1 <= int(min_objects) <= int(max_objects):
            raise ValueError(f"need 1 <= min_objects <= max_objects, got {min_objects} and {max_objects}")
        if not arena > 0:
            raise ValueError(f"arena must be a positive half-size in m, got {arena}")
        if not 0.0 <= ego_probability <= 1.0:
            raise ValueError(f"ego_probability must be in [0, 1], got {ego_probability}")
        self.width, self.height = int(width), int(height)
        self.fovy_deg, self.max_depth = float(fovy_deg), float(max_depth)
        self.arena, self.min_objects, self.max_objects = float(arena), int(min_objects), int(max_objects)
        self.ego_probability = float(ego_probability)
        self.rng = np.random.default_rng(seed)
        # What a QA dataset's manifest calls this source: every setting that changes the data.
        self.name = (f"generic(width={self.width}, height={self.height}, fovy_deg={self.fovy_deg:g}, "
                     f"max_depth={self.max_depth:g}, arena={self.arena:g}, objects={self.min_objects}-{self.max_objects}, "
                     f"ego_probability={self.ego_probability:g})")

    def __call__(self, rng: np.random.Generator | None = None):
        return self.sample(rng)

    def sample(self, rng: np.random.Generator | None = None) -> tuple[dict, Scene]:
        """One random arena: ``({"image", "depth", "state"}, Scene)``; ``rng`` defaults to the sampler's own."""
        from envs.raycast_camera import RaycastCamera

        rng = self.rng if rng is None else rng
        layout = sample_layout(rng, self.arena, self.min_objects, self.max_objects)
        model = mujoco.MjModel.from_xml_string(arena_xml(layout, self.arena + 2.0 + self.max_depth))
        data = mujoco.MjData(model)
        mujoco.mj_kinematics(model, data)

        bearing = rng.uniform(-math.pi, math.pi)
        reach = self.arena + rng.uniform(0.5, 2.0)
        cam_pos = np.array([reach * math.cos(bearing), reach * math.sin(bearing), rng.uniform(0.6, 2.5)])
        target = np.array([*rng.uniform(-1.0, 1.0, size=2), rng.uniform(0.0, 0.8)])
        rotation = look_at(cam_pos, target)
        cam_yaw = math.atan2(-rotation[1, 2], -rotation[0, 2])  # the heading of the camera's -z
        if rng.random() < self.ego_probability:
            agent, agent_yaw = cam_pos.copy(), cam_yaw
        else:
            xy = rng.uniform(-self.arena, self.arena, size=2)
            if rng.random() < 0.5 and layout:  # beside an object, so that "<1m" answers are not rare
                near = layout[int(rng.integers(len(layout)))]
                angle = rng.uniform(-math.pi, math.pi)
                xy = near.position[:2] + (near.size + rng.uniform(0.1, 0.6)) * np.array([math.cos(angle), math.sin(angle)])
                height = max(0.3, near.position[2] + rng.uniform(-0.3, 0.3))
            else:
                height = rng.uniform(0.3, 1.5)
            agent = np.array([xy[0], xy[1], height])
            agent_yaw = float(rng.uniform(-math.pi, math.pi))

        camera = RaycastCamera(model, self.width, self.height, self.fovy_deg, self.max_depth)
        frame = camera.render(data, cam_pos, rotation)
        seen = np.bincount(frame.geom[frame.geom >= 0].ravel(), minlength=model.ngeom)
        objects, pixels = [], {}
        for i, p in enumerate(layout):
            body = model.body(f"obj{i}")
            ids = tuple(range(int(body.geomadr[0]), int(body.geomadr[0] + body.geomnum[0])))
            name = f"{p.colour}_{p.shape}_{i}"
            objects.append(SceneObject(name, p.shape, p.colour, p.position.copy(), p.size, ids))
            pixels[name] = int(seen[list(ids)].sum())
        scene = Scene("generic", tuple(objects), agent, float(agent_yaw), cam_pos, rotation,
                      {"camera_fovy_deg": self.fovy_deg, "camera_aspect": self.width / self.height,
                       "camera_max_depth": self.max_depth, "visible_pixels": pixels, "arena": self.arena})
        rel = agent_yaw - cam_yaw
        pitch = math.asin(float(np.clip(-rotation[2, 2], -1.0, 1.0)))
        state = np.array([*scene.in_camera_frame(agent), math.cos(rel), math.sin(rel), cam_pos[2], pitch],
                         dtype=np.float32)
        return {"image": frame.rgb, "depth": frame.depth, "state": state}, scene
