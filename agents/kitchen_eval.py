"""Closed-loop success of a kitchen policy: per task and overall, with 95% confidence intervals.

Each task is run in its own episodes (the env config with ``task=<name>`` and the chosen
variation ``level``); seeds are ``EVAL_SEED_BASE + seed + 1000 * task index + episode``, so
every task and level sees the same start states whichever policy is evaluated. With
``workers > 1`` the episodes are spread over processes that each load the policy from its
checkpoint directory (rendering and inference are both CPU-bound and single-threaded); with
``batch > 1`` each process runs that many episodes side by side and queries the model once per
control step for all of them.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agents.rollout import EVAL_SEED_BASE, write_video
from agents.workers import die_with_parent
from policies.protocol import Policy

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial rate: sane at 0 % and 100 %, unlike the normal one."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class SuccessReport:
    level: str
    episodes: dict[str, list[bool]] = field(default_factory=dict)  # task -> success per episode
    lengths: dict[str, list[int]] = field(default_factory=dict)

    def rate(self, task: str) -> float:
        return float(np.mean(self.episodes[task]))

    @property
    def mean_success(self) -> float:
        """The mean over tasks of each task's success rate (every task weighs the same)."""
        return float(np.mean([self.rate(t) for t in self.episodes]))

    def interval(self, task: str | None = None) -> tuple[float, float]:
        """95 % interval of one task's rate, or of the pooled rate over all episodes."""
        outcomes = self.episodes[task] if task else [s for v in self.episodes.values() for s in v]
        return wilson_interval(int(np.sum(outcomes)), len(outcomes))

    def to_dict(self) -> dict:
        per_task = {t: {"success_rate": self.rate(t), "ci95": list(self.interval(t)), "episodes": len(v),
                        "mean_length": float(np.mean(self.lengths[t]))} for t, v in self.episodes.items()}
        return {"level": self.level, "success_rate": self.mean_success, "ci95": list(self.interval()),
                "episodes": sum(len(v) for v in self.episodes.values()), "tasks": per_task}

    def lines(self) -> list[str]:
        out = [f"level {self.level}: task success rates (95% Wilson interval)"]
        for t in self.episodes:
            lo, hi = self.interval(t)
            out.append(f"  {t:<14} {self.rate(t):6.1%}  [{lo:.1%}, {hi:.1%}]  n={len(self.episodes[t])}")
        lo, hi = self.interval()
        out.append(f"  {'overall':<14} {self.mean_success:6.1%}  [{lo:.1%}, {hi:.1%}]  "
                   f"n={sum(len(v) for v in self.episodes.values())}")
        return out


def episode_seed(seed: int, task_index: int, episode: int) -> int:
    return EVAL_SEED_BASE + seed + 1000 * task_index + episode


def run_episode(env, policy: Policy, seed: int, frames: list | None = None) -> tuple[bool, int]:
    """One episode; success is the env's ``is_success`` (every task of the episode done)."""
    obs, info = env.reset(seed=seed)
    policy.reset()
    steps, done = 0, False
    while not done:
        action = policy.act(obs)
        obs, _, terminated, truncated, info = env.step(action)
        steps += 1
        done = terminated or truncated
        if frames is not None:
            frames.append(env.render())
    return bool(info.get("is_success", False)), steps


def _run_jobs(policy: Policy, env_cfg: dict, level: str, seed: int, jobs: list[tuple[str, int, int]],
              video: str | None = None, done: Callable[[], None] | None = None) -> list[tuple[str, int, bool, int]]:
    from agents.builders import make_env

    out, envs_by_task = [], {}
    try:
        for n, (task, task_index, episode) in enumerate(jobs):
            if task not in envs_by_task:
                render = "rgb_array" if video and n == 0 else None
                envs_by_task[task] = make_env({**env_cfg, "task": task, "level": level}, render_mode=render)
            frames = [] if video and n == 0 else None
            success, steps = run_episode(envs_by_task[task], policy, episode_seed(seed, task_index, episode), frames)
            if frames is not None:
                write_video(frames, video, fps=int(envs_by_task[task].metadata.get("render_fps", 12)))
            out.append((task, episode, success, steps))
            if done:
                done()
    finally:
        for env in envs_by_task.values():
            env.close()
    return out


class _EnvPool:
    """Kitchen envs by task, reused across episodes; those of a task no pending job needs are closed."""

    def __init__(self, env_cfg: dict, level: str):
        self.env_cfg, self.level = env_cfg, level
        self.idle: dict[str, list] = {}

    def take(self, task: str):
        from agents.builders import make_env

        idle = self.idle.get(task)
        return idle.pop() if idle else make_env({**self.env_cfg, "task": task, "level": self.level})

    def give_back(self, task: str, env, still_needed: bool) -> None:
        if still_needed:
            self.idle.setdefault(task, []).append(env)
        else:
            env.close()

    def close(self) -> None:
        for envs in self.idle.values():
            for env in envs:
                env.close()
        self.idle.clear()


