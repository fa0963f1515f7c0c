"""The spatial brain deployed: a slow brain that picks a goal, a fast controller that reaches it.

ACE-Brain-0.5's output interfaces, at this project's scale: the brain (``policies/spatial_brain.py``)
reads the camera, the body's state and the instruction a few times per episode and emits a goal;
between its decisions a scripted controller runs at the control rate toward the goal it holds.

- ``swimmer``: a point in the head camera's frame (or a planar offset), whose floor position the
  hard-wired steering NCAP swims the nose to.
- ``kitchen``: the instructed object's interaction point, seen from the fixed scene camera; the
  scripted arm plans of the task the instruction names run anchored on it.
- ``uav``: the goal head gives a point in the onboard camera's frame (a pointing head) or an
  offset (m) in the vehicle's yaw frame; it is turned into a world point once, when decided, and
  the cascaded PID (``policies/pid.py``) flies to it.

Decisions: at step 0 and every ``decide_every`` control steps after, ``decisions`` times in all;
after the last one the goal is held (the named landmark leaves an onboard camera's view as the
vehicle closes in, so late views would only add noise). ``meta.extra`` carries both numbers and the
embodiment, so a bundle deploys as it was trained and evaluated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from policies.language import token_states
from policies.protocol import EnvInterface, Policy, PolicyError, PolicyMeta
from policies.spatial_brain import SpatialBrain

# env id -> the embodiment the brain drives there (its proprio projector and goal head)
EMBODIMENT_OF_ENV = {"embodied/UAVFind-v0": "uav", "embodied/SwimmerFind-v0": "swimmer",
                     "embodied/KitchenPoint-v0": "kitchen"}
DEFAULT_DECIDE_EVERY = 50  # control steps between decisions: 2 Hz at the UAV's 100 Hz control rate
DEFAULT_DECISIONS = 3  # decisions per episode (0, 0.5 and 1 s on the UAV), then the goal is held
# embodiment -> (decide_every, decisions): the swimmer covers a metre in ~10 s, so it decides every 3 s for 12 s
# the kitchen decides once, before the arm moves (it would hide the object from the scene camera)
DECISION_SCHEDULES = {"uav": (DEFAULT_DECIDE_EVERY, DEFAULT_DECISIONS), "swimmer": (100, 5), "kitchen": (250, 1)}


def brain_batch(embodiment: str, observations: list[Mapping], max_tokens: int, text_key: str = "instruction") -> dict:
    """A :class:`SpatialBrain` batch from env observations (Dict: image, depth, state and a text)."""
    text, mask = token_states([str(o[text_key]) for o in observations], max_tokens)
    batch = {
        "embodiment": embodiment,
        "image": torch.as_tensor(np.stack([np.asarray(o["image"], dtype=np.uint8) for o in observations])),
        "proprio": torch.as_tensor(np.stack([np.asarray(o["state"], dtype=np.float32) for o in observations])),
        "text": torch.as_tensor(text), "text_mask": torch.as_tensor(mask),
    }
    if all("depth" in o for o in observations):
        batch["depth"] = torch.as_tensor(np.stack([np.asarray(o["depth"], dtype=np.float32) for o in observations]))
    return batch


# --- goal followers: the fast controllers -------------------------------------------------------


def yaw_of(rotation: np.ndarray) -> float:
    r = np.asarray(rotation, dtype=np.float64).reshape(3, 3)
    return math.atan2(r[1, 0], r[0, 0])


GOAL_FRAMES = ("native", "camera")  # the embodiment's own goal frame (GoalHead), or its camera's (PointingHead)


def goal_frame(spec: Mapping) -> str:
    """The frame an embodiment's goal head speaks (its entry in ``SpatialBrainConfig.embodiments``)."""
    return "camera" if "pointing_fovy_deg" in spec else "native"


