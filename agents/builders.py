"""Build envs and policy descriptions from the composed Hydra config.

Observation and action sizes, joint indices and the clock's position come from the env at run
time (never from YAML), so one policy config fits every body length and task.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from omegaconf import DictConfig, OmegaConf

import envs  # registers the project's env ids
from agents.errors import UserError
from policies import registry
from policies.protocol import EnvInterface, PolicyError, PolicyMeta


def env_config(env_cfg: DictConfig | dict) -> dict[str, Any]:
    return OmegaConf.to_container(env_cfg, resolve=True) if isinstance(env_cfg, DictConfig) else dict(env_cfg)


def make_env(env_cfg: DictConfig | dict, render_mode: str | None = None, **overrides: Any) -> gym.Env:
    cfg = env_config(env_cfg)
    kwargs = {**envs.env_kwargs(cfg), **overrides}
    if render_mode:
        kwargs["render_mode"] = render_mode
    try:
        return gym.make(cfg["id"], **kwargs)
    except gym.error.Error as e:
        raise UserError(f"cannot make env {cfg['id']!r}: {e}") from None
    except (TypeError, ValueError) as e:
        raise UserError(f"bad env config for {cfg['name']}: {e}") from None


def env_interface(env_cfg: DictConfig | dict) -> EnvInterface:
    """What the configured env offers a policy (a probe env is made and closed)."""
    env = make_env(env_cfg)
    try:
        return EnvInterface.of(env)
    except ValueError as e:
        raise UserError(str(e)) from None
    finally:
        env.close()


def policy_meta(cfg: DictConfig) -> PolicyMeta:
    """The meta of the policy ``cfg`` trains: its full config from the policy YAML and the env."""
    interface = env_interface(cfg.env)
    switches = OmegaConf.to_container(cfg.policy.actor, resolve=True)
    try:
        config = registry.make_config(cfg.policy.kind, switches, interface)
    except PolicyError as e:
        raise UserError(str(e)) from None
    return PolicyMeta.for_env(cfg.policy.kind, config, env_config(cfg.env), interface)
