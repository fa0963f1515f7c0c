"""The kitchen as a pointing task: where is the object an instruction names?

## Description
The Franka kitchen of :mod:`envs.kitchen.env` (same model, physics, actions, tasks and success)
seen by a fixed scene camera. Each episode is one of the kitchen's seven tasks, drawn from
``tasks`` and named only by its instruction (the kitchen's own wordings,
:mod:`envs.kitchen.instructions`). A spatial brain reads the image and the instruction and
answers with the task's *interaction point* (world xyz, m); :class:`PointedExpert`, the
kitchen's scripted expert anchored on that point instead of the true one, then does the task.
Success is the kitchen task's own (its object joints within 0.3 of the goal). Keyword
arguments: the fields of :class:`KitchenPointConfig`, each with its unit.

## Interaction points (``info["goal"]``; :data:`envs.kitchen.experts.INTERACTION_POINTS`)
The point the scripted expert builds its plan on, a model site plus a fixed world offset,
computed from the current state (it moves with an opening door or a carried kettle):

| task            | the point                                                              |
|-----------------|------------------------------------------------------------------------|
| ``microwave``   | the door's handle bar, 8 cm above its centre (``microhandle_site`` + 0.08 z): the hand closes there |
| ``kettle``      | the top of the kettle's handle (``kettle_site``): grasped from above-behind |
| ``light_switch``| the lever's tip (``light_site``): the closed fingers sweep through it from its right to its left |
| ``slide_cabinet``| the sliding door's handle (``slide_site``): grasped, pulled along +x   |
| ``hinge_cabinet``| the right door's handle (``hinge_site2``): grasped, swung open         |
| ``bottom_burner``| the front-left knob's grip, 3 cm in front of its centre (``knob2_site`` − 0.03 y) |
| ``top_burner``  | the back-left knob's grip (``knob4_site`` − 0.03 y)                     |

## Observation (``Dict``)
- ``image`` (uint8, ``image_height``×``image_width``×3) and ``depth`` (float32, same size, m along
  the optical axis, ``max_depth`` where nothing is seen): the fixed camera ``pointing`` at
  :data:`CAMERA_POSITION`, looking at :data:`CAMERA_TARGET` (world up +z), :data:`CAMERA_FOVY_DEG`
  vertical field of view: behind and left of the robot's base, above its shoulder, it sees all
  seven interaction points at every level, each within 80 % of the half-frame from the image
  centre and none hidden by the arm at its start pose. Drawn by ray casting (:mod:`envs.raycast_camera`, no OpenGL) over
  the visual geom groups 0-2, with each geom's material colour read at every frame (level L2
  recolours and retextures materials). The ray caster shades by a headlight, so L1's lighting
  changes do not reach the image; its pose changes do. The model's camera ``pointing`` has the
  same pose (``render()`` through OpenGL).
- ``state`` (float64, 8): the kitchen's proprioception, the 7 arm joint angles (rad) and the
  gripper opening in [0, 1] (:func:`envs.kitchen.env.proprio_from_qpos`).
- ``instruction`` (``Text``): the episode's task in its wording. ``paraphrase`` picks the wording
  index; ``None`` draws one per episode from the training wordings, or from the held-out ones
  (the last :data:`envs.kitchen.instructions.HELD_OUT` of each task) when ``held_out``;
  ``reset(options={"paraphrase": k})`` sets it for one episode and ``reset(options={"task": name})``
  the task.

``env.frame`` keeps the camera's last :class:`envs.raycast_camera.CameraFrame` (its ``geom`` map
names the geom seen at each pixel; ``scene()`` maps geoms to objects).

## Action, reward, termination
The kitchen's (:mod:`envs.kitchen.env`): 8 absolute joint targets; the reward is 1 on the step
the task is done; the episode terminates on success (``terminate_on_success``) and is truncated
after ``episode_steps`` control steps (12.5 Hz; the default 250 = 20 s: with the true point the
slowest expert, ``hinge_cabinet``, succeeds by step 130 and after a re-grasp by step 190, and an
expert's plan with both its re-plans plays out within about 250 steps).

## Levels
``L0``, ``L1`` (object poses and lighting) and ``L2`` (plus textures, colours and distractors)
as :mod:`envs.kitchen.variation`; the kitchen's ``L3`` (held-out wordings) is ``L1`` with
``held_out=true`` here.

## Info
The kitchen's (``task``, ``errors``, ``completed``, ``n_completed``, ``is_success``), plus ``goal``
(the interaction point, world xyz, m), ``target`` (the task's name), ``instruction``,
``paraphrase`` (the wording index) and ``distance_to_goal`` (the gripper site to the goal, m).
:meth:`KitchenPointEnv.scene` describes the state as an :class:`envs.scene.Scene`.

## The pointed expert's tolerance
:class:`PointedExpert` with the true point succeeds on every task at every level. A point error
costs most where the hand closes on a small part at a fixed depth or height: a knob's grip (an
error towards the robot leaves the fingers in front of it), the microwave's handle bar, and
the light switch's thin lever (swept at the point's height, so about 1 cm of height error misses
it). The slide cabinet's handle tolerates 5 cm in any direction. The success-versus-error table
(random directions, per task) is measured in issue 27.
"""

