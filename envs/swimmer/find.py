"""Language-grounded target finding for the swimmer: swim to the target an instruction names.

## Description
The 6-link swimmer of :mod:`envs.swimmer.env` (same body, fluid and 30 ms control step as its
``navigate`` task, so the navigate NCAP swims it) above a floor with 3–5 targets (``n_targets``):
primitive shapes standing on the floor, box, pillar (an upright cylinder), sphere and cone of
:data:`envs.scene.SHAPES`, in colours of :data:`envs.scene.COLOURS`, with sizes drawn per episode.
Targets are markers, not obstacles: they have no contacts, and the swimmer swims over and through
them. An instruction names one of them, e.g. "go to the red box" or "find the sphere left of the
blue pillar"; the goal is that target's centre on the floor (world xy). Keyword arguments: the
fields of :class:`SwimmerFindConfig`, each with its unit.

## Layout (per reset, seeded)
The head starts within ±``start_offset`` m of the origin in x and y, heading within ±``start_yaw_deg``
of +x, joint angles uniform within their limits, at rest. Targets lie in a wedge ahead of that
start pose: ``target_distance`` m from the head, bearing within ±``target_bearing_deg`` of its
heading (inside the camera's view), centres at least ``target_spacing`` m apart, and no target
closer than ``sightline_clearance`` m to the straight line from the head to another (none hides
another from the camera, and the straight way to one does not cross another). The target always
has distractors: with probability ``relation_prob`` a twin of the same colour and shape (only a
relation tells them apart), otherwise one of its shape in another colour and one of its colour in
another shape (both words are needed). The instruction is the shortest unique description
(:mod:`envs.find_instructions`), relations judged in the view frame of the start pose (the head's
start position facing its start heading: "left" is the swimmer's left as it starts). A layout
without a unique description is redrawn.

## Observation (``Dict``)
- ``image`` (uint8, ``image_height``×``image_width``×3) and ``depth`` (float32, same size, m along
  the optical axis, ``max_depth`` where nothing is seen): the head camera ``camera_height`` m above
  the eyes, looking along the head's heading and ``camera_tilt_deg`` down, ``fovy_deg`` vertical
  field of view, drawn by ray casting (:mod:`envs.raycast_camera`, no OpenGL); the swimmer's own
  body is not drawn. The same pose is the model's camera ``eye``. The head yaws as the body
  undulates, and the camera with it.
- ``state`` (float64, 28): joint angles (5, rad), body velocities (18: each body's local vx, vy,
  ωz, head first, as :func:`envs.swimmer.env.swimmer_observation`), head position (2, world xy, m),
  heading (2, cos and sin of the head's world yaw), clock (1, control steps / 1000);
  :class:`FindStateLayout` has the ranges and :func:`find_state` builds it. The target is not in
  it: :func:`navigate_observation` turns it into the ``navigate`` observation for any goal point,
  which the navigate NCAP reads; :class:`policies.swimmer_steering.SwimmerSteering`, the task's
  expert and the spatial brain's controller on this body, swims to any point that way.
- ``instruction`` (``Text``, at most ``MAX_CHARS``): the episode's wording. ``paraphrase`` picks the
  wording index; ``None`` draws one per episode from the training wordings, or from the held-out
  ones when ``held_out``; ``reset(options={"paraphrase": k})`` sets it for one episode.

``env.frame`` keeps the camera's last :class:`envs.raycast_camera.CameraFrame`, whose ``geom`` map
names the geom seen at each pixel (a segmentation label for free; ``scene()`` maps geoms to objects).

## Action
As :mod:`envs.swimmer.env` (``Box(-1, 1, (5,))``): motor controls.

## Reward (per control step), each term in ``info`` as ``reward_<term>``
``progress``: ``10·(d_prev − d)`` with ``d`` the nose's planar distance to the goal (m);
``success_bonus``: ``success_bonus`` on the step the episode succeeds.

## Termination and truncation
Success: the nose within ``success_radius`` m of the named target's centre (in the plane); it ends
the episode. Only the named target counts: passing another does nothing. ``episode_seconds``
truncates (the env keeps its own clock, so the registered id has no ``TimeLimit``).

## Info
``goal`` (the named target's world xy, m), ``target`` (its scene name), ``instruction``,
``paraphrase`` (the wording index), ``is_success``, ``distance_to_goal`` (m, nose to goal in the
plane); after a step, the reward terms. :meth:`SwimmerFindEnv.scene` describes the layout as an
:class:`envs.scene.Scene`.
"""

