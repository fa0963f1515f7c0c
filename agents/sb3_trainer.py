"""Train project actors with SB3 (PPO for any actor, SAC for the MLP) and fill the run directory.

Periodic deterministic evaluation uses the same exported :class:`~policies.vector_policy.VectorPolicy`
that ``agents.evaluate`` and the ROS node load, so the learning curve measures what is deployed.
The resumable state (SB3's parameters and optimiser, VecNormalize's statistics, SAC's replay
buffer, the RNGs) is written without pickle by :mod:`agents.trainer_state`; a resumed run starts
fresh episodes from the saved parameters and step count.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize

from agents.builders import make_env, policy_meta
from agents.errors import UserError
from agents.reporting import steps_to_reach
from agents.resources import PROCESS_BYTES, env_bytes, require
from agents.rollout import EVAL_SEED_BASE, EvalResult, run_episodes
from agents.schema import MAX_STEPS, check, setting
from agents.trainer import Trainer
from agents.trainer_state import TrainerStateError, load_state
from policies import registry
from policies.bundle import read_bundle, save_bundle
from policies.mlp import ACTIVATIONS, MLPActor, MLPConfig
from policies.protocol import PolicyError, PolicyMeta
from policies.run_dir import FINAL, LAST, RunDir
from policies.sb3 import ActorCriticAdapter
from policies.vector_policy import VectorPolicy

log = logging.getLogger(__name__)
ALGORITHMS = {"ppo": PPO, "sac": SAC}
VEC_ENVS = {"dummy": DummyVecEnv, "subproc": SubprocVecEnv}
OBS_CLIP = 10.0
MAX_ENVS = 256  # vectorised envs of one run; each holds a MuJoCo model and data


def _sb3_keywords(algo) -> Callable[[], set[str]]:
    """The further keyword arguments an SB3 algorithm takes: ``+algo.sb3.<key>`` may add any of them."""
    return lambda: set(inspect.signature(algo.__init__).parameters) - {"self", "policy", "env", "policy_kwargs",
                                                                         "seed", "device", "verbose"}


@dataclass
class PPOKwargs:
    """``algo.sb3``: passed to ``stable_baselines3.PPO`` (with any further keyword it takes, added with ``+``)."""

    learning_rate: float = setting(3e-4, low=0.0)  # Adam's step size
    n_steps: int = setting(1024, low=1)  # env steps per env per rollout
    batch_size: int = setting(256, low=1)  # minibatch size of the updates
    n_epochs: int = setting(10, low=1)  # passes over each rollout
    gamma: float = setting(0.99, above=0.0, high=1.0)  # discount
    gae_lambda: float = setting(0.95, low=0.0, high=1.0)  # GAE's lambda
    clip_range: float = setting(0.2, above=0.0)  # PPO's epsilon
    ent_coef: float = setting(0.0, low=0.0)  # entropy bonus weight
    vf_coef: float = setting(0.5, low=0.0)  # value loss weight
    max_grad_norm: float = setting(0.5, above=0.0)  # gradient clipping
    target_kl: float | None = setting(None, above=0.0)  # stop an update's epochs beyond this KL; null: never


@dataclass
class SACKwargs:
    """``algo.sb3``: passed to ``stable_baselines3.SAC`` (with any further keyword it takes, added with ``+``)."""

    learning_rate: float = setting(3e-4, low=0.0)
    buffer_size: int = setting(1_000_000, low=1, high=100_000_000)  # transitions kept
    learning_starts: int = setting(5000, low=0)  # env steps of random actions before updates
    batch_size: int = setting(256, low=1)
    tau: float = setting(0.005, above=0.0, high=1.0)  # target network averaging
    gamma: float = setting(0.99, above=0.0, high=1.0)
    train_freq: int = setting(1, low=1)  # env steps between updates
    gradient_steps: int = setting(1, low=-1)  # updates per train_freq; -1: as many as env steps
    n_steps: int = setting(1, low=1)  # n-step returns
    ent_coef: str | float = "auto"  # entropy weight, or auto (learned to a target entropy)

    def __post_init__(self):
        if isinstance(self.ent_coef, str) and not self.ent_coef.startswith("auto"):
            raise ValueError(f"ent_coef must be a number or 'auto', got {self.ent_coef!r}")


@dataclass
class SB3Settings:
    """The keys of ``algo=ppo`` and ``algo=sac`` around their ``sb3`` keyword arguments."""

    name: str = setting("ppo", choices=tuple(ALGORITHMS))
    learning_rate: float = setting(3e-4, low=0.0)  # the same knob as algo.sb3.learning_rate (one name for all)
    total_timesteps: int = setting(1_000_000, low=1, high=MAX_STEPS)  # env steps
    n_envs: int = setting(4, low=1, high=MAX_ENVS)  # envs stepped side by side
    vec_env: str = setting("dummy", choices=tuple(VEC_ENVS))  # dummy: one process; subproc: one per env
    normalize_reward: bool = True  # VecNormalize's reward scaling
    eval_every: int = setting(10_000, low=1)  # env steps between deterministic evaluations
    eval_episodes: int = setting(5, low=1)
    final_eval_episodes: int = setting(10, low=1)
    checkpoint_every: int = setting(100_000, low=0)  # env steps between step_<N> and last checkpoints; 0: none
    sb3: dict = setting(factory=dict)  # checked by PPOKwargs / SACKwargs


SB3_KWARGS = {"ppo": PPOKwargs, "sac": SACKwargs}


def deployable_actor(model, meta: PolicyMeta) -> torch.nn.Module:
    """The actor that maps observations to the deterministic action, as a project module."""
    if isinstance(model, SAC):
        # SB3's SAC actor is latent_pi (Linear+activation layers) then mu, squashed by tanh:
        # exactly an MLPActor with squash=True, so copy the weights layer by layer.
        actor = MLPActor(MLPConfig.from_dict(meta.config))
        ours = [m for m in actor.net if isinstance(m, torch.nn.Linear)]
        theirs = [m for m in model.actor.latent_pi if isinstance(m, torch.nn.Linear)] + [model.actor.mu]
        with torch.no_grad():
            for dst, src in zip(ours, theirs, strict=True):
                dst.weight.copy_(src.weight)
                dst.bias.copy_(src.bias)
        return actor.eval()
    return copy.deepcopy(model.policy.actor).cpu().eval()


def export_policy(model, meta: PolicyMeta) -> VectorPolicy:
    """Snapshot the current actor and observation statistics as a deployable policy."""
    venv = model.get_env()
    meta = copy.deepcopy(meta)
    mean = var = None
    if isinstance(venv, VecNormalize) and venv.norm_obs:
        mean = torch.as_tensor(venv.obs_rms.mean, dtype=torch.float32)
        var = torch.as_tensor(venv.obs_rms.var, dtype=torch.float32)
        meta.normalization = {"clip": float(venv.clip_obs)}
    meta.steps = int(model.num_timesteps)
    if isinstance(model, PPO):
        meta.action_std = torch.exp(model.policy.log_std.detach()).cpu().tolist()
    kind = registry.get(meta.kind)
    return VectorPolicy(deployable_actor(model, meta), meta, mean, var, numpy_actor=kind.numpy_forward)


def trainable_actor_parameters(model) -> int:
    if isinstance(model, SAC):
        return sum(p.numel() for p in model.actor.parameters() if p.requires_grad)
    policy = model.policy
    n = sum(p.numel() for p in policy.actor.parameters() if p.requires_grad)
    return n + (policy.log_std.numel() if policy.log_std.requires_grad else 0)


def _rms_state(rms) -> dict:
    return {"mean": np.asarray(rms.mean, dtype=np.float64), "var": np.asarray(rms.var, dtype=np.float64),
            "count": float(rms.count)}


def _set_rms(rms, state: dict) -> None:
    rms.mean = np.asarray(state["mean"], dtype=np.float64).copy()
    rms.var = np.asarray(state["var"], dtype=np.float64).copy()
    rms.count = float(state["count"])


class TrainingMonitor(BaseCallback):
    """Evaluate, log metrics and write checkpoints on a fixed env-step schedule; stop when asked."""

    def __init__(self, trainer: SB3Trainer):
        super().__init__()
        self.trainer = trainer
        algo = trainer.cfg.algo
        self.eval_env = make_env(trainer.cfg.env)
        self.eval_every, self.eval_episodes = int(algo.eval_every), int(algo.eval_episodes)
        self.checkpoint_every = int(algo.checkpoint_every)
        self.next_eval = 0
        self.last_recorded = -1  # the env step of the newest metrics row
        self.next_checkpoint = self.checkpoint_every
        self.elapsed_before = 0.0  # wall clock of earlier sessions of a resumed run
        self.t0 = time.time()
        self.overhead_s = 0.0  # spent evaluating and checkpointing: not training
        self.learn_before = 0.0  # model.learn's wall clock in earlier sessions of a resumed run
        self.learn_t0: float | None = None

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.t0

    def learn_time(self) -> float:
        return self.learn_before + (time.time() - self.learn_t0 if self.learn_t0 is not None else 0.0)

    def evaluate(self, episodes: int) -> EvalResult:
        policy = export_policy(self.model, self.trainer.meta)
        return run_episodes(self.eval_env, policy, episodes, seed=EVAL_SEED_BASE)

    def record(self) -> None:
        started = time.time()
        result = self.evaluate(self.eval_episodes)
        self.overhead_s += time.time() - started
        train = [ep["r"] for ep in self.model.ep_info_buffer]
        row = {
            "steps": self.num_timesteps,
            "time_s": round(self.elapsed(), 2),
            "train_s": round(self.elapsed() - self.overhead_s, 2),  # wall clock without evaluations
            "train_return_mean": float(np.mean(train)) if train else float("nan"),
            "eval_return_mean": result.return_mean,
            "eval_return_std": result.return_std,
            **{f"eval_{k}": v for k, v in result.metric_means().items()},
        }
        self.trainer.metrics.append(row)
        self.last_recorded = self.num_timesteps
        for logger in self.trainer.loggers:
            logger.log_metrics(row, self.num_timesteps)
        log.info("steps=%d eval_return=%.1f±%.1f train_return=%.1f", row["steps"], row["eval_return_mean"],
                 row["eval_return_std"], row["train_return_mean"])

    def state(self) -> dict:
        return {"next_eval": self.next_eval, "next_checkpoint": self.next_checkpoint, "elapsed_s": self.elapsed(),
                "overhead_s": self.overhead_s, "learn_s": self.learn_time(), "last_recorded": self.last_recorded}

    def restore(self, state: dict) -> None:
        self.next_eval, self.next_checkpoint = int(state["next_eval"]), int(state["next_checkpoint"])
        self.elapsed_before, self.overhead_s = float(state["elapsed_s"]), float(state["overhead_s"])
        self.learn_before = float(state["learn_s"])
        self.last_recorded = int(state.get("last_recorded", -1))
        self.t0 = time.time()

    def _on_training_start(self) -> None:
        if self.next_eval == 0:  # a fresh run: the untrained policy's row
            self.record()
            self.next_eval = self.eval_every

    def _on_rollout_start(self) -> None:
        """Every env step so far has been trained on: the moment a checkpoint resumes exactly."""
        self.trainer.updated_at = self.num_timesteps
        if self.checkpoint_every and self.num_timesteps >= self.next_checkpoint:
            started = time.time()
            self.next_checkpoint += self.checkpoint_every * max(
                1, (self.num_timesteps - self.next_checkpoint) // self.checkpoint_every + 1)
            self.trainer.save(f"step_{self.num_timesteps}", with_state=False)
            self.trainer.save(LAST, with_state=True)
            self.overhead_s += time.time() - started

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.next_eval:
            self.record()
            self.next_eval += self.eval_every
        return self.trainer.stop.requested is None


class SB3Trainer(Trainer):
    """PPO (any project actor through :class:`~policies.sb3.ActorCriticAdapter`) or SAC (the MLP)."""

    @classmethod
    def validate(cls, cfg: DictConfig) -> None:
        check(cfg.algo, SB3Settings, "algo")
        name = str(cfg.algo.name)
        check(cfg.algo.sb3, SB3_KWARGS[name], "algo.sb3", open_keys=_sb3_keywords(ALGORITHMS[name]))

    def __init__(self, cfg: DictConfig, run: RunDir, loggers: list):
        super().__init__(cfg, run, loggers)
        torch.set_num_threads(int(cfg.threads))
        set_random_seed(int(cfg.seed))
        self.meta = policy_meta(cfg)
        algo_cls = ALGORITHMS[cfg.algo.name]
        low, high = np.asarray(self.meta.action_low), np.asarray(self.meta.action_high)
        if algo_cls is SAC:
            if not (np.allclose(low, -1.0) and np.allclose(high, 1.0)):
                raise UserError(f"algo=sac needs actions in [-1, 1] (the exported actor ends in tanh); "
                                f"{cfg.env.name} has [{low.min()}, {high.max()}]")
            self.meta.config = {**self.meta.config, "squash": True}
            policy, policy_kwargs = "MlpPolicy", dict(
                net_arch=dict(pi=list(cfg.policy.actor.hidden), qf=list(cfg.policy.critic_arch)),
                activation_fn=ACTIVATIONS[cfg.policy.actor.activation],
            )
        else:
            policy, policy_kwargs = ActorCriticAdapter, dict(
                actor_kind=self.meta.kind, actor_config=self.meta.config, critic_arch=list(cfg.policy.critic_arch),
                learn_std=bool(cfg.policy.learn_std), log_std_init=float(cfg.policy.log_std_init),
            )
        sb3_kwargs = OmegaConf.to_container(cfg.algo.sb3, resolve=True)
        n_envs = int(cfg.algo.n_envs)
        memory = {"algo.n_envs": n_envs * (env_bytes(cfg.env.id) + (PROCESS_BYTES if cfg.algo.vec_env == "subproc" else 0))}
        if algo_cls is SAC:  # float32 observations, next observations, actions, reward, done, timeout
            transition = 4 * (2 * (self.meta.obs_dim or 0) + self.meta.action_dim + 3)
            memory["algo.sb3.buffer_size"] = int(sb3_kwargs.get("buffer_size", 1_000_000)) * transition
        require(memory)
        self.venv = self.vec_env(cfg)
        try:
            self.model = algo_cls(policy, self.venv, policy_kwargs=policy_kwargs, seed=int(cfg.seed), device="cpu",
                                  verbose=0, **sb3_kwargs)
        except (TypeError, ValueError, AssertionError, KeyError) as e:
            raise UserError(f"bad algo.sb3 settings for {cfg.algo.name}: {e}") from None
        self.monitor = TrainingMonitor(self)
        self.monitor.init_callback(self.model)
        self.updated_at = 0  # env steps the parameters have been trained on (a rollout in progress is not)

    @staticmethod
    def vec_env(cfg: DictConfig) -> VecNormalize:
        """The training envs: ``algo.n_envs`` copies of the env, seeded from ``seed``, under VecNormalize."""
        env_cfg = OmegaConf.to_container(cfg.env, resolve=True)
        venv = make_vec_env(functools.partial(make_env, env_cfg), n_envs=cfg.algo.n_envs, seed=int(cfg.seed),
                            vec_env_cls=VEC_ENVS[cfg.algo.vec_env])
        return VecNormalize(venv, norm_obs=bool(cfg.policy.normalize_obs), norm_reward=bool(cfg.algo.normalize_reward),
                            gamma=float(cfg.algo.sb3.gamma), clip_obs=OBS_CLIP)

    # --- state -----------------------------------------------------------------------------
    def state(self, with_buffer: bool = True) -> dict:
        """What resumes training exactly at the last update: a rollout in progress is dropped (and redone)."""
        model, venv = self.model, self.venv
        state = {
            "step": int(self.updated_at),
            "sb3": model.get_parameters(),
            "n_updates": int(model._n_updates),
            "obs_rms": _rms_state(venv.obs_rms) if venv.norm_obs else None,
            "ret_rms": _rms_state(venv.ret_rms),
            "returns": np.asarray(venv.returns, dtype=np.float64),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()},
            "monitor": self.monitor.state(),
        }
        if with_buffer and isinstance(model, SAC):
            buf = model.replay_buffer
            n = buf.buffer_size if buf.full else buf.pos
            state["replay"] = {"pos": int(buf.pos), "full": bool(buf.full), "observations": buf.observations[:n],
                               "next_observations": buf.next_observations[:n], "actions": buf.actions[:n],
                               "rewards": buf.rewards[:n], "dones": buf.dones[:n], "timeouts": buf.timeouts[:n]}
        return state

    def restore(self, state: dict) -> None:
        model, venv = self.model, self.venv
        try:
            model.set_parameters(state["sb3"], exact_match=True, device="cpu")
        except (ValueError, RuntimeError, KeyError) as e:
            raise UserError(f"cannot resume in {self.run.path}: the saved parameters do not fit ({e})") from None
        model.num_timesteps = self.updated_at = int(state["step"])
        model._n_updates = int(state["n_updates"])
        if venv.norm_obs:
            _set_rms(venv.obs_rms, state["obs_rms"])
        _set_rms(venv.ret_rms, state["ret_rms"])
        venv.returns = np.asarray(state["returns"], dtype=np.float64).copy()
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(tuple(state["rng"]["numpy"]))
        self.monitor.restore(state["monitor"])
        replay = state.get("replay")
        if replay is not None:
            buf = model.replay_buffer
            n = len(replay["observations"])
            for key in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
                getattr(buf, key)[:n] = replay[key]
            buf.pos, buf.full = int(replay["pos"]), bool(replay["full"])

    def save(self, name: str, with_state: bool) -> None:
        policy = export_policy(self.model, self.meta)
        state = self.state(with_buffer=name == LAST) if with_state else None
        self.save_checkpoint(name, lambda d: save_bundle(d, policy.meta, policy.tensors()), state)

    def start_from(self, source: str) -> None:
        """Another run's final parameters and observation statistics (curriculum training), both read from
        its final checkpoint without pickle; the statistics are then held fixed."""
        try:
            final = RunDir(source).policy(FINAL)
            bundle = read_bundle(final)
            params = load_state(final)["sb3"]
        except (PolicyError, TrainerStateError, KeyError) as e:
            raise UserError(f"init_from={source}: {e}") from None
        try:
            self.model.set_parameters(params, exact_match=True, device="cpu")
        except (ValueError, RuntimeError, KeyError) as e:
            lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
            detail = next((ln for ln in lines if "size mismatch" in ln or "Missing" in ln or "Unexpected" in ln),
                          lines[0] if lines else type(e).__name__)
            raise UserError(f"init_from={source} does not fit this run (another algo, policy or observation?): "
                            f"{detail[:200]}") from None
        venv = self.venv
        if venv.norm_obs and bundle.meta.normalization is not None:
            mean, var = bundle.tensors["obs_mean"].double().numpy(), bundle.tensors["obs_var"].double().numpy()
            if mean.shape != venv.obs_rms.mean.shape:
                raise UserError(f"init_from={source} was trained on {mean.shape[0]}-d observations, "
                                f"this env gives {venv.obs_rms.mean.shape[0]}")
            # The loaded policy's inputs must keep their meaning: with the statistics free to adapt to
            # the new task's observations, fine-tuning a hover policy on waypoint courses forgets what it
            # knew before it learns. A huge count freezes them in effect.
            venv.obs_rms.mean, venv.obs_rms.var, venv.obs_rms.count = mean.copy(), var.copy(), 1e12
        log.info("initialised from %s", final)

    # --- the loop --------------------------------------------------------------------------
    def learn(self) -> dict:
        cfg, model = self.cfg, self.model
        total = int(cfg.algo.total_timesteps)
        state = self.resume_state()
        if state is not None:
            self.restore(state)
        elif cfg.get("init_from"):
            self.start_from(str(cfg.init_from))
        params = trainable_actor_parameters(model)
        log.info("training %s on %s with %s: %d trainable actor parameters, %d env steps%s", self.meta.kind,
                 cfg.env.name, cfg.algo.name, params, total,
                 f", resuming at {model.num_timesteps}" if state is not None else "")
        for logger in self.loggers:
            logger.attach(model)
        self.monitor.learn_t0 = time.time()
        with self.stop:
            if model.num_timesteps < total:
                model.learn(total - model.num_timesteps, callback=self.monitor, reset_num_timesteps=False,
                            progress_bar=sys.stderr.isatty() and bool(cfg.progress_bar))
            if self.stop.requested:
                model.num_timesteps = self.updated_at  # the steps of the rollout in progress are redone
                policy = export_policy(model, self.meta)
                raise self.stopped(self.updated_at, lambda d: save_bundle(d, policy.meta, policy.tensors()),
                                   self.state())
            self.updated_at = model.num_timesteps
        self.monitor.learn_before, self.monitor.learn_t0 = self.monitor.learn_time(), None
        train_time = self.monitor.learn_before
        if model.num_timesteps > total:  # SB3 collects whole rollouts: say so rather than overshoot silently
            log.info("trained %d env steps, %d past algo.total_timesteps=%d: %s collects whole rollouts of %d steps",
                     model.num_timesteps, model.num_timesteps - total, total, cfg.algo.name.upper(),
                     int(getattr(model, "n_steps", 1)) * model.n_envs)
        if self.monitor.last_recorded < model.num_timesteps:
            self.monitor.record()  # close the curve at the final step (once: a scheduled row may be there)
        final = self.monitor.evaluate(int(cfg.algo.final_eval_episodes))
        self.save(FINAL, with_state=True)
        self.venv.close()
        rows = self.run.metrics_rows()
        return {
            "return_mean": final.return_mean,
            "return_std": final.return_std,
            "steps": int(model.num_timesteps),
            "params": params,
            "train_time_s": round(train_time, 1),
            "env_steps_per_s": round(model.num_timesteps / max(train_time, 1e-9), 1),
            "eval_episodes": len(final.returns),
            **final.metric_means(),
            "steps_to_return": steps_to_reach(rows),
            "env": cfg.env.name,
            "policy": self.meta.kind,
            "algo": cfg.algo.name,
            "seed": int(cfg.seed),
        }
