"""Language-instructed Franka kitchen: seven appliance tasks, absolute joint targets, headless cameras.

## Description
A Franka Panda with a parallel gripper in the Franka Kitchen of D4RL / Gymnasium-Robotics
(scene and its edits: ``envs/kitchen/model.py``). Physics runs at 500 Hz (2 ms); the agent acts
at 12.5 Hz (40 physics steps per action), the Franka Kitchen benchmark's rate. The keyword
arguments are the fields of :class:`KitchenConfig`, each with its unit.

## Tasks (``task``: one name, or a sequence of distinct names done in that order)
Success is the benchmark's: the task's object joints within ``||q - goal|| < 0.3`` of the goal
(Gymnasium-Robotics ``BONUS_THRESH``; goals from its ``kitchen_env.py``).

| task            | joints (qpos)                              | goal                                   |
|-----------------|--------------------------------------------|----------------------------------------|
| ``microwave``   | ``microwave`` (door hinge, rad)            | -0.75                                  |
| ``kettle``      | ``kettle`` (free joint: x y z, quat w x y z) | -0.23 0.75 1.62, 0.99 0 0 -0.06 (top-left burner) |
| ``light_switch``| ``light_switch``, ``light_joint``          | -0.69, -0.05                           |
| ``slide_cabinet``| ``slide_cabinet`` (m)                     | 0.37                                   |
| ``hinge_cabinet``| ``left_hinge_cabinet``, ``right_hinge_cabinet`` | 0, 1.45 (the right door open)     |
| ``bottom_burner``| ``knob_Joint_2``, ``bottom_left_burner``  | -0.88, -0.01                           |
| ``top_burner``  | ``knob_Joint_4``, ``top_left_burner``      | -0.92, -0.01                           |

In a sequence only the current task is checked; once within the threshold it counts as done
(and stays done, as in the benchmark) and the next one becomes current. Every task has several
instruction paraphrases (``envs/kitchen/instructions.py``); ``paraphrase`` picks one by index
(``None``: drawn per episode), ``reset(options={"paraphrase": k})`` overrides it for an episode.

## Observation (``Dict``)
- ``proprio`` (8): the 7 arm joint angles (rad) and the gripper opening in [0, 1] (the mean
  finger travel over its 0.04 m range: 0 closed, 1 open).
- ``object_state`` (17): every task's joints in the order of :data:`TASKS`, as in the table:
  microwave (1), kettle (7), light_switch (2), slide_cabinet (1), hinge_cabinet (2),
  bottom_burner (2), top_burner (2); :data:`OBJECT_SLICES` has the ranges.
- one ``uint8`` image ``(H, W, 3)`` per name in ``cameras`` (default ``scene`` and ``wrist``),
  ``image_size`` pixels (int or ``[H, W]``; 96 by default). ``cameras=[]`` gives state-only
  observations and never creates a GL context.
- ``instruction`` (``Text``): the current task's words in this episode's paraphrase, what a
  language-conditioned policy reads (the same string as ``info["instruction"]``).
``object_state=False`` leaves the object state out: an image policy does not read it, and on a
real robot it would need perception.
Both vectors are pure functions of ``qpos`` (:func:`proprio_from_qpos`,
:func:`object_state_from_qpos`), so a ROS node builds them from joint states alone.

## Action (``Box(8)``, float32)
Absolute joint-position targets for the 7 arm joints (bounds: the joint ranges, rad) and the
gripper command in [0, 1] (0 closed, 1 open), sent to both finger position actuators as
``g · 0.04`` m each. Actions are clipped to the box (a position servo cannot go past the joint
limits either); NaN or inf raises ``ValueError``. The actuators are the wheel's position servos
(kp 870 / 120 Nm/rad, torque limits 87 / 12 Nm); the arm's weight is compensated.

## Reset
The robot at the model's home keyframe plus uniform noise of ±``reset_noise`` rad on each arm
joint (gripper closed), every object at rest in its closed / initial state (the kettle on the
bottom-left burner), all velocities zero, servo targets at the start pose. Seeded.

## Levels (``level``, RoboAgent's generalisation levels; :mod:`envs.kitchen.variation`)
``L0`` the training distribution; ``L1`` new object poses (the kitchen, each wall cabinet, the
microwave and the kettle's start shifted by a few cm) and lighting; ``L2`` adds new surface
textures and colours and distractor objects on the counter; ``L3`` is the L1 scene with
instructions worded by held-out paraphrases (the last ``HELD_OUT`` of each task's list, never
drawn at L0-L2 when ``paraphrase`` is null). Task sequences are held out too: demonstrations
are single tasks (``agents.collect``), so any sequence is unseen in training.

## Reward, termination, truncation
Reward: the number of tasks completed in this step (sparse, as the benchmark). Terminates when
every task is done (``terminate_on_success``); truncates after ``steps_per_task`` control steps
per task (200 = 16 s each). The env keeps that clock itself (the registered id has no
``TimeLimit``) because the limit depends on the length of the task sequence.

## Info
``task`` (the current task, the last one once all are done), ``instruction`` (its words),
``errors`` (per episode task, ``||q - goal||``), ``completed`` (per episode task), ``n_completed``,
``is_success`` (all done); after a step, the reward as its one term, ``reward_tasks_completed``.
"""

