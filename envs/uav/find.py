"""Language-grounded landmark finding for the quadrotor: fly to the landmark an instruction names.

## Description
The quadrotor of :mod:`envs.uav.env` (same vehicles, physics, action modes, wind and gusts, so
the cascaded PID of :mod:`policies.pid` flies it) in an arena of ``arena_half_width`` m with 4–6
landmarks (``n_landmarks``): primitive shapes of :data:`envs.scene.SHAPES` (box, pillar = a
cylinder, sphere, cone = a mesh, ring = a standing hoop of capsules facing the start) in colours
of :data:`envs.scene.COLOURS`, with sizes and heights drawn per episode. An instruction names one
of them, e.g. "go to the red box" or "find the sphere left of the blue pillar"; the goal is the
point ``goal_height`` m above that landmark's top. Keyword arguments: the fields of
:class:`UAVFindConfig`, each with its unit.

## Layout (per reset, seeded)
Landmarks stand in a wedge ahead of the start heading (+x): ``landmark_distance`` m from the
arena centre, bearing within ±``landmark_bearing_deg``, centres at least ``landmark_spacing`` m
apart. The target always has distractors: with probability ``relation_prob`` a twin of the same
colour and shape (only a relation tells them apart), otherwise one of its shape in another colour
and one of its colour in another shape (both words are needed). The instruction is the shortest
unique description (:mod:`envs.find_instructions`; relations judged in the arena frame seen from
the nominal start pose, origin (0, 0) facing +x). A layout without a unique description is redrawn.
The vehicle starts level and at rest, yaw 0, within ±``start_offset`` m of the centre in x and y,
at a height in ``start_height``.

## Observation (``Dict``)
- ``image`` (uint8, ``image_height``×``image_width``×3) and ``depth`` (float32, same size, m along
  the optical axis, ``max_depth`` where nothing is seen): the onboard camera, looking forward and
  ``camera_tilt_deg`` down, ``fovy_deg`` vertical field of view, drawn by ray casting
  (:mod:`envs.raycast_camera`, no OpenGL). The same pose is the model's camera ``onboard``.
- ``state`` (float64, 22): world position (3, m), world velocity (3, m/s), body→world rotation
  (9, row-major), body rates (3, rad/s), last action (4); :class:`FindStateLayout` has the ranges
  and :func:`find_state` builds it. :func:`pid_observation` turns it into the hover observation
  of :func:`envs.uav.observation.uav_observation` for any goal, which the cascaded PID reads.
- ``instruction`` (``Text``, at most ``MAX_CHARS``): the episode's wording. ``paraphrase`` picks the
  wording index; ``None`` draws one per episode from the training wordings, or from the held-out
  ones when ``held_out``; ``reset(options={"paraphrase": k})`` sets it for one episode.

``env.frame`` keeps the camera's last :class:`envs.raycast_camera.CameraFrame`, whose ``geom`` map
names the geom seen at each pixel (a segmentation label for free; ``scene()`` maps geoms to objects).

## Action
As :mod:`envs.uav.env` (``Box(-1, 1, (4,))``): rotor thrusts or collective thrust + body rates.

## Reward (per control step), each term in ``info`` as ``reward_<term>``
``progress``: ``10·(d_prev − d)`` with ``d`` the distance to the goal (m); ``success_bonus``:
``success_bonus`` on the step the episode succeeds; ``crash_penalty``: ``−crash_penalty`` on a crash.

## Termination and truncation
Success: within ``success_radius`` m of the goal for ``hold_seconds`` without a crash. Crash: any
contact (the ground or a landmark), tilted past 90°, or leaving the flight volume
(``|x|, |y| > arena_half_width``, ``z > ceiling``). Both end the episode; ``episode_seconds`` truncates
it (the env keeps its own clock, so the registered id has no ``TimeLimit``).

## Info
``goal`` (world xyz, m), ``target`` (the named landmark's scene name), ``instruction``,
``paraphrase`` (the wording index), ``is_success``, ``distance_to_goal`` (m), ``crashed``; after a
step, the reward terms. :meth:`UAVFindEnv.scene` describes the layout as an :class:`envs.scene.Scene`.
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
from envs.scene import SHAPES, Scene, SceneObject
from envs.uav.disturbances import GustField
from envs.uav.env import ACTION_MODES, PHYSICS_TIMESTEP, UAVEnv
from envs.uav.model import PRESETS, preset
from envs.uav.observation import uav_observation
from envs.uav.rewards import PROGRESS_GAIN

# Landmark dimensions, m: ranges drawn per episode (the model is compiled at the largest).
BOX_HALF_WIDTH = (0.18, 0.3)
BOX_HEIGHT = (0.3, 0.9)
PILLAR_RADIUS = (0.1, 0.16)
PILLAR_HEIGHT = (0.8, 1.5)
SPHERE_RADIUS = (0.18, 0.3)
CONE_RADIUS = 0.25
CONE_HEIGHTS = (0.5, 0.8, 1.1)  # one mesh each: a mesh cannot be resized at run time
SIZES = ShapeSizes(BOX_HALF_WIDTH, BOX_HEIGHT, PILLAR_RADIUS, PILLAR_HEIGHT, SPHERE_RADIUS, CONE_RADIUS, CONE_HEIGHTS)
RING_RADIUS = (0.25, 0.4)  # of the tube's centre line
RING_TUBE = 0.05  # the tube's radius
RING_SEGMENTS = 10
PARKED_Z = -5.0  # unused landmark slots wait below the floor (and are invisible and collision-free)
VIEW_FRAME = ViewFrame(origin=(0.0, 0.0), yaw=0.0)  # the nominal start pose, where relations are judged from


CAMERA_FORWARD = (1.0, 0.0, 0.0)  # the onboard camera looks along the body's +x

@dataclass(frozen=True)
class UAVFindConfig:
    """The env's keyword arguments (``UAVFindEnv(**kwargs)``, the keys of ``env=uav_find``), checked on construction."""

    vehicle: str = "cf2"  # preset of envs.uav.model: cf2 (27 g) | x2 (1.3 kg)
    action_mode: str = "rotor"  # rotor: per-rotor thrusts | ctbr: collective thrust + body rates
    control_hz: float = 100.0  # Hz, the action rate; must divide the 500 Hz physics rate
    episode_seconds: float = 10.0  # s before truncation: a landmark 4 m away takes about 4 s with the PID
    n_landmarks: tuple[int, int] = (4, 6)  # range of the landmark count per episode (inclusive)
    arena_half_width: float = 5.0  # m, the flight volume's |x| and |y| limit
    ceiling: float = 4.0  # m, the flight volume's top
    landmark_distance: tuple[float, float] = (1.5, 4.0)  # m from the arena centre, range
    landmark_bearing_deg: float = 32.0  # deg, half-width of the wedge ahead of the start heading (inside the view)
    landmark_spacing: float = 1.0  # m, the least distance between two landmarks' centres
    relation_prob: float = 0.5  # share of layouts with a twin of the target (named through a relation)
    start_offset: float = 0.3  # m, start position uniform within ± this of the centre in x and y
    start_height: tuple[float, float] = (1.6, 2.0)  # m, range of the start height (the tallest landmark is 1.5 m)
    image_width: int = 32  # px, the onboard camera's image width
    image_height: int = 32  # px, the onboard camera's image height
    fovy_deg: float = 70.0  # deg, the onboard camera's vertical field of view
    camera_tilt_deg: float = 20.0  # deg, the onboard camera's pitch below the body's forward axis
    max_depth: float = 10.0  # m, the depth image's range (farther: max_depth)
    paraphrase: int | None = None  # instruction wording index; None: drawn per episode
    held_out: bool = False  # draw the wording from the held-out ones (evaluation on unseen wordings)
    goal_height: float = 0.5  # m, the goal's height above the named landmark's top
    success_radius: float = 0.25  # m, the goal counts as reached within this distance
    hold_seconds: float = 0.5  # s, how long the vehicle must stay within success_radius
    success_bonus: float = 10.0  # reward on the step the episode succeeds
    crash_penalty: float = 10.0  # reward lost on a crash or on leaving the flight volume
    wind: tuple[float, float, float] = (0.0, 0.0, 0.0)  # m/s, world frame, constant
    gust_speed: float = 0.0  # m/s, each gust's peak; 0: no gusts
    gust_interval: float = 2.0  # s, mean pause between gusts (exponential)
    gust_duration: tuple[float, float] = (0.5, 2.0)  # s, range of a gust's length
    render_mode: str | None = None  # gymnasium's render mode (OpenGL; the observation never needs it)
    width: int = 320  # px, rendered image width (render(), not the observation's camera)
    height: int = 240  # px, rendered image height
    camera_name: str | None = "chase"  # the camera render() uses ("onboard": the observation's pose)

    def __post_init__(self):
        check_number_fields(self)  # numbers first: the checks below compare them
        check_camera_and_wording(self)
        if self.vehicle not in PRESETS:
            raise ValueError(f"unknown vehicle {self.vehicle!r}; choose one of {sorted(PRESETS)}")
        if self.action_mode not in ACTION_MODES:
            raise ValueError(f"unknown action_mode {self.action_mode!r}; choose one of {ACTION_MODES}")
        lo, hi = range_pair(self, "n_landmarks")
        if not (int(lo) == lo and int(hi) == hi and 3 <= lo <= hi <= 8):
            raise ValueError(f"n_landmarks must be a range [low, high] of whole numbers with 3 <= low <= high <= 8, "
                             f"got {list(self.n_landmarks)}")
        for name in ("episode_seconds", "arena_half_width", "ceiling", "landmark_spacing", "success_radius",
                     "hold_seconds", "control_hz"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("start_offset", "goal_height", "success_bonus", "crash_penalty", "gust_speed"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("landmark_distance", "start_height", "gust_duration"):
            low, high = range_pair(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} must be a range [low, high] with 0 < low <= high, got {list(getattr(self, name))}")
        frame_skip = round(1.0 / (self.control_hz * PHYSICS_TIMESTEP))
        if frame_skip < 1 or not math.isclose(frame_skip * PHYSICS_TIMESTEP * self.control_hz, 1.0):
            raise ValueError(f"control_hz must divide the {1 / PHYSICS_TIMESTEP:.0f} Hz physics rate, got {self.control_hz}")
        if not 0 < self.landmark_bearing_deg < 90:
            raise ValueError(f"landmark_bearing_deg must be in (0, 90) degrees, got {self.landmark_bearing_deg}")
        if self.landmark_distance[1] + RING_RADIUS[1] + 0.5 > self.arena_half_width:
            raise ValueError(f"landmark_distance {list(self.landmark_distance)} m puts landmarks outside the arena "
                             f"(arena_half_width {self.arena_half_width} m)")
        if self.start_height[1] >= self.ceiling:
            raise ValueError(f"start_height must lie below the ceiling ({self.ceiling} m), got {list(self.start_height)}")
        if PILLAR_HEIGHT[1] + self.goal_height >= self.ceiling:
            raise ValueError(f"goal_height {self.goal_height} m above the tallest landmark ({PILLAR_HEIGHT[1]} m) "
                             f"reaches the ceiling ({self.ceiling} m)")
        if (not isinstance(self.wind, list | tuple) or len(self.wind) != 3
                or any(isinstance(v, bool) or not isinstance(v, int | float) for v in self.wind)):
            raise ValueError(f"wind must be a 3-vector in m/s, got {self.wind!r}")


# --- the state vector and the PID's view of it -------------------------------------------------
@dataclass(frozen=True)
class FindStateLayout:
    """Half-open index ranges of the ``state`` observation's parts (all world frame but the rates)."""

    position: tuple[int, int] = (0, 3)  # m, world
    velocity: tuple[int, int] = (3, 6)  # m/s, world
    rotation: tuple[int, int] = (6, 15)  # body → world, row-major
    body_rates: tuple[int, int] = (15, 18)  # rad/s, body frame
    last_action: tuple[int, int] = (18, 22)  # the previous action
    size: int = 22


STATE_LAYOUT = FindStateLayout()


def find_state(position, velocity, rotation, body_rates, last_action) -> np.ndarray:
    """The 22-float ``state`` observation from world-frame state (the ROS side can build it the same way)."""
    return np.concatenate([np.asarray(position, dtype=np.float64), np.asarray(velocity, dtype=np.float64),
                           np.asarray(rotation, dtype=np.float64).reshape(9), np.asarray(body_rates, dtype=np.float64),
                           np.asarray(last_action, dtype=np.float64)])


def pid_observation(state, goal, target_yaw: float = 0.0) -> np.ndarray:
    """The hover observation (:func:`envs.uav.observation.uav_observation`) for flying to ``goal`` (world, m)."""
    s, layout = np.asarray(state, dtype=np.float64), STATE_LAYOUT

    def part(name: str) -> np.ndarray:
        lo, hi = getattr(layout, name)
        return s[lo:hi]

    return uav_observation(part("position"), part("velocity"), part("rotation").reshape(3, 3), part("body_rates"),
                           part("last_action"), goal, (), target_yaw)


# --- landmarks -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Landmark:
    """One placed landmark: what it is and where (its slot's mocap body holds its geoms)."""

    shape: str
    colour: str
    xy: tuple[float, float]  # m, world
    yaw: float  # rad, its body's heading (a ring's opening faces the arena centre)
    dims: tuple[float, ...]  # box: half-width x, half-width y, height; pillar: radius, height; sphere: radius;
    # cone: index into CONE_HEIGHTS; ring: centre-line radius (all m)

    @property
    def height(self) -> float:
        """m, its top above the ground."""
        return 2.0 * (self.dims[0] + RING_TUBE) if self.shape == "ring" else SIZES.height(self.shape, self.dims)

    @property
    def half_extent(self) -> float:
        """m, its largest half-extent."""
        return self.height / 2 if self.shape == "ring" else SIZES.half_extent(self.shape, self.dims)

    @property
    def centre(self) -> np.ndarray:
        """World xyz of its bounding box's centre, m."""
        return np.array([self.xy[0], self.xy[1], self.height / 2])


def _draw_dims(shape: str, rng: np.random.Generator) -> tuple[float, ...]:
    return (float(rng.uniform(*RING_RADIUS)),) if shape == "ring" else SIZES.draw_dims(shape, rng)


def _ring_segments(radius: float) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """(local position, quaternion, half-length) of each capsule of a standing ring in the body's y-z plane."""
    centre = np.array([0.0, 0.0, radius + RING_TUBE])
    step = 2.0 * math.pi / RING_SEGMENTS
    out = []
    for i in range(RING_SEGMENTS):
        mid = (i + 0.5) * step
        pos = centre + radius * math.cos(step / 2) * np.array([0.0, math.cos(mid), math.sin(mid)])
        quat = np.array([math.cos(mid / 2), math.sin(mid / 2), 0.0, 0.0])  # turns the capsule's z onto the tangent
        out.append((pos, quat, radius * math.sin(step / 2)))
    return out


class UAVFindEnv(FindEpisode, UAVEnv):
    """The quadrotor of :class:`envs.uav.env.UAVEnv` finding the landmark an instruction names (module docstring)."""

    task_name = "uav_find"

    def __init__(self, **kwargs):
        """``kwargs``: any fields of :class:`UAVFindConfig`."""
        c = UAVFindConfig(**kwargs)
        self.find_config = c
        self.n_slots = int(c.n_landmarks[1])
        super().__init__(
            task="hover", vehicle=c.vehicle, action_mode=c.action_mode, control_hz=c.control_hz,
            episode_seconds=c.episode_seconds, arena_half_width=c.arena_half_width, ceiling=c.ceiling,
            wind=tuple(c.wind), gust_speed=c.gust_speed, gust_interval=c.gust_interval,
            gust_duration=tuple(c.gust_duration), success_radius=c.success_radius, crash_penalty=c.crash_penalty,
            render_mode=c.render_mode, width=c.width, height=c.height, camera_name=c.camera_name,
            init_pos_range=0.0, init_vel_range=0.0, init_tilt_deg=0.0, init_rate_range=0.0,
        )
        utils.EzPickle.__init__(self, **kwargs)  # pickles as this env, not as the parent's hover task
        self.task = "find"  # the parent's hover machinery (its reset, reward, info) is not used
        self.paraphrase = None if c.paraphrase is None else int(c.paraphrase)
        self.hold_steps = max(1, int(round(c.hold_seconds / self.control_dt)))
        self.state_layout = STATE_LAYOUT
        self.mount = camera_mount(c.camera_tilt_deg, CAMERA_FORWARD)
        self.mount_offset = np.array([self.params.frame_half_size[0] + 0.01, 0.0, 0.0])  # m, body frame
        self.camera = RaycastCamera(self.model, c.image_width, c.image_height, c.fovy_deg, c.max_depth,
                                    bodyexclude=self._body)
        h, w = c.image_height, c.image_width
        self.observation_space = spaces.Dict({
            "image": spaces.Box(0, 255, shape=(h, w, 3), dtype=np.uint8),
            "depth": spaces.Box(0.0, c.max_depth, shape=(h, w), dtype=np.float32),
            "state": spaces.Box(-np.inf, np.inf, shape=(STATE_LAYOUT.size,), dtype=np.float64),
            "instruction": spaces.Text(max_length=MAX_CHARS, charset=string.printable),
        })
        self._slot_geoms = [self._geoms_of_slot(i) for i in range(self.n_slots)]
        self._reset_find_state()

    # --- model -----------------------------------------------------------------------------------
    def _initialize_simulation(self):
        """The parent's quadrotor plus ``n_slots`` landmark slots (mocap bodies) and the ``onboard`` camera.

        Each slot holds one geom per shape, compiled at the largest size; a reset shows one of
        them, sized, and hides the rest (alpha 0, no collisions). Mid-phase collision culling is
        off: it keeps each geom's compiled bounding box, and a smaller ring's capsules move out of theirs.
        """
        c = self.find_config
        spec = mujoco.MjSpec.from_string(self._xml)
        spec.option.disableflags |= mujoco.mjtDisableBit.mjDSBL_MIDPHASE
        spec.visual.global_.offwidth = max(spec.visual.global_.offwidth, self.width)
        spec.visual.global_.offheight = max(spec.visual.global_.offheight, self.height)
        SIZES.add_meshes(spec)
        g = mujoco.mjtGeom
        for i in range(self.n_slots):
            body = spec.worldbody.add_body(name=f"landmark{i}", mocap=True, pos=[0.0, 0.0, PARKED_Z])
            # The inertial frame is the body frame: ray casting culls a body by its bounding box placed at
            # the inertial frame's origin unrotated, exact for these bodies that only turn about z.
            body.explicitinertial = True
            body.mass, body.inertia, body.ipos, body.iquat = 1.0, [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]
            SIZES.add_slot_geoms(body, f"landmark{i}")
            for k, (pos, quat, half) in enumerate(_ring_segments(RING_RADIUS[1])):
                body.add_geom(name=f"landmark{i}_ring{k}", type=g.mjGEOM_CAPSULE, size=[RING_TUBE, half, 0],
                              pos=pos, quat=quat)
        quat = np.empty(4)
        mujoco.mju_mat2Quat(quat, camera_mount(c.camera_tilt_deg, CAMERA_FORWARD).reshape(-1))
        offset = [preset(c.vehicle).frame_half_size[0] + 0.01, 0.0, 0.0]
        spec.body("quad").add_camera(name="onboard", pos=offset, quat=quat, fovy=c.fovy_deg)
        model = spec.compile()
        return model, mujoco.MjData(model)

    def _geoms_of_slot(self, slot: int) -> dict[str, list[int]]:
        """Geom ids of each shape in one slot (the cone's: one per height; the ring's: its capsules)."""
        m = self.model
        return {**SIZES.slot_geoms(m, f"landmark{slot}"),
                "ring": [m.geom(f"landmark{slot}_ring{k}").id for k in range(RING_SEGMENTS)]}

    def _shown_geoms(self, slot: int, lm: Landmark) -> list[int]:
        return shown_geoms(self._slot_geoms[slot], lm.shape, lm.dims)

    def _apply_layout(self) -> None:
        """Write this episode's landmarks into the model (geom sizes, colours, collisions) and mocap poses."""
        m, d = self.model, self.data
        for slot in range(self.n_slots):
            for geoms in self._slot_geoms[slot].values():
                m.geom_rgba[geoms, 3] = 0.0
                m.geom_contype[geoms] = 0
                m.geom_conaffinity[geoms] = 0
            mocap = m.body_mocapid[m.body(f"landmark{slot}").id]
            if slot >= len(self._landmarks):
                d.mocap_pos[mocap] = (0.0, 0.0, PARKED_Z)
                continue
            lm = self._landmarks[slot]
            d.mocap_pos[mocap] = (lm.xy[0], lm.xy[1], 0.0)
            d.mocap_quat[mocap] = (math.cos(lm.yaw / 2), 0.0, 0.0, math.sin(lm.yaw / 2))
            shown = self._shown_geoms(slot, lm)
            m.geom_rgba[shown] = COLOUR_RGBA[lm.colour]
            m.geom_contype[shown] = 1
            m.geom_conaffinity[shown] = 1
            if lm.shape == "ring":
                for geom, (pos, _, half) in zip(shown, _ring_segments(lm.dims[0])):
                    m.geom_size[geom] = (RING_TUBE, half, 0.0)
                    m.geom_pos[geom] = pos
            else:
                resize_geom(m, shown[0], lm.shape, lm.dims)

    # --- layout ----------------------------------------------------------------------------------
    def _draw_positions(self, n: int, rng: np.random.Generator) -> list[np.ndarray]:
        c = self.find_config
        bearing = math.radians(c.landmark_bearing_deg)
        for _ in range(100):
            points = np.empty((0, 2))
            for _ in range(50 * n):
                r, a = rng.uniform(*c.landmark_distance), rng.uniform(-bearing, bearing)
                p = np.array([r * math.cos(a), r * math.sin(a)])
                if np.all(np.hypot(*(points - p).T) >= c.landmark_spacing):
                    points = np.vstack([points, p])
                    if len(points) == n:
                        return list(points)
        raise ValueError(f"cannot place {n} landmarks {c.landmark_spacing} m apart in the wedge: widen "
                         f"landmark_distance or landmark_bearing_deg, or lower landmark_spacing")

    def _draw_layout(self, rng: np.random.Generator) -> tuple[list[Landmark], int, Description]:
        """The landmarks, the target's slot and its description (:func:`envs.find_task.draw_layout`)."""
        c = self.find_config

        def place(shape: str, colour: str, xy: np.ndarray) -> Landmark:
            yaw = math.atan2(VIEW_FRAME.origin[1] - xy[1], VIEW_FRAME.origin[0] - xy[0])  # facing the start
            return Landmark(shape, colour, (float(xy[0]), float(xy[1])), yaw, _draw_dims(shape, rng))

        return draw_layout(c.n_landmarks, SHAPES, c.relation_prob, lambda n: self._draw_positions(n, rng), place,
                           self._objects, VIEW_FRAME, rng)

    def _objects(self, landmarks: list[Landmark]) -> list[SceneObject]:
        objects = []
        for slot, lm in enumerate(landmarks):
            objects.append(SceneObject(name=f"{lm.colour}_{lm.shape}_{slot}", shape=lm.shape, colour=lm.colour,
                                       position=lm.centre, size=lm.half_extent,
                                       geom_ids=tuple(self._shown_geoms(slot, lm))))
        return objects

    # --- episode state (snapshots) ---------------------------------------------------------------
    def _reset_find_state(self) -> None:
        self._landmarks: list[Landmark] = []
        self._target = 0
        self._description = Description("box")
        self._episode_paraphrase = self.paraphrase if self.paraphrase is not None else 0
        self._hold = 0
        self._success = False
        self.frame: CameraFrame | None = None  # the onboard camera's last frame (its geom map names what it sees)

    def task_state(self) -> dict:
        """The parent's task state plus the landmark layout, the target, its wording and the hold counter."""
        return {**super().task_state(), "landmarks": [asdict(lm) for lm in self._landmarks], "target": self._target,
                "description": asdict(self._description), "paraphrase": self._episode_paraphrase,
                "hold": self._hold, "success": self._success}

    def set_task_state(self, state: dict) -> None:
        super().set_task_state(state)
        self._landmarks = [Landmark(lm["shape"], lm["colour"], tuple(lm["xy"]), float(lm["yaw"]), tuple(lm["dims"]))
                           for lm in state["landmarks"]]
        self._target = int(state["target"])
        self._description = Description(**state["description"])
        self._episode_paraphrase = int(state["paraphrase"])
        self._hold = int(state["hold"])
        self._success = bool(state["success"])
        self._apply_layout()

    # --- what the env shows ------------------------------------------------------------------------
    @property
    def goal(self) -> np.ndarray:
        """World xyz of the named landmark's goal point, m."""
        return self.target

    @property
    def instruction(self) -> str:
        return instruction(self._description, self._objects(self._landmarks), self._episode_paraphrase)

    def camera_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """(world position, camera → world rotation) of the onboard camera in the current state."""
        pos, _, rot, _ = self.state()
        return pos + rot @ self.mount_offset, rot @ self.mount

    def scene(self) -> Scene:
        pos, _, rot, _ = self.state()
        cam_pos, cam_rot = self.camera_pose()
        objects = self._objects(self._landmarks)
        return Scene(
            embodiment="uav", objects=tuple(objects), agent_position=pos,
            agent_yaw=float(math.atan2(rot[1, 0], rot[0, 0])), camera_position=cam_pos, camera_rotation=cam_rot,
            extras={"arena_half_width": self.arena_half_width, "target": objects[self._target].name,
                    "goal": self.goal.copy(), "instruction": self.instruction,
                    "view_frame": {"origin": VIEW_FRAME.origin, "yaw": VIEW_FRAME.yaw}},
        )

    def _get_obs(self, true_state: tuple | None = None) -> dict:
        pos, vel, rot, rate = true_state if true_state is not None else self.state()
        mujoco.mj_kinematics(self.model, self.data)  # geom poses of this qpos (mj_step leaves them a substep behind)
        self.frame = self.camera.render(self.data, pos + rot @ self.mount_offset, rot @ self.mount)
        return {"image": self.frame.rgb, "depth": self.frame.depth,
                "state": find_state(pos, vel, rot, rate, self._last_action), "instruction": self.instruction}

    # --- gymnasium API -----------------------------------------------------------------------------
    def reset_model(self) -> dict:
        rng, c = self.np_random, self.find_config
        self._reset_episode_state()
        self._reset_find_state()
        self._landmarks, self._target, self._description = self._draw_layout(rng)
        self._episode_paraphrase = self._choose_paraphrase(rng)
        target = self._landmarks[self._target]
        self._waypoints = np.array([[target.xy[0], target.xy[1], target.height + c.goal_height]])
        self._apply_layout()
        start = np.array([rng.uniform(-c.start_offset, c.start_offset), rng.uniform(-c.start_offset, c.start_offset),
                          rng.uniform(*c.start_height)])
        self.set_state(np.concatenate([start, [1.0, 0.0, 0.0, 0.0]]), np.zeros(6))  # level, yaw 0, at rest
        self.data.act[:] = self.params.hover_thrust  # motors spinning at hover speed
        self._gusts = GustField(rng=rng, **self.wind_config)
        self._air = self._gusts.velocity(0.0)
        self.model.site_pos[self._target_site] = self.goal
        return self._get_obs()

    def _get_reset_info(self) -> dict:
        return self._find_info(float(np.linalg.norm(self.goal - self.data.qpos[:3])), crashed=False)

    def _find_info(self, distance: float, crashed: bool) -> dict:
        return {**self._episode_info(self._objects(self._landmarks)[self._target].name, distance),
                "crashed": bool(crashed)}

    def _get_rew(self, before: float, after: float, crashed: bool) -> tuple[float, dict[str, float]]:
        """The reward and its named terms (see the module docstring), added left to right."""
        terms = {
            "progress": PROGRESS_GAIN * (before - after),
            "success_bonus": self.find_config.success_bonus if self._success else 0.0,
            "crash_penalty": -self.crash_penalty if crashed else 0.0,
        }
        return reduce(operator.add, terms.values()), terms

    def step(self, action):
        action = self.checked_action(action)
        before = float(np.linalg.norm(self.goal - self.data.qpos[:3]))
        self._step_physics(action)
        self._step_count += 1
        true_state = self.state()
        pos, _, rot, _ = true_state
        after = float(np.linalg.norm(self.goal - pos))
        crashed = self._crashed(rot) or self._out_of_bounds(pos)
        self._hold = self._hold + 1 if after <= self.success_radius and not crashed else 0
        self._success = self._hold >= self.hold_steps
        reward, terms = self._get_rew(before, after, crashed)
        self._last_action = action
        terminated = crashed or self._success
        truncated = not terminated and self._step_count >= self.max_steps
        info = self._find_info(after, crashed)
        info.update({f"reward_{name}": value for name, value in terms.items()})
        if self.render_mode == "human":
            self.render()
        return self._get_obs(true_state), float(reward), bool(terminated), bool(truncated), info
