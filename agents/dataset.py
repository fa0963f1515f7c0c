"""Demonstration datasets: the on-disk format, an atomic resumable writer and a validating reader.

## Format (``embodied-demos``, version 1)
A dataset is a directory::

    manifest.json                 format, version, env config, cameras, per-key shapes and dtypes
    episodes/<task>/<k:05d>.npz   one compressed NumPy archive per demonstration
    episodes/<task>/<k:05d>-a<j>.npz   its j-th semantic augmentation (agents/augment.py)

Each episode archive holds, for T control steps:

- ``actions`` (T, A) float32: what the expert commanded (absolute joint targets for the kitchen);
- ``obs/<key>`` (T + 1, ...): every observation key, the first at reset and one after each step
  (``proprio``, ``object_state``, and one uint8 ``(H, W, 3)`` image per camera);
- ``qpos`` (T + 1, nq) float64: the simulator's positions at each observation, so a demonstration
  can be re-rendered (semantic augmentation, new cameras) without running the expert again;
- ``rewards`` (T,) float32, ``success`` (T,) bool (the env's ``is_success`` after each step);
- scalars ``seed``, ``task``, ``instruction``, ``paraphrase``, ``expert_noise``, ``augmentation``
  (0: as recorded; k > 0: the k-th re-rendering) and ``episode_success``.

## Why not Minari
Minari (0.5.4) is the gymnasium ecosystem's format, but it writes whole datasets as uncompressed
HDF5 or Arrow: 350 kitchen demonstrations with two 96x96 cameras would be ~3 GB, and a crash in
the middle of a write leaves no usable file. Per-episode compressed archives are written to a
temporary name and renamed, so collection resumes after an interruption by skipping what is on
disk, and a reader never sees half an episode. Every array is a plain NumPy array, so converting
to Minari or LeRobot later is a loop over :func:`read_episodes`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from policies.atomic import atomic_write

log = logging.getLogger(__name__)
FORMAT = "embodied-demos"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EPISODES = "episodes"
TEXT_KEYS = ("instruction",)  # observation keys stored once per episode as scalars, not per frame
FLOAT32_MAX = float(np.finfo(np.float32).max)  # training casts to float32: a larger value would become inf
SCALARS = ("seed", "task", "instruction", "paraphrase", "expert_noise", "augmentation", "episode_success")
SCALAR_KINDS = {"seed": "iu", "task": "U", "instruction": "U", "paraphrase": "iu", "expert_noise": "fiu",
                "augmentation": "iu", "episode_success": "b"}  # numpy dtype kinds each scalar may have
SCALAR_NAMES = {"iu": "integer", "U": "string", "fiu": "number", "b": "boolean"}


class DatasetError(ValueError):
    """A dataset is missing, from another format or version, or does not match its manifest."""


@dataclass
class Episode:
    actions: np.ndarray
    obs: dict[str, np.ndarray]
    qpos: np.ndarray
    rewards: np.ndarray
    success: np.ndarray
    seed: int
    task: str
    instruction: str
    paraphrase: int
    expert_noise: float = 0.0
    augmentation: int = 0

    @property
    def episode_success(self) -> bool:
        return bool(self.success[-1]) if len(self.success) else False

    @property
    def length(self) -> int:
        return len(self.actions)


def episode_spec(obs_space, action_dim: int, nq: int) -> dict:
    """Shapes and dtypes per key, from the env's Dict observation space: what the manifest promises."""
    keys = {f"obs/{k}": {"shape": list(space.shape), "dtype": str(space.dtype)}
            for k, space in obs_space.spaces.items() if k not in TEXT_KEYS}
    return {"actions": {"shape": [action_dim], "dtype": "float32"}, "qpos": {"shape": [nq], "dtype": "float64"}, **keys}


