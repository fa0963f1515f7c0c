"""Behaviour-cloning samples from a demonstration dataset: observation at t, actions t..t+k-1.

Chunk windows are episode-aware: a window that runs past its episode's last action is padded
(with the last action) and the padded steps are masked out of the loss, as ACT does, so the
end of every demonstration is learned too. Every selected frame is held in memory (uint8
images: ~2.2 GB for 50 demonstrations of each of the 7 kitchen tasks with two 96x96 cameras),
so a training step costs an index, not a file read.

Which demonstrations: the first ``demos_per_task`` successful originals of each task (by
episode index), their first ``augmentations`` semantic re-renderings, and a validation split
of whole originals (the last ``val_fraction`` of each task's selection; their augmentations
are left out of training, so validation frames are never seen in another colour).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from agents.dataset import DatasetError, Episode, episode_files, read_episode, read_manifest

NAME = re.compile(r"^(\d+)(?:-a(\d+))?\.npz$")


@dataclass
class Selection:
    demos_per_task: int = 50
    augmentations: int = 0
    val_fraction: float = 0.1
    successful_only: bool = True
    tasks: list[str] | None = None  # None: every task in the dataset


def select_files(root: str | Path, sel: Selection) -> tuple[list[Path], list[Path]]:
    """(train files, validation files) of a dataset directory, per the selection rules above."""
    read_manifest(root)  # a dataset of this format and version, or DatasetError
    by_task: dict[str, dict[int, dict[int, Path]]] = {}
    for path in episode_files(root, sel.tasks):
        m = NAME.match(path.name)
        if m is None:
            continue
        by_task.setdefault(path.parent.name, {}).setdefault(int(m.group(1)), {})[int(m.group(2) or 0)] = path
    if not by_task:
        raise DatasetError(f"{root} holds no episodes{' of ' + ', '.join(sel.tasks) if sel.tasks else ''}")
    if sel.tasks:
        missing = [t for t in sel.tasks if t not in by_task]
        if missing:
            raise DatasetError(f"{root} has no episodes of {', '.join(missing)} (has: {', '.join(sorted(by_task))})")
    train, val = [], []
    for task in sorted(by_task):
        chosen = []
        for index in sorted(by_task[task]):
            copies = by_task[task][index]
            if 0 not in copies:
                continue
            if sel.successful_only and not _succeeded(copies[0]):
                continue
            chosen.append(copies)
            if len(chosen) == sel.demos_per_task:
                break
        if len(chosen) < sel.demos_per_task:
            raise DatasetError(f"{root}: task {task} has {len(chosen)} usable demonstrations, "
                               f"algo.demos_per_task asks for {sel.demos_per_task}")
        n_val = int(round(sel.val_fraction * len(chosen)))
        if sel.val_fraction > 0 and len(chosen) > 1:
            n_val = max(1, n_val)
        for copies in chosen[: len(chosen) - n_val]:
            for aug in range(sel.augmentations + 1):
                if aug not in copies:
                    raise DatasetError(f"{copies[0].name} of {task} has no augmentation a{aug}; collect with "
                                       f"augment>={sel.augmentations} or lower algo.augmentations")
                train.append(copies[aug])
        val += [copies[0] for copies in chosen[len(chosen) - n_val:]]
    return train, val


def _succeeded(path: Path) -> bool:
    try:
        with np.load(path, allow_pickle=False) as z:
            return bool(z["episode_success"])
    except Exception as e:  # noqa: BLE001 - a damaged .npz fails in zipfile, zlib, or the .npy header's parser
        raise DatasetError(f"{path} is unreadable ({type(e).__name__}: {str(e)[:160]})") from None


class ChunkWindows:
    """Every frame of some episodes, and chunked action targets for any of them.

    The episodes' camera arrays move into the windows (they are taken out of ``episode.obs``).
    """

    def __init__(self, episodes: list[Episode], cameras: list[str], chunk: int, lang: list[np.ndarray]):
        if not episodes:
            raise DatasetError("no episodes selected")
        self.cameras, self.chunk = list(cameras), int(chunk)
        lengths = np.array([e.length for e in episodes])
        self.frame_episode = np.repeat(np.arange(len(episodes)), lengths)
        self.frame_t = np.concatenate([np.arange(n) for n in lengths])
        self.action_start = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self.lengths = lengths
        # Observations 0..T-1 (the last one, after the final action, has no target).
        self.proprio = torch.from_numpy(np.concatenate([e.obs["proprio"][:-1] for e in episodes]).astype(np.float32))
        self.object_state = torch.from_numpy(
            np.concatenate([e.obs["object_state"][:-1] for e in episodes]).astype(np.float32))
        self.actions = torch.from_numpy(np.concatenate([e.actions for e in episodes]).astype(np.float32))
        self.images = None
        if self.cameras:
            self.images = torch.from_numpy(self._gather_images(episodes))  # (N, C, H, W, 3) uint8
        self.lang = torch.from_numpy(np.stack(lang).astype(np.float32))
        self.tasks = [e.task for e in episodes]

    def _gather_images(self, episodes: list[Episode]) -> np.ndarray:
        """Copy every episode's frames into one preallocated array, releasing each episode's images once copied.

        The images are most of a dataset's memory (4.2 GiB for 700 two-camera demonstrations at 96 px):
        concatenating per camera and then stacking held three copies at the peak, and two trainings
        loading at once ran a 24 GiB machine out of memory. The episodes lose their camera arrays.
        """
        first = episodes[0].obs[self.cameras[0]]
        out = np.empty((len(self), len(self.cameras), *first.shape[1:]), dtype=first.dtype)
        for e, start, n in zip(episodes, self.action_start, self.lengths):
            for j, c in enumerate(self.cameras):
                out[start:start + n, j] = e.obs.pop(c)[:-1]
        return out

    def __len__(self) -> int:
        return len(self.frame_t)

    def stats(self) -> dict[str, np.ndarray]:
        """Normalisation statistics of proprioception, object state and actions (float64)."""
        out = {}
        for key, x in (("proprio", self.proprio), ("object", self.object_state), ("action", self.actions)):
            arr = x.double().numpy()
            out[f"{key}_mean"], out[f"{key}_std"] = arr.mean(0), arr.std(0)
        return out

    def batch(self, frames: np.ndarray) -> dict[str, torch.Tensor]:
        """Model inputs for frame indices: images (uint8), proprio, object state, language, chunk, pad mask."""
        frames = np.asarray(frames)
        ep, t = self.frame_episode[frames], self.frame_t[frames]
        offsets = t[:, None] + np.arange(self.chunk)[None, :]  # (B, k)
        pad = offsets >= self.lengths[ep][:, None]
        index = self.action_start[ep][:, None] + np.minimum(offsets, self.lengths[ep][:, None] - 1)
        out = {
            "proprio": self.proprio[frames],
            "object_state": self.object_state[frames],
            "lang": self.lang[ep],
            "actions": self.actions[torch.from_numpy(index)],
            "pad": torch.from_numpy(pad),
        }
        if self.images is not None:
            out["images"] = self.images[frames]
        return out

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return self.batch(rng.integers(0, len(self), batch_size))


def load_windows(files: list[Path], spec: dict, cameras: list[str], chunk: int, language) -> ChunkWindows:
    """Read and validate ``files``; ``language(instruction, task)`` gives each episode's language vector."""
    episodes = [read_episode(f, spec) for f in files]
    for f, e in zip(files, episodes):
        missing = [c for c in cameras if c not in e.obs]
        if missing:
            raise DatasetError(f"{f} has no images from camera(s) {', '.join(missing)} (has: {', '.join(e.obs)})")
    return ChunkWindows(episodes, cameras, chunk, [language(e.instruction, e.task) for e in episodes])