from __future__ import annotations

import math
import string
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import mujoco
import numpy as np
from gymnasium import spaces, utils
from gymnasium.envs.mujoco import MujocoEnv

from envs.kitchen.instructions import MAX_CHARS as INSTRUCTION_CHARS
from envs.kitchen.instructions import draw_paraphrase, instruction
from envs.kitchen.model import (
    ARM_ACTUATORS,
    ARM_JOINTS,
    CAMERAS,
    FINGER_ACTUATORS,
    FINGER_JOINTS,
    FINGER_TRAVEL,
    SCENE_CAMERA,
    WRIST_CAMERA,
    compile_kitchen,
    kitchen_spec,
)
from envs.kitchen.variation import SceneVariation, add_distractors, check_level
from envs.physics import SimulationDiverged, instability_warned

PHYSICS_TIMESTEP = 0.002
FRAME_SKIP = 40  # 12.5 Hz control, the Franka Kitchen benchmark's
SUCCESS_THRESHOLD = 0.3  # Gymnasium-Robotics BONUS_THRESH
MIN_IMAGE, MAX_IMAGE = 8, 1024  # camera image side, px: a renderer buffer beyond this is a typo


@dataclass(frozen=True)
class KitchenTask:
    name: str
    joints: tuple[str, ...]  # object joints whose qpos the goal constrains, in order
    goal: tuple[float, ...]


TASK_LIST = (
    KitchenTask("microwave", ("microwave",), (-0.75,)),
    KitchenTask("kettle", ("kettle",), (-0.23, 0.75, 1.62, 0.99, 0.0, 0.0, -0.06)),
    KitchenTask("light_switch", ("light_switch", "light_joint"), (-0.69, -0.05)),
    KitchenTask("slide_cabinet", ("slide_cabinet",), (0.37,)),
    KitchenTask("hinge_cabinet", ("left_hinge_cabinet", "right_hinge_cabinet"), (0.0, 1.45)),
    KitchenTask("bottom_burner", ("knob_Joint_2", "bottom_left_burner"), (-0.88, -0.01)),
    KitchenTask("top_burner", ("knob_Joint_4", "top_left_burner"), (-0.92, -0.01)),
)
TASKS = tuple(t.name for t in TASK_LIST)
TASK_BY_NAME = {t.name: t for t in TASK_LIST}
OBJECT_SLICES: dict[str, slice] = {}
_offset = 0
for _t in TASK_LIST:
    OBJECT_SLICES[_t.name] = slice(_offset, _offset + len(_t.goal))
    _offset += len(_t.goal)
OBJECT_STATE_SIZE = _offset  # 17
PROPRIO_SIZE = 8


def parse_tasks(task: str | Sequence[str]) -> tuple[str, ...]:
    """``task`` as a tuple of task names (one name or a sequence), validated."""
    names = (task,) if isinstance(task, str) else tuple(task)
    if not names:
        raise ValueError(f"task must name at least one kitchen task; choose from {TASKS}")
    for name in names:
        if name not in TASK_BY_NAME:
            raise ValueError(f"unknown kitchen task {name!r}; choose from {TASKS}")
    if len(set(names)) != len(names):
        raise ValueError(f"a kitchen task sequence must not repeat a task, got {list(names)}")
    return names


