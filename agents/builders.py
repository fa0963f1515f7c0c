"""Build envs and actor configs from the composed Hydra config.

Observation and action sizes, joint indices and the clock's position come from the env at run
time (never from YAML), so one policy config fits every body length and task.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from omegaconf import DictConfig, OmegaConf

import envs  # registers the project's env ids
from agents.errors import UserError


def env_kwargs(env_cfg: DictConfig | dict) -> dict[str, Any]:
    cfg = OmegaConf.to_container(env_cfg, resolve=True) if isinstance(env_cfg, DictConfig) else dict(env_cfg)
    return envs.env_kwargs(cfg)


def make_env(env_cfg: DictConfig | dict, render_mode: str | None = None, **overrides: Any) -> gym.Env:
    kwargs = {**env_kwargs(env_cfg), **overrides}
    if render_mode:
        kwargs["render_mode"] = render_mode
    try:
        return gym.make(env_cfg["id"], **kwargs)
    except gym.error.Error as e:
        raise UserError(f"cannot make env {env_cfg['id']!r}: {e}") from None
    except (TypeError, ValueError) as e:
        raise UserError(f"bad env config for {env_cfg['name']}: {e}") from None


def observation_layout(env: gym.Env) -> dict | None:
    try:
        layout = env.get_wrapper_attr("layout")
    except AttributeError:
        return None
    return layout.to_dict()


def env_signature(env: gym.Env) -> tuple[int, int, list[float], list[float]]:
    obs_dim = int(np.prod(env.observation_space.shape))
    space = env.action_space
    if not isinstance(space, gym.spaces.Box):
        raise UserError(f"only continuous (Box) action spaces are supported, got {space}")
    return obs_dim, int(np.prod(space.shape)), space.low.tolist(), space.high.tolist()


def actor_config(policy_cfg: DictConfig, env: gym.Env) -> dict:
    """The actor's full config: the policy's YAML switches plus what the env dictates."""
    obs_dim, action_dim, _, _ = env_signature(env)
    switches = OmegaConf.to_container(policy_cfg.actor, resolve=True)
    if policy_cfg.kind == "mlp":
        return {"obs_dim": obs_dim, "action_dim": action_dim, **switches}
    if policy_cfg.kind == "ncap":
        layout = observation_layout(env)
        if layout is None or "joints" not in layout:
            raise UserError("policy ncap needs a swimmer-like env (joint angles and a clock in the observation)")
        if switches.get("task_control", "none") != "none" and not layout.get("to_target"):
            raise UserError("policy.actor.task_control needs a task with a target (env=swimmer_navigate)")
        return {
            **switches,
            "n_joints": action_dim,
            "joint_slice": layout["joints"],
            "joint_limit": layout["joint_limit"],
            "time_index": layout["time"],
            "time_scale_steps": layout["time_scale_steps"],
            "target_slice": layout["to_target"],
        }
    raise UserError(f"unknown policy kind {policy_cfg.kind!r}")
