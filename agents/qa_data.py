"""Spatial-QA datasets for the spatial brain: an atomic, resumable writer and a validating reader.

``collect_qa`` draws scenes from one or more *sources*, asks :func:`envs.spatial_qa.questions`
about each, and writes the images, depths, state vectors, questions and answer ids in shards.
``load_qa`` reads a dataset back after checking every shard against the manifest.

## Sources
A source is anything with ``sample(rng) -> (observation, Scene)`` or a callable
``source(rng) -> (observation, Scene)``, where the observation holds ``image`` (uint8 H x W x 3),
``depth`` (H x W metres, or None) and ``state`` (a 1-D float vector). Sample ``i`` of a dataset
comes from source ``i % len(sources)`` with the generator ``default_rng([seed, i])``, which also
draws its questions, so a shard is the same whenever it is collected. Built in:
:class:`envs.generic_scene.GenericSceneSampler` and :class:`EnvSource`, which wraps any gymnasium
env whose unwrapped env has ``scene()`` (``reset(seed)`` from the sample's generator, optional
random warm-up steps, observation keys mapped by name). A source's ``name`` attribute (or its type's
name) identifies it in the manifest.

## Format (``embodied-qa``, version 1)
A dataset is a directory::

    manifest.json          format, version, generator version, config, vocabulary, templates, splits,
                           per-shard sha256 and counts, totals per family and answer
    shards/<k:05d>.npz     scenes [k * shard_size, (k + 1) * shard_size) and their questions

A shard holds, for N scenes and M questions:

- ``image`` (N, H, W, 3) uint8; ``depth`` (N, H, W) float16 metres (zeros where ``has_depth`` is
  False); ``has_depth`` (N,) bool;
- ``state`` (N, S) float32, zero-padded to the shard's longest state, ``state_dim`` (N,) its length;
- ``embodiment`` (N,) str, ``source`` (N,) int16 index into the manifest's sources, ``sample`` (N,)
  int64 the scene's index in the dataset;
- ``question`` (M,) str, ``answer`` (M,) int16 index into the vocabulary, ``family`` (M,) str,
  ``template`` (M,) int16 index into ``TEMPLATES[family]``, ``scene`` (M,) int32 the row of its scene.

float16 depth keeps a 32x32 frame at 2 KB and is exact to 1 cm at 15 m. Each shard and then the
manifest are written under temporary names and renamed (:func:`policies.atomic.atomic_write`),
so an interrupted collection leaves whole shards only; a rerun with the same arguments skips every
shard whose sha256 matches the manifest and collects the missing or damaged ones again.
Errors are :class:`agents.dataset.DatasetError`, one line naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agents.dataset import DatasetError, read_versioned_json
from envs.spatial_qa import ANSWER_INDEX, ANSWERS, FAMILIES, GENERATOR_VERSION, SPLITS, TEMPLATES, questions
from policies.atomic import atomic_write, atomic_write_text

log = logging.getLogger(__name__)
FORMAT = "embodied-qa"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARDS = "shards"
SCENE_KEYS = ("image", "depth", "has_depth", "state", "state_dim", "embodiment", "source", "sample")
QUESTION_KEYS = ("question", "answer", "family", "template", "scene")
KEY_KINDS = {"image": "u", "depth": "f", "has_depth": "b", "state": "f", "state_dim": "iu", "embodiment": "U",
             "source": "iu", "sample": "iu", "question": "U", "answer": "iu", "family": "U", "template": "iu",
             "scene": "iu"}  # numpy dtype kinds each array may have


class EnvSource:
    """A QA source from a gymnasium env id whose unwrapped env has ``scene()`` (the find envs).

    ``keys`` maps ``image`` / ``depth`` / ``state`` to the env's observation keys (``depth`` may map
    to None when the env has no depth). ``warmup_steps`` random actions after the reset move the
    agent away from its start pose, so scenes are not all seen from where episodes begin.
    The env is made on first use, so a source can be built in one process and used in another.
    """

    def __init__(self, env_id: str, keys: Mapping[str, str | None] | None = None, warmup_steps: int = 0,
                 **make_kwargs):
        self.env_id = env_id
        self.keys = {"image": "image", "depth": "depth", "state": "state", **dict(keys or {})}
        if int(warmup_steps) < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.warmup_steps = int(warmup_steps)
        self.make_kwargs = make_kwargs
        extra = "".join(f", {k}={v!r}" for k, v in sorted(make_kwargs.items()))
        self.name = f"{env_id}(warmup_steps={self.warmup_steps}{extra})"
        self.env = None

    def sample(self, rng: np.random.Generator) -> tuple[dict, object]:
        if self.env is None:
            import gymnasium as gym

            import envs  # noqa: F401  (registers the embodied/ ids)

            self.env = gym.make(self.env_id, **self.make_kwargs)
            if not hasattr(self.env.unwrapped, "scene"):
                raise DatasetError(f"{self.env_id} has no scene(); QA sources need envs that describe their scene")
        seed = int(rng.integers(2**31 - 1))
        obs, _ = self.env.reset(seed=seed)
        self.env.action_space.seed(seed)
        for _ in range(self.warmup_steps):
            obs, _, terminated, truncated, _ = self.env.step(self.env.action_space.sample())
            if terminated or truncated:
                break
        picked = {}
        for key, name in self.keys.items():
            if name is not None and name not in obs:
                raise DatasetError(f"{self.env_id}'s observation has no {name!r} for {key} (keys: {', '.join(obs)})")
            picked[key] = None if name is None else obs[name]
        return picked, self.env.unwrapped.scene()

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None


def source_name(source) -> str:
    return str(getattr(source, "name", None) or getattr(source, "__name__", None) or type(source).__name__)


def _draw(source, rng: np.random.Generator):
    return source.sample(rng) if hasattr(source, "sample") else source(rng)


@dataclass
class QADataset:
    """A loaded dataset: per-scene arrays (rows of ``image``) and per-question arrays (``scene`` indexes rows)."""

    image: np.ndarray  # (N, H, W, 3) uint8
    depth: np.ndarray  # (N, H, W) float16
    has_depth: np.ndarray  # (N,) bool
    state: np.ndarray  # (N, S) float32, zero-padded
    state_dim: np.ndarray  # (N,) int
    embodiment: np.ndarray  # (N,) str
    sample: np.ndarray  # (N,) int
    question: np.ndarray  # (M,) str
    answer: np.ndarray  # (M,) int, index into vocabulary
    family: np.ndarray  # (M,) str
    template: np.ndarray  # (M,) int
    scene: np.ndarray  # (M,) int, row of the question's scene
    manifest: dict

    def __len__(self) -> int:
        return len(self.question)

    @property
    def vocabulary(self) -> tuple[str, ...]:
        return tuple(self.manifest["vocabulary"])


# ----------------------------------------------------------------------------------------------- writing


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shard_name(k: int) -> str:
    return f"{k:05d}.npz"


def _templates_table() -> dict:
    return {f: [{"form": t.form, "text": t.text, "held_out": t.held_out} for t in ts] for f, ts in TEMPLATES.items()}


def _splits_table() -> dict:
    return {split: {f: [i for i, t in enumerate(ts) if t.held_out == (split == "held_out")]
                    for f, ts in TEMPLATES.items()} for split in SPLITS}


def _check_obs(obs: Mapping, name: str, i: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    where = f"source {name} (sample {i})"
    image = np.asarray(obs.get("image"))
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise DatasetError(f"{where}: image must be uint8 (H, W, 3), got {image.dtype}{list(image.shape)}")
    depth = obs.get("depth")
    if depth is not None:
        depth = np.asarray(depth, dtype=np.float32)
        if depth.ndim == 3 and depth.shape[2] == 1:
            depth = depth[..., 0]
        if depth.shape != image.shape[:2] or not np.isfinite(depth).all():
            raise DatasetError(f"{where}: depth must be finite (H, W) = {list(image.shape[:2])}, got "
                               f"{list(depth.shape)}")
    state = np.asarray(obs.get("state"), dtype=np.float32)
    if state.ndim != 1 or not np.isfinite(state).all():
        raise DatasetError(f"{where}: state must be a finite 1-D vector, got shape {list(state.shape)}")
    return image, depth, state


def _collect_shard(sources: Sequence, names: list[str], start: int, stop: int, seed: int, split: str,
                   per_scene: int, families) -> dict[str, np.ndarray]:
    images, depths, has_depth, states, embodiments, source_ids, samples = [], [], [], [], [], [], []
    q_text, q_answer, q_family, q_template, q_scene = [], [], [], [], []
    answer_counts = Counter()  # balances answers over the shard's scenes; per shard, so shards stay independent
    for i in range(start, stop):
        s = i % len(sources)
        rng = np.random.default_rng([seed, i])
        obs, scene = _draw(sources[s], rng)
        image, depth, state = _check_obs(obs, names[s], i)
        if images and image.shape != images[0].shape:
            raise DatasetError(f"source {names[s]} (sample {i}): image {list(image.shape)} differs from the shard's "
                               f"{list(images[0].shape)}; every source of a dataset needs one image size")
        row = len(images)
        for qa in questions(scene, rng, split, per_scene, families, answer_counts=answer_counts):
            q_text.append(qa.question)
            q_answer.append(ANSWER_INDEX[qa.answer])
            q_family.append(qa.family)
            q_template.append(qa.template)
            q_scene.append(row)
        images.append(image)
        depths.append(np.zeros(image.shape[:2], np.float32) if depth is None else depth)
        has_depth.append(depth is not None)
        states.append(state)
        embodiments.append(scene.embodiment)
        source_ids.append(s)
        samples.append(i)
    width = max(len(st) for st in states)
    state = np.zeros((len(states), width), np.float32)
    for r, st in enumerate(states):
        state[r, :len(st)] = st
    return {"image": np.stack(images), "depth": np.stack(depths).astype(np.float16),
            "has_depth": np.array(has_depth), "state": state,
            "state_dim": np.array([len(st) for st in states], np.int16), "embodiment": np.array(embodiments, str),
            "source": np.array(source_ids, np.int16), "sample": np.array(samples, np.int64),
            "question": np.array(q_text, dtype=str).reshape(-1), "answer": np.array(q_answer, np.int16),
            "family": np.array(q_family, dtype=str).reshape(-1), "template": np.array(q_template, np.int16),
            "scene": np.array(q_scene, np.int32)}


def _shard_entry(arrays: dict, digest: str) -> dict:
    words = [ANSWERS[a] for a in arrays["answer"]]
    pairs = Counter(f"{f}:{w}" for f, w in zip(arrays["family"].tolist(), words))
    return {"sha256": digest, "scenes": int(len(arrays["image"])), "questions": int(len(arrays["question"])),
            "answers": dict(sorted(pairs.items()))}


def _totals(manifest: dict) -> dict:
    pairs = Counter()
    for entry in manifest["shards"].values():
        pairs.update(entry["answers"])
    families = Counter()
    answers: dict[str, dict[str, int]] = {}
    for key, count in pairs.items():
        family, word = key.split(":", 1)
        families[family] += count
        answers.setdefault(family, {})[word] = count
    return {"shards": len(manifest["shards"]), "scenes": sum(e["scenes"] for e in manifest["shards"].values()),
            "questions": sum(families.values()), "families": dict(sorted(families.items())),
            "answers": {f: dict(sorted(a.items())) for f, a in sorted(answers.items())}}


def collect_qa(sources, out_dir: str | Path, samples: int, seed: int = 0, split: str = "seen",
               questions_per_scene: int = 8, shard_size: int = 256,
               families: Sequence[str] | None = None) -> dict:
    """Write (or finish) a QA dataset of ``samples`` scenes in ``out_dir``; returns a summary of the run.

    Rerunning with the same arguments skips the shards already on disk with a matching hash and
    collects the rest; other arguments in an existing dataset's directory raise DatasetError.
    """
    sources = list(sources) if isinstance(sources, (list, tuple)) else [sources]
    if not sources:
        raise ValueError("collect_qa needs at least one source")
    if int(samples) < 1 or int(shard_size) < 1 or int(questions_per_scene) < 1:
        raise ValueError(f"samples, shard_size and questions_per_scene must be >= 1, got {samples}, {shard_size} "
                         f"and {questions_per_scene}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    families = list(FAMILIES if families is None else families)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown families {unknown}; choose from {FAMILIES}")
    names = [source_name(s) for s in sources]
    root = Path(out_dir)
    config = {"samples": int(samples), "seed": int(seed), "split": split, "questions_per_scene": int(questions_per_scene),
              "shard_size": int(shard_size), "families": families, "sources": names}
    path = root / MANIFEST
    if path.is_file():
        manifest = read_manifest(root)
        for key, mine in (("generator_version", GENERATOR_VERSION), ("vocabulary", list(ANSWERS)), ("config", config)):
            if manifest[key] != mine:
                raise DatasetError(f"{root} was collected with another {key} ({str(manifest[key])[:200]}); choose "
                                   "another output directory to start a new dataset")
    else:
        manifest = {"format": FORMAT, "version": FORMAT_VERSION, "generator_version": GENERATOR_VERSION,
                    "config": config, "vocabulary": list(ANSWERS), "templates": _templates_table(),
                    "splits": _splits_table(), "shards": {}}
        root.mkdir(parents=True, exist_ok=True)
    (root / SHARDS).mkdir(parents=True, exist_ok=True)
    n_shards = math.ceil(int(samples) / int(shard_size))
    stats = {"written": 0, "skipped": 0, "recollected": 0, "scenes": 0, "questions": 0}
    t0 = time.time()
    for k in range(n_shards):
        name = shard_name(k)
        shard = root / SHARDS / name
        entry = manifest["shards"].get(name)
        if entry is not None and shard.is_file() and _sha256(shard) == entry["sha256"]:
            stats["skipped"] += 1
            continue
        if shard.exists() or entry is not None:
            log.warning("%s is %s; collecting it again", shard, "damaged" if shard.exists() else "missing")
            stats["recollected"] += 1
        start, stop = k * int(shard_size), min((k + 1) * int(shard_size), int(samples))
        arrays = _collect_shard(sources, names, start, stop, int(seed), split, int(questions_per_scene), families)

        def save(tmp: str, arrays=arrays) -> None:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)

        atomic_write(shard, save)
        manifest["shards"][name] = _shard_entry(arrays, _sha256(shard))
        manifest["shards"] = dict(sorted(manifest["shards"].items()))
        manifest["counts"] = _totals(manifest)
        atomic_write_text(path, json.dumps(manifest, indent=1))
        stats["written"] += 1
        stats["scenes"] += stop - start
        stats["questions"] += len(arrays["question"])
    if not path.is_file():  # every shard was already there (a manifest is always written with its shards)
        atomic_write_text(path, json.dumps(manifest, indent=1))
    seconds = time.time() - t0
    return {**stats, "shards": n_shards, "seconds": round(seconds, 2),
            "scenes_per_s": round(stats["scenes"] / seconds, 1) if stats["scenes"] and seconds > 0 else 0.0,
            "dir": str(root)}


# ----------------------------------------------------------------------------------------------- reading


def _one_line(text: str, limit: int = 200) -> str:
    return " ".join(str(text).split())[:limit]


def read_manifest(root: str | Path) -> dict:
    """The manifest of a QA dataset, checked for format, version and field types."""
    path = Path(root) / MANIFEST
    data = read_versioned_json(path, "a QA dataset", FORMAT, FORMAT_VERSION,
                               "write one with agents.qa_data.collect_qa")
    for key, kind in (("config", dict), ("vocabulary", list), ("shards", dict), ("generator_version", int)):
        if not isinstance(data.get(key), kind):
            raise DatasetError(f"{path}: field {key} is missing or not a{'n' if kind is int else ''} {kind.__name__}")
    config = data["config"]
    for key, kind in (("samples", int), ("shard_size", int), ("split", str), ("sources", list), ("families", list)):
        if not isinstance(config.get(key), kind):
            raise DatasetError(f"{path}: config.{key} is missing or not a {kind.__name__}")
    if config["samples"] < 1 or config["shard_size"] < 1 or config["split"] not in SPLITS:
        raise DatasetError(f"{path}: config has samples {config['samples']}, shard_size {config['shard_size']}, "
                           f"split {config['split']!r}")
    for name, entry in data["shards"].items():
        if (not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str)
                or not all(isinstance(entry.get(k), int) for k in ("scenes", "questions"))
                or not isinstance(entry.get("answers"), dict)):
            raise DatasetError(f"{path}: shards.{name} must have a sha256, scene and question counts and answers")
    return data


def _read_shard(path: Path, entry: dict, manifest: dict) -> dict[str, np.ndarray]:
    """One shard's arrays, after checking its hash, keys, dtypes, shapes, indices and values."""
    if not path.is_file():
        raise DatasetError(f"{path} is missing; rerun collect_qa with the same arguments to collect it again")
    if _sha256(path) != entry["sha256"]:
        raise DatasetError(f"{path} does not match its sha256 in the manifest (damaged or changed after collection); "
                           "rerun collect_qa to collect it again")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - a damaged .npz fails in zipfile, zlib, or the .npy header's parser
        raise DatasetError(f"{path} is unreadable ({type(e).__name__}: {_one_line(e, 160)})") from None
    missing = [k for k in (*SCENE_KEYS, *QUESTION_KEYS) if k not in data]
    if missing:
        raise DatasetError(f"{path} lacks {', '.join(missing)}")
    for key, kinds in KEY_KINDS.items():
        if data[key].dtype.kind not in kinds:
            raise DatasetError(f"{path}: {key} has dtype {data[key].dtype}")
    n, m = len(data["image"]), len(data["question"])
    image = data["image"]
    if image.ndim != 4 or image.shape[3] != 3 or data["depth"].shape != image.shape[:3]:
        raise DatasetError(f"{path}: image {list(image.shape)} and depth {list(data['depth'].shape)} must be "
                           "(N, H, W, 3) and (N, H, W)")
    if data["state"].ndim != 2 or len(data["state"]) != n:
        raise DatasetError(f"{path}: state {list(data['state'].shape)} must be (N={n}, S)")
    for key in SCENE_KEYS[2:]:
        if key != "state" and data[key].shape != (n,):
            raise DatasetError(f"{path}: {key} has shape {list(data[key].shape)}, not [{n}]")
    for key in QUESTION_KEYS:
        if data[key].shape != (m,):
            raise DatasetError(f"{path}: {key} has shape {list(data[key].shape)}, not [{m}]")
    if (n, m) != (entry["scenes"], entry["questions"]):
        raise DatasetError(f"{path} holds {n} scenes and {m} questions, the manifest says {entry['scenes']} and "
                           f"{entry['questions']}")
    for key in ("depth", "state"):
        bad = ~np.isfinite(data[key].reshape(n, -1)).all(axis=1)
        if bad.any():
            raise DatasetError(f"{path}: {key} holds NaN or inf at scene {int(np.argmax(bad))}")
    if ((data["state_dim"] < 0) | (data["state_dim"] > data["state"].shape[1])).any():
        raise DatasetError(f"{path}: state_dim outside [0, {data['state'].shape[1]}]")
    if ((data["source"] < 0) | (data["source"] >= len(manifest["config"]["sources"]))).any():
        raise DatasetError(f"{path}: source index outside the manifest's {len(manifest['config']['sources'])} sources")
    vocab = len(manifest["vocabulary"])
    for key, high in (("answer", vocab), ("scene", n)):
        bad = (data[key] < 0) | (data[key] >= high)
        if bad.any():
            raise DatasetError(f"{path}: {key} {int(data[key][np.argmax(bad)])} at question {int(np.argmax(bad))} "
                               f"is outside [0, {high})")
    allowed = {f: set(ids) for f, ids in _splits_table()[manifest["config"]["split"]].items()}
    for j, (family, template) in enumerate(zip(data["family"].tolist(), data["template"].tolist())):
        if family not in allowed:
            raise DatasetError(f"{path}: question {j} has unknown family {family!r}")
        if template not in allowed[family]:
            raise DatasetError(f"{path}: question {j} uses template {template} of {family}, not in the "
                               f"{manifest['config']['split']} split")
    return data