def _qpos_index(model: mujoco.MjModel, joints: Sequence[str]) -> np.ndarray:
    """qpos addresses of ``joints`` (all 7 values of a free joint)."""
    index = []
    for name in joints:
        j = model.joint(name)
        width = 7 if model.jnt_type[j.id] == mujoco.mjtJoint.mjJNT_FREE else 1
        index.extend(range(int(model.jnt_qposadr[j.id]), int(model.jnt_qposadr[j.id]) + width))
    return np.array(index, dtype=np.intp)


def qpos_layout(model: mujoco.MjModel) -> dict[str, np.ndarray]:
    """qpos addresses: ``arm`` (7), ``fingers`` (2), ``object_state`` (17) and each task's joints."""
    layout = {"arm": _qpos_index(model, ARM_JOINTS), "fingers": _qpos_index(model, FINGER_JOINTS)}
    for t in TASK_LIST:
        layout[t.name] = _qpos_index(model, t.joints)
    layout["object_state"] = np.concatenate([layout[t.name] for t in TASK_LIST])
    return layout


def proprio_from_joints(arm: np.ndarray, fingers: np.ndarray) -> np.ndarray:
    """``proprio`` from the 7 arm angles and the 2 finger positions (m): shared with the ROS adapter."""
    out = np.empty(PROPRIO_SIZE)
    out[:7] = arm
    out[7] = (float(fingers[0]) + float(fingers[1])) / (2.0 * FINGER_TRAVEL)
    return out


def proprio_from_qpos(qpos: np.ndarray, layout: dict[str, np.ndarray]) -> np.ndarray:
    return proprio_from_joints(qpos[layout["arm"]], qpos[layout["fingers"]])


def object_state_from_qpos(qpos: np.ndarray, layout: dict[str, np.ndarray]) -> np.ndarray:
    return qpos[layout["object_state"]].astype(np.float64)


def task_error(task: str, object_state: np.ndarray) -> float:
    """``||q - goal||`` of ``task`` on an ``object_state`` vector."""
    t = TASK_BY_NAME[task]
    return float(np.linalg.norm(object_state[OBJECT_SLICES[task]] - np.asarray(t.goal)))


def task_success(task: str, object_state: np.ndarray) -> bool:
    return task_error(task, object_state) < SUCCESS_THRESHOLD


def _image_shape(image_size) -> tuple[int, int]:
    if isinstance(image_size, int | np.integer):
        h = w = int(image_size)
    else:
        size = tuple(int(s) for s in image_size)
        if len(size) != 2:
            raise ValueError(f"image_size must be an int or [height, width], got {list(image_size)}")
        h, w = size
    if not (MIN_IMAGE <= h <= MAX_IMAGE and MIN_IMAGE <= w <= MAX_IMAGE):
        raise ValueError(f"image_size must be {MIN_IMAGE} to {MAX_IMAGE} pixels a side, got {h}x{w}")
    return h, w


def close_renderer(renderer: mujoco.Renderer) -> None:
    """Free a renderer's GL objects inside its own GL context.

    ``mujoco.Renderer.close`` frees the MjrContext's textures and framebuffers by id in whatever
    context is current, and every OSMesa/EGL context numbers its objects from 1: closing (or
    garbage-collecting) one env's renderer while another env's context is current would delete the
    other env's objects, and that env's camera images would be garbage from then on.
    """
    gl = getattr(renderer, "_gl_context", None)  # private in mujoco 3.x; without it, close in the current context
    if gl is not None:
        gl.make_current()
    renderer.close()


def _camera_names(cameras: str | Sequence[str]) -> tuple[str, ...]:
    return (cameras,) if isinstance(cameras, str) else tuple(cameras)