def _run_jobs_batched(policy: Policy, env_cfg: dict, level: str, seed: int, jobs: list[tuple[str, int, int]],
                      batch: int, done: Callable[[], None] | None = None) -> list[tuple[str, int, bool, int]]:
    """The episodes of ``jobs``, ``batch`` at a time, with one batched chunk query per control step.

    A finished episode's slot takes the next job at once, so the batch stays full until the queue
    runs dry. Each episode has its own env, seed and chunk scheduler: what a lone episode would see.
    """
    controller = policy.batched(batch)
    pending = list(reversed(jobs))  # pop() takes jobs in order
    unstarted = Counter(task for task, _, _ in jobs)  # an env of a task no unstarted job needs is closed at once
    pool = _EnvPool(env_cfg, level)
    running: dict[int, dict] = {}
    out = []

    def start(slot: int) -> None:
        task, task_index, episode = pending.pop()
        unstarted[task] -= 1
        env = pool.take(task)
        obs, _ = env.reset(seed=episode_seed(seed, task_index, episode))
        controller.reset(slot)
        running[slot] = {"job": (task, episode), "env": env, "obs": obs, "steps": 0}

    try:
        for slot in range(min(batch, len(pending))):
            start(slot)
        while running:
            actions = controller.act({slot: r["obs"] for slot, r in running.items()})
            for slot, action in actions.items():
                r = running[slot]
                r["obs"], _, terminated, truncated, info = r["env"].step(action)
                r["steps"] += 1
                if terminated or truncated:
                    task, episode = r["job"]
                    out.append((task, episode, bool(info.get("is_success", False)), r["steps"]))
                    if done:
                        done()
                    pool.give_back(task, r["env"], still_needed=unstarted[task] > 0)
                    del running[slot]
                    if pending:
                        start(slot)
    finally:
        for r in running.values():
            r["env"].close()
        pool.close()
    return out


def _load(policy_dir: str | Path, options: dict) -> Policy:
    from policies.registry import load_policy

    return load_policy(policy_dir, options=options)


def _worker(args) -> list[tuple[str, int, bool, int]]:
    policy_dir, options, env_cfg, level, seed, jobs, batch = args
    import torch

    torch.set_num_threads(1)
    policy = _load(policy_dir, options)
    if batch > 1:
        return _run_jobs_batched(policy, env_cfg, level, seed, jobs, batch)
    return _run_jobs(policy, env_cfg, level, seed, jobs)


def evaluate_success(env_cfg: dict, tasks: list[str], episodes: int, level: str = "L0", seed: int = 0,
                     policy: Policy | None = None, policy_dir: str | Path | None = None,
                     policy_options: dict | None = None, workers: int = 1, video: str | Path | None = None,
                     progress: Callable[[str], None] | None = None, batch: int = 1) -> SuccessReport:
    """Success of ``policy`` (in-process) or of the bundle in ``policy_dir`` (``workers`` processes).

    ``batch`` > 1 runs that many episodes side by side in each process through the policy's
    ``batched`` controller (one model call per control step where the policy supports it).
    ``env_cfg`` is the policy's env (its ``meta.env``): a state-only policy's renders no cameras.
    """
    if batch < 1:
        raise ValueError(f"batch must be positive, got {batch}")
    jobs = [(task, i, ep) for i, task in enumerate(tasks) for ep in range(episodes)]
    env_cfg = dict(env_cfg)
    results: list[tuple[str, int, bool, int]] = []
    if workers <= 1 or policy_dir is None:
        if policy is None:
            policy = _load(policy_dir, policy_options or {})
        count = [0]

        def done() -> None:
            count[0] += 1
            if progress:
                progress(f"{count[0]}/{len(jobs)} episodes")

        if batch > 1:
            results = _run_jobs_batched(policy, env_cfg, level, seed, jobs, batch, done)
            if video:  # the first episode again, alone, to film it
                _run_jobs(policy, env_cfg, level, seed, jobs[:1], str(video))
        else:
            results = _run_jobs(policy, env_cfg, level, seed, jobs, str(video) if video else None, done)
    else:
        chunks = [jobs[w::workers] for w in range(workers)]
        ctx = mp.get_context("forkserver")
        env = {**os.environ}
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        try:
            with ctx.Pool(workers, initializer=die_with_parent) as pool:
                args = [(str(policy_dir), policy_options or {}, env_cfg, level, seed, c, batch) for c in chunks if c]
                for part in pool.imap_unordered(_worker, args):
                    results += part
                    if progress:
                        progress(f"{len(results)}/{len(jobs)} episodes")
        finally:
            os.environ.clear()
            os.environ.update(env)
        if video:  # one more episode (the first one again), in-process, to film it
            _run_jobs(_load(policy_dir, policy_options or {}), env_cfg, level, seed, jobs[:1], str(video))
    report = SuccessReport(level=level)
    for task in tasks:
        mine = sorted((r for r in results if r[0] == task), key=lambda r: r[1])
        report.episodes[task] = [r[2] for r in mine]
        report.lengths[task] = [r[3] for r in mine]
    return report
