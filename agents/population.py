"""What GRPO and ES share: a Gaussian policy over any project actor, observation statistics, and
a trainer shell that fills the same run directory as the SB3 trainer.

The run directory (config, ``metrics.csv``, ``checkpoints/``, ``summary.json``, learning curve)
and the exported policy are identical in form to PPO's, so ``agents.evaluate``, the ROS node and
the benchmarks treat a GRPO or ES run like any other.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from stable_baselines3.common.running_mean_std import RunningMeanStd
from torch import nn

from agents import run_dir as rd
from agents.batched_rollout import BatchedEnvs
from agents.builders import actor_config, env_signature, make_env
from agents.errors import UserError
from agents.rollout import EVAL_SEED_BASE, EvalResult, run_episodes
from policies.checkpoint import InferencePolicy, PolicyMeta, save_policy
from policies.ncap import count_parameters
from policies.registry import build_actor

log = logging.getLogger(__name__)
OBS_CLIP = 10.0
TRAIN_SEED_SPACE = (2**20, 2**31)  # start-state seeds, far from the evaluation seeds (10000+)


class GaussianPolicy(nn.Module):
    """A project actor as the mean of a diagonal Gaussian with a state-independent std."""

    def __init__(self, actor: nn.Module, action_dim: int, log_std_init: float, learn_std: bool):
        super().__init__()
        self.actor = actor
        self.log_std = nn.Parameter(torch.full((action_dim,), float(log_std_init)), requires_grad=learn_std)

    def distribution(self, obs: torch.Tensor) -> torch.distributions.Normal:
        mean = self.actor(obs)
        return torch.distributions.Normal(mean, self.log_std.exp().expand_as(mean), validate_args=False)

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.distribution(obs).log_prob(actions).sum(-1)


class ObsNormalizer:
    """Running observation statistics (SB3's RunningMeanStd), frozen while a batch is collected."""

    def __init__(self, obs_dim: int, enabled: bool):
        self.enabled = enabled
        self.rms = RunningMeanStd(shape=(obs_dim,))

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        if not self.enabled:
            return np.asarray(obs, dtype=np.float32)
        z = (obs - self.rms.mean) / np.sqrt(self.rms.var + 1e-8)
        return np.clip(z, -OBS_CLIP, OBS_CLIP).astype(np.float32)

    def update(self, obs: np.ndarray) -> None:
        if self.enabled and len(obs):
            self.rms.update(np.asarray(obs, dtype=np.float64))

    def statistics(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        return (self.rms.mean.copy(), self.rms.var.copy()) if self.enabled else (None, None)


def _tensor_or_none(a: np.ndarray | None) -> torch.Tensor | None:
    return None if a is None else torch.as_tensor(a, dtype=torch.float32)


class PopulationTrainer:
    """Shell of a population trainer: subclasses implement :meth:`iteration` (collect + update)."""

    STAT_KEYS: tuple[str, ...] = ()  # what iteration() reports besides rollout_return_mean, logged per evaluation

    def __init__(self, cfg: DictConfig, run_dir: Path, loggers: list, n_envs: int):
        if cfg.get("init_from"):
            raise UserError(f"init_from is supported by the SB3 algorithms (ppo, sac), not {cfg.algo.name}")
        self.cfg, self.run_dir, self.loggers = cfg, run_dir, loggers
        torch.set_num_threads(int(cfg.threads))
        torch.manual_seed(int(cfg.seed))
        self.rng = np.random.default_rng(int(cfg.seed))
        self.env_cfg = OmegaConf.to_container(cfg.env, resolve=True)
        self.eval_env = make_env(self.env_cfg)
        obs_dim, action_dim, low, high = env_signature(self.eval_env)
        self.meta = PolicyMeta(kind=cfg.policy.kind, actor_config=actor_config(cfg.policy, self.eval_env),
                               obs_dim=obs_dim, action_low=low, action_high=high, env=self.env_cfg)
        try:
            actor = build_actor(cfg.policy.kind, self.meta.actor_config)
        except ValueError as e:
            raise UserError(str(e)) from None
        self.policy = GaussianPolicy(actor, action_dim, float(cfg.policy.log_std_init), bool(cfg.policy.learn_std))
        self.normalizer = ObsNormalizer(obs_dim, bool(cfg.policy.normalize_obs))
        self.engine = BatchedEnvs(self.env_cfg, n_envs, workers=int(cfg.algo.workers))
        limit = self.engine.max_episode_steps
        horizon = int(cfg.algo.horizon) or limit
        if not horizon:
            raise UserError(f"algo.horizon=0 needs an env with an episode limit; set algo.horizon for {cfg.env.name}")
        self.horizon = min(int(horizon), limit) if limit else int(horizon)  # rollouts start at reset: never past the limit
        self.metrics = rd.MetricsLog(run_dir / rd.METRICS_FILE)
        self.steps = 0
        self.t0 = time.time()
        self.overhead_s = 0.0  # spent evaluating and checkpointing: not training

    # --- for subclasses --------------------------------------------------------------------
    def iteration(self) -> dict:
        """Collect one batch, update the policy, add the env steps to ``self.steps``; return stats to log."""
        raise NotImplementedError

    def trainable_parameters(self) -> int:
        return count_parameters(self.policy.actor) + (self.policy.log_std.numel() if self.policy.log_std.requires_grad else 0)

    def start_seeds(self, n: int) -> np.ndarray:
        return self.rng.integers(*TRAIN_SEED_SPACE, size=n)

    def start_groups(self, n_groups: int, group_size: int) -> np.ndarray:
        """Reset one env per group with a fresh seed, snapshot it, and restore every member from it."""
        engine = self.engine
        seeds = np.repeat(self.start_seeds(n_groups), group_size)
        obs = engine.reset(seeds)  # every env gets its group's seed; the snapshots make the start exact
        snaps = [engine.snapshot(g * group_size, obs[g * group_size]) for g in range(n_groups)]
        return engine.restore([snaps[i // group_size] for i in range(engine.n_envs)])

    # --- export, evaluation, checkpoints --------------------------------------------------
    def export(self) -> tuple[InferencePolicy, np.ndarray | None, np.ndarray | None]:
        meta = copy.deepcopy(self.meta)
        meta.steps = self.steps
        meta.action_std = self.policy.log_std.detach().exp().tolist()
        mean, var = self.normalizer.statistics()
        if mean is not None:
            meta.obs_clip = OBS_CLIP
        actor = copy.deepcopy(self.policy.actor).eval()
        return InferencePolicy(actor, meta, _tensor_or_none(mean), _tensor_or_none(var)), mean, var

    def evaluate(self, episodes: int) -> EvalResult:
        policy, _, _ = self.export()
        return run_episodes(self.eval_env, policy.act, episodes, seed=EVAL_SEED_BASE)

    def record(self, stats: dict) -> None:
        started = time.time()
        result = self.evaluate(int(self.cfg.algo.eval_episodes))
        self.overhead_s += time.time() - started
        row = {
            "steps": self.steps,
            "time_s": round(time.time() - self.t0, 2),
            "train_s": round(time.time() - self.t0 - self.overhead_s, 2),  # wall clock without evaluations
            "train_return_mean": stats.get("rollout_return_mean", float("nan")),
            "eval_return_mean": result.return_mean,
            "eval_return_std": result.return_std,
            **{f"eval_{k}": v for k, v in result.metric_means().items()},
            **{k: stats.get(k, float("nan")) for k in self.STAT_KEYS},  # fixed columns: the CSV's header is its first row
        }
        self.metrics.append(row)
        for logger in self.loggers:
            logger.log_metrics(row, self.steps)
        log.info("steps=%d eval_return=%.1f±%.1f train_return=%.1f", self.steps, row["eval_return_mean"],
                 row["eval_return_std"], row["train_return_mean"])

    def save_checkpoint(self, name: str) -> Path:
        def write(tmp: Path) -> None:
            policy, mean, var = self.export()
            save_policy(tmp, policy.actor, policy.meta, mean, var)

        return rd.write_checkpoint(self.run_dir, name, write)

    # --- the loop -------------------------------------------------------------------------
    def train(self) -> dict:
        algo = self.cfg.algo
        total, eval_every, ckpt_every = int(algo.total_timesteps), int(algo.eval_every), int(algo.checkpoint_every)
        batch_max = self.engine.n_envs * self.horizon
        if total < batch_max:
            raise UserError(f"algo.total_timesteps={total} is less than one batch ({self.engine.n_envs} rollouts x "
                            f"{self.horizon} steps = {batch_max}); raise it or lower algo.horizon")
        params = self.trainable_parameters()
        log.info("training %s on %s with %s: %d trainable parameters, %d env steps, %d envs on %d threads",
                 self.cfg.policy.kind, self.cfg.env.name, algo.name, params, total, self.engine.n_envs,
                 self.engine.workers)
        self.record({})
        next_eval, next_ckpt, stats = eval_every, ckpt_every, {}
        t0, last_recorded = time.time(), 0
        try:
            while self.steps + batch_max <= total:  # never more env steps than asked (equal-budget comparisons)
                stats = self.iteration()
                if self.steps >= next_eval:
                    self.record(stats)
                    last_recorded = self.steps
                    next_eval += eval_every * max(1, (self.steps - next_eval) // eval_every + 1)
                if ckpt_every and self.steps >= next_ckpt:
                    started = time.time()
                    self.save_checkpoint(f"step_{self.steps}")
                    self.overhead_s += time.time() - started
                    next_ckpt += ckpt_every * max(1, (self.steps - next_ckpt) // ckpt_every + 1)
            train_time = time.time() - t0
            if last_recorded < self.steps:
                self.record(stats)  # close the curve at the final step
            final = self.evaluate(int(algo.final_eval_episodes))
            self.save_checkpoint(rd.FINAL)
        finally:
            self.engine.close()
        rows = rd.read_metrics(self.run_dir / rd.METRICS_FILE)
        return {
            "return_mean": final.return_mean,
            "return_std": final.return_std,
            "steps": self.steps,
            "params": params,
            "train_time_s": round(train_time, 1),
            "env_steps_per_s": round(self.steps / max(train_time, 1e-9), 1),
            "eval_episodes": len(final.returns),
            **final.metric_means(),
            "steps_to_return": rd.steps_to_reach(rows),
            "env": self.cfg.env.name,
            "policy": self.cfg.policy.kind,
            "algo": algo.name,
            "seed": int(self.cfg.seed),
        }
