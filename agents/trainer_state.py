"""A trainer's resumable state on disk without pickle: tensors in safetensors, the rest in JSON.

The state is a nest of dicts, lists and tuples holding tensors, NumPy arrays, numbers, strings,
booleans and None (a model's and an optimiser's ``state_dict()``, RNG states, counters). Tensors
and arrays go to ``trainer_state.safetensors`` under their path in the nest; ``trainer_state.json``
holds the nest with a reference in their place. Loading runs no code from the files, so a crafted
run directory can only fail to load, with one line naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from policies.atomic import atomic_write
from policies.bundle import file_sha256
from policies.run_dir import TRAINER_STATE

FORMAT = "embodied-trainer-state"
VERSION = 1


class TrainerStateError(ValueError):
    """A trainer state is missing, corrupt or not what this trainer wrote."""


def _flatten(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().cpu().contiguous().clone()
        return {"__tensor__": path}
    if isinstance(value, np.ndarray):
        wide = value.astype(np.int64) if value.dtype in (np.uint16, np.uint32) else value  # dtypes safetensors lacks
        tensors[path] = torch.from_numpy(np.ascontiguousarray(wide).copy())
        return {"__array__": path, "dtype": str(value.dtype)}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _flatten(v, f"{path}/{k}", tensors) for k, v in value.items()}
        return {"__items__": [[k, _flatten(v, f"{path}/{i}", tensors)] for i, (k, v) in enumerate(value.items())]}
    if isinstance(value, list | tuple):
        out = [_flatten(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]
        return {"__tuple__": out} if isinstance(value, tuple) else out
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot store {type(value).__name__} at {path or '/'} in a trainer state")


def _unflatten(value: Any, tensors: dict[str, torch.Tensor], where: Path) -> Any:
    if isinstance(value, list):
        return [_unflatten(v, tensors, where) for v in value]
    if not isinstance(value, dict):
        return value
    for marker in ("__tensor__", "__array__"):
        if marker in value:
            key = value[marker]
            if key not in tensors:
                raise TrainerStateError(f"{where}: tensor {key} is missing from the safetensors file")
            if marker == "__tensor__":
                return tensors[key]
            return tensors[key].numpy().astype(np.dtype(value.get("dtype", tensors[key].numpy().dtype)))
    if "__tuple__" in value:
        return tuple(_unflatten(v, tensors, where) for v in value["__tuple__"])
    if "__items__" in value:
        return {k: _unflatten(v, tensors, where) for k, v in value["__items__"]}
    return {k: _unflatten(v, tensors, where) for k, v in value.items()}


def save_state(directory: str | Path, state: dict) -> None:
    """Write ``state`` beside a checkpoint's bundle (two files, each atomically; the JSON last, with the hash)."""
    directory = Path(directory)
    tensors: dict[str, torch.Tensor] = {}
    nest = _flatten(state, "", tensors)
    digest = {}

    def write_tensors(tmp: str) -> None:
        save_file(tensors, tmp)
        digest["sha256"] = file_sha256(tmp)

    atomic_write(directory / f"{TRAINER_STATE}.safetensors", write_tensors)
    text = json.dumps({"format": FORMAT, "version": VERSION, "sha256": digest["sha256"], "state": nest})
    atomic_write(directory / f"{TRAINER_STATE}.json", lambda p: Path(p).write_text(text))


def load_state(directory: str | Path) -> dict:
    directory = Path(directory)
    meta, weights = directory / f"{TRAINER_STATE}.json", directory / f"{TRAINER_STATE}.safetensors"
    try:
        doc = json.loads(meta.read_bytes())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TrainerStateError(f"{meta}: unreadable ({getattr(e, 'msg', None) or getattr(e, 'strerror', e)})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise TrainerStateError(f"{meta}: not a version-{VERSION} {FORMAT} file")
    if not weights.is_file():
        raise TrainerStateError(f"{directory}: no {weights.name}")
    if file_sha256(weights) != doc.get("sha256"):
        raise TrainerStateError(f"{weights}: sha256 differs from the one in {meta.name} (changed or truncated)")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise TrainerStateError(f"{weights}: corrupt ({str(e).splitlines()[0][:160]})") from None
    state = _unflatten(doc.get("state"), tensors, meta)
    if not isinstance(state, dict):
        raise TrainerStateError(f"{meta}: the state is not a mapping")
    return state
