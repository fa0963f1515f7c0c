"""Train project actors with SB3 (PPO for any actor, SAC for the MLP) and fill the run directory.

Periodic deterministic evaluation uses the same exported :class:`InferencePolicy` that
``agents.evaluate`` and the ROS node load, so the learning curve measures what is deployed.
"""

from __future__ import annotations

import copy
import functools
import logging
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize

from agents import run_dir as rd
from agents.builders import actor_config, env_signature, make_env
from agents.errors import UserError
from agents.rollout import EVAL_SEED_BASE, EvalResult, run_episodes
from policies.checkpoint import InferencePolicy, PolicyMeta, save_policy
from policies.mlp import ACTIVATIONS, MLPActor, MLPConfig
from policies.sb3 import ActorCriticAdapter

log = logging.getLogger(__name__)
ALGORITHMS = {"ppo": PPO, "sac": SAC}


def deployable_actor(model, meta: PolicyMeta) -> torch.nn.Module:
    """The actor that maps observations to the deterministic action, as a project module."""
    if isinstance(model, SAC):
        # SB3's SAC actor is latent_pi (Linear+activation layers) then mu, squashed by tanh:
        # exactly an MLPActor with squash=True, so copy the weights layer by layer.
        actor = MLPActor(MLPConfig.from_dict(meta.actor_config))
        ours = [m for m in actor.net if isinstance(m, torch.nn.Linear)]
        theirs = [m for m in model.actor.latent_pi if isinstance(m, torch.nn.Linear)] + [model.actor.mu]
        with torch.no_grad():
            for dst, src in zip(ours, theirs, strict=True):
                dst.weight.copy_(src.weight)
                dst.bias.copy_(src.bias)
        return actor.eval()
    return copy.deepcopy(model.policy.actor).cpu().eval()


def export_policy(model, meta: PolicyMeta) -> tuple[InferencePolicy, np.ndarray | None, np.ndarray | None]:
    """Snapshot the current actor and observation statistics as a deployable policy."""
    venv = model.get_env()
    mean = var = None
    if isinstance(venv, VecNormalize) and venv.norm_obs:
        mean, var = venv.obs_rms.mean.copy(), venv.obs_rms.var.copy()
        meta.obs_clip = float(venv.clip_obs)
    meta.steps = int(model.num_timesteps)
    if isinstance(model, PPO):
        meta.action_std = torch.exp(model.policy.log_std.detach()).cpu().tolist()
    actor = deployable_actor(model, meta)
    as_tensor = (lambda a: torch.as_tensor(a, dtype=torch.float32)) if mean is not None else (lambda a: None)
    return InferencePolicy(actor, copy.deepcopy(meta), as_tensor(mean), as_tensor(var)), mean, var


def trainable_actor_parameters(model) -> int:
    if isinstance(model, SAC):
        return sum(p.numel() for p in model.actor.parameters() if p.requires_grad)
    policy = model.policy
    n = sum(p.numel() for p in policy.actor.parameters() if p.requires_grad)
    return n + (policy.log_std.numel() if policy.log_std.requires_grad else 0)


