"""``python -m agents.train env=swimmer policy=ncap [algo=ppo] [logger=wandb] [-m seed=0,1,2]``.

Composes the Hydra config, trains, and leaves a run directory (:class:`~policies.run_dir.RunDir`,
Hydra's output dir) with the resolved ``config.yaml``, ``checkpoints/`` (periodic, ``last`` and
``final``), ``metrics.csv``, a ``learning_curve.png`` and ``summary.json``; the last line printed
is a ``key=value`` summary.

A new run gets a directory of its own, even beside another started in the same second. Started
again in an existing run directory (``hydra.run.dir=<run>``) with the same config, a run resumes
from ``checkpoints/last``; a finished run, a different config or results with nothing to resume
from are refused. SIGTERM or SIGINT saves ``checkpoints/last`` and prints the command that resumes.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from agents.errors import UserError, report_user_errors
from agents.loggers import LoggerSettings, make_loggers
from agents.overrides import CLAIMED_DIR_ENV, run_hydra_cli
from agents.reporting import CURVE_FILE, plot_learning_curve, summary_line
from agents.schema import check, check_env, check_policy, setting, top_level
from agents.stopping import TrainingStopped
from agents.trainer import trainer_class
from policies import registry
from policies.protocol import PolicyError
from policies.run_dir import RunDir

SUMMARY_KEYS = ["return_mean", "return_std", "success_rate", "qa_held_out_mean", "val_l1", "steps", "params",
                "train_time_s", "run_dir"]
# Settings a resumed run may change: how long it trains and how it uses the machine, not what it learns.
RESUME_MAY_CHANGE = ("progress_bar", "threads", "logger", "algo.total_timesteps", "algo.total_steps",
                     "algo.time_budget_s", "algo.eval_workers", "algo.eval_batch", "algo.workers")


def reference_curves(cfg: DictConfig) -> dict:
    """Benchmark curves measured under the same env config (``benchmarks/swimmer_ncap.py`` publishes them)."""
    try:
        refs = json.loads(resources.files("agents").joinpath("reference_curves.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    key = f"{cfg.env.name}:{cfg.env.get('task', '')}:{cfg.env.get('n_links', '')}:{cfg.env.get('fluid_density', '')}"
    return {label: [tuple(p) for p in curve] for label, curve in refs.get(key, {}).items()}


@dataclass
class TrainSettings:
    """The top-level keys of configs/train.yaml."""

    seed: int = setting(0, low=0, high=2**32 - 1)  # seeds the envs, torch and numpy
    threads: int = setting(1, low=1, high=256)  # torch threads
    progress_bar: bool = True  # shown only on a terminal
    init_from: str | None = None  # a run directory whose final model starts this run
    dataset: str | None = None  # algo=bc: a demonstration dataset directory


def validate(cfg: DictConfig) -> None:
    """Everything checkable before a file is written: every group's keys, types and ranges, and whether the
    algo trains the policy."""
    check(top_level(cfg), TrainSettings, "")
    check_env(cfg.env)
    check_policy(cfg.policy)
    check(cfg.logger, LoggerSettings, "logger")
    try:
        registry.check_trainable(cfg.policy.kind, cfg.algo.name)
    except PolicyError as e:
        raise UserError(str(e)) from None
    trainer_class(cfg.algo.name, cfg.policy.kind).validate(cfg)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def config_difference(stored: dict, new: dict) -> str | None:
    """The first setting a resumed run may not change, as ``key: old -> new``; None when they agree."""
    a, b = _flatten(stored), _flatten(new)
    for key in sorted(set(a) | set(b)):
        if any(key == k or key.startswith(f"{k}.") for k in RESUME_MAY_CHANGE):
            continue
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            return f"{key}: {a.get(key, '<unset>')} -> {b.get(key, '<unset>')}"
    return None


def prepare(cfg: DictConfig, run: RunDir) -> bool:
    """Write the config into a fresh run directory, or check that an existing one can resume; True if resuming."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if run.finished:
        raise UserError(f"{run.path} holds a finished run (summary.json); start a new run directory")
    if run.resumable() is not None:
        difference = config_difference(run.read_config(), resolved)
        if difference:
            raise UserError(f"{run.path} was started with another config ({difference}); rerun it with its own "
                            "settings to resume, or start a new run directory")
    elif run.has_results():
        raise UserError(f"{run.path} holds a run's results but no resumable state (checkpoints/last); "
                        "start a new run directory")
    run.write_config(OmegaConf.to_yaml(cfg, resolve=True))
    return run.resumable() is not None


def train(cfg: DictConfig, run: RunDir | str | Path) -> dict:
    """Train as configured into ``run``; returns the summary (also written to summary.json)."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    validate(cfg)
    run.path.mkdir(parents=True, exist_ok=True)
    prepare(cfg, run)
    loggers = make_loggers(cfg, run.path)
    summary = trainer_class(cfg.algo.name, cfg.policy.kind)(cfg, run, loggers).learn()
    summary["run_dir"] = str(run.path)
    run.write_summary(summary)
    title = f"{cfg.policy.kind} + {cfg.algo.name} on {cfg.env.name} (seed {cfg.seed})"
    rows = run.metrics_rows()
    if rows and "eval_return_mean" in rows[0]:  # an RL run (BC plots its losses and success itself)
        plot_learning_curve(run.metrics_file, run.path / CURVE_FILE, title, reference_curves(cfg))
    for logger in loggers:
        logger.finish(summary)
    return summary


def _claimed_here(run: RunDir) -> bool:
    """Whether this invocation created ``run`` (its own directory, or a job's inside its own sweep directory)."""
    claimed = os.environ.get(CLAIMED_DIR_ENV)
    if not claimed:
        return False
    path, claimed = run.path.resolve(), Path(claimed).resolve()
    return path == claimed or path.parent == claimed


def resume_command(run: RunDir) -> str:
    task = [o for o in HydraConfig.get().overrides.task if not o.startswith("hydra.")]
    return shlex.join([sys.executable, "-m", "agents.train", *task, f"hydra.run.dir={run.path}"])


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
@report_user_errors
def main(cfg: DictConfig) -> dict:
    run = RunDir(HydraConfig.get().runtime.output_dir)
    try:
        summary = train(cfg, run)
    except (UserError, PolicyError):
        if _claimed_here(run) and not run.has_results():
            shutil.rmtree(run.path, ignore_errors=True)  # a config error found late leaves no empty run behind
        raise
    except TrainingStopped as e:
        print(f"{e}; {run.path}/checkpoints/last holds the state. Resume with:\n  {resume_command(run)}",
              file=sys.stderr, flush=True)
        sys.exit(e.exit_code)
    print(summary_line(summary, SUMMARY_KEYS), flush=True)
    return summary


def cli() -> None:
    run_hydra_cli("train", main, validate, claim_output=True)


if __name__ == "__main__":
    cli()
