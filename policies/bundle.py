"""The policy bundle: ``policy.json`` (everything but the weights) + ``policy.safetensors`` (the weights).

One format for every policy kind. ``policy.json`` holds the format version, the kind and its
config, the env the policy was trained on, the observation it reads, the action bounds, the
control period, the observation normalisation, and the sha256 of the weights file. Reading a
bundle checks values, not only shapes: the hash, finite weights and statistics, ordered action
bounds, statistics present when normalisation is on, sizes within limits before anything large
is read. Every failure is a :class:`BundleError` whose one line names the file and the field.
Nothing here unpickles: JSON and safetensors only. Both files are written atomically.

Version-1 files (the flat and the MT-ACT formats of earlier releases) are read through
:mod:`policies.legacy_bundles` and upgraded in memory; they carry no hash.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from policies.atomic import atomic_write
from policies.protocol import PolicyError, PolicyMeta

FORMAT = "embodied-policy"
VERSION = 2
META_FILE = "policy.json"
WEIGHTS_FILE = "policy.safetensors"
MAX_META_BYTES = 16 << 20  # a policy.json is a few kB; anything this large is not one
MAX_WEIGHTS_BYTES = 2 << 30  # far above any policy here (MT-ACT: 28 MB)
OBS_STATS = ("obs_mean", "obs_var")


class BundleError(PolicyError):
    """A policy bundle is missing, corrupt, inconsistent, or does not fit the env asked of it."""


@dataclass
class Bundle:
    directory: Path
    meta: PolicyMeta
    tensors: dict[str, torch.Tensor]
    hashed: bool = True  # False for a version-1 bundle, upgraded in memory


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_bundle(directory: str | Path, meta: PolicyMeta, tensors: dict[str, torch.Tensor]) -> Path:
    """Write the weights, then ``policy.json`` with their hash; each file atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    plain = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    digest = {}

    def write_weights(tmp: str) -> None:
        save_file(plain, tmp, metadata={"format": FORMAT})
        digest["sha256"] = file_sha256(tmp)

    atomic_write(directory / WEIGHTS_FILE, write_weights)
    doc = {"format": FORMAT, "version": VERSION, **meta.to_dict(),
           "weights": {"file": WEIGHTS_FILE, "sha256": digest["sha256"]}}
    text = json.dumps(doc, indent=2, allow_nan=False)
    atomic_write(directory / META_FILE, lambda p: Path(p).write_text(text))
    return directory


# ---------------------------------------------------------------- reading policy.json