class TrainingMonitor(BaseCallback):
    """Evaluate, log metrics and write checkpoints on a fixed env-step schedule."""

    def __init__(self, run_dir: Path, meta: PolicyMeta, env_cfg, eval_every: int, eval_episodes: int,
                 checkpoint_every: int, loggers: list):
        super().__init__()
        self.run_dir = run_dir
        self.meta = meta
        self.eval_env = make_env(env_cfg)
        self.eval_every = eval_every
        self.eval_episodes = eval_episodes
        self.checkpoint_every = checkpoint_every
        self.metrics = rd.MetricsLog(run_dir / rd.METRICS_FILE)
        self.loggers = loggers
        self.next_eval = 0
        self.next_checkpoint = checkpoint_every
        self.t0 = time.time()
        self.overhead_s = 0.0  # spent evaluating and checkpointing: not training

    def evaluate(self, episodes: int) -> EvalResult:
        policy, _, _ = export_policy(self.model, self.meta)
        return run_episodes(self.eval_env, policy.act, episodes, seed=EVAL_SEED_BASE)

    def record(self) -> None:
        started = time.time()
        result = self.evaluate(self.eval_episodes)
        self.overhead_s += time.time() - started
        train = [ep["r"] for ep in self.model.ep_info_buffer]
        row = {
            "steps": self.num_timesteps,
            "time_s": round(time.time() - self.t0, 2),
            "train_s": round(time.time() - self.t0 - self.overhead_s, 2),  # wall clock without evaluations
            "train_return_mean": float(np.mean(train)) if train else float("nan"),
            "eval_return_mean": result.return_mean,
            "eval_return_std": result.return_std,
            **{f"eval_{k}": v for k, v in result.metric_means().items()},
        }
        self.metrics.append(row)
        for logger in self.loggers:
            logger.log_metrics(row, self.num_timesteps)
        log.info("steps=%d eval_return=%.1f±%.1f train_return=%.1f", row["steps"], row["eval_return_mean"],
                 row["eval_return_std"], row["train_return_mean"])

    def save_checkpoint(self, name: str) -> Path:
        def write(tmp: Path) -> None:
            self.model.save(tmp / "model.zip")
            venv = self.model.get_env()
            if isinstance(venv, VecNormalize):
                venv.save(str(tmp / "vecnormalize.pkl"))
            policy, mean, var = export_policy(self.model, self.meta)
            save_policy(tmp, policy.actor, policy.meta, mean, var)

        return rd.write_checkpoint(self.run_dir, name, write)

    def _on_training_start(self) -> None:
        self.record()
        self.next_eval = self.eval_every

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.next_eval:
            self.record()
            self.next_eval += self.eval_every
        if self.checkpoint_every and self.num_timesteps >= self.next_checkpoint:
            started = time.time()
            self.save_checkpoint(f"step_{self.num_timesteps}")
            self.overhead_s += time.time() - started
            self.next_checkpoint += self.checkpoint_every
        return True


def _vec_env(cfg: DictConfig, seed: int):
    env_cfg = OmegaConf.to_container(cfg.env, resolve=True)
    vec_cls = {"dummy": DummyVecEnv, "subproc": SubprocVecEnv}.get(cfg.algo.vec_env)
    if vec_cls is None:
        raise UserError(f"algo.vec_env must be dummy or subproc, got {cfg.algo.vec_env!r}")
    venv = make_vec_env(functools.partial(make_env, env_cfg), n_envs=cfg.algo.n_envs, seed=seed, vec_env_cls=vec_cls)
    return VecNormalize(
        venv,
        norm_obs=bool(cfg.policy.normalize_obs),
        norm_reward=bool(cfg.algo.normalize_reward),
        gamma=float(cfg.algo.sb3.gamma),
        clip_obs=10.0,
    )


def start_from(model, venv: VecNormalize, run: Path) -> None:
    """Load another run's final SB3 parameters and observation statistics (curriculum training)."""
    final = rd.checkpoint_dir(run, rd.FINAL)
    if not (final / "model.zip").is_file():
        raise UserError(f"init_from={run}: no {rd.CHECKPOINTS}/{rd.FINAL}/model.zip there")
    try:
        model.set_parameters(str(final / "model.zip"), exact_match=True, device="cpu")
    except (ValueError, RuntimeError, KeyError) as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "size mismatch" in ln or "Missing" in ln or "Unexpected" in ln), lines[0])
        raise UserError(f"init_from={run} does not fit this run (another algo, policy or observation?): "
                        f"{detail[:200]}") from None
    stats = final / "vecnormalize.pkl"
    if venv.norm_obs and stats.is_file():
        try:
            with open(stats, "rb") as f:
                saved = pickle.load(f)
            saved.obs_rms.mean.shape  # noqa: B018  (a VecNormalize, not some other pickle)
        except (OSError, EOFError, AttributeError, ImportError, pickle.UnpicklingError) as e:
            raise UserError(f"init_from={run}: {stats} is unreadable ({type(e).__name__})") from None
        if saved.obs_rms.mean.shape != venv.obs_rms.mean.shape:
            raise UserError(f"init_from={run} was trained on {saved.obs_rms.mean.shape[0]}-d observations, "
                            f"this env gives {venv.obs_rms.mean.shape[0]}")
        # The loaded policy's inputs must keep their meaning: with the statistics free to adapt to
        # the new task's observations, fine-tuning a hover policy on waypoint courses lost a third
        # of its success in 100k steps before any learning. A huge count freezes them in effect.
        venv.obs_rms = saved.obs_rms
        venv.obs_rms.count = 1e12
    log.info("initialised from %s", final)