@dataclass
class UAVGoalFollower:
    """The cascaded PID flying to a world point.

    A goal is read in the frame of the state it was made in: ``native``, an offset in the vehicle's
    yaw frame; ``camera``, a point in the onboard camera's frame (x right, y up, looking along -z).
    """

    pid: object  # policies.pid.CascadedPID
    arena_half_width: float
    ceiling: float
    mount: np.ndarray  # camera -> body rotation
    mount_offset: np.ndarray  # camera position in the body frame, m
    frame: str = "native"

    def reset(self) -> None:
        self.pid.reset()

    def _pose(self, obs: Mapping) -> tuple[np.ndarray, np.ndarray]:
        """(origin, frame -> world rotation) of the goal frame in this state."""
        from envs.uav.find import STATE_LAYOUT

        state = np.asarray(obs["state"], dtype=np.float64)
        position = state[slice(*STATE_LAYOUT.position)]
        rotation = state[slice(*STATE_LAYOUT.rotation)].reshape(3, 3)
        if self.frame == "camera":
            return position + rotation @ self.mount_offset, rotation @ self.mount
        c, s = math.cos(yaw_of(rotation)), math.sin(yaw_of(rotation))
        return position, np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    def to_world(self, obs: Mapping, goal: np.ndarray) -> np.ndarray:
        origin, rotation = self._pose(obs)
        return self.clip(origin + rotation @ np.asarray(goal, dtype=np.float64))

    def clip(self, goal: np.ndarray) -> np.ndarray:
        """A world goal clipped into the flight volume: a wild sample must not fly the vehicle out."""
        limit = self.arena_half_width - 0.2
        return np.array([np.clip(goal[0], -limit, limit), np.clip(goal[1], -limit, limit),
                         np.clip(goal[2], 0.3, self.ceiling - 0.3)])

    def label(self, obs: Mapping, goal_world: np.ndarray) -> np.ndarray:
        """The goal a perfect brain would emit for ``goal_world`` (what behaviour cloning regresses)."""
        origin, rotation = self._pose(obs)
        return rotation.T @ (np.asarray(goal_world, dtype=np.float64) - origin)

    def act(self, obs: Mapping, goal_world: np.ndarray) -> np.ndarray:
        from envs.uav.find import pid_observation

        return self.pid.act(pid_observation(np.asarray(obs["state"], dtype=np.float64), goal_world))


def uav_follower(env_config: Mapping, frame: str) -> UAVGoalFollower:
    import envs
    from policies.pid import CascadedPID, gains_for

    env = envs.make_from_config(env_config)
    try:
        uav = env.unwrapped
        pid = CascadedPID(uav.params, gains_for(uav.params.name), uav.control_dt, uav.action_mode)
        return UAVGoalFollower(pid, float(uav.find_config.arena_half_width), float(uav.find_config.ceiling),
                               uav.mount.copy(), uav.mount_offset.copy(), frame)
    finally:
        env.close()


SWIMMER_GOAL_Z = 0.1  # m, the height a planar swimmer goal is lifted to for the camera frame: a target's middle


@dataclass
class SwimmerGoalFollower:
    """The hard-wired steering NCAP (:class:`policies.swimmer_steering.SwimmerSteering`) swimming to a world point.

    Goals are world xy. ``camera``: a point in the head camera's frame (x right, y up, looking along -z),
    of which the follower keeps the floor-plane position; ``native``: an offset (m) in the plane, x along
    the head's heading, y to its left.
    """

    steering: object  # policies.swimmer_steering.SwimmerSteering
    head_z: float  # m, the head's constant height (the swimmer moves in a plane)
    mount: np.ndarray  # camera -> head rotation
    mount_offset: np.ndarray  # camera position in the head frame, m
    floor_half_size: float
    frame: str = "native"

    def reset(self) -> None:
        self.steering.reset()

    def _pose(self, obs: Mapping) -> tuple[np.ndarray, np.ndarray]:
        from envs.swimmer.find import STATE_LAYOUT

        state = np.asarray(obs["state"], dtype=np.float64)
        c, s = state[slice(*STATE_LAYOUT.heading)]
        head = np.array([*state[slice(*STATE_LAYOUT.head_position)], self.head_z])
        if self.frame == "camera":
            head_rotation = np.array([[-s, -c, 0.0], [c, -s, 0.0], [0.0, 0.0, 1.0]])  # the head looks along its -y
            return head + head_rotation @ self.mount_offset, head_rotation @ self.mount
        return head, np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    def to_world(self, obs: Mapping, goal: np.ndarray) -> np.ndarray:
        origin, rotation = self._pose(obs)
        goal = np.asarray(goal, dtype=np.float64)
        if self.frame == "native":
            goal = np.array([goal[0], goal[1], 0.0])
        return self.clip((origin + rotation @ goal)[:2])

    def clip(self, goal: np.ndarray) -> np.ndarray:
        limit = self.floor_half_size - 0.2
        return np.clip(np.asarray(goal, dtype=np.float64)[:2], -limit, limit)

    def label(self, obs: Mapping, goal_world: np.ndarray) -> np.ndarray:
        origin, rotation = self._pose(obs)
        point = np.array([*np.asarray(goal_world, dtype=np.float64)[:2], SWIMMER_GOAL_Z])
        local = rotation.T @ (point - origin)
        return local if self.frame == "camera" else local[:2]

    def act(self, obs: Mapping, goal_world: np.ndarray) -> np.ndarray:
        return self.steering.act(obs, np.asarray(goal_world, dtype=np.float64)[:2])


