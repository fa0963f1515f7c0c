"""The one interface every deployable policy speaks, and the description of what it was trained on.

Callers (evaluation, the ROS policy node, benchmarks) never ask which kind of policy they hold:

- ``reset()`` starts an episode (a PID forgets its integrators, MT-ACT its action chunks);
- ``act(obs)`` maps the env's own observation to one action within the action bounds; a Dict
  observation carries everything the policy reads, the kitchen's instruction included;
- ``batched(slots)`` runs ``slots`` independent episodes at once, in one model call per step
  where the policy supports it (a copy per slot otherwise);
- ``meta`` says what the policy is: kind, its config, the env it was trained on, the observation
  it reads, the action bounds and the control period.

Modelled on LeRobot's ``PreTrainedPolicy`` (``reset``/``select_action``, a config class per kind)
and SB3's ``BasePolicy.predict``, with Gymnasium's spaces as the description of the observation.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

Forward = Callable[[np.ndarray], np.ndarray]


class PolicyError(ValueError):
    """A policy cannot be built, loaded or used as asked: one line that says why."""


def describe_space(space: gym.Space) -> dict:
    """A JSON description of an observation space: ``{"shape", "dtype"}``, ``{"keys": {...}}`` or ``{"text": n}``."""
    if isinstance(space, gym.spaces.Dict):
        return {"keys": {name: describe_space(sub) for name, sub in space.spaces.items()}}
    if isinstance(space, gym.spaces.Text):
        return {"text": int(space.max_length)}
    if isinstance(space, gym.spaces.Box):
        return {"shape": [int(n) for n in space.shape], "dtype": str(space.dtype)}
    raise ValueError(f"observation space {space} is not supported (Box, Dict of Box and Text)")


def observation_mismatch(reads: dict, offered: dict) -> str | None:
    """Why an observation described by ``offered`` cannot feed a policy that ``reads``; None if it can.

    A vector must have the same shape; a Dict must hold every key the policy reads, each with
    the same shape (keys the policy does not read are ignored).
    """
    if "keys" in reads:
        if "keys" not in offered:
            return f"the policy reads a Dict observation ({', '.join(reads['keys'])}), the env gives a vector"
        for name, part in reads["keys"].items():
            if name not in offered["keys"]:
                return f"the policy reads observation key {name!r}, the env has {', '.join(offered['keys'])}"
            problem = observation_mismatch(part, offered["keys"][name])
            if problem:
                return f"{name}: {problem}"
        return None
    if "text" in reads:
        return None if "text" in offered else "the policy reads text, the env gives an array"
    if "shape" not in offered:
        return f"the policy reads a {list(reads['shape'])} array, the env gives {'a Dict' if 'keys' in offered else 'text'}"
    if list(reads["shape"]) != list(offered["shape"]):
        return f"the policy reads observations of shape {list(reads['shape'])}, the env gives {list(offered['shape'])}"
    return None


@dataclass
class EnvInterface:
    """What an env (or a robot behind ROS) offers a policy: observation, action bounds, control period.

    ``layout`` names index ranges of a vector observation (the swimmer's joints and clock), so a
    policy that reads by name (NCAP) can be rewired to another body.
    """

    observation: dict
    action_low: list[float]
    action_high: list[float]
    control_dt: float | None = None
    layout: dict | None = None

    @classmethod
    def of(cls, env: gym.Env) -> EnvInterface:
        space = env.action_space
        if not isinstance(space, gym.spaces.Box):
            raise ValueError(f"only continuous (Box) action spaces are supported, got {space}")
        try:
            layout = env.get_wrapper_attr("layout")
            layout = layout.to_dict() if hasattr(layout, "to_dict") else None
        except AttributeError:
            layout = None
        dt = getattr(env.unwrapped, "dt", None)
        return cls(describe_space(env.observation_space), space.low.astype(float).tolist(),
                   space.high.astype(float).tolist(), float(dt) if dt else None, layout)

    @property
    def obs_dim(self) -> int | None:
        """Length of a vector observation (None for a Dict)."""
        return int(np.prod(self.observation["shape"])) if "shape" in self.observation else None

    @property
    def action_dim(self) -> int:
        return len(self.action_low)


@dataclass
class PolicyMeta:
    """Everything about a policy but its weights: what ``policy.json`` holds."""

    kind: str
    config: dict  # the kind's config (its config class's to_dict())
    env: dict  # the env config it was trained on: name, id and the env's keyword arguments
    observation: dict  # what it reads (describe_space of the env's observation, or the Dict keys it uses)
    action_low: list[float]
    action_high: list[float]
    control_dt: float | None = None  # s between actions; None when the env does not say
    normalization: dict | None = None  # {"clip": c} when observations are standardised by obs_mean/obs_var
    steps: int = 0  # env steps (RL) or gradient steps (BC) it was trained for
    action_std: list[float] | None = None  # the trained Gaussian's std, for stochastic deployment
    extra: dict = field(default_factory=dict)  # the kind's own deployment data (MT-ACT: tasks, chunk execution)

    @property
    def action_dim(self) -> int:
        return len(self.action_low)

    @property
    def obs_dim(self) -> int | None:
        return int(np.prod(self.observation["shape"])) if "shape" in self.observation else None

    def to_dict(self) -> dict:
        return copy.deepcopy(asdict(self))

    @classmethod
    def for_env(cls, kind: str, config: dict, env_config: dict, interface: EnvInterface, **fields: Any) -> PolicyMeta:
        return cls(kind=kind, config=config, env=dict(env_config), observation=interface.observation,
                   action_low=list(interface.action_low), action_high=list(interface.action_high),
                   control_dt=interface.control_dt, **fields)


class BatchedPolicy(ABC):
    """``slots`` independent episodes driven together: ``reset(slot)``, then ``act({slot: obs})``."""

    @abstractmethod
    def reset(self, slot: int) -> None: ...

    @abstractmethod
    def act(self, observations: dict[int, Any]) -> dict[int, np.ndarray]: ...


class Policy(ABC):
    """A deployable policy. Subclasses set ``meta`` and implement :meth:`act`."""

    meta: PolicyMeta

    def reset(self) -> None:
        """Start a new episode. Stateless policies have nothing to forget."""

    @abstractmethod
    def act(self, obs: Any) -> np.ndarray:
        """One action, within the action bounds, for one observation of the env."""

    def batched(self, slots: int) -> BatchedPolicy:
        """A controller for ``slots`` episodes at once; by default an independent copy per slot."""
        return SlotCopies(self, slots)

    def warm_up(self, obs: Any) -> None:
        """Act once on ``obs`` so that the first real step pays no first-call costs, then forget it."""
        self.act(obs)
        self.reset()

    def numpy_forward(self) -> Forward | None:
        """``act`` in plain NumPy for a control loop's hot path, checked against ``act``; None if there is none."""
        return None

    def diagnostics(self) -> dict[str, str]:
        """Extra key/values for a deployment's diagnostics (e.g. how action chunks are executed)."""
        return {}


class SlotCopies(BatchedPolicy):
    """One copy of a policy per slot: correct for any policy, batched in name only."""

    def __init__(self, policy: Policy, slots: int):
        if slots < 1:
            raise ValueError(f"slots must be positive, got {slots}")
        self.copies = [copy.deepcopy(policy) for _ in range(slots)]

    def reset(self, slot: int) -> None:
        self.copies[slot].reset()

    def act(self, observations: dict[int, Any]) -> dict[int, np.ndarray]:
        return {slot: self.copies[slot].act(obs) for slot, obs in observations.items()}
