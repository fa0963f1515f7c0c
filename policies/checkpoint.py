"""Deployable policy files: ``policy.safetensors`` (weights) + ``policy.json`` (everything else).

This is what ``agents.evaluate`` and the ROS 2 node load: the actor, the observation
normalisation it was trained with, and the action bounds, with no pickle and no SB3. Both files
are written to temporary names and renamed, so a crash never leaves a half-written policy.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from policies.ncap import NCAPConfig
from policies.registry import ACTORS, build_actor

FORMAT = "embodied-policy"
FORMAT_VERSION = 1
WEIGHTS_FILE = "policy.safetensors"
META_FILE = "policy.json"


class CheckpointError(ValueError):
    """A policy file is missing, corrupt, or does not fit the requested env."""


@dataclass
class PolicyMeta:
    kind: str
    actor_config: dict
    obs_dim: int
    action_low: list[float]
    action_high: list[float]
    env: dict  # the env config the policy was trained on (name, id, kwargs)
    obs_clip: float | None = None  # set when observations were normalised
    steps: int = 0
    action_std: list[float] | None = None  # the trained Gaussian's std, for stochastic deployment

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": FORMAT_VERSION, **self.__dict__}


class InferencePolicy(nn.Module):
    """Deterministic policy: normalise the observation, run the actor, clip to the action bounds."""

    def __init__(self, actor: nn.Module, meta: PolicyMeta, obs_mean: torch.Tensor | None, obs_var: torch.Tensor | None):
        super().__init__()
        self.actor = actor
        self.meta = meta
        self.register_buffer("obs_mean", obs_mean if obs_mean is not None else torch.zeros(0))
        self.register_buffer("obs_var", obs_var if obs_var is not None else torch.zeros(0))
        self.register_buffer("low", torch.tensor(meta.action_low, dtype=torch.float32))
        self.register_buffer("high", torch.tensor(meta.action_high, dtype=torch.float32))

    @property
    def normalizes(self) -> bool:
        return self.obs_mean.numel() > 0

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        obs = obs.to(torch.float32)
        if self.normalizes:
            obs = ((obs - self.obs_mean) / torch.sqrt(self.obs_var + 1e-8)).clamp(-self.meta.obs_clip, self.meta.obs_clip)
        return torch.max(torch.min(self.actor(obs), self.high), self.low)

    @torch.inference_mode()
    def act(self, obs: np.ndarray) -> np.ndarray:
        return self(torch.as_tensor(np.asarray(obs), dtype=torch.float32)).numpy()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)``, then rename over ``path``; readers never see a partial file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a deployed policy must stay readable
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_policy(directory: str | Path, actor: nn.Module, meta: PolicyMeta,
                obs_mean: np.ndarray | None = None, obs_var: np.ndarray | None = None) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"actor.{k}": v.detach().cpu().contiguous().float() for k, v in actor.state_dict().items()}
    if obs_mean is not None:
        tensors["obs_mean"] = torch.as_tensor(obs_mean, dtype=torch.float32)
        tensors["obs_var"] = torch.as_tensor(obs_var, dtype=torch.float32)
    atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(tensors, p, metadata={"format": FORMAT}))
    text = json.dumps(meta.to_json(), indent=2)
    atomic_write(directory / META_FILE, lambda p: Path(p).write_text(text))


def load_versioned_json(path: Path, fmt: str, version: int, error: type[Exception]) -> dict:
    """A JSON object whose ``format`` and ``version`` keys must be ``fmt`` and ``version``; else ``error``, one line."""
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path} is not valid JSON ({e.msg if hasattr(e, 'msg') else e})") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise error(f"{path} is not an {fmt} file")
    if data.get("version") != version:
        raise error(f"{path} has format version {data.get('version')}, this code reads {version}")
    return data


def read_meta(directory: str | Path) -> PolicyMeta:
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise CheckpointError(f"no {META_FILE} in {directory}")
    data = load_versioned_json(path, FORMAT, FORMAT_VERSION, CheckpointError)
    data.pop("format"), data.pop("version")
    try:
        meta = PolicyMeta(**data)
    except TypeError as e:
        raise CheckpointError(f"{path} has unexpected fields: {e}") from None
    if meta.kind not in ACTORS:
        raise CheckpointError(f"{path} holds unknown policy kind {meta.kind!r}")
    return meta


def retarget_ncap(actor_config: dict, layout: dict, n_joints: int) -> dict:
    """Rewire a shared-weight NCAP's observation indices for another body (zero-shot transfer)."""
    cfg = NCAPConfig.from_dict(actor_config)
    cfg.n_joints = n_joints
    cfg.joint_slice = tuple(layout["joints"])
    cfg.joint_limit = layout["joint_limit"]
    cfg.time_index = layout["time"]
    cfg.time_scale_steps = layout["time_scale_steps"]
    cfg.target_slice = tuple(layout["to_target"]) if layout.get("to_target") else None
    return cfg.to_dict()


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``directory/policy.safetensors``; CheckpointError (one line) if missing or unreadable."""
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"no {WEIGHTS_FILE} in {directory}")
    try:
        return load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights} is corrupt or truncated ({str(e).splitlines()[0][:200]})") from None


def find_policy_dir(path: str | Path, checkpoint: str = "final") -> Path:
    """A policy directory from either itself or a run directory (``checkpoints/<checkpoint>``)."""
    path = Path(path).expanduser()
    if (path / META_FILE).is_file():
        return path
    candidate = path / "checkpoints" / checkpoint
    if (candidate / META_FILE).is_file():
        return candidate
    if not path.is_dir():
        raise CheckpointError(f"{path} does not exist")
    raise CheckpointError(f"{path} is neither a run directory with checkpoints/{checkpoint} nor a policy directory")


def load_policy(directory: str | Path, obs_dim: int | None = None, action_dim: int | None = None,
                layout: dict | None = None) -> InferencePolicy:
    """Load a deployable policy; with ``layout`` a shared NCAP is rewired to a new body length."""
    directory = Path(directory)
    meta = read_meta(directory)
    tensors = read_weights(directory)

    if meta.kind == "ncap" and layout is not None and action_dim is not None:
        try:
            rewired = retarget_ncap(meta.actor_config, layout, action_dim)
            stored = NCAPConfig.from_dict(meta.actor_config).to_dict()
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{directory / META_FILE} has a bad ncap config ({type(e).__name__}: {e})") from None
        if rewired != stored:  # another body length or observation layout
            if not meta.actor_config.get("weight_sharing", True):
                raise CheckpointError(
                    f"policy in {directory} is an unshared NCAP for {len(meta.action_low)} joints; only the "
                    f"weight-shared circuit transfers to a body with {action_dim} joints"
                )
            meta.actor_config = rewired
            meta.action_low = [meta.action_low[0]] * action_dim
            meta.action_high = [meta.action_high[0]] * action_dim
            meta.obs_dim = obs_dim
    if obs_dim is not None and obs_dim != meta.obs_dim:
        raise CheckpointError(f"policy in {directory} expects {meta.obs_dim}-d observations, the env gives {obs_dim}")
    if action_dim is not None and action_dim != len(meta.action_low):
        raise CheckpointError(f"policy in {directory} outputs {len(meta.action_low)} actions, the env takes {action_dim}")

    try:
        actor = build_actor(meta.kind, meta.actor_config)
    except ValueError as e:
        raise CheckpointError(f"{directory / META_FILE}: {e}") from None
    state = {k.removeprefix("actor."): v for k, v in tensors.items() if k.startswith("actor.")}
    try:
        actor.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise CheckpointError(f"weights in {directory / WEIGHTS_FILE} do not match its config: {first[1].strip() if len(first) > 1 else first[0]}") from None
    actor.eval()
    return InferencePolicy(actor, meta, tensors.get("obs_mean"), tensors.get("obs_var"))