@dataclass(frozen=True)
class KitchenConfig:
    """The env's keyword arguments (``KitchenEnv(**kwargs)``, the keys of ``env=kitchen``), checked on construction."""

    task: str | Sequence[str] = "microwave"  # one task of TASKS, or a sequence of distinct ones done in order
    paraphrase: int | None = 0  # index of the instructions' wording; None: drawn per episode
    cameras: Sequence[str] = (SCENE_CAMERA, WRIST_CAMERA)  # one image per camera in the observation; []: state only
    image_size: int | Sequence[int] = 96  # px, the camera images' side, or [height, width]
    reset_noise: float = 0.02  # rad, uniform noise on each arm joint at reset
    steps_per_task: int = 200  # control steps (16 s) per task before truncation
    terminate_on_success: bool = True  # end the episode once every task is done
    level: str = "L0"  # scene variation level, L0-L3 (envs.kitchen.variation)
    object_state: bool = True  # the objects' joints in the observation (state-based policies read them)
    render_mode: str | None = None  # gymnasium's render mode
    width: int = 320  # px, rendered image width (render(), not the observation's cameras)
    height: int = 240  # px, rendered image height
    camera_name: str | None = SCENE_CAMERA  # the camera render() uses

    def __post_init__(self):
        tasks = parse_tasks(self.task)
        cameras = _camera_names(self.cameras)
        for cam in cameras:
            if cam not in CAMERAS:
                raise ValueError(f"unknown kitchen camera {cam!r}; choose from {CAMERAS}")
        if len(set(cameras)) != len(cameras):
            raise ValueError(f"kitchen cameras must not repeat, got {list(cameras)}")
        if self.paraphrase is not None:
            for name in tasks:
                instruction(name, int(self.paraphrase))  # validates the index for every task
        if not self.reset_noise >= 0:
            raise ValueError(f"reset_noise must be >= 0 rad, got {self.reset_noise}")
        if int(self.steps_per_task) < 1:
            raise ValueError(f"steps_per_task must be >= 1, got {self.steps_per_task}")
        check_level(self.level)
        _image_shape(self.image_size)