def train_sb3(cfg: DictConfig, run_dir: Path, loggers: list) -> dict:
    algo_cls = ALGORITHMS.get(cfg.algo.name)
    if algo_cls is None:
        raise UserError(f"algo {cfg.algo.name!r} is not an SB3 algorithm here (have: {', '.join(ALGORITHMS)})")
    torch.set_num_threads(int(cfg.threads))
    set_random_seed(int(cfg.seed))

    probe = make_env(cfg.env)
    obs_dim, action_dim, low, high = env_signature(probe)
    actor_cfg = actor_config(cfg.policy, probe)
    probe.close()
    meta = PolicyMeta(
        kind=cfg.policy.kind, actor_config=actor_cfg, obs_dim=obs_dim, action_low=low, action_high=high,
        env=OmegaConf.to_container(cfg.env, resolve=True),
    )
    venv = _vec_env(cfg, int(cfg.seed))
    sb3_kwargs = OmegaConf.to_container(cfg.algo.sb3, resolve=True)
    if algo_cls is SAC:
        if cfg.policy.kind != "mlp":
            raise UserError(f"algo=sac trains the MLP policy only, not {cfg.policy.kind!r} (use algo=ppo)")
        if not (np.allclose(low, -1.0) and np.allclose(high, 1.0)):
            raise UserError(f"algo=sac needs actions in [-1, 1] (the exported actor ends in tanh); {cfg.env.name} has "
                            f"[{min(low)}, {max(high)}]")
        if cfg.policy.actor.activation not in ACTIVATIONS:
            raise UserError(f"unknown policy.actor.activation {cfg.policy.actor.activation!r}; "
                            f"choose one of {sorted(ACTIVATIONS)}")
        meta.actor_config = actor_cfg = {**actor_cfg, "squash": True}
        policy, policy_kwargs = "MlpPolicy", dict(
            net_arch=dict(pi=list(cfg.policy.actor.hidden), qf=list(cfg.policy.critic_arch)),
            activation_fn=ACTIVATIONS[cfg.policy.actor.activation],
        )
    else:
        policy, policy_kwargs = ActorCriticAdapter, dict(
            actor_kind=cfg.policy.kind,
            actor_config=actor_cfg,
            critic_arch=list(cfg.policy.critic_arch),
            learn_std=bool(cfg.policy.learn_std),
            log_std_init=float(cfg.policy.log_std_init),
        )
    try:
        model = algo_cls(policy, venv, policy_kwargs=policy_kwargs, seed=int(cfg.seed), device="cpu",
                         verbose=0, **sb3_kwargs)
    except (TypeError, ValueError, AssertionError, KeyError) as e:
        raise UserError(f"bad algo.sb3 settings for {cfg.algo.name}: {e}") from None
    if cfg.get("init_from"):
        start_from(model, venv, Path(cfg.init_from).expanduser())
    params = trainable_actor_parameters(model)
    log.info("training %s on %s with %s: %d trainable actor parameters, %d env steps",
             cfg.policy.kind, cfg.env.name, cfg.algo.name, params, cfg.algo.total_timesteps)
    for logger in loggers:
        logger.attach(model)

    monitor = TrainingMonitor(run_dir, meta, cfg.env, int(cfg.algo.eval_every), int(cfg.algo.eval_episodes),
                              int(cfg.algo.checkpoint_every), loggers)
    t0 = time.time()
    model.learn(int(cfg.algo.total_timesteps), callback=monitor, progress_bar=sys.stderr.isatty() and cfg.progress_bar)
    train_time = time.time() - t0
    if monitor.next_eval - monitor.eval_every < model.num_timesteps:
        monitor.record()  # close the curve at the final step
    final = monitor.evaluate(int(cfg.algo.final_eval_episodes))
    monitor.save_checkpoint(rd.FINAL)
    venv.close()

    rows = rd.read_metrics(run_dir / rd.METRICS_FILE)
    summary = {
        "return_mean": final.return_mean,
        "return_std": final.return_std,
        "steps": int(model.num_timesteps),
        "params": params,
        "train_time_s": round(train_time, 1),
        "env_steps_per_s": round(model.num_timesteps / train_time, 1),
        "eval_episodes": len(final.returns),
        **{k: v for k, v in final.metric_means().items()},
        "steps_to_return": rd.steps_to_reach(rows),
        "env": cfg.env.name,
        "policy": cfg.policy.kind,
        "algo": cfg.algo.name,
        "seed": int(cfg.seed),
    }
    return summary
