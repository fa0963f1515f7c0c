"""One validation layer for the composed config: every group's keys, types, ranges and cross-field rules.

Each config group has a schema, a dataclass whose fields are the group's keys: the env groups the
env's own config class (``envs.config_class``), a policy its kind's config class for ``actor``
plus :class:`PolicySettings`, an algorithm its trainer's ``Settings``, the top level the
dataclasses below. :func:`check` walks a composed node against a schema before anything is made:
an unknown key (with the closest known one suggested), a value of the wrong type, a non-finite
number, a value out of its range, or a rule across fields that the schema's ``__post_init__``
enforces; each is one line naming the key. A key added with ``+`` is refused the same way unless
the schema says it is passed on to a library that takes it (SB3's keyword arguments).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from agents.errors import UserError
from policies.typed import conforms, describe_type

MAX_STEPS = 10**12  # env or gradient steps: more is a typo (at a million steps/s it would take 11 days)


def setting(default: Any = dataclasses.MISSING, *, low: float | None = None, high: float | None = None,
            above: float | None = None, choices: Sequence | None = None, factory: Callable | None = None) -> Any:
    """A schema field: its default, and the range (``low <= v <= high``, ``v > above``) or choices it must keep."""
    meta = {"low": low, "high": high, "above": above, "choices": tuple(choices) if choices is not None else None}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node


def did_you_mean(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, list | tuple):
        return [x for v in value for x in _numbers(v)]
    return []


def _check_value(key: str, value: Any, tp: Any, meta: Mapping) -> None:
    if not conforms(value, tp):
        raise UserError(f"config key '{key}' must be {describe_type(tp)}, got {value!r}")
    numbers = _numbers(value)
    if any(not math.isfinite(x) for x in numbers):
        raise UserError(f"config key '{key}' must be finite, got {value!r}")
    low, high, above, choices = meta.get("low"), meta.get("high"), meta.get("above"), meta.get("choices")
    if choices is not None and value not in choices:
        raise UserError(f"config key '{key}' must be one of {', '.join(map(str, choices))}, got {value!r}")
    for x in numbers:
        if (low is not None and x < low) or (high is not None and x > high) or (above is not None and x <= above):
            bounds = " and ".join(f"{op} {_number(b)}" for op, b in ((">=", low), (">", above), ("<=", high))
                                  if b is not None)
            raise UserError(f"config key '{key}' must be {bounds}, got {value!r}")


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def check(node: Any, schema: type, where: str, open_keys: Callable[[], set[str]] | None = None,
          build: bool = True) -> None:
    """``node`` (a mapping) against the dataclass ``schema``; UserError naming the first bad key.

    ``open_keys`` lists further keys the node may hold (passed on as keyword arguments to a
    library); their values are left to the library. With ``build`` the schema is constructed,
    so that its ``__post_init__`` checks the rules across fields.
    """
    node = plain(node)
    if not isinstance(node, dict):
        raise UserError(f"config key '{where}' must be a mapping, got {node!r}")
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    extra = open_keys() if open_keys is not None else set()
    for key, value in node.items():
        full = f"{where}.{key}" if where else str(key)
        if key not in fields:
            if key in extra:
                continue
            known = [*fields, *sorted(extra)]
            owner = f"the {where} group" if where else "the top level"
            raise UserError(f"'{full}' is not a setting of {owner}{did_you_mean(str(key), known)} (settings: "
                            f"{', '.join(known)})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            check(value, tp, full, build=build)
            continue
        _check_value(full, value, tp, fields[key].metadata)
    if build:
        try:
            schema(**{k: v for k, v in node.items() if k in fields})
        except (TypeError, ValueError) as e:
            raise UserError(f"bad {where or 'top-level'} config: {e}") from None


# --- the groups every command shares ------------------------------------------------------------


def check_env(env_cfg: Any) -> None:
    """The env group: its keyword arguments against the env's config class (name and id are the group's own)."""
    import envs

    env_cfg = plain(env_cfg)
    if not isinstance(env_cfg.get("id"), str) or not isinstance(env_cfg.get("name"), str):
        raise UserError(f"config keys 'env.id' and 'env.name' must be names, got {env_cfg.get('id')!r} and "
                        f"{env_cfg.get('name')!r}")
    limit = env_cfg.get("max_episode_steps")  # gym.make's own keyword (a TimeLimit), open to every env
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= MAX_STEPS):
        raise UserError(f"config key 'env.max_episode_steps' must be a positive whole number, got {limit!r}")
    schema = envs.config_class(env_cfg["id"])
    if schema is None:  # an env that takes gymnasium's own keyword arguments
        return
    check(envs.constructor_kwargs(env_cfg), schema, "env")


@dataclass
class PolicySettings:
    """The policy group's keys besides ``kind`` and ``actor`` (which its kind's config class checks)."""

    normalize_obs: bool = False  # standardise observations with running statistics (RL trainers)
    learn_std: bool = True  # learn the Gaussian's state-independent std (PPO, GRPO)
    log_std_init: float = setting(0.0, low=-20.0, high=5.0)  # its initial log
    critic_arch: list[int] = setting(factory=lambda: [64, 64])  # the critic MLP's widths (PPO, SAC)
    state_only: bool = False  # MT-ACT: the object state instead of images

    def __post_init__(self):
        if any(w < 1 for w in self.critic_arch):
            raise ValueError(f"critic_arch widths must be positive, got {self.critic_arch}")


def check_policy(policy_cfg: Any) -> None:
    """The policy group: the kind, its switches under the kind's config key (checked by its config class,
    env-derived fields left at their defaults) and the shared settings."""
    from policies import registry
    from policies.protocol import PolicyError

    policy_cfg = plain(policy_cfg)
    try:
        kind = registry.get(policy_cfg.get("kind"))
    except PolicyError as e:
        raise UserError(str(e)) from None
    key = kind.config_key
    check({k: v for k, v in policy_cfg.items() if k not in ("kind", key)}, PolicySettings, "policy")
    check(policy_cfg.get(key) or {}, kind.config_class, f"policy.{key}")


GROUPS = ("env", "policy", "algo", "logger", "hydra")  # composed groups (and Hydra's own node)


def top_level(cfg: Any) -> dict:
    """The composed config's own keys, without the groups."""
    return {k: plain(cfg[k]) for k in cfg if k not in GROUPS}
