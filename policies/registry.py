"""Policy kinds by name: the one place that knows what each kind is and how to build or load it.

An entry gives a kind's config class, its torch module, the algorithms that train it, how its
config is completed from an env, how a bundle becomes a deployable :class:`~policies.protocol.Policy`,
how an untrained (or scripted) one is made for an env, how it is rewired to another body, and its
NumPy forward. Evaluation, the ROS nodes, the trainers and the benchmarks ask this module; adding
a policy kind is adding one entry here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from torch import nn

from policies.bundle import META_FILE, WEIGHTS_FILE, Bundle, BundleError, read_bundle
from policies.mlp import MLPActor, MLPConfig
from policies.ncap import NCAP, NCAPConfig
from policies.numpy_inference import mlp_forward, ncap_forward
from policies.protocol import EnvInterface, Forward, Policy, PolicyError, PolicyMeta, observation_mismatch
from policies.typed import check_field_types
from policies.vector_policy import VectorPolicy

MAX_PARAMETERS = 200_000_000  # parameters and buffers; a config asking for more is a typo, not a policy


@dataclass(frozen=True)
class PolicyKind:
    name: str
    config_class: type
    trained_by: tuple[str, ...]  # the algorithms (algo.name) that train it; () for a scripted controller
    module: type[nn.Module] | None = None  # built from a config instance; None for a scripted controller
    # (the policy YAML's switches, the env) -> the full config dict; None: the trainer derives it (from a dataset)
    make_config: Callable[[dict, EnvInterface], dict] | None = None
    load: Callable[[Bundle, dict], Policy] | None = None  # a validated bundle and options -> the policy
    # (policy config from YAML, the env, its config) -> an untrained or scripted policy for that env
    initial: Callable[[PolicyKind, dict, gym.Env, dict], Policy] | None = None
    retarget: Callable[[PolicyMeta, EnvInterface], PolicyMeta] | None = None  # rewire to another body
    numpy_forward: Callable[[nn.Module], Forward | None] | None = None
    options: tuple[str, ...] = ()  # deployment options its loader takes (MT-ACT's chunk execution)
    config_key: str = "actor"  # where the policy config group keeps the kind's switches (policy.<config_key>)
    reads: Callable[[Any], dict] | None = None  # config -> the observation it reads, when the config alone says
    # (meta, another env's config, that env's interface) -> the meta acting there, for a bundle trained on several
    # envs (a merged spatial brain's embodiments); PolicyError where it was not trained for that env
    reembody: Callable[[PolicyMeta, dict, EnvInterface], PolicyMeta] | None = None
    answers_questions: bool = False  # its loaded policy's ``brain`` has a spatial-QA head (agents.evaluate qa=)


def config_object(kind: PolicyKind, config: dict):
    """The kind's config instance; PolicyError naming the kind and the problem."""
    try:
        return kind.config_class.from_dict(dict(config))
    except KeyError as e:
        raise PolicyError(f"bad {kind.name} policy config: missing {e}") from None
    except (TypeError, ValueError) as e:
        raise PolicyError(f"bad {kind.name} policy config: {e}") from None


def build_module(kind_name: str, config: dict) -> nn.Module:
    """The kind's torch module for ``config``, sized on the meta device before any memory is allocated."""
    kind = get(kind_name)
    if kind.module is None:
        raise PolicyError(f"policy kind {kind_name} has no trainable module")
    cfg = config_object(kind, config)
    with torch.device("meta"):
        probe = kind.module(cfg)
    size = sum(t.numel() for t in (*probe.parameters(), *probe.buffers()))
    if size > MAX_PARAMETERS:
        raise PolicyError(f"the {kind_name} config asks for {size:,} parameters (limit {MAX_PARAMETERS:,}); "
                          "check its sizes")
    return kind.module(cfg)