class KitchenEnv(MujocoEnv, utils.EzPickle):
    metadata = {"render_modes": ["human", "rgb_array", "depth_array", "rgbd_tuple"], "render_fps": 12}

    def __init__(self, **kwargs):
        """``kwargs``: any fields of :class:`KitchenConfig`."""
        c = KitchenConfig(**kwargs)
        utils.EzPickle.__init__(self, **kwargs)
        self.config = c
        self.tasks = parse_tasks(c.task)
        self.level = c.level
        self.cameras = _camera_names(c.cameras)
        self.image_shape = _image_shape(c.image_size)
        self.paraphrase = None if c.paraphrase is None else int(c.paraphrase)
        self.reset_noise = float(c.reset_noise)
        self.max_steps = int(c.steps_per_task) * len(self.tasks)
        self.terminate_on_success = bool(c.terminate_on_success)

        obs_space = self._observation_space()
        MujocoEnv.__init__(  # the path only passes MujocoEnv's existence check; the model is built from a spec
            self, __file__, FRAME_SKIP, obs_space, render_mode=c.render_mode, width=c.width, height=c.height,
            camera_name=c.camera_name if c.render_mode else None,
        )
        self.layout = qpos_layout(self.model)
        self._arm_ctrl = np.array([self.model.actuator(n).id for n in ARM_ACTUATORS])
        self._finger_ctrl = np.array([self.model.actuator(n).id for n in FINGER_ACTUATORS])
        arm_range = self.model.jnt_range[[self.model.joint(n).id for n in ARM_JOINTS]]
        self.action_space = spaces.Box(
            low=np.r_[arm_range[:, 0], 0.0].astype(np.float32),
            high=np.r_[arm_range[:, 1], 1.0].astype(np.float32),
            dtype=np.float32,
        )
        self._rest_qpos = self._settled_rest_state()
        kettle = int(self.model.jnt_qposadr[self.model.joint("kettle").id])
        self.variation = SceneVariation(self.model, kettle)
        self._renderer: mujoco.Renderer | None = None
        self._goals = {name: np.asarray(TASK_BY_NAME[name].goal) for name in self.tasks}
        self._episode_paraphrase = self.paraphrase if self.paraphrase is not None else 0
        self._pending_paraphrase: int | None = None
        self._reset_episode_state()

    # --- model ---------------------------------------------------------------------------------
    def _make_spec(self) -> mujoco.MjSpec:
        """The scene's spec before compiling: the hook for scene variations (textures, lights, objects)."""
        h, w = self.image_shape
        spec = kitchen_spec(max(h, w, self.width, self.height))
        add_distractors(spec)  # hidden below the floor unless the level places them
        return spec

    def _initialize_simulation(self):
        spec = self._make_spec()
        spec.visual.global_.offwidth = max(self.image_shape[1], self.width)
        spec.visual.global_.offheight = max(self.image_shape[0], self.height)
        model = compile_kitchen(spec)
        if not math.isclose(model.opt.timestep, PHYSICS_TIMESTEP):
            raise RuntimeError(f"kitchen model timestep is {model.opt.timestep} s, expected {PHYSICS_TIMESTEP}")
        return model, mujoco.MjData(model)

    def _observation_space(self) -> spaces.Dict:
        h, w = self.image_shape
        parts = {"proprio": spaces.Box(-np.inf, np.inf, shape=(PROPRIO_SIZE,), dtype=np.float64)}
        if self.config.object_state:
            parts["object_state"] = spaces.Box(-np.inf, np.inf, shape=(OBJECT_STATE_SIZE,), dtype=np.float64)
        for cam in self.cameras:
            parts[cam] = spaces.Box(0, 255, shape=(h, w, 3), dtype=np.uint8)
        parts["instruction"] = spaces.Text(max_length=INSTRUCTION_CHARS, charset=string.printable)
        return spaces.Dict(parts)

    def _settled_rest_state(self) -> np.ndarray:
        """qpos with every object at rest (2 s from the home keyframe, robot held at home)."""
        m = self.model
        d = mujoco.MjData(m)
        mujoco.mj_resetDataKeyframe(m, d, 0)
        d.ctrl[self._arm_ctrl] = d.qpos[self.layout["arm"]]
        d.ctrl[self._finger_ctrl] = d.qpos[self.layout["fingers"]]
        mujoco.mj_step(m, d, nstep=1000)
        return d.qpos.copy()

    # --- episode state (snapshots) ---------------------------------------------------------------
    def _reset_episode_state(self) -> None:
        self._step_count = 0
        self._done = np.zeros(len(self.tasks), dtype=bool)

    @property
    def step_count(self) -> int:
        """Control steps since the episode began."""
        return self._step_count

    @property
    def current_task(self) -> str:
        """The task being worked on (the last one once all are done)."""
        return self.tasks[min(int(self._done.sum()), len(self.tasks) - 1)]

    @property
    def instruction(self) -> str:
        """The current task's instruction in this episode's paraphrase."""
        return instruction(self.current_task, self._episode_paraphrase)

    def task_state(self) -> dict:
        """What a snapshot needs beyond MuJoCo's state (see :mod:`envs.snapshot`), the scene variation included."""
        return {"step_count": self._step_count, "done": self._done.copy(), "paraphrase": self._episode_paraphrase,
                "scene": self.variation.state()}

    def set_task_state(self, state: dict) -> None:
        self._step_count = int(state["step_count"])
        self._done = np.array(state["done"], dtype=bool)
        self._episode_paraphrase = int(state["paraphrase"])
        self.variation.set_state(state["scene"])

    @property
    def episode_paraphrase(self) -> int:
        """The paraphrase index of this episode's instructions."""
        return self._episode_paraphrase

    # --- observation -----------------------------------------------------------------------------
    def object_state(self) -> np.ndarray:
        return object_state_from_qpos(self.data.qpos, self.layout)

    def proprio(self) -> np.ndarray:
        return proprio_from_qpos(self.data.qpos, self.layout)

    def render_cameras(self, cameras: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """One ``uint8 (H, W, 3)`` image per camera of the current state (training-camera settings)."""
        cameras = self.cameras if cameras is None else tuple(cameras)
        if not cameras:
            return {}
        if self._renderer is None:
            h, w = self.image_shape
            self._renderer = mujoco.Renderer(self.model, h, w)
            self._renderer_finalizer = weakref.finalize(self, close_renderer, self._renderer)  # an env dropped unclosed
            flags = self._renderer.scene.flags
            for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                         mujoco.mjtRndFlag.mjRND_SKYBOX):
                flags[flag] = 0
        # Kinematics and camera poses of the current qpos (mj_step leaves them one substep behind).
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_camlight(self.model, self.data)
        images = {}
        for cam in cameras:
            self._renderer.update_scene(self.data, cam)
            images[cam] = self._renderer.render()  # a fresh array per call
        return images

    def _get_obs(self) -> dict[str, np.ndarray | str]:
        obs = {"proprio": self.proprio()}
        if self.config.object_state:
            obs["object_state"] = self.object_state()
        obs.update(self.render_cameras())
        obs["instruction"] = self.instruction
        return obs

    # --- gymnasium API ---------------------------------------------------------------------------
    def _randomise_scene(self) -> None:
        """Per-episode scene variation of ``level`` (:mod:`envs.kitchen.variation`; L0 restores the nominal scene)."""
        self.variation.apply(self.level, self.np_random, self.data)

    def reset_model(self) -> dict[str, np.ndarray]:
        self._reset_episode_state()
        self._randomise_scene()
        qpos = self._rest_qpos.copy()
        arm = self.layout["arm"]
        qpos[arm] += self.np_random.uniform(-self.reset_noise, self.reset_noise, size=len(arm))
        self.variation.kettle_start(qpos)
        self.set_state(qpos, np.zeros(self.model.nv))
        self.data.ctrl[self._arm_ctrl] = qpos[arm]
        self.data.ctrl[self._finger_ctrl] = qpos[self.layout["fingers"]]
        if self._pending_paraphrase is not None:
            self._episode_paraphrase = self._pending_paraphrase
        elif self.paraphrase is None:  # drawn from the training paraphrases; L3 from the held-out ones
            self._episode_paraphrase = draw_paraphrase(self.tasks, self.level == "L3", self.np_random)
        else:
            self._episode_paraphrase = self.paraphrase
        return self._get_obs()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Gymnasium's reset; ``options={"paraphrase": k}`` words this episode's instructions with paraphrase k."""
        options = dict(options or {})
        paraphrase = options.pop("paraphrase", None)
        if options:
            raise ValueError(f"unknown kitchen reset options {sorted(options)}; the only one is 'paraphrase'")
        if paraphrase is not None:
            for name in self.tasks:
                instruction(name, int(paraphrase))
        self._pending_paraphrase = None if paraphrase is None else int(paraphrase)
        try:
            return super().reset(seed=seed)
        finally:
            self._pending_paraphrase = None

    def _get_reset_info(self) -> dict:
        return self._info(self.object_state())

    def _info(self, object_state: np.ndarray) -> dict:
        errors = {name: task_error(name, object_state) for name in self.tasks}
        return {
            "task": self.current_task,
            "instruction": self.instruction,
            "errors": errors,
            "completed": {name: bool(done) for name, done in zip(self.tasks, self._done)},
            "n_completed": int(self._done.sum()),
            "is_success": bool(self._done.all()),
        }

    def apply_action(self, action) -> None:
        """Servo targets from an 8-d action (clipped to the action box)."""
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (8,) or not np.all(np.isfinite(action)):
            raise ValueError(f"kitchen action must be 8 finite numbers, got {action}")
        action = np.clip(action, self.action_space.low, self.action_space.high)
        self.data.ctrl[self._arm_ctrl] = action[:7]
        self.data.ctrl[self._finger_ctrl] = action[7] * FINGER_TRAVEL

    def _get_rew(self, newly_completed: int) -> tuple[float, dict[str, float]]:
        """The reward and its one named term: the tasks completed in this step."""
        reward = float(newly_completed)
        return reward, {"tasks_completed": reward}

    def step(self, action):
        self.apply_action(action)
        mujoco.mj_step(self.model, self.data, nstep=self.frame_skip)
        if instability_warned(self.data) or not np.isfinite(self.data.qpos).all():
            raise SimulationDiverged(f"kitchen physics diverged at step {self._step_count + 1} (non-finite state)")
        self._step_count += 1
        object_state = self.object_state()
        newly = 0
        while not self._done.all():  # in order: the current task, then (same step) the next ones
            k = int(self._done.sum())
            if not task_success(self.tasks[k], object_state):
                break
            self._done[k] = True
            newly += 1
        reward, reward_info = self._get_rew(newly)
        info = self._info(object_state)
        info.update({f"reward_{name}": value for name, value in reward_info.items()})
        terminated = self.terminate_on_success and info["is_success"]
        truncated = not terminated and self._step_count >= self.max_steps
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), reward, bool(terminated), bool(truncated), info

    def close(self):
        if self._renderer is not None:
            self._renderer_finalizer()  # runs close_renderer once
            self._renderer = None
        super().close()