from __future__ import annotations

import math
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import mujoco
import numpy as np
from gymnasium import spaces, utils

from envs.kitchen.env import TASK_BY_NAME, TASKS, KitchenEnv
from envs.kitchen.experts import PLANS, KitchenExpert, Waypoint, interaction_point
from envs.kitchen.instructions import MAX_CHARS, draw_paraphrase, n_paraphrases
from envs.kitchen.model import GRIPPER_SITE
from envs.raycast_camera import CameraFrame, RaycastCamera, _texture_means
from envs.scene import Scene, SceneObject

POINT_LEVELS = ("L0", "L1", "L2")
POINT_CAMERA = "pointing"
CAMERA_POSITION = (-0.4, -0.7, 2.9)  # m, world: behind-left of the robot's base (0, 0, 1.8), above its shoulder
CAMERA_TARGET = (-0.375, 0.5, 2.24)  # m, world: the middle of the seven interaction points' bounding box
CAMERA_FOVY_DEG = 45.0
VISUAL_GROUPS = (1, 1, 1, 0, 0, 0)  # geom groups the camera sees: MuJoCo's default visible ones (not collision)
AGENT_YAW = math.pi / 2  # rad: the robot faces +y, the kitchen
# The body whose subtree is each task's object in scene() (its geoms, its extent).
OBJECT_BODIES = {
    "microwave": "microwave", "kettle": "kettle", "light_switch": "lightswitchbaseroot",
    "slide_cabinet": "slidecabinet", "hinge_cabinet": "hingecabinet", "bottom_burner": "knob 2",
    "top_burner": "knob 4",
}


