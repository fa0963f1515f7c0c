"""``python -m agents.train env=swimmer policy=ncap [algo=ppo] [logger=wandb] [-m seed=0,1,2]``.

Composes the Hydra config, trains, and leaves a run directory (Hydra's output dir) with the
resolved ``config.yaml``, ``checkpoints/`` (periodic and ``final``), ``metrics.csv``, a
``learning_curve.png`` and ``summary.json``; the last line printed is a ``key=value`` summary.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from agents import run_dir as rd
from agents.errors import UserError, report_user_errors
from agents.loggers import make_loggers
from agents.overrides import require_ints, run_hydra_cli

SB3_ALGOS = ("ppo", "sac")
POPULATION_ALGOS = {"grpo": ("agents.grpo", "GRPOTrainer"), "es": ("agents.es", "ESTrainer")}
SUMMARY_KEYS = ["return_mean", "return_std", "success_rate", "val_l1", "steps", "params", "train_time_s", "run_dir"]
BENCHMARK_JSON = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "swimmer_ncap.json"


def reference_curves(cfg: DictConfig) -> dict:
    """Benchmark curves measured under the same env config, drawn beside this run's curve."""
    if not BENCHMARK_JSON.is_file():
        return {}
    try:
        refs = json.loads(BENCHMARK_JSON.read_text()).get("reference_curves", {})
    except (json.JSONDecodeError, OSError):
        return {}
    key = f"{cfg.env.name}:{cfg.env.get('task', '')}:{cfg.env.get('n_links', '')}:{cfg.env.get('fluid_density', '')}"
    return {label: [tuple(p) for p in curve] for label, curve in refs.get(key, {}).items()}


def validate(cfg: DictConfig) -> None:
    require_ints(cfg, ["seed"], minimum=0)
    if cfg.algo.name == "bc":
        require_ints(cfg, ["algo.total_steps", "algo.batch_size", "algo.eval_every", "algo.demos_per_task", "threads",
                           "algo.eval_workers", "algo.eval_batch"], minimum=1)
        require_ints(cfg, ["algo.augmentations", "algo.eval_episodes", "algo.final_eval_episodes", "algo.log_every",
                           "algo.warmup_steps", "algo.image_shift"], minimum=0)
        from agents.bc import check_precision

        check_precision(str(cfg.algo.precision))
        return
    require_ints(cfg, ["algo.total_timesteps", "algo.eval_every", "threads", "algo.eval_episodes",
                       "algo.final_eval_episodes"], minimum=1)
    require_ints(cfg, ["algo.checkpoint_every"], minimum=0)
    if cfg.algo.name in SB3_ALGOS:
        require_ints(cfg, ["algo.n_envs"], minimum=1)
    elif cfg.algo.name in POPULATION_ALGOS:
        require_ints(cfg, ["algo.workers"], minimum=1)
        require_ints(cfg, ["algo.horizon"], minimum=0)


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Train as configured into ``run_dir``; returns the summary (also written to summary.json)."""
    validate(cfg)
    if cfg.policy.kind == "mtact" and cfg.algo.name != "bc":
        raise UserError("policy mtact is trained by behaviour cloning: algo=bc dataset=<dir>")
    if cfg.policy.kind == "pid":
        raise UserError("policy pid is a scripted controller with nothing to train; evaluate it with "
                        f"python -m agents.evaluate env={cfg.env.name} policy=pid")
    run_dir.mkdir(parents=True, exist_ok=True)
    rd.write_config(run_dir, cfg)
    loggers = make_loggers(cfg, run_dir)
    if cfg.algo.name in SB3_ALGOS:
        from agents.sb3_trainer import train_sb3

        summary = train_sb3(cfg, run_dir, loggers)
    elif cfg.algo.name == "bc":
        from agents.bc import BCTrainer

        summary = BCTrainer(cfg, run_dir, loggers).train()
    elif cfg.algo.name in POPULATION_ALGOS:
        import importlib

        module, cls = POPULATION_ALGOS[cfg.algo.name]
        summary = getattr(importlib.import_module(module), cls)(cfg, run_dir, loggers).train()
    else:
        raise UserError(f"algo {cfg.algo.name!r} has no trainer (have: {', '.join([*SB3_ALGOS, *POPULATION_ALGOS, 'bc'])})")
    summary["run_dir"] = str(run_dir)
    rd.write_summary(run_dir, summary)
    title = f"{cfg.policy.kind} + {cfg.algo.name} on {cfg.env.name} (seed {cfg.seed})"
    if cfg.algo.name != "bc":  # BC plots losses and success itself (agents/bc.py)
        rd.plot_learning_curve(run_dir, title, reference_curves(cfg))
    for logger in loggers:
        logger.finish(summary)
    return summary


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
@report_user_errors
def main(cfg: DictConfig) -> dict:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    summary = train(cfg, run_dir)
    print(rd.summary_line(summary, SUMMARY_KEYS), flush=True)
    return summary


def cli() -> None:
    run_hydra_cli("train", main, validate)


if __name__ == "__main__":
    cli()