def swimmer_follower(env_config: Mapping, frame: str) -> SwimmerGoalFollower:
    import envs
    from envs.swimmer.find import FLOOR_HALF_SIZE
    from policies.swimmer_steering import SwimmerSteering

    env = envs.make_from_config(env_config)
    try:
        swimmer = env.unwrapped
        swimmer.reset(seed=0)
        return SwimmerGoalFollower(SwimmerSteering(), float(swimmer._head.xpos[2]), swimmer.mount.copy(),
                                   swimmer.mount_offset.copy(), FLOOR_HALF_SIZE, frame)
    finally:
        env.close()


KITCHEN_BOUNDS = ((-1.0, -0.2, 1.6), (0.4, 1.2, 3.0))  # m, world: a box around every interaction point, reachable


@dataclass
class KitchenGoalFollower:
    """The kitchen's scripted arm plans (:class:`envs.kitchen.point.PointedExpert`) anchored on a pointed location.

    Goals are world points: ``camera``, in the fixed scene camera's frame; ``native``, world coordinates.
    Which plan to run (the task) comes from the instruction through the kitchen's own wording table,
    as a skill library reads its command; where to run it is the brain's. The expert works on its own
    copy of the env (for the arm's kinematics) and reads the arm from the observation.
    """

    expert: object  # envs.kitchen.point.PointedExpert
    camera_position: np.ndarray
    camera_rotation: np.ndarray  # camera -> world
    frame: str = "native"

    def reset(self) -> None:
        self.expert.reset()

    def to_world(self, obs: Mapping, goal: np.ndarray) -> np.ndarray:
        goal = np.asarray(goal, dtype=np.float64)
        return self.clip(self.camera_position + self.camera_rotation @ goal if self.frame == "camera" else goal)

    def clip(self, goal: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(goal, dtype=np.float64), *KITCHEN_BOUNDS)

    def label(self, obs: Mapping, goal_world: np.ndarray) -> np.ndarray:
        goal = np.asarray(goal_world, dtype=np.float64)
        return self.camera_rotation.T @ (goal - self.camera_position) if self.frame == "camera" else goal

    def act(self, obs: Mapping, goal_world: np.ndarray) -> np.ndarray:
        from envs.kitchen.instructions import task_of

        task = task_of(str(obs["instruction"]))
        if task is None:
            raise PolicyError(f"the kitchen controller has no task for the instruction {str(obs['instruction'])[:80]!r}")
        return self.expert.act({"state": obs["state"]}, goal_world, task=task)


def kitchen_follower(env_config: Mapping, frame: str) -> KitchenGoalFollower:
    import envs
    from envs.kitchen.point import PointedExpert

    env = envs.make_from_config(env_config)  # kept open: the expert's inverse kinematics runs on its model
    kitchen = env.unwrapped
    kitchen.reset(seed=0)
    position, rotation = kitchen.camera_pose()
    return KitchenGoalFollower(PointedExpert(kitchen), position, rotation, frame)


FOLLOWERS = {"uav": uav_follower, "swimmer": swimmer_follower, "kitchen": kitchen_follower}


def follower_for(embodiment: str, env_config: Mapping, frame: str):
    """The controller that takes ``embodiment``'s goals in ``frame`` (:func:`goal_frame` of the brain's spec)."""
    if embodiment not in FOLLOWERS:
        raise PolicyError(f"the spatial brain has no controller for embodiment {embodiment!r} "
                          f"(have: {', '.join(FOLLOWERS)})")
    if frame not in GOAL_FRAMES:
        raise PolicyError(f"unknown goal frame {frame!r}; have {', '.join(GOAL_FRAMES)}")
    return FOLLOWERS[embodiment](env_config, frame)


def brain_follower(brain: SpatialBrain, embodiment: str, env_config: Mapping):
    """The controller for this brain's goals on ``embodiment`` (in the frame its goal head speaks)."""
    if embodiment not in brain.config.embodiments:
        raise PolicyError(f"this brain has no embodiment {embodiment!r} (it has {', '.join(brain.config.embodiments)})")
    return follower_for(embodiment, env_config, goal_frame(brain.config.embodiments[embodiment]))


