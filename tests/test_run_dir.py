"""The run directory (policies/run_dir.py) and its faults: collisions, reruns, stops and resumes, crafted files.

Every trainer (PPO, SAC, GRPO, ES, BC) is stopped by SIGTERM mid-run through the real CLI and
then rerun into its directory: it continues from ``checkpoints/last`` and its metrics go on in
the same file. A run directory whose every file is a crafted pickle never runs the pickle's code.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from policies.run_dir import RunDir, RunDirError

from conftest import TINY, TINY_MTACT, CLIResult, assert_one_line_error, cli_env, write_fake_dataset


def rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


# --- claiming, finding ------------------------------------------------------------------------


def test_claim_gives_every_caller_its_own_directory(tmp_path):
    base = tmp_path / "runs" / "2026-12-02_07-00-00_seed0"
    first, second = RunDir.claim(base), RunDir.claim(base)
    assert first.path == base and second.path == base.with_name(base.name + "-2")
    claimed = []
    threads = [threading.Thread(target=lambda: claimed.append(RunDir.claim(base).path)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(claimed)) == 8 and not {first.path, second.path} & set(claimed)


def test_policy_lookup_names_what_there_is(tmp_path, ncap_run):
    run = RunDir(ncap_run)
    assert run.policy() == ncap_run / "checkpoints" / "final" and run.has_policy("last")
    with pytest.raises(RunDirError, match=r"no checkpoint 'step_7' in .* \(have: final, last, step_1024"):
        run.policy("step_7")
    assert RunDir.find_policy(run.policy()) == run.policy()  # a bundle directory is its own policy
    with pytest.raises(RunDirError, match="does not exist"):
        RunDir(tmp_path / "nothing").policy()
    assert RunDir.env_config_of(ncap_run)["id"] == "embodied/Swimmer-v0"


def test_drop_checkpoints_after(tmp_path):
    run = RunDir(tmp_path)
    for name in ("step_100", "step_200", "step_300", "final"):
        (run.checkpoint_dir(name)).mkdir(parents=True)
        (run.checkpoint_dir(name) / "policy.json").write_text("{}")
    assert run.drop_checkpoints_after(200) == ["step_300"]
    assert run.checkpoints() == ["final", "step_100", "step_200"]


# --- the CLI: new runs, reruns --------------------------------------------------------------------

PPO_TINY = ["env=swimmer", "policy=ncap", "algo.total_timesteps=1024", *TINY, "algo.final_eval_episodes=1"]


def train(*args: str, cwd: Path, timeout: float = 300) -> CLIResult:
    result = subprocess.run([sys.executable, "-m", "agents.train", *args], cwd=cwd, env=cli_env(), capture_output=True,
                            text=True, timeout=timeout)
    return CLIResult(result.returncode, result.stdout, result.stderr)


def test_two_runs_started_together_get_two_directories(tmp_path):
    """Same env, policy, algo and seed, started at once: before, they could share a directory and a metrics file."""
    procs = [subprocess.Popen([sys.executable, "-m", "agents.train", *PPO_TINY], cwd=tmp_path, env=cli_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    runs = sorted((tmp_path / "runs" / "swimmer_ncap_ppo").iterdir())
    assert len(runs) == 2
    for run in runs:
        steps = [int(r["steps"]) for r in rows(run)]
        assert steps == sorted(set(steps)) and steps[-1] == 1024  # no row written twice
        assert RunDir(run).finished


def test_rerunning_into_a_directory_resumes_or_refuses_in_one_line(tmp_path, ncap_run, copy_run):
    finished = copy_run(ncap_run, "finished")
    assert_one_line_error(train(*PPO_TINY, f"hydra.run.dir={finished}", cwd=tmp_path), "finished run")

    changed = copy_run(ncap_run, "changed")
    (changed / "summary.json").unlink()
    result = train("env=swimmer", "policy=ncap", "algo.total_timesteps=4096", "seed=1", *TINY,
                   f"hydra.run.dir={changed}", cwd=tmp_path)
    assert_one_line_error(result, "another config", "seed: 0 -> 1")

    lost = copy_run(ncap_run, "lost")
    (lost / "summary.json").unlink()
    import shutil

    shutil.rmtree(lost / "checkpoints" / "last")
    assert_one_line_error(train(*PPO_TINY, f"hydra.run.dir={lost}", cwd=tmp_path), "no resumable state")
    assert (lost / "metrics.csv").read_text() == (ncap_run / "metrics.csv").read_text()  # nothing mixed in


def test_a_config_error_found_late_leaves_no_run_directory(tmp_path):
    """``init_from`` is read only after the run directory is claimed: the directory is removed again."""
    (tmp_path / "not_a_run").mkdir()
    result = train(*PPO_TINY, f"init_from={tmp_path / 'not_a_run'}", cwd=tmp_path)
    assert_one_line_error(result, "init_from", "not_a_run")
    assert not list((tmp_path / "runs").rglob("*seed0*")), list((tmp_path / "runs").rglob("*"))


# --- SIGTERM, then resume, for every trainer ------------------------------------------------------

POP = ["env=swimmer", "policy=ncap", "algo.horizon=50", "algo.total_timesteps=6000", "algo.eval_every=400",
       "algo.eval_episodes=1", "algo.final_eval_episodes=1", "algo.checkpoint_every=1200", "threads=1",
       "progress_bar=false"]
TRAINERS = {
    "ppo": ["env=swimmer", "policy=ncap", "algo.total_timesteps=4096", *TINY, "algo.final_eval_episodes=1"],
    "sac": ["env=uav_hover", "policy=mlp", "algo=sac", "algo.total_timesteps=1500", "algo.sb3.learning_starts=200",
            "algo.sb3.buffer_size=5000", "algo.eval_every=250", "algo.eval_episodes=1", "algo.final_eval_episodes=1",
            "algo.checkpoint_every=500", "env.episode_seconds=1", "threads=1", "progress_bar=false"],
    "grpo": [*POP, "algo=grpo", "algo.groups=2", "algo.group_size=4"],
    "es": [*POP, "algo=es", "algo.population=8"],
    "bc": ["env=kitchen", "policy=mtact", "algo=bc", "algo.total_steps=12", "algo.eval_every=2",
           "algo.eval_episodes=0", "algo.final_eval_episodes=0", *TINY_MTACT],
}


@pytest.fixture(scope="module")
def bc_dataset(tmp_path_factory) -> Path:
    return write_fake_dataset(tmp_path_factory.mktemp("bc") / "data", {"light_switch": 2, "microwave": 2})


def wait_for_rows(run: Path, n: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.stderr.read()[-2000:]}")
        if (run / "metrics.csv").is_file() and len(rows(run)) >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"no {n} metrics rows in {timeout} s")


@pytest.mark.parametrize("algo", list(TRAINERS))
def test_sigterm_saves_a_resumable_state_and_a_rerun_continues(algo, tmp_path, bc_dataset):
    args = [*TRAINERS[algo], *([f"dataset={bc_dataset}"] if algo == "bc" else [])]
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "agents.train", *args, f"hydra.run.dir={run}"], cwd=tmp_path,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_rows(run, 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "stopped by SIGTERM at step" in err and f"hydra.run.dir={run}" in err and "Traceback" not in err
    assert RunDir(run).resumable() is not None and not RunDir(run).finished
    before = rows(run)

    resumed = train(*args, f"hydra.run.dir={run}", cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr + resumed.stdout
    after = rows(run)
    steps = [int(float(r["steps"])) for r in after]
    assert steps == sorted(set(steps)), steps  # one metrics file, continued: no step twice, none going back
    state_step = int(json.loads((run / "summary.json").read_text())["steps"])
    assert steps[-1] == state_step
    kept = [r for r in before if int(float(r["steps"])) <= steps[len(before) - 1]]
    assert after[:len(kept)] == kept  # the rows up to the resumed state are the first session's
    assert RunDir(run).finished and RunDir(run).has_policy()
    # the checkpoint series is one series: no snapshot beyond the end, none duplicated
    snapshots = [int(n.split("_")[1]) for n in RunDir(run).checkpoints() if n.startswith("step_")]
    assert all(s <= state_step for s in snapshots)


# --- crafted pickles in every file of a run directory ------------------------------------------


class _Payload:
    """Unpickling this creates a marker file: the proof that a loader ran code from the run directory."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def poisoned(tmp_path, ncap_run, copy_run):
    """A copy of a finished run (summary removed, so a rerun would resume) with every file replaced by a pickle,
    and the pickled files older releases wrote (vecnormalize.pkl, model.zip, trainer_state.pt) added."""
    run = copy_run(ncap_run, "poisoned")
    (run / "summary.json").unlink()
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(_Payload(marker))
    for path in [p for p in run.rglob("*") if p.is_file()]:
        path.write_bytes(payload)
    for name in ("final", "last"):
        for extra in ("vecnormalize.pkl", "model.zip", "trainer_state.pt"):
            (run / "checkpoints" / name / extra).write_bytes(payload)
    return run, marker


