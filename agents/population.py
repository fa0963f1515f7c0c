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
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from stable_baselines3.common.running_mean_std import RunningMeanStd
from torch import nn

from agents.batched_rollout import BatchedEnvs
from agents.builders import make_env, policy_meta
from agents.errors import UserError
from agents.reporting import steps_to_reach
from agents.resources import env_bytes, require
from agents.rollout import EVAL_SEED_BASE, EvalResult, run_episodes
from agents.schema import MAX_STEPS, check, setting
from agents.trainer import Trainer
from policies import registry
from policies.bundle import save_bundle
from policies.ncap import count_parameters
from policies.protocol import PolicyError
from policies.run_dir import FINAL, LAST, RunDir
from policies.vector_policy import VectorPolicy

log = logging.getLogger(__name__)
OBS_CLIP = 10.0
MAX_POPULATION_ENVS = 4096  # envs stepped in lock-step by one run (groups x members, or the ES population)


@dataclass
class PopulationSettings:
    """The keys every population algorithm (``algo=grpo``, ``algo=es``) has."""

    name: str = ""
    total_timesteps: int = setting(1_000_000, low=1, high=MAX_STEPS)  # env steps, never exceeded
    learning_rate: float = setting(3e-4, low=0.0)  # Adam's step size
    horizon: int = setting(0, low=0, high=1_000_000)  # control steps per rollout; 0: the env's episode length
    workers: int = setting(2, low=1, high=256)  # threads stepping the batched envs
    eval_every: int = setting(10_000, low=1)  # env steps between deterministic evaluations
    eval_episodes: int = setting(5, low=1)
    final_eval_episodes: int = setting(10, low=1)
    checkpoint_every: int = setting(100_000, low=0)  # env steps between step_<N> and last checkpoints; 0: none
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

    def statistics(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if not self.enabled:
            return None, None
        return (torch.as_tensor(self.rms.mean, dtype=torch.float32), torch.as_tensor(self.rms.var, dtype=torch.float32))

    def state(self) -> dict:
        return {"mean": self.rms.mean.copy(), "var": self.rms.var.copy(), "count": float(self.rms.count)}

    def restore(self, state: dict) -> None:
        self.rms.mean = np.asarray(state["mean"], dtype=np.float64).copy()
        self.rms.var = np.asarray(state["var"], dtype=np.float64).copy()
        self.rms.count = float(state["count"])


class PopulationTrainer(Trainer):
    """Shell of a population trainer: subclasses implement :meth:`iteration` (collect + update) and
    their own part of the resumable state (:meth:`algo_state`, :meth:`restore_algo`)."""

    STAT_KEYS: tuple[str, ...] = ()  # what iteration() reports besides rollout_return_mean, logged per evaluation

    Settings: type = PopulationSettings
    ENVS_KNOB = "the population's envs"  # what sets how many envs run side by side (named when memory is short)

    @classmethod
    def validate(cls, cfg: DictConfig) -> None:
        check(cfg.algo, cls.Settings, "algo")
        if cfg.get("init_from"):
            raise UserError(f"init_from is supported by the SB3 algorithms (ppo, sac), not {cfg.algo.name}")

    def __init__(self, cfg: DictConfig, run: RunDir, loggers: list, n_envs: int):
        super().__init__(cfg, run, loggers)
        torch.set_num_threads(int(cfg.threads))
        torch.manual_seed(int(cfg.seed))
        self.rng = np.random.default_rng(int(cfg.seed))
        self.env_cfg = OmegaConf.to_container(cfg.env, resolve=True)
        self.meta = policy_meta(cfg)
        self.eval_env = make_env(self.env_cfg)
        try:
            actor = registry.build_module(self.meta.kind, self.meta.config)
        except PolicyError as e:
            raise UserError(str(e)) from None
        self.policy = GaussianPolicy(actor, self.meta.action_dim, float(cfg.policy.log_std_init),
                                     bool(cfg.policy.learn_std))
        self.normalizer = ObsNormalizer(self.meta.obs_dim, bool(cfg.policy.normalize_obs))
        require({self.ENVS_KNOB: n_envs * env_bytes(self.env_cfg["id"])})
        self.engine = BatchedEnvs(self.env_cfg, n_envs, workers=int(cfg.algo.workers))
        limit = self.engine.max_episode_steps
        horizon = int(cfg.algo.horizon) or limit
        if not horizon:
            raise UserError(f"algo.horizon=0 needs an env with an episode limit; set algo.horizon for {cfg.env.name}")
        self.horizon = min(int(horizon), limit) if limit else int(horizon)  # rollouts start at reset: never past the limit
        self.steps = 0
        self.elapsed_before = 0.0  # wall clock of earlier sessions of a resumed run
        self.t0 = time.time()
        self.overhead_s = 0.0  # spent evaluating and checkpointing: not training
        self.train_time_before = 0.0  # the training loop's wall clock in earlier sessions of a resumed run
        self.loop_t0: float | None = None
        self.schedule = {"next_eval": int(cfg.algo.eval_every), "next_checkpoint": int(cfg.algo.checkpoint_every),
                         "last_recorded": 0}

    # --- for subclasses --------------------------------------------------------------------
    def iteration(self) -> dict:
        """Collect one batch, update the policy, add the env steps to ``self.steps``; return stats to log."""
        raise NotImplementedError

    def algo_state(self) -> dict:
        """The subclass's part of the resumable state (optimiser, its own RNGs)."""
        return {}

    def restore_algo(self, state: dict) -> None:
        pass

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

    # --- state -----------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.t0

    def train_time(self) -> float:
        """Wall clock of the training loop (its evaluations included), over every session of the run."""
        return self.train_time_before + (time.time() - self.loop_t0 if self.loop_t0 is not None else 0.0)

    def state(self) -> dict:
        return {"step": self.steps, "policy": self.policy.state_dict(), "normalizer": self.normalizer.state(),
                "rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "schedule": dict(self.schedule),
                "elapsed_s": self.elapsed(), "overhead_s": self.overhead_s, "train_time_s": self.train_time(),
                "algo": self.algo_state()}

    def restore(self, state: dict) -> None:
        try:
            self.policy.load_state_dict(state["policy"])
        except RuntimeError as e:
            raise UserError(f"cannot resume in {self.run.path}: the saved policy does not fit "
                            f"({str(e).splitlines()[0][:160]})") from None
        self.steps = int(state["step"])
        self.normalizer.restore(state["normalizer"])
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        self.schedule = {k: int(v) for k, v in state["schedule"].items()}
        self.elapsed_before, self.overhead_s = float(state["elapsed_s"]), float(state["overhead_s"])
        self.train_time_before = float(state["train_time_s"])
        self.t0 = time.time()
        self.restore_algo(state["algo"])

    # --- export, evaluation, checkpoints --------------------------------------------------
    def export(self) -> VectorPolicy:
        meta = copy.deepcopy(self.meta)
        meta.steps = self.steps
        meta.action_std = self.policy.log_std.detach().exp().tolist()
        mean, var = self.normalizer.statistics()
        if mean is not None:
            meta.normalization = {"clip": OBS_CLIP}
        actor = copy.deepcopy(self.policy.actor).eval()
        return VectorPolicy(actor, meta, mean, var, numpy_actor=registry.get(meta.kind).numpy_forward)

    def write_bundle(self, directory) -> None:
        policy = self.export()
        save_bundle(directory, policy.meta, policy.tensors())

    def evaluate(self, episodes: int) -> EvalResult:
        return run_episodes(self.eval_env, self.export(), episodes, seed=EVAL_SEED_BASE)

    def record(self, stats: dict) -> None:
        started = time.time()
        result = self.evaluate(int(self.cfg.algo.eval_episodes))
        self.overhead_s += time.time() - started
        row = {
            "steps": self.steps,
            "time_s": round(self.elapsed(), 2),
            "train_s": round(self.elapsed() - self.overhead_s, 2),  # wall clock without evaluations
            "train_return_mean": stats.get("rollout_return_mean", float("nan")),
            "eval_return_mean": result.return_mean,
            "eval_return_std": result.return_std,
            **{f"eval_{k}": v for k, v in result.metric_means().items()},
            **{k: stats.get(k, float("nan")) for k in self.STAT_KEYS},  # fixed columns: the CSV's header is its first row
        }
        self.metrics.append(row)
        self.schedule["last_recorded"] = self.steps
        for logger in self.loggers:
            logger.log_metrics(row, self.steps)
        log.info("steps=%d eval_return=%.1f±%.1f train_return=%.1f", self.steps, row["eval_return_mean"],
                 row["eval_return_std"], row["train_return_mean"])

    # --- the loop -------------------------------------------------------------------------
    def learn(self) -> dict:
        algo = self.cfg.algo
        total, eval_every, ckpt_every = int(algo.total_timesteps), int(algo.eval_every), int(algo.checkpoint_every)
        batch_max = self.engine.n_envs * self.horizon
        if total < batch_max:
            raise UserError(f"algo.total_timesteps={total} is less than one batch ({self.engine.n_envs} rollouts x "
                            f"{self.horizon} steps = {batch_max}); raise it or lower algo.horizon")
        state = self.resume_state()
        if state is not None:
            self.restore(state)
        params = self.trainable_parameters()
        log.info("training %s on %s with %s: %d trainable parameters, %d env steps, %d envs on %d threads%s",
                 self.meta.kind, self.cfg.env.name, algo.name, params, total, self.engine.n_envs,
                 self.engine.workers, f", resuming at {self.steps}" if state is not None else "")
        sched, stats = self.schedule, {}
        try:
            with self.stop:
                if state is None:
                    self.record({})
                self.loop_t0 = time.time()
                while self.steps + batch_max <= total:  # never more env steps than asked (equal-budget comparisons)
                    stats = self.iteration()
                    if self.steps >= sched["next_eval"]:
                        self.record(stats)
                        sched["next_eval"] += eval_every * max(1, (self.steps - sched["next_eval"]) // eval_every + 1)
                    if ckpt_every and self.steps >= sched["next_checkpoint"]:
                        started = time.time()
                        sched["next_checkpoint"] += ckpt_every * max(
                            1, (self.steps - sched["next_checkpoint"]) // ckpt_every + 1)
                        self.save_checkpoint(f"step_{self.steps}", self.write_bundle)
                        self.save_checkpoint(LAST, self.write_bundle, self.state())
                        self.overhead_s += time.time() - started
                    if self.stop.requested:
                        raise self.stopped(self.steps, self.write_bundle, self.state())
            train_time = self.train_time()
            log.info("stopped at %d env steps: another batch of up to %d would pass algo.total_timesteps=%d",
                     self.steps, batch_max, total)
            if sched["last_recorded"] < self.steps:
                self.record(stats)  # close the curve at the final step
            final = self.evaluate(int(algo.final_eval_episodes))
            self.save_checkpoint(FINAL, self.write_bundle, self.state())
        finally:
            self.engine.close()
        return {
            "return_mean": final.return_mean,
            "return_std": final.return_std,
            "steps": self.steps,
            "params": params,
            "train_time_s": round(train_time, 1),
            "env_steps_per_s": round(self.steps / max(train_time, 1e-9), 1),
            "eval_episodes": len(final.returns),
            **final.metric_means(),
            "steps_to_return": steps_to_reach(self.run.metrics_rows()),
            "env": self.cfg.env.name,
            "policy": self.meta.kind,
            "algo": algo.name,
            "seed": int(self.cfg.seed),
        }