def decision_schedule(meta: PolicyMeta | None, embodiment: str) -> tuple[int, int]:
    """(decide_every, decisions) a run was trained with for ``embodiment`` (a merge records each expert's),
    else the embodiment's default."""
    extra = (meta.extra if meta is not None else None) or {}
    expert = next((e for e in extra.get("experts") or [] if e.get("embodiment") == embodiment), {})
    own = extra if extra.get("embodiment") == embodiment else {}
    every, decisions = DECISION_SCHEDULES.get(embodiment, (DEFAULT_DECIDE_EVERY, DEFAULT_DECISIONS))

    def pick(key: str, default: int) -> int:
        return int(expert.get(key) or own.get(key) or default)

    return pick("decide_every", every), pick("decisions", decisions)


def embodiment_of(env_id: str) -> str:
    if env_id not in EMBODIMENT_OF_ENV:
        raise PolicyError(f"the spatial brain acts in {', '.join(EMBODIMENT_OF_ENV)}, not {env_id!r}")
    return EMBODIMENT_OF_ENV[env_id]


def trained_envs(meta: PolicyMeta) -> dict[str, dict]:
    """Embodiment -> the env config a brain's goal head for it was trained in: a merge's or a joint run's every
    embodiment (``meta.extra["embodiments"]``), else the one the bundle acts in (a scaffold's head is untrained)."""
    extra = meta.extra or {}
    if extra.get("embodiments"):
        return {name: dict(env) for name, env in extra["embodiments"].items()}
    if extra.get("stage") == "scaffold":
        return {}
    return {extra.get("embodiment") or embodiment_of(meta.env.get("id", "")): dict(meta.env)}


def reembody_brain(meta: PolicyMeta, env_config: dict, interface: EnvInterface) -> PolicyMeta:
    """``meta`` acting in ``env_config`` (another embodiment's find env) where the brain was trained for it."""
    embodiment = embodiment_of(env_config.get("id", ""))
    trained = trained_envs(meta)
    if embodiment not in trained:
        names = ", ".join(f"{k} ({v.get('name')})" for k, v in trained.items()) or "none"
        raise PolicyError(f"this brain has no trained goal head for {embodiment} ({env_config.get('name')}); it was "
                          f"trained for {names}")
    extra = {k: v for k, v in meta.extra.items() if k not in ("decide_every", "decisions")}
    expert = next((e for e in extra.get("experts") or [] if e.get("embodiment") == embodiment), {})
    extra.update({"embodiment": embodiment, **{k: expert[k] for k in ("decide_every", "decisions") if expert.get(k)}})
    return PolicyMeta.for_env(meta.kind, meta.config, env_config, interface, steps=meta.steps,
                              normalization=meta.normalization, extra=extra)


# --- the policy ---------------------------------------------------------------------------------


class BrainPolicy(Policy):
    """:class:`SpatialBrain` + a goal follower, speaking the policy protocol (``reset``/``act``)."""

    def __init__(self, brain: SpatialBrain, meta: PolicyMeta, follower, embodiment: str,
                 decide_every: int = DEFAULT_DECIDE_EVERY, decisions: int = DEFAULT_DECISIONS):
        self.brain = brain.eval()
        self.meta = meta
        self.follower = follower
        self.embodiment = embodiment
        self.decide_every, self.decisions = int(decide_every), int(decisions)
        if self.decide_every < 1 or self.decisions < 1:
            raise PolicyError(f"decide_every and decisions must be >= 1, got {decide_every}, {decisions}")
        self.reset()

    def reset(self) -> None:
        self.follower.reset()
        self.goal: np.ndarray | None = None
        self.steps = 0
        self.decided = 0

    @torch.inference_mode()
    def goal_offset(self, obs: Mapping) -> np.ndarray:
        """The brain's goal (its Gaussian's mean) for one observation, in the goal head's frame."""
        batch = brain_batch(self.embodiment, [obs], self.brain.config.max_text_tokens)
        return self.brain.goal_distribution(batch).mean[0].numpy().astype(np.float64)

    def act(self, obs: Mapping) -> np.ndarray:
        if self.decided < self.decisions and self.steps % self.decide_every == 0:
            self.goal = self.follower.to_world(obs, self.goal_offset(obs))
            self.decided += 1
        self.steps += 1
        return np.asarray(self.follower.act(obs, self.goal), dtype=np.float32)

    @torch.inference_mode()
    def answer(self, obs: Mapping, question: str, vocabulary: tuple[str, ...]) -> tuple[str, float]:
        """A spatial question about this observation -> (answer, its probability)."""
        batch = brain_batch(self.embodiment, [dict(obs, question=question)], self.brain.config.max_text_tokens,
                            text_key="question")
        probs = torch.softmax(self.brain.qa_logits(batch)[0, :len(vocabulary)], dim=0)
        k = int(probs.argmax())
        return vocabulary[k], float(probs[k])