def _number(path: Path, name: str, value, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BundleError(f"{path}: {name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise BundleError(f"{path}: {name} must be positive, got {value!r}")
    return float(value)


def _numbers(path: Path, name: str, values, length: int | None = None, positive: bool = False) -> list[float]:
    if not isinstance(values, list) or not values:
        raise BundleError(f"{path}: {name} must be a non-empty list of numbers, got {str(values)[:80]}")
    if length is not None and len(values) != length:
        raise BundleError(f"{path}: {name} has {len(values)} values, the action has {length}")
    return [_number(path, f"{name}[{i}]", v, positive) for i, v in enumerate(values)]


def _observation(path: Path, desc, where: str = "observation") -> dict:
    if not isinstance(desc, dict):
        raise BundleError(f"{path}: {where} must be an object, got {str(desc)[:80]}")
    if "keys" in desc:
        if not isinstance(desc["keys"], dict) or not desc["keys"]:
            raise BundleError(f"{path}: {where}.keys must be a non-empty object")
        for name, part in desc["keys"].items():
            _observation(path, part, f"{where}.keys.{name}")
    elif "shape" in desc:
        shape = desc["shape"]
        if (not isinstance(shape, list) or not shape
                or not all(isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 1 << 24 for n in shape)):
            raise BundleError(f"{path}: {where}.shape must be a list of positive sizes, got {str(shape)[:80]}")
    elif "text" in desc:
        n = desc["text"]
        if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= 1 << 20:
            raise BundleError(f"{path}: {where}.text must be a positive length, got {str(n)[:40]}")
    else:
        raise BundleError(f"{path}: {where} must have 'shape', 'keys' or 'text'")
    if not isinstance(desc.get("dtype", ""), str):
        raise BundleError(f"{path}: {where}.dtype must be a dtype name, got {str(desc['dtype'])[:40]}")
    return desc


def meta_from_document(path: Path, data: dict) -> tuple[PolicyMeta, str | None]:
    """(meta, weights sha256) from a version-2 document; BundleError naming the bad field."""
    names = {f.name for f in fields(PolicyMeta)}
    allowed = names | {"format", "version", "weights"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise BundleError(f"{path}: unexpected field(s) {', '.join(unknown)}")
    required = ("kind", "config", "env", "observation", "action_low", "action_high")
    missing = [k for k in required if k not in data]
    if missing:
        raise BundleError(f"{path}: missing field(s) {', '.join(missing)}")
    if not isinstance(data["kind"], str) or not data["kind"]:
        raise BundleError(f"{path}: kind must be a name, got {data['kind']!r}")
    for name in ("config", "env"):
        if not isinstance(data[name], dict):
            raise BundleError(f"{path}: {name} must be an object, got {str(data[name])[:80]}")
    if not isinstance(data["env"].get("id"), str):
        raise BundleError(f"{path}: env.id must name the env the policy was trained on")
    low = _numbers(path, "action_low", data["action_low"])
    high = _numbers(path, "action_high", data["action_high"], len(low))
    for i, (lo, hi) in enumerate(zip(low, high)):
        if lo > hi:
            raise BundleError(f"{path}: action_low[{i}] > action_high[{i}] ({lo:g} > {hi:g})")
    if data.get("control_dt") is not None:
        _number(path, "control_dt", data["control_dt"], positive=True)
    norm = data.get("normalization")
    if norm is not None:
        if not isinstance(norm, dict) or set(norm) != {"clip"}:
            raise BundleError(f"{path}: normalization must be null or {{\"clip\": c}}, got {str(norm)[:80]}")
        _number(path, "normalization.clip", norm["clip"], positive=True)
    if data.get("action_std") is not None:
        _numbers(path, "action_std", data["action_std"], len(low), positive=True)
    steps = data.get("steps", 0)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise BundleError(f"{path}: steps must be a non-negative integer, got {steps!r}")
    if not isinstance(data.get("extra", {}), dict):
        raise BundleError(f"{path}: extra must be an object")
    _observation(path, data["observation"])
    if not isinstance(data["env"].get("name", ""), str):
        raise BundleError(f"{path}: env.name must be a name, got {str(data['env']['name'])[:40]}")
    sha = None
    if "version" in data:  # a version-2 document: its weights are hashed (a legacy one, upgraded, has no hash)
        weights = data.get("weights")
        sha = weights.get("sha256") if isinstance(weights, dict) else None
        if isinstance(weights, dict) and weights.get("file", WEIGHTS_FILE) != WEIGHTS_FILE:
            raise BundleError(f"{path}: weights.file must be {WEIGHTS_FILE}, got {str(weights['file'])[:40]}")
        if not isinstance(sha, str) or len(sha) != 64 or set(sha) - set("0123456789abcdef"):
            raise BundleError(f"{path}: weights.sha256 must be the weights' 64 hex digits, got {str(sha)[:80]}")
    meta = PolicyMeta(**{k: data[k] for k in names if k in data})
    return meta, sha


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise BundleError(f"{path.parent}: no {path.name} (not a policy bundle)")
    if path.stat().st_size > MAX_META_BYTES:
        raise BundleError(f"{path}: {path.stat().st_size} bytes, too large for a policy description")
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON ({getattr(e, 'msg', e)})") from None
    except OSError as e:
        raise BundleError(f"{path}: unreadable ({e.strerror})") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: not a JSON object")
    return data


def read_meta_and_hash(directory: str | Path) -> tuple[PolicyMeta, str | None]:
    from policies import legacy_bundles

    path = Path(directory) / META_FILE
    data = _read_json(path)
    if legacy_bundles.is_legacy(data):
        return legacy_bundles.upgrade(path, data), None
    if data.get("format") != FORMAT:
        raise BundleError(f"{path}: format is {str(data.get('format'))[:40]!r}, not {FORMAT!r}")
    if data.get("version") != VERSION:
        raise BundleError(f"{path}: format version {str(data.get('version'))[:20]}, this code reads {VERSION} "
                          "(and 1)")
    return meta_from_document(path, data)


def read_meta(directory: str | Path) -> PolicyMeta:
    """The bundle's ``policy.json`` alone, validated: what a node checks before it loads any weights."""
    return read_meta_and_hash(directory)[0]


# ---------------------------------------------------------------- reading the weights


def read_bundle(directory: str | Path) -> Bundle:
    """The validated meta and weights of a bundle; BundleError (one line) on any defect."""
    directory = Path(directory)
    meta, sha = read_meta_and_hash(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise BundleError(f"{directory}: no {WEIGHTS_FILE}")
    size = weights.stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        raise BundleError(f"{weights}: {size} bytes, over the {MAX_WEIGHTS_BYTES >> 20} MiB limit for a policy")
    if sha is not None and file_sha256(weights) != sha:
        raise BundleError(f"{weights}: sha256 differs from weights.sha256 in {META_FILE} (changed or truncated)")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise BundleError(f"{weights}: corrupt or truncated ({str(e).splitlines()[0][:160]})") from None
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise BundleError(f"{weights}: tensor {name} holds NaN or inf")
    _check_statistics(directory, meta, tensors)
    return Bundle(directory, meta, tensors, hashed=sha is not None)


def _check_statistics(directory: Path, meta: PolicyMeta, tensors: dict[str, torch.Tensor]) -> None:
    weights = directory / WEIGHTS_FILE
    present = [k for k in OBS_STATS if k in tensors]
    if meta.normalization is None:
        if present:
            raise BundleError(f"{weights}: holds {', '.join(present)} but {META_FILE} normalization is null")
        return
    missing = [k for k in OBS_STATS if k not in tensors]
    if missing:
        raise BundleError(f"{weights}: {', '.join(missing)} missing, and {META_FILE} says observations are "
                          "normalised")
    if meta.obs_dim is None:
        raise BundleError(f"{directory / META_FILE}: normalization needs a vector observation")
    for k in OBS_STATS:
        if tuple(tensors[k].shape) != (meta.obs_dim,):
            raise BundleError(f"{weights}: {k} has shape {tuple(tensors[k].shape)}, the observation "
                              f"has {meta.obs_dim} values")
    if bool((tensors["obs_var"] < 0).any()):
        raise BundleError(f"{weights}: obs_var has negative variances")
