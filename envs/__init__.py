"""Gymnasium environments of the stack, registered under the ``embodied/`` namespace.

Importing this package before MuJoCo sets ``MUJOCO_GL=osmesa`` when the user has not chosen a
GL backend and OSMesa (Debian package ``libosmesa6``) is installed, so headless machines render
without a display. MuJoCo loads the backend at import time, and an absent OSMesa would break
``import mujoco`` itself, hence the library probe.
"""

import ctypes.util
import os

if "MUJOCO_GL" not in os.environ and ctypes.util.find_library("OSMesa"):
    os.environ["MUJOCO_GL"] = "osmesa"
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

from collections.abc import Mapping  # noqa: E402

import gymnasium as gym  # noqa: E402
from gymnasium.envs.registration import register, registry  # noqa: E402

SWIMMER = "embodied/Swimmer-v0"  # task chosen by the ``task`` kwarg (default swim)
SWIMMER_SWIM = "embodied/SwimmerSwim-v0"
SWIMMER_NAVIGATE = "embodied/SwimmerNavigate-v0"
SWIMMER_GYM = "embodied/SwimmerGym-v5"
UAV = "embodied/UAV-v0"  # task chosen by the ``task`` kwarg (default hover)
UAV_HOVER = "embodied/UAVHover-v0"
UAV_WAYPOINTS = "embodied/UAVWaypoints-v0"
KITCHEN = "embodied/Kitchen-v0"  # task (or task sequence) chosen by the ``task`` kwarg
UAV_FIND = "embodied/UAVFind-v0"  # fly to the landmark a language instruction names
SWIMMER_FIND = "embodied/SwimmerFind-v0"  # swim to the target a language instruction names
KITCHEN_POINT = "embodied/KitchenPoint-v0"  # point at the kitchen object an instruction names, then do its task

if SWIMMER not in registry:
    register(SWIMMER, entry_point="envs.swimmer.env:SwimmerEnv", max_episode_steps=1000)
    register(SWIMMER_SWIM, entry_point="envs.swimmer.env:SwimmerEnv", max_episode_steps=1000,
             kwargs={"task": "swim"})
    register(SWIMMER_NAVIGATE, entry_point="envs.swimmer.env:SwimmerEnv", max_episode_steps=1000,
             kwargs={"task": "navigate"})
    register(SWIMMER_GYM, entry_point="envs.swimmer.stock:make_gym_swimmer", max_episode_steps=None)
if UAV not in registry:
    # Episodes are timed by the env itself (episode_seconds at any control_hz), so no TimeLimit.
    register(UAV, entry_point="envs.uav.env:UAVEnv")
    register(UAV_HOVER, entry_point="envs.uav.env:UAVEnv", kwargs={"task": "hover"})
    register(UAV_WAYPOINTS, entry_point="envs.uav.env:UAVEnv", kwargs={"task": "waypoints"})
if KITCHEN not in registry:
    # Timed by the env itself (steps_per_task x the number of tasks in the sequence), so no TimeLimit.
    register(KITCHEN, entry_point="envs.kitchen.env:KitchenEnv")
if UAV_FIND not in registry:
    # Timed by the env itself (episode_seconds at any control_hz), so no TimeLimit.
    register(UAV_FIND, entry_point="envs.uav.find:UAVFindEnv")
if SWIMMER_FIND not in registry:
    # Timed by the env itself (episode_seconds at any control_timestep), so no TimeLimit.
    register(SWIMMER_FIND, entry_point="envs.swimmer.find:SwimmerFindEnv")
if KITCHEN_POINT not in registry:
    # Timed by the env itself (episode_steps), as the kitchen, so no TimeLimit.
    register(KITCHEN_POINT, entry_point="envs.kitchen.point:KitchenPointEnv")


ENV_CONFIG_KEYS = ("name", "id")  # an env config's own keys; every other key is a gym.make kwarg
MAKE_KEYS = ("max_episode_steps",)  # gym.make's own keywords (a TimeLimit), open to every env


def env_kwargs(config: Mapping) -> dict:
    return {k: v for k, v in config.items() if k not in ENV_CONFIG_KEYS}


def constructor_kwargs(config: Mapping) -> dict:
    """The keyword arguments the env class itself takes (what its config class checks)."""
    return {k: v for k, v in env_kwargs(config).items() if k not in MAKE_KEYS}


def make_from_config(config: Mapping, **overrides) -> gym.Env:
    """The env an env config describes (the ``env`` of a run's config.yaml or of a policy.json)."""
    return gym.make(config["id"], **{**env_kwargs(config), **overrides})


# The config class (a dataclass of the env's keyword arguments) behind each id; gymnasium's own
# Swimmer-v5 takes gymnasium's keyword arguments and has none here.
CONFIG_CLASSES = {
    SWIMMER: "envs.swimmer.env:SwimmerConfig", SWIMMER_SWIM: "envs.swimmer.env:SwimmerConfig",
    SWIMMER_NAVIGATE: "envs.swimmer.env:SwimmerConfig", UAV: "envs.uav.env:UAVConfig",
    UAV_HOVER: "envs.uav.env:UAVConfig", UAV_WAYPOINTS: "envs.uav.env:UAVConfig", KITCHEN: "envs.kitchen.env:KitchenConfig",
    UAV_FIND: "envs.uav.find:UAVFindConfig", SWIMMER_FIND: "envs.swimmer.find:SwimmerFindConfig",
    KITCHEN_POINT: "envs.kitchen.point:KitchenPointConfig",
}


def config_class(env_id: str) -> type | None:
    """The dataclass of an env id's keyword arguments (validates them without building the env), or None."""
    import importlib

    path = CONFIG_CLASSES.get(env_id)
    if path is None:
        return None
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)
