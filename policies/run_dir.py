"""The run directory a training run fills, and the one way anything finds a checkpoint in it.

Layout::

    config.yaml          the resolved config the run was started with
    metrics.csv          one row per evaluation, appended (a resumed run continues it)
    summary.json         headline results, written when the run finishes
    *.png                plots
    checkpoints/<name>/  a policy bundle (policy.json + policy.safetensors); ``last`` also holds
                         the trainer's state (trainer_state.json + trainer_state.safetensors),
                         from which a rerun into the directory resumes

``final`` is the finished run's policy; ``step_<N>`` are periodic snapshots; ``last`` is the
newest resumable state. Checkpoints are written to a hidden directory and swapped in whole.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from policies.atomic import atomic_directory, atomic_write_text
from policies.bundle import META_FILE, read_meta
from policies.protocol import PolicyError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
CHECKPOINTS = "checkpoints"
FINAL = "final"
LAST = "last"
TRAINER_STATE = "trainer_state"  # <name>.json + <name>.safetensors beside a bundle: a resumable checkpoint
_STEP = re.compile(r"step_(\d+)$")


class RunDirError(PolicyError):
    """A run directory is missing, lacks the asked checkpoint, or cannot be used as asked."""


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # --- creation ------------------------------------------------------------------------
    @classmethod
    def claim(cls, path: str | Path) -> RunDir:
        """Create a new, empty run directory at ``path``, or at ``path-2``, ``path-3``... if it is taken.

        ``mkdir`` is atomic, so two runs started in the same second never share a directory.
        """
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        for n in range(1, 10_000):
            candidate = path if n == 1 else path.with_name(f"{path.name}-{n}")
            try:
                candidate.mkdir()
            except FileExistsError:
                continue
            return cls(candidate)
        raise RunDirError(f"no free run directory name beside {path}")

    # --- files ---------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def summary_file(self) -> Path:
        return self.path / SUMMARY_FILE

    def write_config(self, text: str) -> None:
        atomic_write_text(self.config_file, text)

    def read_config(self) -> dict:
        if not self.config_file.is_file():
            raise RunDirError(f"{self.path} is not a run directory (no {CONFIG_FILE})")
        try:
            data = yaml.safe_load(self.config_file.read_text())
        except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
            raise RunDirError(f"{self.config_file}: unreadable ({' '.join(str(e).split())[:160]})") from None
        if not isinstance(data, dict):
            raise RunDirError(f"{self.config_file}: not a config mapping")
        return data

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.summary_file, json.dumps(summary, indent=2) + "\n")

    def read_summary(self) -> dict:
        try:
            return json.loads(self.summary_file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise RunDirError(f"{self.summary_file}: unreadable ({e})") from None

    @property
    def finished(self) -> bool:
        return self.summary_file.is_file()

    def metrics(self) -> MetricsLog:
        return MetricsLog(self.metrics_file)

    def metrics_rows(self) -> list[dict[str, float]]:
        return read_metrics(self.metrics_file) if self.metrics_file.is_file() else []

    def has_results(self) -> bool:
        """Whether training has left anything here (metrics, checkpoints or a summary)."""
        return self.metrics_file.is_file() or self.finished or bool(self.checkpoints())

    # --- checkpoints ---------------------------------------------------------------------
    def checkpoint_dir(self, name: str) -> Path:
        return self.path / CHECKPOINTS / name

    def checkpoints(self) -> list[str]:
        """Names of the published checkpoints (bundles), sorted."""
        root = self.path / CHECKPOINTS
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and (p / META_FILE).is_file())

    def has_policy(self, name: str = FINAL) -> bool:
        return (self.checkpoint_dir(name) / META_FILE).is_file()

    def policy(self, name: str = FINAL) -> Path:
        """The bundle directory of checkpoint ``name``; RunDirError listing what there is."""
        if not self.path.is_dir():
            raise RunDirError(f"run directory {self.path} does not exist")
        bundle = self.checkpoint_dir(name)
        if not (bundle / META_FILE).is_file():
            have = ", ".join(self.checkpoints()) or "none"
            raise RunDirError(f"no checkpoint {name!r} in {self.path} (have: {have})")
        return bundle

    @staticmethod
    def find_policy(path: str | Path, name: str = FINAL) -> Path:
        """A bundle directory from either itself or a run directory (its checkpoint ``name``)."""
        path = Path(path).expanduser()
        if (path / META_FILE).is_file():
            return path
        if not path.is_dir():
            raise RunDirError(f"{path} does not exist")
        if not (path / CHECKPOINTS).is_dir():
            raise RunDirError(f"{path} is neither a run directory nor a policy bundle (no {META_FILE})")
        return RunDir(path).policy(name)

    @staticmethod
    def env_config_of(path: str | Path, name: str = FINAL) -> dict:
        """The env config a run's (or a bundle's) policy was trained on: what a simulator must match."""
        return dict(read_meta(RunDir.find_policy(path, name)).env)

    def write_checkpoint(self, name: str, write: Callable[[Path], object]) -> Path:
        """``write(tmp_dir)`` fills a temporary directory that then replaces ``checkpoints/<name>`` whole."""
        return atomic_directory(self.checkpoint_dir(name), write)

    def resumable(self) -> Path | None:
        """``checkpoints/last`` when it holds a trainer state to resume from, else None."""
        last = self.checkpoint_dir(LAST)
        return last if (last / f"{TRAINER_STATE}.json").is_file() else None

    def drop_checkpoints_after(self, step: int) -> list[str]:
        """Remove the ``step_<N>`` snapshots with N > ``step`` (written after the state a run resumes from)."""
        dropped = []
        for name in self.checkpoints():
            m = _STEP.match(name)
            if m and int(m.group(1)) > step:
                shutil.rmtree(self.checkpoint_dir(name))
                dropped.append(name)
        return dropped


class MetricsLog:
    """Append-only CSV whose columns are fixed by the first row."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fields: list[str] | None = None

    def resume(self, up_to_steps: int) -> None:
        """Keep appending to an existing file (a resumed run) under its own header.

        Rows logged after the checkpoint the run resumes from are dropped: they are redone.
        """
        if not self.path.is_file():
            return
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            return
        self.fields = rows[0]
        column = self.fields.index("steps")
        kept = [rows[0], *(r for r in rows[1:] if r and float(r[column]) <= up_to_steps)]
        if len(kept) < len(rows):
            text = "".join(",".join(r) + "\n" for r in kept)  # the values are numbers: no quoting needed
            atomic_write_text(self.path, text)

    def append(self, row: dict[str, Any]) -> None:
        if self.fields is None:
            self.fields = list(row)
            with open(self.path, "w", newline="") as f:
                csv.DictWriter(f, self.fields).writeheader()
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields, extrasaction="ignore").writerow(row)
            f.flush()
            os.fsync(f.fileno())


def read_metrics(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) if v not in ("", None) else float("nan") for k, v in row.items()}
                for row in csv.DictReader(f)]
