"""Version-1 policy files, upgraded in memory to the current :class:`~policies.protocol.PolicyMeta`.

Two formats shared the file names ``policy.json`` + ``policy.safetensors`` before the bundle:
``embodied-policy`` v1 (the vector policies NCAP and MLP: ``actor_config``, ``obs_dim``,
``obs_clip``) and ``embodied-mtact`` v1 (``config``, ``tasks``, ``inference``). Their tensors keep
their names. They carry no hash of the weights, so only the values are checked on load.
"""

from __future__ import annotations

from pathlib import Path

from policies.bundle import BundleError, meta_from_document

FLAT = ("embodied-policy", 1)
MTACT = ("embodied-mtact", 1)


def is_legacy(data: dict) -> bool:
    return (data.get("format"), data.get("version")) in (FLAT, MTACT)


def _require(path: Path, data: dict, names: tuple[str, ...]) -> None:
    missing = [k for k in names if k not in data]
    if missing:
        raise BundleError(f"{path}: missing field(s) {', '.join(missing)}")


def upgrade(path: Path, data: dict):
    if (data.get("format"), data.get("version")) == FLAT:
        _require(path, data, ("kind", "actor_config", "obs_dim", "action_low", "action_high", "env"))
        known = {"format", "version", "kind", "actor_config", "obs_dim", "action_low", "action_high", "env",
                 "obs_clip", "steps", "action_std"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BundleError(f"{path}: unexpected field(s) {', '.join(unknown)}")
        obs_dim = data["obs_dim"]
        if isinstance(obs_dim, bool) or not isinstance(obs_dim, int):
            raise BundleError(f"{path}: obs_dim must be an integer, got {obs_dim!r}")
        clip = data.get("obs_clip")
        doc = {"kind": data["kind"], "config": data["actor_config"], "env": data["env"],
               "observation": {"shape": [obs_dim]}, "action_low": data["action_low"],
               "action_high": data["action_high"], "normalization": None if clip is None else {"clip": clip},
               "steps": data.get("steps", 0), "action_std": data.get("action_std")}
        return meta_from_document(path, doc)[0]
    from policies.mtact import MTACTConfig, observation_description

    _require(path, data, ("kind", "config", "env", "action_low", "action_high"))
    try:
        config = MTACTConfig.from_dict(data["config"])
    except (TypeError, ValueError) as e:
        raise BundleError(f"{path}: config: {e}") from None
    if not isinstance(data["env"], dict):
        raise BundleError(f"{path}: env must be an object")
    env = {**data["env"], "cameras": list(config.cameras), "object_state": not config.cameras}
    extra = {k: data[k] for k in ("tasks", "inference", "dataset") if k in data}
    doc = {"kind": data["kind"], "config": config.to_dict(), "env": env,
           "observation": observation_description(config), "action_low": data["action_low"],
           "action_high": data["action_high"], "steps": data.get("steps", 0), "extra": extra}
    return meta_from_document(path, doc)[0]
