"""Many env instances stepped in lock-step, with the policy evaluated once per step for the batch.

Population methods (GRPO, ES) need thousands of short rollouts from chosen start states. SB3's
collection steps a few envs one by one and runs actor and critic per step; here N envs advance
together, one batched policy call per control step, and the envs' physics is split over worker
threads (MuJoCo releases the GIL inside ``mj_step``, so one chunk integrates while another runs
Python). An env class may step a whole batch itself (``step_batch``: the swimmer integrates per
env and computes observations and rewards for the batch in a few numpy operations); others are
stepped one ``step()`` call at a time. Each env is the project's own env class, so rewards,
terminations and observations are exactly those of ``gym.make`` (checked by the tests); the
speed, against SB3 and the physics ceiling, is measured in ``benchmarks/population.py``.

MuJoCo's multi-threaded ``rollout`` runs open-loop control sequences only; no project policy is
open-loop between control steps, so it serves as the benchmark's physics ceiling here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from agents.builders import make_env
from agents.errors import UserError
from envs.snapshot import EnvSnapshot, restore_snapshot, take_snapshot


@dataclass
class RolloutBatch:
    """Time-major rollouts of N envs: step t of env i happened iff ``alive[t, i]``."""

    obs: np.ndarray  # (T, N, obs_dim): the observation each action was taken from
    actions: np.ndarray  # (T, N, action_dim): as sampled (before clipping to the bounds)
    rewards: np.ndarray  # (T, N)
    alive: np.ndarray  # (T, N) bool
    final_obs: np.ndarray  # (N, obs_dim): the observation after each env's last step

    @property
    def returns(self) -> np.ndarray:
        return (self.rewards * self.alive).sum(axis=0)

    @property
    def lengths(self) -> np.ndarray:
        return self.alive.sum(axis=0)

    @property
    def env_steps(self) -> int:
        return int(self.alive.sum())


class BatchedEnvs:
    """``n_envs`` copies of one env config; ``workers`` threads step them."""

    def __init__(self, env_cfg, n_envs: int, workers: int = 2):
        if n_envs < 1 or workers < 1:
            raise ValueError(f"need n_envs >= 1 and workers >= 1, got {n_envs} and {workers}")
        wrapped = [make_env(env_cfg) for _ in range(n_envs)]
        self.max_episode_steps = wrapped[0].spec.max_episode_steps if wrapped[0].spec else None
        self.envs = [e.unwrapped for e in wrapped]  # gym.make's wrappers add checks and the time limit (kept below)
        core = self.envs[0]
        if not (hasattr(core, "task_state") and hasattr(core, "step_count")):
            raise UserError(f"env {env_cfg['name']!r} ({env_cfg['id']}) cannot be snapshotted, which batched rollouts "
                            "need; use a project env (swimmer, swimmer_navigate, uav_hover, uav_waypoints)")
        if core.observation_space != wrapped[0].observation_space:
            raise UserError(f"env {env_cfg['name']!r} wraps its observations; batched rollouts step the bare env")
        space = self.envs[0].action_space
        self.obs_dim = int(np.prod(self.envs[0].observation_space.shape))
        self.action_dim = int(np.prod(space.shape))
        self.low, self.high = space.low.astype(np.float64), space.high.astype(np.float64)
        self.workers = min(workers, n_envs)
        self._pool = ThreadPoolExecutor(self.workers) if self.workers > 1 else None
        self.env_seconds = 0.0  # wall time inside env steps (the rest of a rollout is the policy)

    @property
    def n_envs(self) -> int:
        return len(self.envs)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        for env in self.envs:
            env.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- start states ------------------------------------------------------------------------
    def reset(self, seeds: Sequence[int]) -> np.ndarray:
        """Reset env i with ``seeds[i]``; returns the (N, obs_dim) observations."""
        if len(seeds) != self.n_envs:
            raise ValueError(f"{len(seeds)} seeds for {self.n_envs} envs")
        return np.stack([env.reset(seed=int(s))[0] for env, s in zip(self.envs, seeds)])

    def snapshot(self, i: int, obs: np.ndarray) -> EnvSnapshot:
        return take_snapshot(self.envs[i], obs)

    def restore(self, snapshots: Sequence[EnvSnapshot]) -> np.ndarray:
        """Env i continues from ``snapshots[i]`` (members of a group share one); returns the observations."""
        if len(snapshots) != self.n_envs:
            raise ValueError(f"{len(snapshots)} snapshots for {self.n_envs} envs")
        if any(snap.obs is None for snap in snapshots):
            raise ValueError("restore() needs snapshots taken with their observation (snapshot(i, obs))")
        for env, snap in zip(self.envs, snapshots):
            restore_snapshot(env, snap)
        return np.stack([snap.obs for snap in snapshots])

    # --- stepping ----------------------------------------------------------------------------
    def _step_chunk(self, idx: np.ndarray, actions: np.ndarray, out: dict) -> None:
        limit = self.max_episode_steps
        for i in idx:
            env = self.envs[i]
            obs, reward, terminated, truncated, _ = env.step(actions[i])
            out["obs"][i] = obs
            out["reward"][i] = reward
            out["done"][i] = terminated or truncated or (limit is not None and env.step_count >= limit)

    def step(self, actions: np.ndarray, active: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Step the ``active`` envs with their (clipped) actions: (obs, rewards, done) for all N."""
        t0 = time.perf_counter()
        actions = np.clip(actions, self.low, self.high)
        out = {
            "obs": np.zeros((self.n_envs, self.obs_dim)),
            "reward": np.zeros(self.n_envs),
            "done": np.zeros(self.n_envs, dtype=bool),
        }
        idx = np.flatnonzero(active)
        batch_step = getattr(type(self.envs[0]), "step_batch", None)
        if batch_step is not None and len(idx):  # the env steps a batch itself (physics per env, the rest vectorised)
            envs = [self.envs[i] for i in idx]
            obs, rewards, terminated = batch_step(envs, actions[idx], self._run_chunks(len(idx)))
            out["obs"][idx], out["reward"][idx] = obs, rewards
            limit = self.max_episode_steps
            out["done"][idx] = terminated | np.array([limit is not None and e.step_count >= limit for e in envs])
        else:
            self._run_chunks(len(idx))(lambda chunk: self._step_chunk(idx[chunk], actions, out))
        self.env_seconds += time.perf_counter() - t0
        return out["obs"], out["reward"], out["done"]

    def _run_chunks(self, n: int):
        """A function that calls ``fn(chunk)`` on ``workers`` disjoint chunks of ``range(n)``, one per thread."""

        def run(fn) -> None:
            if self._pool is None or n < 2 * self.workers:
                fn(np.arange(n))
                return
            for f in [self._pool.submit(fn, c) for c in np.array_split(np.arange(n), self.workers)]:
                f.result()

        return run

    def rollout(self, start_obs: np.ndarray, act: Callable[[np.ndarray], np.ndarray], horizon: int) -> RolloutBatch:
        """Run every env from its current state for up to ``horizon`` steps (or until its episode ends).

        ``act`` maps the (N, obs_dim) observations to (N, action_dim) actions in one call per step.
        """
        n = self.n_envs
        obs_buf = np.zeros((horizon, n, self.obs_dim), dtype=np.float32)
        act_buf = np.zeros((horizon, n, self.action_dim), dtype=np.float32)
        rew_buf = np.zeros((horizon, n))
        alive = np.zeros((horizon, n), dtype=bool)
        active = np.ones(n, dtype=bool)
        obs = np.asarray(start_obs, dtype=np.float64)
        final = obs.copy()
        for t in range(horizon):
            if not active.any():
                break
            actions = np.asarray(act(obs), dtype=np.float64)
            obs_buf[t], act_buf[t], alive[t] = obs, actions, active
            next_obs, rewards, done = self.step(actions, active)
            rew_buf[t] = np.where(active, rewards, 0.0)
            final[active] = next_obs[active]
            obs = np.where(active[:, None], next_obs, obs)
            active &= ~done
        return RolloutBatch(obs_buf, act_buf, rew_buf, alive, final)