def load_qa(root: str | Path) -> QADataset:
    """A whole QA dataset, every shard checked (presence, sha256, readability, shapes, vocabulary, NaN)."""
    root = Path(root)
    manifest = read_manifest(root)
    if manifest["vocabulary"] != list(ANSWERS):
        theirs, ours = manifest["vocabulary"], list(ANSWERS)
        k = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), min(len(theirs), len(ours)))
        raise DatasetError(f"{root / MANIFEST}: answer vocabulary differs from this code's ({len(theirs)} vs "
                           f"{len(ours)} answers, first difference at index {k}); collect the dataset again")
    if manifest["generator_version"] != GENERATOR_VERSION:
        log.warning("%s was generated by spatial_qa version %s, this code is version %s", root,
                    manifest["generator_version"], GENERATOR_VERSION)
    config = manifest["config"]
    n_shards = math.ceil(config["samples"] / config["shard_size"])
    names = [shard_name(k) for k in range(n_shards)]
    absent = [n for n in names if n not in manifest["shards"]]
    if absent:
        raise DatasetError(f"{root / SHARDS / absent[0]} was never written ({n_shards - len(absent)} of {n_shards} "
                           "shards collected); rerun collect_qa with the same arguments to finish")
    shards = [_read_shard(root / SHARDS / n, manifest["shards"][n], manifest) for n in names]
    for name, shard in zip(names[1:], shards[1:]):
        if shard["image"].shape[1:] != shards[0]["image"].shape[1:]:
            raise DatasetError(f"{root / SHARDS / name}: images {list(shard['image'].shape[1:])} differ from "
                               f"{list(shards[0]['image'].shape[1:])} in {names[0]}")
    width = max(s["state"].shape[1] for s in shards)
    offsets = np.cumsum([0] + [len(s["image"]) for s in shards[:-1]])

    def cat(key):
        return np.concatenate([s[key] for s in shards])

    state = np.concatenate([np.pad(s["state"], ((0, 0), (0, width - s["state"].shape[1]))) for s in shards])
    return QADataset(image=cat("image"), depth=cat("depth"), has_depth=cat("has_depth"), state=state,
                     state_dim=cat("state_dim").astype(np.int64), embodiment=cat("embodiment"), sample=cat("sample"),
                     question=cat("question"), answer=cat("answer").astype(np.int64), family=cat("family"),
                     template=cat("template").astype(np.int64),
                     scene=np.concatenate([s["scene"].astype(np.int64) + o for s, o in zip(shards, offsets)]),
                     manifest=manifest)


def answer_balance(dataset: QADataset) -> dict[str, dict[str, float]]:
    """Per family, the share of each answer (for reports: a family dominated by one answer teaches a prior)."""
    out: dict[str, dict[str, float]] = {}
    for family in sorted(set(dataset.family.tolist())):
        answers = dataset.answer[dataset.family == family]
        counts = Counter(ANSWERS[a] for a in answers.tolist())
        out[family] = {w: round(c / len(answers), 3) for w, c in sorted(counts.items(), key=lambda kv: -kv[1])}
    return out