class DatasetWriter:
    """Creates (or reopens, to resume) a dataset directory for one env config."""

    def __init__(self, root: str | Path, env_config: Mapping, spec: dict, cameras: list[str]):
        self.root = Path(root)
        manifest = {"format": FORMAT, "version": FORMAT_VERSION, "env": dict(env_config), "cameras": list(cameras),
                    "spec": spec}
        existing = self.root / MANIFEST
        if existing.is_file():
            old = read_manifest(self.root)
            for key in ("env", "cameras", "spec"):
                if old[key] != manifest[key]:
                    raise DatasetError(f"{self.root} was collected with another {key} ({old[key]!r}); "
                                       "choose another output directory to start a new dataset")
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write(existing, lambda p: Path(p).write_text(json.dumps(manifest, indent=1)))
        self.spec = spec

    def path(self, task: str, name: int | str) -> Path:
        """``episodes/<task>/<name>.npz``; an int name is the episode index, zero-padded."""
        return self.root / EPISODES / task / (f"{name:05d}.npz" if isinstance(name, int) else f"{name}.npz")

    def has(self, task: str, name: int | str) -> bool:
        """Whether a valid episode is there; a corrupt one (a truncated write, a damaged disk) is removed, so
        that a rerun of the collection records it again."""
        path = self.path(task, name)
        if not path.is_file():
            return False
        try:
            read_episode(path, self.spec)
        except DatasetError as e:
            log.warning("%s; removing it to collect it again", e)
            path.unlink()
            return False
        return True

    def read(self, task: str, name: int | str) -> Episode:
        return read_episode(self.path(task, name), self.spec)

    def write(self, task: str, name: int | str, episode: Episode) -> Path:
        _check_episode(episode, self.spec, f"episode {task}/{name}")
        arrays = {"actions": episode.actions.astype(np.float32), "qpos": episode.qpos,
                  "rewards": episode.rewards.astype(np.float32), "success": episode.success.astype(bool)}
        arrays.update({f"obs/{k}": v for k, v in episode.obs.items()})
        arrays.update({"seed": np.int64(episode.seed), "task": np.str_(episode.task),
                       "instruction": np.str_(episode.instruction), "paraphrase": np.int64(episode.paraphrase),
                       "expert_noise": np.float64(episode.expert_noise), "augmentation": np.int64(episode.augmentation),
                       "episode_success": np.bool_(episode.episode_success)})
        path = self.path(task, name)

        def save(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, save)
        return path


def _check_episode(episode: Episode, spec: dict, where: str) -> None:
    t = episode.length
    if episode.rewards.shape != (t,) or episode.success.shape != (t,):
        raise DatasetError(f"{where}: {t} actions but rewards {episode.rewards.shape} and success {episode.success.shape}")
    if episode.rewards.dtype != np.float32 or episode.success.dtype != np.bool_:
        raise DatasetError(f"{where}: rewards must be float32 and success bool, got {episode.rewards.dtype} and "
                           f"{episode.success.dtype}")
    arrays = {"actions": episode.actions, "qpos": episode.qpos, **{f"obs/{k}": v for k, v in episode.obs.items()}}
    if set(arrays) != set(spec):
        raise DatasetError(f"{where}: keys {sorted(arrays)} differ from the manifest's {sorted(spec)}")
    for key, value in arrays.items():
        steps = t if key == "actions" else t + 1
        want = (steps, *spec[key]["shape"])
        if tuple(value.shape) != want or str(value.dtype) != spec[key]["dtype"]:
            raise DatasetError(f"{where}: {key} is {value.dtype}{list(value.shape)}, the manifest says "
                               f"{spec[key]['dtype']}{list(want)}")


def read_versioned_json(path: Path, what: str, fmt: str, version: int, how_to_make: str) -> dict:
    """A dataset's manifest: a JSON object of this ``format`` and ``version``; DatasetError naming the problem."""
    if not path.is_file():
        raise DatasetError(f"{path.parent} is not {what} (no {path.name}); {how_to_make}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path} is not valid JSON ({' '.join(str(getattr(e, 'msg', e)).split())[:200]})") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise DatasetError(f"{path} is not an {fmt} file")
    if data.get("version") != version:
        raise DatasetError(f"{path} has format version {data.get('version')}, this code reads {version}")
    return data


