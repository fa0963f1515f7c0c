"""``python -m agents.collect env=kitchen task=<name|all> episodes=N [augment=K] [noise=0.05] [out=DIR]``.

Runs the env's scripted expert and writes successful demonstrations to a dataset directory in the
format of :mod:`agents.dataset` (compressed per-episode archives plus a manifest). Collection is
resumable: episode k of a task always uses the same seed, and episodes already on disk are
skipped, so rerunning the same command after an interruption finishes the job. Tasks are split
over ``workers`` processes. ``augment=K`` adds K re-rendered copies of every demonstration
(:mod:`agents.augment`), also resumably. The last line printed is
``episodes=... skipped=... augmented=... failed_attempts=... steps=... seconds=... dir=...``.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from agents.augment import augment_episode
from agents.dataset import TEXT_KEYS, DatasetError, DatasetWriter, Episode, episode_spec
from agents.errors import UserError, report_user_errors
from agents.overrides import run_hydra_cli
from agents.resources import PROCESS_BYTES, env_bytes, require
from agents.schema import check, check_env, setting, top_level
from agents.workers import die_with_parent

log = logging.getLogger(__name__)
SEED_STRIDE = 100_000  # seeds of task i: seed * 10^7 + i * 10^5 + k, far from evaluation seeds (10000+)


def episode_seed(seed: int, task_index: int, episode: int, attempt: int) -> int:
    return seed * 100 * SEED_STRIDE + task_index * SEED_STRIDE + episode * 10 + attempt


def record_episode(env, expert, seed: int, noise: float) -> Episode:
    """One expert episode from ``reset(seed)`` until the expert's plan is played out or the time limit.

    The env must not end episodes at the success threshold (``terminate_on_success=False``): a
    demonstration that stops with the kettle in the air teaches a policy to stop there too.
    """
    obs, info = env.reset(seed=seed)
    expert.reset(seed=seed)
    data = env.unwrapped.data
    frames = {k: [v] for k, v in obs.items() if k not in TEXT_KEYS}  # the instruction is an episode scalar
    qpos = [data.qpos.copy()]
    actions, rewards, success = [], [], []
    done = False
    while not done:  # the whole demonstration: the expert releases and retreats after the success threshold
        action = expert.act(obs)
        obs, reward, terminated, truncated, info = env.step(action)
        terminated = terminated or expert.done
        for k in frames:
            frames[k].append(obs[k])
        qpos.append(data.qpos.copy())
        actions.append(action)
        rewards.append(reward)
        success.append(info["is_success"])
        done = terminated or truncated
    unwrapped = env.unwrapped
    return Episode(
        actions=np.asarray(actions, dtype=np.float32), obs={k: np.stack(v) for k, v in frames.items()},
        qpos=np.stack(qpos), rewards=np.asarray(rewards, dtype=np.float32), success=np.asarray(success, dtype=bool), seed=seed,
        task=info["task"], instruction=info["instruction"], paraphrase=int(unwrapped.episode_paraphrase),
        expert_noise=noise,
    )


def collect_task(job: dict) -> dict:
    """Collect ``episodes`` successful demonstrations of one task (in a worker process)."""
    import envs
    from envs.kitchen.experts import make_expert

    env = envs.make_from_config({**job["env"], "task": job["task"], "terminate_on_success": False})
    spec = episode_spec(env.observation_space, int(np.prod(env.action_space.shape)), env.unwrapped.model.nq)
    try:
        writer = DatasetWriter(job["out"], job["env_signature"], spec, list(job["env"].get("cameras", [])))
    except DatasetError as e:
        raise UserError(str(e)) from None
    expert = make_expert(env.unwrapped, noise=job["noise"])
    stats = {"task": job["task"], "written": 0, "skipped": 0, "failed_attempts": 0, "steps": 0, "augmented": 0}
    bar = tqdm(total=job["episodes"], desc=job["task"], unit="demo", position=job["task_index"], leave=False,
               disable=not sys.stderr.isatty())
    for k in range(job["episodes"]):
        bar.update(1)
        if writer.has(job["task"], k):
            stats["skipped"] += 1
            episode = writer.read(job["task"], k) if job["augment"] else None
        else:
            for attempt in range(job["max_attempts"]):
                episode = record_episode(env, expert, episode_seed(job["seed"], job["task_index"], k, attempt),
                                         job["noise"])
                if episode.episode_success:
                    writer.write(job["task"], k, episode)
                    stats["written"] += 1
                    stats["steps"] += episode.length
                    break
                stats["failed_attempts"] += 1
            else:
                raise UserError(f"the {job['task']} expert failed {job['max_attempts']} attempts at episode {k} "
                                f"(noise={job['noise']}); lower noise or raise max_attempts")
        if job["augment"]:
            stats["augmented"] += augment_episode(env, writer, job["task"], k, episode, job["augment"])
    env.close()
    bar.close()
    return stats


@dataclass
class CollectSettings:
    """The top-level keys of configs/collect.yaml."""

    task: str = "all"  # a kitchen task, or all
    episodes: int = setting(50, low=1, high=100_000)  # successful demonstrations per task
    augment: int = setting(0, low=0, high=100)  # re-rendered copies per demonstration
    noise: float = setting(0.0, low=0.0, high=1.0)  # std of the noise on the expert's actions
    seed: int = setting(0, low=0, high=2**31 - 1)
    max_attempts: int = setting(3, low=1, high=100)
    workers: int = setting(2, low=1, high=256)
    out: str | None = None  # dataset directory


def validate(cfg: DictConfig) -> None:
    check(top_level(cfg), CollectSettings, "")
    check_env(cfg.env)


def collect(cfg: DictConfig) -> dict:
    validate(cfg)
    if cfg.env.name != "kitchen":
        raise UserError(f"agents.collect has scripted experts for env=kitchen only, not {cfg.env.name}")
    if cfg.augment and not cfg.env.get("cameras"):
        raise UserError("augment=K re-renders the cameras; it needs env.cameras (e.g. [scene, wrist])")
    from envs.kitchen.env import TASKS

    tasks = list(TASKS) if cfg.task == "all" else [cfg.task]
    if tasks[0] not in TASKS:
        raise UserError(f"unknown task {cfg.task!r}; choose all or one of: {', '.join(TASKS)}")
    env_cfg = OmegaConf.to_container(cfg.env, resolve=True)
    out = Path(cfg.out or f"datasets/{cfg.env.name}_{cfg.task}").expanduser().absolute()
    signature = {k: v for k, v in env_cfg.items() if k != "task"}  # one dataset holds every task
    jobs = [{"env": env_cfg, "env_signature": signature, "task": t, "task_index": TASKS.index(t), "out": str(out),
             "episodes": int(cfg.episodes), "noise": float(cfg.noise), "seed": int(cfg.seed),
             "max_attempts": int(cfg.max_attempts), "augment": int(cfg.augment)} for t in tasks]
    workers = min(int(cfg.workers), len(jobs))
    require({"workers": workers * (PROCESS_BYTES * (workers > 1) + env_bytes(env_cfg["id"]))})
    t0 = time.time()
    if int(cfg.workers) > 1 and len(jobs) > 1:
        # A multiprocessing pool, not an executor: leaving the block on an error or Ctrl-C terminates the
        # workers at once instead of waiting for their tasks; die_with_parent covers SIGKILL and SIGTERM.
        with mp.get_context("fork").Pool(min(int(cfg.workers), len(jobs)), initializer=die_with_parent) as pool:
            results = pool.map(collect_task, jobs)
    else:
        results = [collect_task(job) for job in jobs]
    seconds = time.time() - t0
    for r in results:
        log.info("%s: %d written, %d already there, %d failed attempts", r["task"], r["written"], r["skipped"],
                 r["failed_attempts"])
    return {"episodes": sum(r["written"] for r in results), "skipped": sum(r["skipped"] for r in results),
            "augmented": sum(r["augmented"] for r in results),
            "failed_attempts": sum(r["failed_attempts"] for r in results), "steps": sum(r["steps"] for r in results),
            "seconds": round(seconds, 1), "dir": str(out)}


@hydra.main(config_path="../configs", config_name="collect", version_base="1.3")
@report_user_errors
def main(cfg: DictConfig) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    summary = collect(cfg)
    print(" ".join(f"{k}={v}" for k, v in summary.items()), flush=True)
    return summary


def cli() -> None:
    run_hydra_cli("collect", main, validate)


if __name__ == "__main__":
    cli()