def load_module(kind_name: str, bundle: Bundle, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """The kind's module from the bundle's config with ``tensors`` loaded; BundleError on any mismatch."""
    meta_file = bundle.directory / META_FILE
    try:
        module = build_module(kind_name, bundle.meta.config)
    except PolicyError as e:
        raise BundleError(f"{meta_file}: config: {e}") from None
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    weights = bundle.directory / WEIGHTS_FILE
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise BundleError(f"{weights}: tensors do not match the {kind_name} config in policy.json ({what})")
    for name, value in own.items():
        if tuple(tensors[name].shape) != tuple(value.shape):
            raise BundleError(f"{weights}: {name} has shape {tuple(tensors[name].shape)}, the config in "
                              f"policy.json makes {tuple(value.shape)}")
    module.load_state_dict(tensors)
    return module.eval()


# ---------------------------------------------------------------- vector policies (NCAP, MLP)


def _vector_interface(kind: str, env: EnvInterface) -> int:
    if env.obs_dim is None:
        raise PolicyError(f"policy {kind} reads a vector observation; this env gives a Dict "
                          f"({', '.join(env.observation['keys'])})")
    return env.obs_dim


def _mlp_config(switches: dict, env: EnvInterface) -> dict:
    return {**switches, "obs_dim": _vector_interface("mlp", env), "action_dim": env.action_dim}


def _ncap_config(switches: dict, env: EnvInterface) -> dict:
    _vector_interface("ncap", env)
    layout = env.layout
    if layout is None or "joints" not in layout:
        raise PolicyError("policy ncap needs a swimmer-like env (joint angles and a clock in the observation)")
    if switches.get("task_control", "none") != "none" and not layout.get("to_target"):
        raise PolicyError("policy.actor.task_control needs a task with a target (env=swimmer_navigate)")
    return {**switches, "n_joints": env.action_dim, "joint_slice": layout["joints"],
            "joint_limit": layout["joint_limit"], "time_index": layout["time"],
            "time_scale_steps": layout["time_scale_steps"], "target_slice": layout["to_target"]}


def _retarget_ncap(meta: PolicyMeta, env: EnvInterface) -> PolicyMeta:
    """A shared-weight NCAP rewired to another body length or observation layout (zero-shot transfer)."""
    switches = {k: v for k, v in meta.config.items()
                if k not in ("n_joints", "joint_slice", "joint_limit", "time_index", "time_scale_steps",
                             "target_slice")}
    rewired = NCAPConfig.from_dict(_ncap_config(switches, env)).to_dict()
    if rewired == NCAPConfig.from_dict(meta.config).to_dict():
        return meta
    if not meta.config.get("weight_sharing", True):
        raise PolicyError(f"an unshared NCAP for {meta.action_dim} joints; only the weight-shared circuit "
                          f"transfers to a body with {env.action_dim} joints")
    if meta.normalization is not None:
        raise PolicyError("an NCAP trained on normalised observations cannot be rewired to another body")
    return replace(meta, config=rewired, observation=env.observation, action_low=[meta.action_low[0]] * env.action_dim,
                   action_high=[meta.action_high[0]] * env.action_dim)


def _load_vector(bundle: Bundle, options: dict) -> Policy:
    kind = get(bundle.meta.kind)
    actor_tensors = {k.removeprefix("actor."): v for k, v in bundle.tensors.items() if k.startswith("actor.")}
    actor = load_module(kind.name, bundle, actor_tensors)
    stats = [bundle.tensors.get(k) for k in ("obs_mean", "obs_var")]
    return VectorPolicy(actor, bundle.meta, *stats, numpy_actor=kind.numpy_forward)


def _initial_vector(kind: PolicyKind, policy_cfg: dict, env: gym.Env, env_config: dict) -> Policy:
    """An untrained actor on raw observations (it has no statistics yet)."""
    interface = EnvInterface.of(env)
    config = make_config(kind.name, policy_cfg.get(kind.config_key) or {}, interface)
    meta = PolicyMeta.for_env(kind.name, config, env_config, interface)
    return VectorPolicy(build_module(kind.name, config).eval(), meta, numpy_actor=kind.numpy_forward)


# ---------------------------------------------------------------- MT-ACT and the PID


def _load_mtact(bundle: Bundle, options: dict) -> Policy:
    from policies.mtact_inference import MTACTPolicy

    model = load_module("mtact", bundle, bundle.tensors)
    return MTACTPolicy.from_options(model, bundle.meta, options)


def _no_untrained_mtact(kind: PolicyKind, policy_cfg: dict, env: gym.Env, env_config: dict) -> Policy:
    raise PolicyError("an untrained MT-ACT has nothing to show; train one (algo=bc dataset=<dir>) and pass run=<dir>")


def _pid(kind: PolicyKind, policy_cfg: dict, env: gym.Env, env_config: dict) -> Policy:
    from policies.pid import pid_for_env

    return pid_for_env(env, policy_cfg.get(kind.config_key) or None, env_config)


def _pid_config_class():
    from policies.pid import PIDGains

    return PIDGains


def _mtact_entry() -> PolicyKind:
    from policies.mtact import MTACT, MTACTConfig, observation_description

    return PolicyKind("mtact", MTACTConfig, ("bc",), MTACT, load=_load_mtact, initial=_no_untrained_mtact,
                      options=("schedule", "execute_steps", "task"), reads=observation_description)


# ---------------------------------------------------------------- the spatial brain


def _load_brain(bundle: Bundle, options: dict) -> Policy:
    from policies import brain_policy as bp

    model = load_module("spatial_brain", bundle, bundle.tensors)
    extra = bundle.meta.extra
    embodiment = extra.get("embodiment") or bp.embodiment_of(bundle.meta.env.get("id", ""))
    follower = bp.brain_follower(model, embodiment, bundle.meta.env)
    every, decisions = bp.decision_schedule(bundle.meta, embodiment)
    return bp.BrainPolicy(model, bundle.meta, follower, embodiment,
                          decide_every=options.get("decide_every") or every,
                          decisions=options.get("decisions") or decisions)


def _no_untrained_brain(kind: PolicyKind, policy_cfg: dict, env: gym.Env, env_config: dict) -> Policy:
    raise PolicyError("an untrained spatial brain has nothing to show; train one (algo=scaffold, then "
                      "algo=specialize, optionally algo=grpo) and pass run=<dir>")


def _brain_entry() -> PolicyKind:
    from policies.brain_policy import reembody_brain
    from policies.spatial_brain import SpatialBrain, SpatialBrainConfig

    return PolicyKind("spatial_brain", SpatialBrainConfig, ("scaffold", "specialize", "joint", "grpo"), SpatialBrain,
                      load=_load_brain, initial=_no_untrained_brain, options=("decide_every", "decisions"),
                      reembody=reembody_brain, answers_questions=True)


KINDS: dict[str, PolicyKind] = {
    "ncap": PolicyKind("ncap", NCAPConfig, ("ppo", "grpo", "es"), NCAP, _ncap_config, _load_vector, _initial_vector,
                       _retarget_ncap, ncap_forward),
    "mlp": PolicyKind("mlp", MLPConfig, ("ppo", "sac", "grpo", "es"), MLPActor, _mlp_config, _load_vector,
                      _initial_vector, None, mlp_forward, reads=lambda c: {"shape": [c.obs_dim]}),
    "mtact": _mtact_entry(),
    "pid": PolicyKind("pid", _pid_config_class(), (), initial=_pid, config_key="gains"),
    "spatial_brain": _brain_entry(),
}


def get(name: str) -> PolicyKind:
    if name not in KINDS:
        raise PolicyError(f"unknown policy kind {name!r} (known: {', '.join(sorted(KINDS))})")
    return KINDS[name]


def make_config(kind_name: str, switches: dict, env: EnvInterface) -> dict:
    """The full config of a kind for an env: the policy YAML's switches plus what the env dictates."""
    kind = get(kind_name)
    if kind.make_config is None:
        raise PolicyError(f"policy {kind_name} takes its sizes from its training data, not from an env")
    config = kind.make_config(dict(switches), env)
    return config_object(kind, config).to_dict()


def check_trainable(kind_name: str, algo: str) -> None:
    """PolicyError unless ``algo`` trains this kind of policy."""
    kind = get(kind_name)
    if algo in kind.trained_by:
        return
    if not kind.trained_by:
        raise PolicyError(f"policy {kind_name} is a scripted controller with nothing to train; evaluate it with "
                          f"python -m agents.evaluate env=<env> policy={kind_name}")
    raise PolicyError(f"policy {kind_name} is trained by algo={' or algo='.join(kind.trained_by)}, not algo={algo}")


def initial_policy(policy_cfg: dict, env: gym.Env, env_config: dict) -> Policy:
    """An untrained (or scripted) policy of ``policy_cfg["kind"]`` for ``env``, seeded by the caller's torch seed."""
    kind = get(policy_cfg["kind"])
    return kind.initial(kind, policy_cfg, env, env_config)


def _check_options(kind: PolicyKind, options: dict) -> None:
    unknown = sorted(set(options) - set(kind.options))
    if unknown:
        takes = f"it takes {', '.join(kind.options)}" if kind.options else "it takes none"
        raise PolicyError(f"policy kind {kind.name} has no option {', '.join(unknown)} ({takes})")


def load_policy(path: str | Path, env: EnvInterface | None = None, options: dict[str, Any] | None = None,
                env_config: dict | None = None) -> Policy:
    """The deployable policy in a bundle directory, checked against (and if need be rewired to) ``env``.

    ``options`` are the kind's deployment options (``PolicyKind.options``); empty values are
    ignored. ``env_config``: act in this env rather than the one the bundle records (with ``env``,
    its interface), for kinds trained on several (``PolicyKind.reembody``). Any defect or mismatch
    is one line: BundleError (the files) or PolicyError (the fit).
    """
    bundle = read_bundle(path)
    kind = get(bundle.meta.kind)
    if kind.load is None:
        raise BundleError(f"{bundle.directory}: policy kind {kind.name} is not loaded from a bundle")
    try:
        config_object(kind, bundle.meta.config)
    except PolicyError as e:
        raise BundleError(f"{bundle.directory / META_FILE}: config: {e}") from None
    _check_env_config(bundle)
    if kind.reads is not None:
        expected = kind.reads(config_object(kind, bundle.meta.config))
        problem = observation_mismatch(expected, bundle.meta.observation) or observation_mismatch(
            bundle.meta.observation, expected)
        if problem:
            raise BundleError(f"{bundle.directory / META_FILE}: observation does not match the {kind.name} config "
                              f"({problem})")
    missing = sorted({f.name for f in dataclasses.fields(kind.config_class)} - set(bundle.meta.config))
    if missing and bundle.hashed:  # the writer saves the whole config; a version-1 bundle may predate a field
        raise BundleError(f"{bundle.directory / META_FILE}: config lacks {', '.join(missing)}")
    options = {k: v for k, v in (options or {}).items() if v not in (None, "", 0)}
    _check_options(kind, options)
    if env_config is not None and env_config.get("id") != bundle.meta.env.get("id"):
        if kind.reembody is None or env is None:
            raise PolicyError(f"a {kind.name} policy acts only in the env it was trained on "
                              f"({bundle.meta.env.get('name')}), not {env_config.get('name')}")
        bundle.meta = kind.reembody(bundle.meta, dict(env_config), env)
    if env is not None:
        try:
            bundle.meta = fit_to_env(bundle.meta, env, kind)
        except PolicyError as e:
            raise PolicyError(f"the policy in {bundle.directory} does not fit this env: {e}") from None
    return kind.load(bundle, options)


def _check_env_config(bundle: Bundle) -> None:
    """The bundle's env config against its env's config class: names, types and ranges (no env is built)."""
    import envs

    schema = envs.config_class(bundle.meta.env["id"])
    if schema is None:
        return
    try:
        check_field_types(schema(**envs.constructor_kwargs(bundle.meta.env)))
    except (TypeError, ValueError) as e:
        raise BundleError(f"{bundle.directory / META_FILE}: env: {e}") from None


def fit_to_env(meta: PolicyMeta, env: EnvInterface, kind: PolicyKind | None = None) -> PolicyMeta:
    """``meta`` for ``env``: unchanged when it fits, rewired when the kind can retarget, else PolicyError."""
    kind = kind or get(meta.kind)
    if kind.retarget is not None and env.layout is not None:
        meta = kind.retarget(meta, env)
    problem = observation_mismatch(meta.observation, env.observation)
    if problem:
        raise PolicyError(problem)
    if env.action_dim != meta.action_dim:
        raise PolicyError(f"the policy outputs {meta.action_dim} actions, the env takes {env.action_dim}")
    return meta