def read_manifest(root: str | Path) -> dict:
    path = Path(root) / MANIFEST
    data = read_versioned_json(path, "a dataset", FORMAT, FORMAT_VERSION, "collect one with python -m agents.collect")
    for key, kind in (("env", dict), ("cameras", list), ("spec", dict)):
        if not isinstance(data.get(key), kind):
            raise DatasetError(f"{path}: field {key} is missing or not a{'n' if kind is dict else ''} "
                               f"{'object' if kind is dict else 'list'}")
    if not all(isinstance(c, str) and f"obs/{c}" in data["spec"] for c in data["cameras"]):
        raise DatasetError(f"{path}: cameras must name images in the spec, got {str(data['cameras'])[:80]}")
    for key, entry in data["spec"].items():
        if (not isinstance(entry, dict) or not isinstance(entry.get("shape"), list)
                or not all(isinstance(n, int) and 0 <= n <= 1 << 24 for n in entry["shape"])
                or not isinstance(entry.get("dtype"), str)):
            raise DatasetError(f"{path}: spec.{key} must have a shape (sizes) and a dtype")
    return data


def episode_files(root: str | Path, tasks: list[str] | None = None) -> list[Path]:
    base = Path(root) / EPISODES
    files = sorted(base.glob("*/*.npz"))
    return [f for f in files if tasks is None or f.parent.name in tasks]


def read_episode(path: Path, spec: dict) -> Episode:
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - a damaged .npz fails in zipfile, zlib, or the .npy header's parser
        raise DatasetError(f"{path} is unreadable ({type(e).__name__}: {str(e)[:160]})") from None
    missing = [k for k in ("actions", "qpos", "rewards", "success", *SCALARS) if k not in data]
    if missing:
        raise DatasetError(f"{path} lacks {', '.join(missing)}")
    for key, kinds in SCALAR_KINDS.items():
        value = data[key]
        if value.shape != () or value.dtype.kind not in kinds:
            raise DatasetError(f"{path}: {key} must be a single {SCALAR_NAMES[kinds]}, got {value.dtype}{list(value.shape)}")
        if value.dtype.kind == "f" and not np.isfinite(value):
            raise DatasetError(f"{path}: {key} is {value}")
    episode = Episode(
        actions=data["actions"], obs={k[4:]: v for k, v in data.items() if k.startswith("obs/")},
        qpos=data["qpos"], rewards=data["rewards"], success=data["success"], seed=int(data["seed"]), task=str(data["task"]),
        instruction=str(data["instruction"]), paraphrase=int(data["paraphrase"]),
        expert_noise=float(data["expert_noise"]), augmentation=int(data["augmentation"]),
    )
    _check_episode(episode, spec, str(path))
    for key, value in (("actions", episode.actions), ("qpos", episode.qpos), ("rewards", episode.rewards),
                       *((f"obs/{k}", v) for k, v in episode.obs.items())):
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            step = int(np.argwhere(~np.isfinite(value))[0][0])
            raise DatasetError(f"{path}: {key} holds NaN or inf at step {step}")
        if np.issubdtype(value.dtype, np.floating) and value.size and np.abs(value).max() > FLOAT32_MAX:
            step = int(np.argwhere(np.abs(value) > FLOAT32_MAX)[0][0])
            raise DatasetError(f"{path}: {key} holds a value beyond float32's range at step {step}")
    return episode


def read_episodes(root: str | Path, tasks: list[str] | None = None) -> Iterator[Episode]:
    """Every episode of a dataset (optionally some tasks), validated against the manifest."""
    manifest = read_manifest(root)
    for path in episode_files(root, tasks):
        yield read_episode(path, manifest["spec"])