def test_no_loader_runs_code_from_a_crafted_run_directory(poisoned, tmp_path):
    run, marker = poisoned
    assert not marker.exists()
    checks = [
        (["agents.evaluate", f"run={run}", "episodes=1"], "policy.json"),
        (["agents.train", *PPO_TINY, f"hydra.run.dir={run}"], str(run)),  # a rerun: resume reads last
        (["agents.train", "env=swimmer", "policy=mlp", "algo.total_timesteps=512", *TINY, f"init_from={run}"],
         "init_from"),
    ]
    for args, needle in checks:
        result = subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, env=cli_env(), capture_output=True,
                                text=True, timeout=300)
        assert_one_line_error(CLIResult(result.returncode, result.stdout, result.stderr), needle)
        assert not marker.exists(), f"{args[0]} ran code from a crafted file"

    from agents.trainer_state import TrainerStateError, load_state
    from policies.bundle import read_bundle
    from policies.protocol import PolicyError

    for loader in (read_bundle, load_state):
        for name in ("final", "last"):
            with pytest.raises((PolicyError, TrainerStateError)):
                loader(run / "checkpoints" / name)
    assert not marker.exists()


# --- the trainer state's format --------------------------------------------------------------------


def test_trainer_state_round_trips_optimizer_and_rng_state_without_pickle(tmp_path):
    import numpy as np
    import torch

    from agents.trainer_state import TrainerStateError, load_state, save_state

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    rng = np.random.default_rng(5)
    state = {"step": 7, "optimizer": opt.state_dict(), "numpy_legacy": np.random.get_state(),
             "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "nested": {"__odd": (1, [2.5, None])},
             "array": np.arange(6, dtype=np.uint32).reshape(2, 3)}
    save_state(tmp_path, state)
    back = load_state(tmp_path)
    assert back["step"] == 7 and back["nested"] == {"__odd": (1, [2.5, None])}
    assert back["array"].dtype == np.uint32 and np.array_equal(back["array"], state["array"])
    assert torch.equal(back["torch_rng"], state["torch_rng"])
    legacy = back["numpy_legacy"]
    assert legacy[0] == "MT19937" and np.array_equal(legacy[1], state["numpy_legacy"][1])
    again = torch.optim.Adam(model.parameters(), lr=1e-3)
    again.load_state_dict(back["optimizer"])  # int parameter keys and tuples (betas) survive
    assert again.state_dict()["param_groups"][0]["betas"] == (0.9, 0.999)
    fresh = np.random.default_rng(0)
    fresh.bit_generator.state = back["rng"]
    assert fresh.integers(1 << 30) == rng.integers(1 << 30)

    (tmp_path / "trainer_state.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(TrainerStateError, match="sha256"):
        load_state(tmp_path)
    (tmp_path / "trainer_state.json").write_text('{"format": "something"}')
    with pytest.raises(TrainerStateError, match="not a version-1"):
        load_state(tmp_path)