from __future__ import annotations

import math
import operator
import string
from dataclasses import asdict, dataclass
from functools import reduce

import mujoco
import numpy as np
from gymnasium import spaces, utils

from envs.find_instructions import MAX_CHARS, Description, ViewFrame, instruction
from envs.find_shapes import ShapeSizes, resize_geom, shown_geoms
from envs.find_task import (
    COLOUR_RGBA,
    FindEpisode,
    check_camera_and_wording,
    check_number_fields,
    draw_layout,
    range_pair,
)
from envs.raycast_camera import CameraFrame, RaycastCamera, camera_mount
from envs.scene import Scene, SceneObject
from envs.swimmer.env import PHYSICS_TIMESTEP, SwimmerEnv, swimmer_observation
from envs.swimmer.model import joint_limit

N_LINKS = 6  # the body of the navigate task (and of the NCAP paper)
N_JOINTS = N_LINKS - 1
TIME_SCALE_STEPS = 1000  # control steps per unit of the observed clock, as the navigate task's
TARGET_SHAPES = ("box", "pillar", "sphere", "cone")  # the SHAPES that stand on a floor at a swimmer's scale
# Target dimensions, m: ranges drawn per episode (the model is compiled at the largest).
BOX_HALF_WIDTH = (0.07, 0.12)
BOX_HEIGHT = (0.1, 0.25)
PILLAR_RADIUS = (0.05, 0.08)
PILLAR_HEIGHT = (0.2, 0.4)
SPHERE_RADIUS = (0.07, 0.12)
CONE_RADIUS = 0.1
CONE_HEIGHTS = (0.15, 0.22, 0.3)  # one mesh each: a mesh cannot be resized at run time
SIZES = ShapeSizes(BOX_HALF_WIDTH, BOX_HEIGHT, PILLAR_RADIUS, PILLAR_HEIGHT, SPHERE_RADIUS, CONE_RADIUS, CONE_HEIGHTS)
PARKED_Z = -5.0  # unused target slots wait below the floor (and are invisible)
FLOOR_HALF_SIZE = 5.0  # m, the floor plane's half-width (the navigate task's is 2 m)
NOSE_AHEAD = 0.06  # m, the nose's distance ahead of the head body's origin (envs/assets/swimmer_head.xml)
EYES_AHEAD = 0.054  # m, the eyes' distance ahead of it; the camera stands above them
SWIMMER_GROUP = 2  # geom group of the swimmer's own geoms: drawn by render(), never by the ray camera
HIDDEN_GROUP = 3  # the navigate task's target marker: neither drawn nor ray cast (it marks the goal)
CAMERA_GROUPS = (1, 1, 0, 0, 0, 0)  # the ray camera sees the floor and the targets (groups 0 and 1)
PROGRESS_GAIN = 10.0  # reward per metre closed on the goal


CAMERA_FORWARD = (0.0, -1.0, 0.0)  # the head camera looks along the head's heading, its -y

