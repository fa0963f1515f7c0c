"""``python -m agents.evaluate run=<run dir> episodes=N`` or ``env=swimmer policy=ncap episodes=N``.

With ``run=`` the run's policy is loaded (``checkpoint``, default ``final``) on the env it was
trained on, changed by any ``env.*`` override on the command line (e.g. ``env.fluid_density=6000``
for robustness, ``env.n_links=10`` for a shared NCAP's zero-shot transfer). Without ``run=`` the
policy config's untrained (or scripted: ``policy=pid``) policy is evaluated on the configured env.
``video=true`` writes an MP4 of the first episode. The last line printed is
``return_mean=... return_std=...``; on the kitchen, success rates per task at ``level``
(``success_rate=... ci95_low=...``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

import envs
from agents.builders import env_config, make_env
from agents.errors import UserError, report_user_errors
from agents.overrides import run_hydra_cli
from agents.reporting import summary_line
from agents.resources import PROCESS_BYTES, env_bytes, require
from agents.rollout import EVAL_SEED_BASE, run_episodes
from agents.schema import check, check_env, check_policy, setting, top_level
from envs.kitchen.variation import LEVELS
from policies import registry
from policies.bundle import read_meta
from policies.protocol import EnvInterface, Policy
from policies.run_dir import RunDir


def _cli_env_keys() -> list[str]:
    """Keys of the ``env.<key>=value`` overrides on the command line (applied on top of a run's env)."""
    keys = (item.lstrip("+").partition("=")[0] for item in HydraConfig.get().overrides.task)
    return [key[4:] for key in keys if key.startswith("env.")]


def _env_group_choice() -> str | None:
    for item in HydraConfig.get().overrides.task:
        key, _, value = item.partition("=")
        if key == "env":
            return value
    return None


def load(cfg: DictConfig) -> tuple[Policy, dict]:
    """(the policy to evaluate, the env config to evaluate it on)."""
    options = {"schedule": cfg.schedule}
    if cfg.run:
        bundle = RunDir.find_policy(cfg.run, str(cfg.checkpoint))
        meta = read_meta(bundle)
        env_cfg = dict(meta.env)
        chosen = _env_group_choice()
        elsewhere = chosen is not None and chosen != env_cfg.get("name")
        if elsewhere and registry.get(meta.kind).reembody is None:
            raise UserError(f"run {cfg.run} was trained on env '{env_cfg.get('name')}', not '{chosen}'")
        if elsewhere:  # a brain trained for several embodiments, in another one's env (with its overrides)
            env_cfg = env_config(cfg.env)
        for key in _cli_env_keys():
            env_cfg[key] = OmegaConf.to_container(cfg.env, resolve=True).get(key)  # parsed and typed by Hydra
        probe = make_env(env_cfg)  # never reset: nothing is rendered
        try:
            interface = EnvInterface.of(probe)
        finally:
            probe.close()
        return registry.load_policy(bundle, interface, options, env_config=env_cfg if elsewhere else None), env_cfg
    env_cfg = env_config(cfg.env)
    env = make_env(env_cfg)
    torch.manual_seed(int(cfg.seed))
    try:
        if any(v for v in options.values()):
            raise UserError("schedule applies to a trained run (run=<dir>)")
        return registry.initial_policy(OmegaConf.to_container(cfg.policy, resolve=True), env, env_cfg), env_cfg
    finally:
        env.close()


@dataclass
class EvaluateSettings:
    """The top-level keys of configs/evaluate.yaml."""

    run: str | None = None  # a run directory (or a policy bundle); null: the untrained or scripted policy
    checkpoint: str = "final"
    episodes: int = setting(10, low=1, high=1_000_000)
    seed: int = setting(0, low=0, high=2**31 - 1)
    video: bool = False
    video_path: str | None = None
    level: str = setting("L0", choices=LEVELS)  # the kitchen's variation level
    tasks: list[str] | None = None
    workers: int = setting(1, low=1, high=256)
    batch: int = setting(8, low=1, high=256)
    threads: int = setting(1, low=1, high=256)
    schedule: str | None = None  # MT-ACT's chunk execution; null: as trained
    # A spatial brain's question answering instead of episodes: a QA source (agents.brain_trainer.QA_SOURCES)
    qa: str | None = setting(None, choices=(None, "generic", "uav", "swimmer", "kitchen"))
    qa_split: str = setting("held_out", choices=("held_out", "seen"))  # question templates held out of training, or not
    qa_scenes: int = setting(200, low=1, high=10**6)  # scenes asked (8 questions each), generated once into data_dir
    data_dir: str = "data/brain"  # where QA data are generated and cached (the brain stages' algo.data_dir)


def validate(cfg: DictConfig) -> None:
    check(top_level(cfg), EvaluateSettings, "")
    check_env(cfg.env)
    check_policy(cfg.policy)


def _video_path(cfg: DictConfig) -> Path | None:
    if not cfg.video:
        return None
    video = Path(cfg.video_path or (Path(cfg.run) / "episode.mp4" if cfg.run else "episode.mp4"))
    if not video.parent.is_dir():
        raise UserError(f"video_path {video}: directory {video.parent} does not exist")
    return video


def evaluate_tasks(cfg: DictConfig, policy: Policy, env_cfg: dict, video: Path | None) -> dict:
    """Success rates per task, and overall, at ``level`` (the kitchen's protocol)."""
    from agents.kitchen_eval import evaluate_success

    trained = list(policy.meta.extra.get("tasks") or [])
    tasks = list(cfg.tasks) if cfg.tasks else trained
    unknown = [t for t in tasks if trained and t not in trained]
    if unknown:
        raise UserError(f"the policy was not trained on {', '.join(unknown)} (has: {', '.join(trained)})")
    options = {"schedule": cfg.schedule} if cfg.schedule else {}
    workers, batch = int(cfg.workers), int(cfg.batch)
    require({"workers x batch": workers * (PROCESS_BYTES * (workers > 1) + batch * env_bytes(env_cfg["id"]))})
    policy_dir = RunDir.find_policy(cfg.run, str(cfg.checkpoint)) if cfg.run else None
    with tqdm(total=len(tasks) * int(cfg.episodes), unit="episode", disable=not sys.stderr.isatty()) as bar:

        def progress(text: str) -> None:
            bar.n = int(text.split("/")[0])
            bar.refresh()

        report = evaluate_success(env_cfg, tasks, int(cfg.episodes), level=str(cfg.level), seed=int(cfg.seed),
                                  policy=policy if workers <= 1 else None, policy_dir=policy_dir,
                                  policy_options=options, workers=workers, video=video, batch=batch,
                                  progress=progress)
    for line in report.lines():
        print(line, flush=True)
    lo, hi = report.interval()
    return {"env": env_cfg.get("name"), "policy": policy.meta.kind, "run": str(cfg.run), "level": report.level,
            "schedule": cfg.schedule, "batch": int(cfg.batch), "video": str(video) if video else None,
            **report.to_dict(), "ci95_low": lo, "ci95_high": hi}


def evaluate_qa(cfg: DictConfig, policy: Policy) -> dict:
    """A spatial brain's accuracy on one source's spatial questions (the brain stages' datasets and seeds)."""
    from agents.brain_trainer import qa_accuracy, qa_dataset

    if not registry.get(policy.meta.kind).answers_questions:
        raise UserError(f"qa={cfg.qa}: only a spatial brain answers questions, this run is a {policy.meta.kind}")
    data = qa_dataset(Path(str(cfg.data_dir)), str(cfg.qa), int(cfg.qa_scenes), str(cfg.qa_split))
    accuracy = qa_accuracy(policy.brain, str(cfg.qa), data, limit=len(data))
    return {"run": str(cfg.run), "qa_source": str(cfg.qa), "qa_split": str(cfg.qa_split), "questions": len(data),
            "qa_accuracy": accuracy}


def evaluate(cfg: DictConfig) -> dict:
    validate(cfg)
    torch.set_num_threads(int(cfg.threads))  # worker processes set one thread each themselves
    video = _video_path(cfg)
    policy, env_cfg = load(cfg)
    if cfg.qa:
        return evaluate_qa(cfg, policy)
    if env_cfg.get("id") == envs.KITCHEN:
        return evaluate_tasks(cfg, policy, env_cfg, video)
    env = make_env(env_cfg, render_mode="rgb_array" if video else None)
    try:
        result = run_episodes(env, policy, int(cfg.episodes), seed=EVAL_SEED_BASE + int(cfg.seed), video=video)
    except Exception as e:
        if video is not None and ("GL" in type(e).__name__ or "gl" in str(e).lower() or "display" in str(e).lower()):
            raise UserError(f"video needs an OpenGL backend ({e}); on Debian: apt-get install libosmesa6") from None
        raise
    finally:
        env.close()
    return {
        "env": env_cfg.get("name"),
        "policy": policy.meta.kind,
        "run": str(cfg.run) if cfg.run else None,
        "episodes": len(result.returns),
        "returns": result.returns,
        **result.metric_means(),
        "video": str(video) if video else None,
        "return_mean": result.return_mean,
        "return_std": result.return_std,
    }


@hydra.main(config_path="../configs", config_name="evaluate", version_base="1.3")
@report_user_errors
def main(cfg: DictConfig) -> dict:
    summary = evaluate(cfg)
    if "qa_accuracy" in summary:
        print(summary_line(summary, ["qa_accuracy", "questions", "qa_source", "qa_split"]), flush=True)
        return summary
    if "success_rate" in summary:  # the per-task protocol
        print(json.dumps(summary, default=str))
        print(summary_line(summary, ["success_rate", "ci95_low", "ci95_high", "episodes", "level"]), flush=True)
        return summary
    metrics = {k: v for k, v in summary.items() if k not in ("returns", "return_mean", "return_std")}
    print(json.dumps(metrics, default=str))
    print(summary_line(summary, ["return_mean", "return_std"]), flush=True)
    return summary


def cli() -> None:
    run_hydra_cli("evaluate", main, validate)


if __name__ == "__main__":
    cli()
