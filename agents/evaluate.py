"""``python -m agents.evaluate run=<run dir> episodes=N`` or ``env=swimmer policy=ncap episodes=N``.

``env=uav_hover policy=pid`` evaluates the cascaded PID (a scripted controller, no run needed).

With ``run=`` the run's own env config is used, then any ``env.*`` override on the command line
(e.g. ``env.fluid_density=6000`` for robustness, ``env.n_links=10`` for a shared NCAP's
zero-shot transfer). Without ``run=`` the untrained policy is evaluated. ``video=true`` writes
an MP4 of the first episode. The last line printed is ``return_mean=... return_std=...``.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from agents import run_dir as rd
from agents.builders import actor_config, env_signature, make_env, observation_layout
from agents.errors import UserError, report_user_errors
from agents.overrides import require_ints, run_hydra_cli
from agents.rollout import EVAL_SEED_BASE, run_episodes
from policies.checkpoint import CheckpointError, InferencePolicy, PolicyMeta, load_policy
from policies.pid import CascadedPID, pid_for_env
from policies.registry import build_actor


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


def run_env_config(run: Path) -> dict:
    config = run / rd.CONFIG_FILE
    if not config.is_file():
        raise UserError(f"{run} is not a run directory (no {rd.CONFIG_FILE})")
    try:
        return OmegaConf.to_container(OmegaConf.load(config).env, resolve=True)
    except Exception as e:  # noqa: BLE001 - any parse problem is the user's file
        raise UserError(f"cannot read {config}: {' '.join(str(e).split())[:200]}") from None


def resolve_checkpoint(run: Path, name: str) -> Path:
    path = rd.checkpoint_dir(run, name)
    if not path.is_dir():
        have = sorted(p.name for p in (run / rd.CHECKPOINTS).glob("*") if p.is_dir() and not p.name.startswith("."))
        raise UserError(f"no checkpoint {name!r} in {run} (have: {', '.join(have) or 'none'})")
    return path


def policy_from_run(cfg: DictConfig) -> tuple[InferencePolicy, dict]:
    run = Path(cfg.run).expanduser()
    if not run.is_dir():
        raise UserError(f"run directory {run} does not exist")
    env_cfg = run_env_config(run)
    chosen = _env_group_choice()
    if chosen is not None and chosen != env_cfg.get("name"):
        raise UserError(f"run {run} was trained on env '{env_cfg.get('name')}', not '{chosen}'")
    for key in _cli_env_keys():
        env_cfg[key] = cfg.env.get(key)  # already parsed and typed by Hydra
    env = make_env(env_cfg)
    obs_dim, action_dim, _, _ = env_signature(env)
    policy = load_policy(resolve_checkpoint(run, cfg.checkpoint), obs_dim, action_dim, observation_layout(env))
    env.close()
    return policy, env_cfg


def untrained_policy(cfg: DictConfig) -> tuple[InferencePolicy, dict]:
    env_cfg = OmegaConf.to_container(cfg.env, resolve=True)
    env = make_env(env_cfg)
    obs_dim, _, low, high = env_signature(env)
    actor_cfg = actor_config(cfg.policy, env)
    env.close()
    torch.manual_seed(int(cfg.seed))
    meta = PolicyMeta(kind=cfg.policy.kind, actor_config=actor_cfg, obs_dim=obs_dim, action_low=low,
                      action_high=high, env=env_cfg)
    try:
        actor = build_actor(cfg.policy.kind, actor_cfg)
    except ValueError as e:
        raise UserError(str(e)) from None
    # An untrained MLP has no observation statistics: it sees raw observations.
    return InferencePolicy(actor.eval(), meta, None, None), env_cfg


def pid_policy(cfg: DictConfig) -> tuple[CascadedPID, dict]:
    env_cfg = OmegaConf.to_container(cfg.env, resolve=True)
    env = make_env(env_cfg)
    try:
        gains = cfg.policy.get("gains")
        controller = pid_for_env(env, OmegaConf.to_container(gains, resolve=True) if gains else None)
    except ValueError as e:
        raise UserError(str(e)) from None
    finally:
        env.close()
    return controller, env_cfg


def validate(cfg: DictConfig) -> None:
    require_ints(cfg, ["episodes", "workers", "threads", "batch"], minimum=1)
    require_ints(cfg, ["seed"], minimum=0)


def evaluate_chunk_policy(cfg: DictConfig, policy_dir: Path) -> dict:
    """Success rates of a kitchen MT-ACT run, per task and overall, at ``level``."""
    from agents.kitchen_eval import evaluate_success
    from envs.kitchen.variation import LEVELS
    from policies.mtact import read_mtact_meta

    if cfg.level not in LEVELS:
        raise UserError(f"level must be one of {', '.join(LEVELS)}, not {cfg.level!r}")
    try:
        _, meta = read_mtact_meta(policy_dir)  # the weights are loaded where the episodes run
    except CheckpointError as e:
        raise UserError(str(e)) from None
    options = dict(meta.get("inference", {}))
    if cfg.schedule:
        options["schedule"] = str(cfg.schedule)
    tasks = list(cfg.tasks) if cfg.tasks else list(meta["tasks"])
    unknown = [t for t in tasks if t not in meta["tasks"]]
    if unknown:
        raise UserError(f"the policy was not trained on {', '.join(unknown)} (has: {', '.join(meta['tasks'])})")
    env_cfg = dict(meta["env"])
    for key in _cli_env_keys():
        env_cfg[key] = cfg.env.get(key)
    video = None
    if cfg.video:
        video = Path(cfg.video_path or Path(cfg.run) / "episode.mp4")
    report = evaluate_success(env_cfg, tasks, int(cfg.episodes), level=str(cfg.level), seed=int(cfg.seed),
                              policy_dir=policy_dir, policy_options=options, workers=int(cfg.workers), video=video,
                              batch=int(cfg.batch))
    for line in report.lines():
        print(line, flush=True)
    lo, hi = report.interval()
    return {"env": env_cfg.get("name"), "policy": "mtact", "run": str(cfg.run), "level": report.level,
            "schedule": options.get("schedule"), "batch": int(cfg.batch), "video": str(video) if video else None,
            **report.to_dict(),
            "ci95_low": lo, "ci95_high": hi}


def evaluate(cfg: DictConfig) -> dict:
    validate(cfg)
    torch.set_num_threads(int(cfg.threads))  # worker processes set one thread each themselves
    if cfg.run:
        from policies.mtact import is_mtact_dir

        run = Path(cfg.run).expanduser()
        if run.is_dir() and (run / rd.CHECKPOINTS).is_dir():
            checkpoint = resolve_checkpoint(run, cfg.checkpoint)
            if is_mtact_dir(checkpoint):
                return evaluate_chunk_policy(cfg, checkpoint)
        policy, env_cfg = policy_from_run(cfg)
    elif cfg.policy.kind == "mtact":
        raise UserError("an untrained MT-ACT has nothing to show; train one (algo=bc dataset=<dir>) and pass run=<dir>")
    elif cfg.policy.kind == "pid":
        policy, env_cfg = pid_policy(cfg)
    else:
        policy, env_cfg = untrained_policy(cfg)
    kind = "pid" if isinstance(policy, CascadedPID) else policy.meta.kind
    video = None
    if cfg.video:
        video = Path(cfg.video_path or (Path(cfg.run) / "episode.mp4" if cfg.run else "episode.mp4"))
    env = make_env(env_cfg, render_mode="rgb_array" if video else None)
    try:
        result = run_episodes(env, policy.act, int(cfg.episodes), seed=EVAL_SEED_BASE + int(cfg.seed), video=video,
                              reset=getattr(policy, "reset", None))
    except Exception as e:
        if video is not None and ("GL" in type(e).__name__ or "gl" in str(e).lower() or "display" in str(e).lower()):
            raise UserError(f"video needs an OpenGL backend ({e}); on Debian: apt-get install libosmesa6") from None
        raise
    finally:
        env.close()
    summary = {
        "env": env_cfg.get("name"),
        "policy": kind,
        "run": str(cfg.run) if cfg.run else None,
        "episodes": len(result.returns),
        "returns": result.returns,
        **result.metric_means(),
        "video": str(video) if video else None,
        "return_mean": result.return_mean,
        "return_std": result.return_std,
    }
    return summary


@hydra.main(config_path="../configs", config_name="evaluate", version_base="1.3")
@report_user_errors
def main(cfg: DictConfig) -> dict:
    summary = evaluate(cfg)
    if "success_rate" in summary:  # a kitchen chunk policy
        print(json.dumps(summary, default=str))
        print(rd.summary_line(summary, ["success_rate", "ci95_low", "ci95_high", "episodes", "level"]), flush=True)
        return summary
    metrics = {k: v for k, v in summary.items() if k not in ("returns", "return_mean", "return_std")}
    print(json.dumps(metrics, default=str))
    print(rd.summary_line(summary, ["return_mean", "return_std"]), flush=True)
    return summary


def cli() -> None:
    run_hydra_cli("evaluate", main, validate)


if __name__ == "__main__":
    cli()