@dataclass(frozen=True)
class SwimmerFindConfig:
    """The env's keyword arguments (``SwimmerFindEnv(**kwargs)``, the keys of ``env=swimmer_find``), checked on construction."""

    episode_seconds: float = 30.0  # s (1000 steps) before truncation: the steering NCAP needs at most about 26 s
    control_timestep: float = 0.03  # s, the action period: a multiple of the 2 ms physics step
    fluid_density: float = 3000.0  # kg/m³, dm_control's swimmer fluid
    fluid_viscosity: float = 0.0  # Pa·s
    n_targets: tuple[int, int] = (3, 5)  # range of the target count per episode (inclusive)
    target_distance: tuple[float, float] = (0.6, 2.0)  # m from the head's start position, range
    target_bearing_deg: float = 35.0  # deg, half-width of the wedge ahead of the start heading (inside the view)
    target_spacing: float = 0.5  # m, the least distance between two targets' centres
    sightline_clearance: float = 0.25  # m, the least distance of a target from the line between the head and another
    # (beyond success_radius and the nose's ~6 cm sway, so swimming straight to one never touches another)
    relation_prob: float = 0.5  # share of layouts with a twin of the target (named through a relation)
    start_offset: float = 0.2  # m, the head's start position uniform within ± this of the origin in x and y
    start_yaw_deg: float = 30.0  # deg, the start heading uniform within ± this of +x
    image_width: int = 32  # px, the head camera's image width
    image_height: int = 32  # px, the head camera's image height
    fovy_deg: float = 80.0  # deg, the head camera's vertical (and, square, horizontal) field of view: the wedge and more
    camera_height: float = 0.3  # m, the head camera above the eyes: a mast, so targets 0.5-2 m away spread over the image
    camera_tilt_deg: float = 20.0  # deg, the head camera's pitch below the heading
    max_depth: float = 10.0  # m, the depth image's range (farther: max_depth)
    paraphrase: int | None = None  # instruction wording index; None: drawn per episode
    held_out: bool = False  # draw the wording from the held-out ones (evaluation on unseen wordings)
    success_radius: float = 0.15  # m, the nose within this of the named target's centre succeeds (the steering NCAP stops at 0.12)
    success_bonus: float = 10.0  # reward on the step the episode succeeds
    render_mode: str | None = None  # gymnasium's render mode (OpenGL; the observation never needs it)
    width: int = 256  # px, rendered image width (render(), not the observation's camera)
    height: int = 256  # px, rendered image height
    camera_name: str | None = "tracking"  # the camera render() uses ("eye": the observation's pose)

    def __post_init__(self):
        check_number_fields(self)  # numbers first: the checks below compare them
        check_camera_and_wording(self)
        lo, hi = range_pair(self, "n_targets")
        if not (int(lo) == lo and int(hi) == hi and 3 <= lo <= hi <= 6):
            raise ValueError(f"n_targets must be a range [low, high] of whole numbers with 3 <= low <= high <= 6, "
                             f"got {list(self.n_targets)}")
        for name in ("episode_seconds", "control_timestep", "target_spacing", "success_radius", "camera_height"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("start_offset", "sightline_clearance", "success_bonus", "fluid_density", "fluid_viscosity"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be finite and >= 0, got {getattr(self, name)}")
        low, high = range_pair(self, "target_distance")
        if not 0 < low <= high:
            raise ValueError(f"target_distance must be a range [low, high] with 0 < low <= high, "
                             f"got {list(self.target_distance)}")
        if high + self.start_offset + 0.5 > FLOOR_HALF_SIZE:
            raise ValueError(f"target_distance {list(self.target_distance)} m puts targets off the "
                             f"{2 * FLOOR_HALF_SIZE:g} m floor")
        frame_skip = round(self.control_timestep / PHYSICS_TIMESTEP)
        if frame_skip < 1 or not math.isclose(frame_skip * PHYSICS_TIMESTEP, self.control_timestep):
            raise ValueError(f"control_timestep must be a multiple of {PHYSICS_TIMESTEP} s, got {self.control_timestep}")
        if not 0 < self.target_bearing_deg < 90:
            raise ValueError(f"target_bearing_deg must be in (0, 90) degrees, got {self.target_bearing_deg}")
        if not 0 <= self.start_yaw_deg <= 180:
            raise ValueError(f"start_yaw_deg must be in [0, 180] degrees, got {self.start_yaw_deg}")


# --- the state vector and the navigate NCAP's view of it ----------------------------------------
@dataclass(frozen=True)
class FindStateLayout:
    """Half-open index ranges of the ``state`` observation's parts (the clock is one index)."""

    joints: tuple[int, int] = (0, 5)  # rad, the hinge angles, head to tail
    body_velocities: tuple[int, int] = (5, 23)  # per body, head first: local vx, vy (m/s) and ωz (rad/s)
    head_position: tuple[int, int] = (23, 25)  # m, world xy of the head body
    heading: tuple[int, int] = (25, 27)  # cos and sin of the head's world yaw (where the nose points)
    time: int = 27  # control steps since reset / TIME_SCALE_STEPS
    size: int = 28


STATE_LAYOUT = FindStateLayout()


def find_state(joints, body_velocities, head_position, heading: float, step: int) -> np.ndarray:
    """The 28-float ``state`` observation from named state parts (``heading``: the head's world yaw, rad)."""
    return np.concatenate([np.asarray(joints, dtype=np.float64), np.asarray(body_velocities, dtype=np.float64),
                           np.asarray(head_position, dtype=np.float64)[:2], [math.cos(heading), math.sin(heading)],
                           [step / TIME_SCALE_STEPS]])


def navigate_observation(state, goal_xy) -> np.ndarray:
    """The ``navigate`` observation (:func:`envs.swimmer.env.swimmer_observation`) for swimming to ``goal_xy`` (world, m).

    ``to_target`` is the nose-to-goal vector in the head frame: x to the head's left, y backwards
    (the head points along its own -y).
    """
    s, layout = np.asarray(state, dtype=np.float64), STATE_LAYOUT
    c, sn = s[layout.heading[0]], s[layout.heading[0] + 1]
    forward = np.array([c, sn])
    nose = s[slice(*layout.head_position)] + NOSE_AHEAD * forward
    delta = np.asarray(goal_xy, dtype=np.float64)[:2] - nose
    to_target = np.array([-sn * delta[0] + c * delta[1], -(c * delta[0] + sn * delta[1])])
    step = s[layout.time] * TIME_SCALE_STEPS
    return swimmer_observation(s[slice(*layout.joints)], s[slice(*layout.body_velocities)], step, TIME_SCALE_STEPS,
                               to_target)


# --- targets -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """One placed target: what it is and where (its slot's mocap body holds its geoms)."""

    shape: str
    colour: str
    xy: tuple[float, float]  # m, world
    dims: tuple[float, ...]  # box: half-width x, half-width y, height; pillar: radius, height; sphere: radius;
    # cone: index into CONE_HEIGHTS (all m)

    @property
    def height(self) -> float:
        """m, its top above the floor."""
        return SIZES.height(self.shape, self.dims)

    @property
    def half_extent(self) -> float:
        """m, its largest half-extent."""
        return SIZES.half_extent(self.shape, self.dims)

    @property
    def centre(self) -> np.ndarray:
        """World xyz of its bounding box's centre, m."""
        return np.array([self.xy[0], self.xy[1], self.height / 2])


def _segment_distance(p: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    """Distance (m) of point ``p`` from the segment ``a``-``b`` in the plane (plain floats: the layout
    sampler calls it thousands of times a reset)."""
    abx, aby = b[0] - a[0], b[1] - a[1]
    apx, apy = p[0] - a[0], p[1] - a[1]
    t = min(1.0, max(0.0, (apx * abx + apy * aby) / max(abx * abx + aby * aby, 1e-12)))
    return math.hypot(apx - t * abx, apy - t * aby)


class SwimmerFindEnv(FindEpisode, SwimmerEnv):
    """The swimmer of :class:`envs.swimmer.env.SwimmerEnv` finding the target an instruction names (module docstring)."""

    task_name = "swimmer_find"

    def __init__(self, **kwargs):
        """``kwargs``: any fields of :class:`SwimmerFindConfig`."""
        c = SwimmerFindConfig(**kwargs)
        self.find_config = c
        self.n_slots = int(c.n_targets[1])
        super().__init__(
            task="navigate", n_links=N_LINKS, fluid_density=c.fluid_density, fluid_viscosity=c.fluid_viscosity,
            control_timestep=c.control_timestep, time_scale_steps=TIME_SCALE_STEPS, render_mode=c.render_mode,
            width=c.width, height=c.height, camera_name=c.camera_name,
        )
        utils.EzPickle.__init__(self, **kwargs)  # pickles as this env, not as the parent's navigate task
        self.task = "find"  # the parent's navigate machinery (its reset, reward, info) is not used
        self.paraphrase = None if c.paraphrase is None else int(c.paraphrase)
        self.max_steps = max(1, int(round(c.episode_seconds / c.control_timestep)))
        self.state_layout = STATE_LAYOUT
        self.mount = camera_mount(c.camera_tilt_deg, CAMERA_FORWARD)
        self.mount_offset = np.array([0.0, -EYES_AHEAD, c.camera_height])  # m, head frame
        self.camera = RaycastCamera(self.model, c.image_width, c.image_height, c.fovy_deg, c.max_depth,
                                    geomgroup=CAMERA_GROUPS)
        h, w = c.image_height, c.image_width
        self.observation_space = spaces.Dict({
            "image": spaces.Box(0, 255, shape=(h, w, 3), dtype=np.uint8),
            "depth": spaces.Box(0.0, c.max_depth, shape=(h, w), dtype=np.float32),
            "state": spaces.Box(-np.inf, np.inf, shape=(STATE_LAYOUT.size,), dtype=np.float64),
            "instruction": spaces.Text(max_length=MAX_CHARS, charset=string.printable),
        })
        self._target_geom = self.model.geom("target").id
        self._slot_geoms = [SIZES.slot_geoms(self.model, f"target{i}") for i in range(self.n_slots)]
        self._reset_find_state()

    # --- model -----------------------------------------------------------------------------------
    def _initialize_simulation(self):
        """The parent's swimmer on a larger floor, ``n_slots`` target slots (mocap bodies) and the ``eye`` camera.

        Each slot holds one geom per shape, compiled at the largest size; a reset shows one of
        them, sized, and hides the rest (alpha 0). The swimmer's geoms move to ``SWIMMER_GROUP``
        and the navigate target marker to ``HIDDEN_GROUP``, so the ray camera sees neither.
        """
        c = self.find_config
        spec = mujoco.MjSpec.from_string(self._xml)
        spec.visual.global_.offwidth = max(spec.visual.global_.offwidth, self.width)
        spec.visual.global_.offheight = max(spec.visual.global_.offheight, self.height)
        spec.geom("ground").size = [FLOOR_HALF_SIZE, FLOOR_HALF_SIZE, 0.1]
        spec.geom("target").group = HIDDEN_GROUP
        for body in [spec.body("head"), *spec.body("head").find_all(mujoco.mjtObj.mjOBJ_BODY)]:
            for geom in body.geoms:
                geom.group = SWIMMER_GROUP
        SIZES.add_meshes(spec)
        for i in range(self.n_slots):
            body = spec.worldbody.add_body(name=f"target{i}", mocap=True, pos=[0.0, 0.0, PARKED_Z])
            # The inertial frame is the body frame: ray casting culls a body by its bounding box placed at
            # the inertial frame's origin unrotated, exact for these bodies that never turn.
            body.explicitinertial = True
            body.mass, body.inertia, body.ipos, body.iquat = 1.0, [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]
            SIZES.add_slot_geoms(body, f"target{i}", contype=0, conaffinity=0, group=0)  # markers: no contacts
        quat = np.empty(4)
        mujoco.mju_mat2Quat(quat, camera_mount(c.camera_tilt_deg, CAMERA_FORWARD).reshape(-1))
        spec.body("head").add_camera(name="eye", pos=[0.0, -EYES_AHEAD, c.camera_height], quat=quat, fovy=c.fovy_deg)
        model = spec.compile()
        return model, mujoco.MjData(model)

    def _shown_geoms(self, slot: int, target: Target) -> list[int]:
        return shown_geoms(self._slot_geoms[slot], target.shape, target.dims)

    def _apply_layout(self) -> None:
        """Write this episode's targets into the model (geom sizes, colours) and mocap poses, and the goal marker."""
        m, d = self.model, self.data
        for slot in range(self.n_slots):
            for geoms in self._slot_geoms[slot].values():
                m.geom_rgba[geoms, 3] = 0.0
            mocap = m.body_mocapid[m.body(f"target{slot}").id]
            if slot >= len(self._targets):
                d.mocap_pos[mocap] = (0.0, 0.0, PARKED_Z)
                continue
            t = self._targets[slot]
            d.mocap_pos[mocap] = (t.xy[0], t.xy[1], 0.0)
            shown = self._shown_geoms(slot, t)
            m.geom_rgba[shown] = COLOUR_RGBA[t.colour]
            resize_geom(m, shown[0], t.shape, t.dims)
        if self._targets:  # the navigate marker (hidden) sits on the goal: nose_to_target() points at it
            m.geom_pos[self._target_geom, :2] = self.goal

    # --- layout ----------------------------------------------------------------------------------
    def _draw_positions(self, n: int, frame: ViewFrame, rng: np.random.Generator) -> list[np.ndarray]:
        """``n`` target centres in the wedge ahead of ``frame``, spaced and off each other's sightlines."""
        c = self.find_config
        bearing = math.radians(c.target_bearing_deg)
        origin = (float(frame.origin[0]), float(frame.origin[1]))
        for _ in range(100):
            points: list[tuple[float, float]] = []
            ranges = rng.uniform(*c.target_distance, size=50 * n)
            angles = frame.yaw + rng.uniform(-bearing, bearing, size=50 * n)
            for r, a in zip(ranges.tolist(), angles.tolist()):
                p = (origin[0] + r * math.cos(a), origin[1] + r * math.sin(a))
                if all(math.hypot(p[0] - q[0], p[1] - q[1]) >= c.target_spacing
                       and _segment_distance(q, origin, p) >= c.sightline_clearance
                       and _segment_distance(p, origin, q) >= c.sightline_clearance for q in points):
                    points.append(p)
                    if len(points) == n:
                        return [np.array(q) for q in points]
        raise ValueError(f"cannot place {n} targets {c.target_spacing} m apart and {c.sightline_clearance} m off "
                         f"each other's sightlines in the wedge: widen target_distance or target_bearing_deg, "
                         f"or lower target_spacing, sightline_clearance or n_targets")

    def _draw_layout(self, frame: ViewFrame, rng: np.random.Generator) -> tuple[list[Target], int, Description]:
        """The targets, the named one's slot and its description (:func:`envs.find_task.draw_layout`)."""
        c = self.find_config

        def place(shape: str, colour: str, xy: np.ndarray) -> Target:
            return Target(shape, colour, (float(xy[0]), float(xy[1])), SIZES.draw_dims(shape, rng))

        return draw_layout(c.n_targets, TARGET_SHAPES, c.relation_prob, lambda n: self._draw_positions(n, frame, rng),
                           place, self._objects, frame, rng)

    def _objects(self, targets: list[Target]) -> list[SceneObject]:
        return [SceneObject(name=f"{t.colour}_{t.shape}_{slot}", shape=t.shape, colour=t.colour, position=t.centre,
                            size=t.half_extent, geom_ids=tuple(self._shown_geoms(slot, t)))
                for slot, t in enumerate(targets)]

    # --- episode state (snapshots) ---------------------------------------------------------------
    def _reset_find_state(self) -> None:
        self._targets: list[Target] = []
        self._named = 0
        self._description = Description("box")
        self._view_frame = ViewFrame()
        self._episode_paraphrase = self.paraphrase if self.paraphrase is not None else 0
        self._success = False
        self._scene_objects: list[SceneObject] = []  # this episode's targets as scene objects, and its wording:
        self._words = ""  # both fixed for an episode, so kept rather than rebuilt every step
        self.frame: CameraFrame | None = None  # the head camera's last frame (its geom map names what it sees)

    def _name_targets(self) -> None:
        """Keep this episode's scene objects and instruction (after its layout and wording are set)."""
        self._scene_objects = self._objects(self._targets)
        self._words = instruction(self._description, self._scene_objects, self._episode_paraphrase)

    def task_state(self) -> dict:
        """The parent's task state plus the target layout, the named target, its wording and the view frame."""
        return {**super().task_state(), "targets": [asdict(t) for t in self._targets], "named": self._named,
                "description": asdict(self._description), "paraphrase": self._episode_paraphrase,
                "view_frame": asdict(self._view_frame), "success": self._success}

    def set_task_state(self, state: dict) -> None:
        super().set_task_state(state)
        self._targets = [Target(t["shape"], t["colour"], tuple(t["xy"]), tuple(t["dims"])) for t in state["targets"]]
        self._named = int(state["named"])
        self._description = Description(**state["description"])
        self._episode_paraphrase = int(state["paraphrase"])
        frame = state["view_frame"]
        self._view_frame = ViewFrame(tuple(frame["origin"]), float(frame["yaw"]))
        self._success = bool(state["success"])
        self._apply_layout()
        self._name_targets()

    # --- what the env shows ------------------------------------------------------------------------
    @property
    def goal(self) -> np.ndarray:
        """World xy of the named target's centre, m."""
        return np.array(self._targets[self._named].xy, dtype=np.float64)

    @property
    def view_frame(self) -> ViewFrame:
        """The start pose, where this episode's relations are judged from."""
        return self._view_frame

    @property
    def instruction(self) -> str:
        return self._words

    def head_pose(self) -> tuple[np.ndarray, float]:
        """(world xy of the head body, m; the head's world yaw, rad: the direction its nose points)."""
        rot = self._head.xmat.reshape(3, 3)
        return self._head.xpos[:2].copy(), float(math.atan2(-rot[1, 1], -rot[0, 1]))

    def nose_distance(self) -> float:
        """m, the nose's planar distance to the goal."""
        return float(np.hypot(*(self.goal - self._nose.xpos[:2])))

    def camera_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """(world position, camera → world rotation) of the head camera in the current state."""
        rot = self._head.xmat.reshape(3, 3)
        return self._head.xpos + rot @ self.mount_offset, rot @ self.mount

    def scene(self) -> Scene:
        cam_pos, cam_rot = self.camera_pose()
        _, yaw = self.head_pose()
        objects = self._objects(self._targets)  # fresh: a scene is a snapshot
        return Scene(
            embodiment="swimmer", objects=tuple(objects), agent_position=self._head.xpos.copy(), agent_yaw=yaw,
            camera_position=cam_pos, camera_rotation=cam_rot,
            extras={"floor_half_size": FLOOR_HALF_SIZE, "target": objects[self._named].name, "goal": self.goal.copy(),
                    "instruction": self.instruction,
                    "view_frame": {"origin": self._view_frame.origin, "yaw": self._view_frame.yaw}},
        )

    def _get_obs(self) -> dict:
        position, yaw = self.head_pose()
        self.frame = self.camera.render(self.data, *self.camera_pose())
        return {"image": self.frame.rgb, "depth": self.frame.depth,
                "state": find_state(self.joint_angles(), self.body_velocities(), position, yaw, self._step_count),
                "instruction": self.instruction}

    # --- gymnasium API -----------------------------------------------------------------------------
    def reset_model(self) -> dict:
        rng, c = self.np_random, self.find_config
        self._reset_find_state()
        qpos = self.init_qpos.copy()
        qpos[:2] = rng.uniform(-c.start_offset, c.start_offset, size=2)
        heading = rng.uniform(-1.0, 1.0) * math.radians(c.start_yaw_deg)
        qpos[2] = heading + math.pi / 2  # the head points along its -y: rootz = yaw + 90°
        lim = joint_limit(N_LINKS)
        qpos[3:] = rng.uniform(-lim, lim, size=N_JOINTS)
        self.set_state(qpos, np.zeros(self.model.nv))  # at rest; mj_forward places the head
        position, yaw = self.head_pose()
        self._view_frame = ViewFrame((float(position[0]), float(position[1])), yaw)
        self._targets, self._named, self._description = self._draw_layout(self._view_frame, rng)
        self._episode_paraphrase = self._choose_paraphrase(rng)
        self._apply_layout()
        self._name_targets()
        mujoco.mj_forward(self.model, self.data)  # the targets' geom poses (mocap bodies moved)
        self._step_count = 0
        self._start_xy = position
        return self._get_obs()

    def _get_reset_info(self) -> dict:
        return self._find_info(self.nose_distance())

    def _find_info(self, distance: float) -> dict:
        return self._episode_info(self._scene_objects[self._named].name, distance)

    def _get_rew(self, before: float, after: float) -> tuple[float, dict[str, float]]:
        """The reward and its named terms (see the module docstring), added left to right."""
        terms = {
            "progress": PROGRESS_GAIN * (before - after),
            "success_bonus": self.find_config.success_bonus if self._success else 0.0,
        }
        return reduce(operator.add, terms.values()), terms

    def step(self, action):
        action = self.checked_action(action)
        before = self.nose_distance()
        self._step_mujoco_simulation(action, self.frame_skip)
        self._step_count += 1
        after = self.nose_distance()
        self._success = after <= self.find_config.success_radius
        reward, terms = self._get_rew(before, after)
        terminated = self._success
        truncated = not terminated and self._step_count >= self.max_steps
        info = self._find_info(after)
        info.update({f"reward_{name}": value for name, value in terms.items()})
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), float(reward), bool(terminated), bool(truncated), info

    # The parent's batched stepping assembles vector observations; this env's are Dicts.
    step_batch = None