def look_at(position, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera → world rotation of a camera at ``position`` looking at ``target`` (MuJoCo's: looks along -z, +y up)."""
    forward = np.asarray(target, dtype=np.float64) - np.asarray(position, dtype=np.float64)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    return np.column_stack([right, np.cross(right, forward), -forward])


CAMERA_ROTATION = look_at(CAMERA_POSITION, CAMERA_TARGET)


@dataclass(frozen=True)
class KitchenPointConfig:
    """The env's keyword arguments (``KitchenPointEnv(**kwargs)``, the keys of ``env=kitchen_point``), checked on construction."""

    tasks: Sequence[str] = TASKS  # the kitchen tasks episodes are drawn from, uniformly
    level: str = "L1"  # scene variation: L0 none | L1 object poses, lighting | L2 + textures, distractors
    paraphrase: int | None = None  # instruction wording index; None: drawn per episode
    held_out: bool = False  # draw the wording from the held-out ones (evaluation on unseen wordings)
    episode_steps: int = 250  # control steps (12.5 Hz, 20 s) before truncation: the slowest expert's plan, re-plans included
    terminate_on_success: bool = True  # end the episode once the task is done
    reset_noise: float = 0.02  # rad, uniform noise on each arm joint at reset
    image_width: int = 32  # px, the scene camera's image width
    image_height: int = 32  # px, the scene camera's image height
    max_depth: float = 4.0  # m, the depth image's range (farther: max_depth); the kitchen lies within 2.5 m
    render_mode: str | None = None  # gymnasium's render mode (OpenGL; the observation never needs it)
    width: int = 320  # px, rendered image width (render(), not the observation's camera)
    height: int = 240  # px, rendered image height
    camera_name: str | None = POINT_CAMERA  # the camera render() uses

    def __post_init__(self):
        tasks = (self.tasks,) if isinstance(self.tasks, str) else self.tasks
        if not isinstance(tasks, Sequence) or not tasks or any(not isinstance(t, str) or t not in TASK_BY_NAME for t in tasks):
            raise ValueError(f"tasks must be a non-empty list of kitchen tasks from {TASKS}, got {self.tasks!r}")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks must not repeat a task, got {list(tasks)}")
        if self.level not in POINT_LEVELS:
            raise ValueError(f"level must be one of {POINT_LEVELS} (held-out wordings: held_out=true), got {self.level!r}")
        if self.paraphrase is not None:
            if isinstance(self.paraphrase, bool) or not isinstance(self.paraphrase, int | np.integer):
                raise ValueError(f"paraphrase must be a wording index or null, got {self.paraphrase!r}")
            for t in tasks:
                if not 0 <= self.paraphrase < n_paraphrases(t):
                    raise ValueError(f"paraphrase must be in 0..{n_paraphrases(t) - 1} for {t!r} or null, "
                                     f"got {self.paraphrase}")
        for name in ("held_out", "terminate_on_success"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name, high in (("episode_steps", None), ("image_width", 1024), ("image_height", 1024)):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1
                    or (high is not None and value > high)):
                raise ValueError(f"{name} must be a whole number from 1{f' to {high}' if high else ''}, got {value!r}")
        for name in ("reset_noise", "max_depth"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int | float):
                raise ValueError(f"{name} must be a number, got {getattr(self, name)!r}")
        if not self.reset_noise >= 0:
            raise ValueError(f"reset_noise must be >= 0 rad, got {self.reset_noise}")
        if not self.max_depth > 0:
            raise ValueError(f"max_depth must be a positive distance in m, got {self.max_depth}")

    @property
    def task_pool(self) -> tuple[str, ...]:
        return (self.tasks,) if isinstance(self.tasks, str) else tuple(self.tasks)


class MaterialCamera(RaycastCamera):
    """A ray-cast camera that reads material colours and textures at every frame.

    :class:`~envs.raycast_camera.RaycastCamera` fixes material colours at construction; the
    kitchen's level L2 recolours materials and swaps their textures per episode. Texture data
    never changes, so each texture's mean colour is computed once.
    """

    def __init__(self, model: mujoco.MjModel, *args, **kwargs):
        super().__init__(model, *args, **kwargs)
        self._texture_rgb = _texture_means(model) if model.ntex else np.ones((1, 3))
        self._geom_has_material = (model.geom_matid >= 0)[:, None]

    def colours(self) -> np.ndarray:
        m = self.model
        if not m.nmat:
            return m.geom_rgba[:, :3].astype(np.float64)
        mat = m.mat_rgba[:, :3].astype(np.float64)
        tex = m.mat_texid[:, mujoco.mjtTextureRole.mjTEXROLE_RGB]
        textured = tex >= 0
        mat[textured] *= self._texture_rgb[tex[textured]]
        return np.where(self._geom_has_material, mat[np.maximum(m.geom_matid, 0)], m.geom_rgba[:, :3])


class KitchenPointEnv(KitchenEnv):
    """The kitchen with one task per episode, named by its instruction, seen by a fixed camera (module docstring)."""

    def __init__(self, **kwargs):
        """``kwargs``: any fields of :class:`KitchenPointConfig`."""
        c = KitchenPointConfig(**kwargs)
        self.point_config = c
        self.task_pool = c.task_pool
        super().__init__(
            task=self.task_pool[0], paraphrase=0, cameras=[], reset_noise=c.reset_noise, steps_per_task=c.episode_steps,
            terminate_on_success=c.terminate_on_success, level=c.level, object_state=False,
            render_mode=c.render_mode, width=c.width, height=c.height, camera_name=c.camera_name,
        )
        utils.EzPickle.__init__(self, **kwargs)  # pickles as this env, not as the kitchen
        self.paraphrase = None if c.paraphrase is None else int(c.paraphrase)
        self.held_out = c.held_out
        self.camera = MaterialCamera(self.model, c.image_width, c.image_height, CAMERA_FOVY_DEG, c.max_depth,
                                     geomgroup=VISUAL_GROUPS)
        self._gripper_site = self.model.site(GRIPPER_SITE).id
        self._object_geoms = {task: self._subtree_geoms(body) for task, body in OBJECT_BODIES.items()}
        self._pending_task: str | None = None
        self.frame: CameraFrame | None = None  # the camera's last frame

    # --- model -----------------------------------------------------------------------------------
    def _make_spec(self) -> mujoco.MjSpec:
        """The kitchen's spec plus the fixed camera ``pointing`` (the observation's pose, for ``render()``)."""
        spec = super()._make_spec()
        quat = np.empty(4)
        mujoco.mju_mat2Quat(quat, CAMERA_ROTATION.reshape(-1))
        spec.worldbody.add_camera(name=POINT_CAMERA, pos=list(CAMERA_POSITION), quat=quat, fovy=CAMERA_FOVY_DEG)
        return spec

    def _observation_space(self) -> spaces.Dict:
        c = self.point_config
        h, w = c.image_height, c.image_width
        return spaces.Dict({
            "image": spaces.Box(0, 255, shape=(h, w, 3), dtype=np.uint8),
            "depth": spaces.Box(0.0, c.max_depth, shape=(h, w), dtype=np.float32),
            "state": spaces.Box(-np.inf, np.inf, shape=(8,), dtype=np.float64),
            "instruction": spaces.Text(max_length=MAX_CHARS, charset=string.printable),
        })

    def _subtree_geoms(self, body: str) -> tuple[int, ...]:
        """The visible geoms (groups of :data:`VISUAL_GROUPS`) of ``body`` and its descendants."""
        m, root = self.model, self.model.body(body).id

        def inside(b: int) -> bool:
            while b > 0:
                if b == root:
                    return True
                b = int(m.body_parentid[b])
            return False

        return tuple(g for g in range(m.ngeom) if VISUAL_GROUPS[min(int(m.geom_group[g]), 5)]
                     and inside(int(m.geom_bodyid[g])))

    # --- what the env shows ------------------------------------------------------------------------
    @property
    def target(self) -> str:
        """The episode's task."""
        return self.current_task

    @property
    def goal(self) -> np.ndarray:
        """World xyz (m) of the episode task's interaction point in the current state."""
        mujoco.mj_kinematics(self.model, self.data)  # site poses of this qpos (mj_step leaves them a substep behind)
        return interaction_point(self.model, self.data, self.current_task)

    def interaction_points(self) -> dict[str, np.ndarray]:
        """Every task's interaction point (world xyz, m) in the current state."""
        mujoco.mj_kinematics(self.model, self.data)
        return {task: interaction_point(self.model, self.data, task) for task in TASKS}

    def gripper_position(self) -> np.ndarray:
        mujoco.mj_kinematics(self.model, self.data)
        return self.data.site_xpos[self._gripper_site].copy()

    def camera_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """(world position, camera → world rotation) of the fixed scene camera."""
        return np.array(CAMERA_POSITION), CAMERA_ROTATION.copy()

    def scene(self) -> Scene:
        """The seven task objects (centre and extent of their visible geoms), the gripper and the camera."""
        mujoco.mj_kinematics(self.model, self.data)
        m, d = self.model, self.data
        objects, pixels = [], {}
        for task in TASKS:
            geoms = self._object_geoms[task]
            lo, hi = _world_bounds(m, d, geoms)
            objects.append(SceneObject(name=task, shape=task, colour="", position=(lo + hi) / 2,
                                       size=float(np.max(hi - lo) / 2), geom_ids=geoms))
            if self.frame is not None:
                pixels[task] = int(np.isin(self.frame.geom, geoms).sum())
        c = self.point_config
        extras = {"goal": self.goal.copy(), "target": self.target, "instruction": self.instruction,
                  "interaction_points": self.interaction_points(), "camera_fovy_deg": CAMERA_FOVY_DEG,
                  "camera_aspect": c.image_width / c.image_height, "camera_max_depth": c.max_depth}
        if self.frame is not None:
            extras["visible_pixels"] = pixels
        return Scene(embodiment="kitchen", objects=tuple(objects), agent_position=self.gripper_position(),
                     agent_yaw=AGENT_YAW, camera_position=np.array(CAMERA_POSITION),
                     camera_rotation=CAMERA_ROTATION.copy(), extras=extras)

    def _get_obs(self) -> dict:
        mujoco.mj_kinematics(self.model, self.data)  # geom poses of this qpos
        self.frame = self.camera.render(self.data, np.array(CAMERA_POSITION), CAMERA_ROTATION)
        return {"image": self.frame.rgb, "depth": self.frame.depth, "state": self.proprio(),
                "instruction": self.instruction}

    def _info(self, object_state: np.ndarray) -> dict:
        info = super()._info(object_state)
        goal = self.goal
        info.update({"goal": goal, "target": self.target, "paraphrase": self.episode_paraphrase,
                     "distance_to_goal": float(np.linalg.norm(self.data.site_xpos[self._gripper_site] - goal))})
        return info

    # --- episode state (snapshots) ---------------------------------------------------------------
    def task_state(self) -> dict:
        """The kitchen's task state plus the episode's task."""
        return {**super().task_state(), "target": self.current_task}

    def set_task_state(self, state: dict) -> None:
        self.tasks = (state["target"],)
        super().set_task_state(state)

    # --- gymnasium API -----------------------------------------------------------------------------
    def reset_model(self) -> dict:
        rng = self.np_random
        task = self._pending_task or self.task_pool[int(rng.integers(len(self.task_pool)))]
        self.tasks = (task,)
        if self._pending_paraphrase is None:  # the kitchen's reset takes the wording from here
            self._pending_paraphrase = (self.paraphrase if self.paraphrase is not None
                                        else draw_paraphrase(self.tasks, self.held_out, rng))
        return super().reset_model()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Gymnasium's reset; ``options``: ``{"task": name}`` sets this episode's task, ``{"paraphrase": k}`` its wording."""
        options = dict(options or {})
        unknown = sorted(set(options) - {"task", "paraphrase"})
        if unknown:
            raise ValueError(f"unknown kitchen_point reset options {unknown}; they are 'task' and 'paraphrase'")
        task = options.pop("task", None)
        if task is not None and task not in TASK_BY_NAME:
            raise ValueError(f"unknown kitchen task {task!r} in reset options; choose from {TASKS}")
        self._pending_task = task
        try:
            return super().reset(seed=seed, options=options)
        finally:
            self._pending_task = None


def _world_bounds(model: mujoco.MjModel, data: mujoco.MjData, geoms: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """World axis-aligned bounds (min, max corners, m) of ``geoms``' bounding boxes in the current pose."""
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
    points = []
    for g in geoms:
        centre, half = model.geom_aabb[g, :3], model.geom_aabb[g, 3:]
        local = centre + corners * half
        points.append(data.geom_xpos[g] + local @ data.geom_xmat[g].reshape(3, 3).T)
    points = np.concatenate(points)
    return points.min(axis=0), points.max(axis=0)


# --- the pointed expert ----------------------------------------------------------------------------
class PointedExpert(KitchenExpert):
    """The scripted expert of a :class:`KitchenPointEnv` episode's task, anchored on a pointed location.

    ``act(obs_or_env, point)``: the next action, with the task's plan built on ``point`` (world
    xyz, m) instead of the true interaction point (see :mod:`envs.kitchen.experts`: everything
    attached to the object moves with the point; the kettle's goal burner does not). The plan is
    made when the task starts and again after a missed or slipped grasp, each time from the
    point given on that step, so a brain may point again from the current image. The expert
    reads the arm from the env, or from an observation's ``state``; the objects' joints from the
    env, or from an observation's ``object_state``, and without one it assumes every object at
    rest as at reset (true when a plan starts, not after a slip mid-task: pass the env in simulation).
    Success is the env's (``info["is_success"]``). Call :meth:`reset` after each ``env.reset``.
    """

    def __init__(self, env, noise: float = 0.0, seed: int | None = None):
        env = getattr(env, "unwrapped", env)
        if not isinstance(env, KitchenPointEnv):
            raise TypeError(f"the pointed expert needs a KitchenPointEnv, got {type(env).__name__}")
        self._point: np.ndarray | None = None
        super().__init__(env, noise=noise, seed=seed)

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode: the env's current task (after ``env.reset``)."""
        super().reset(seed)
        self.tasks = self.env.tasks
        self._point = None

    def act(self, obs_or_env, point=None, task: str | None = None) -> np.ndarray:
        """The action for this step, the plan anchored on ``point`` (world xyz, m); ``task``: the task to plan
        when a plan starts (default: the env's episode task), e.g. read from the instruction by a controller
        that does not see the simulator."""
        if point is None:
            raise ValueError("the pointed expert needs a point (world xyz, m)")
        point = np.asarray(point, dtype=np.float64).reshape(-1)
        if point.shape != (3,) or not np.all(np.isfinite(point)):
            raise ValueError(f"point must be 3 finite numbers (world xyz, m), got {point}")
        if self._plan is None:  # the episode's task, also when reset() came before env.reset()
            if task is not None and task not in PLANS:
                raise ValueError(f"unknown kitchen task {task!r}; have {', '.join(PLANS)}")
            self.tasks = (task,) if task is not None else self.env.tasks
        self._point = point
        return super().act(obs_or_env)

    def _make_plan(self, task: str, object_state: np.ndarray) -> list[Waypoint]:
        return PLANS[task](self.ik, object_state, self._point)

    def _read(self, obs_or_env) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(obs_or_env, Mapping):
            proprio = np.asarray(obs_or_env["proprio"] if "proprio" in obs_or_env else obs_or_env["state"])
            if "object_state" in obs_or_env:
                return proprio, np.asarray(obs_or_env["object_state"])
            return proprio, self.env._rest_qpos[self.layout["object_state"]].copy()
        return super()._read(obs_or_env)

