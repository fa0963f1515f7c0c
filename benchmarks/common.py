"""What every benchmark script shares: resumable training jobs, the machine record, summaries."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from policies.run_dir import RunDir  # noqa: E402


class Jobs:
    """Runs ``agents.train`` subprocesses into ``work/<name>``, ``jobs`` at a time.

    A finished run (``summary.json``) is reused, so an interrupted benchmark resumes; an
    interrupted run with a resumable state (``checkpoints/last``) is continued by its trainer;
    anything else left in a run's directory is cleared and the run starts again.
    """

    def __init__(self, work: Path, jobs: int):
        self.work = Path(work)
        self.pool = ThreadPoolExecutor(max_workers=jobs)
        self.futures = {}

    def submit(self, name: str, overrides: list[str]) -> Path:
        run = self.work / name
        if name not in self.futures and not RunDir(run).finished:
            self.futures[name] = self.pool.submit(self._run, name, overrides)
        return run

    def _run(self, name: str, overrides: list[str]) -> None:
        run = self.work / name
        cmd = [sys.executable, "-m", "agents.train", *overrides, "progress_bar=false", f"hydra.run.dir={run}"]
        log = self.work / f"{name}.log"
        resume = RunDir(run).resumable() is not None
        if not resume:
            shutil.rmtree(run, ignore_errors=True)  # an interrupted earlier attempt
        t0 = time.time()
        with open(log, "a" if resume else "w") as f:
            proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise RuntimeError(f"training {name} failed (exit {proc.returncode}); see {log}")
        print(f"  done {name} in {time.time() - t0:.0f}s", flush=True)

    def wait_for(self, name: str) -> None:
        if name in self.futures:
            self.futures.pop(name).result()

    def wait(self) -> None:
        for fut in self.futures.values():
            fut.result()
        self.futures.clear()


def compose_cfg(overrides: list[str], config_name: str = "train"):
    """The project's Hydra config with ``overrides``, as the CLIs would compose it."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def summary(run: Path) -> dict:
    return RunDir(run).read_summary()


def mean_std(xs) -> dict:
    xs = np.asarray(xs, dtype=float)
    return {"mean": float(np.mean(xs)), "std": float(np.std(xs)), "n": int(xs.size)}


def machine() -> dict:
    import gymnasium
    import mujoco
    import stable_baselines3
    import torch

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "mujoco": mujoco.__version__, "gymnasium": gymnasium.__version__, "sb3": stable_baselines3.__version__,
            "platform": platform.platform()}


def shown_path(path: Path) -> str:
    """``path`` as the results show it: relative to the checkout if inside it (tables are not per-checkout)."""
    path = path.absolute()  # not resolve(): a symlinked benchmarks/.work in a worktree stays inside that worktree
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)
