"""``algo=grpo`` on ``policy=spatial_brain``: GRPO on the brain's goals, the last stage of ACE-Brain-0's SSR.

``python -m agents.train policy=spatial_brain algo=grpo env=uav_find init_from=<a brain run>``

- Start: the final bundle of a brain run (a specialist or a merged brain), with that run's sizes (its
  bundle's config: ``policy.actor`` is not read) and, unless ``algo.decide_every``/``algo.decisions``
  are set, its decision schedule.
- Groups, as :mod:`agents.grpo`: per iteration ``groups`` start states, env resets on training seeds
  (never the evaluation seeds), each flown by ``group_size`` members from the same reset seed. The
  members differ only in the goals they sample from the brain's Gaussian at the decision points
  (control steps 0, ``decide_every``, ... ``decisions`` of them); the follower flies in between and
  holds the last goal, as :class:`~policies.brain_policy.BrainPolicy` deploys it.
- Advantages: ``outcome``, the member's return (progress + success bonus − crash) normalised within
  its group; ``process``, the reward earned between two decision points as that decision's step
  reward (DeepSeekMath's process supervision). Groups whose members all scored the same are dropped.
- Loss: :func:`agents.grpo.grpo_loss` over the decision points' log-probs of the sampled goals (the
  old ones recorded when sampled), ``epochs`` passes, gradients clipped. Every parameter trains,
  the goal head's log-std too (clamped inside the head, so it stops at its bounds). ``qa_weight``
  adds QA cross-entropy on the embodiment's questions to each update, so the brain keeps answering.
- Dropout stays off throughout (eval mode): the ratio π_θ/π_old must compare the same function.
- Measured: held-out QA accuracy before and after (the supervised stages' data and measure), and
  closed-loop success on the evaluation seeds, with seen and with held-out wordings.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from agents.brain_trainer import QA_SOURCES, BrainTrainer, qa_dataset
from agents.builders import make_env
from agents.errors import UserError
from agents.grpo import ADVANTAGES, grpo_loss, outcome_advantages, process_advantages
from agents.population import TRAIN_SEED_SPACE
from agents.rollout import EVAL_SEED_BASE, run_episodes
from agents.schema import MAX_STEPS, check, plain, setting
from agents.trainer import GradientTrainer
from policies.brain_policy import (
    BrainPolicy,
    brain_batch,
    brain_follower,
    decision_schedule,
    embodiment_of,
    trained_envs,
)
from policies.bundle import Bundle, read_bundle, read_meta, save_bundle
from policies.protocol import EnvInterface, PolicyError, PolicyMeta
from policies.registry import load_module
from policies.run_dir import FINAL, LAST, RunDir

log = logging.getLogger(__name__)


@dataclass
class BrainGRPOSettings:
    """The algo group of ``algo=grpo`` for the brain: the population GRPO's keys (one algo file serves both)
    and the brain's own (``configs/experiment/tuned/uav_find_spatial_brain_grpo.yaml`` lists them)."""

    name: str = "grpo"
    total_timesteps: int = setting(1_000_000, low=1, high=MAX_STEPS)  # env (control) steps, never exceeded
    groups: int = setting(4, low=1, high=4096)  # B start states per iteration
    group_size: int = setting(8, low=2, high=4096)  # G members per start state
    horizon: int = setting(0, low=0, high=1_000_000)  # control steps per flight; 0: the env's episode length
    advantage: str = setting("outcome", choices=ADVANTAGES)
    epochs: int = setting(4, low=1)  # mu: passes over each batch
    minibatches: int = setting(1, low=1)  # groups are split into this many minibatches per pass
    learning_rate: float = setting(3e-5, above=0.0, high=1.0)  # Adam's step; a pretrained brain takes small ones
    clip_range: float = setting(0.2, above=0.0)  # epsilon of the clipped surrogate
    kl_coef: float = setting(0.0, low=0.0)  # beta of the k3 KL to the initial brain (ACE-Brain: 0)
    max_grad_norm: float = setting(0.5, above=0.0)
    workers: int = setting(2, low=1, high=256)  # the population GRPO's; the brain's members fly one after another
    eval_every: int = setting(10_000, low=1)  # env steps between closed-loop evaluations (and held-out QA)
    eval_episodes: int = setting(5, low=0, high=10**6)
    final_eval_episodes: int = setting(10, low=0, high=10**6)
    checkpoint_every: int = setting(100_000, low=0)  # env steps between step_<N> and last checkpoints; 0: none
    # --- the brain's own
    decide_every: int | None = setting(None, low=1, high=10**6)  # control steps between decisions; None: init run's
    decisions: int | None = setting(None, low=1, high=1000)  # decisions per flight, then the goal is held; None: init run's
    qa_weight: float = setting(0.0, low=0.0)  # weight of QA cross-entropy beside the GRPO loss in each update
    qa_batch_size: int = setting(64, low=1, high=65536)  # QA questions per update when qa_weight > 0
    qa_scenes: int = setting(4000, low=1, high=10**7)  # the embodiment's QA training scenes (the stages' set)
    qa_eval_scenes: int = setting(200, low=1, high=10**6)  # held-out-template scenes for the QA accuracy
    data_dir: str = "data/brain"  # the supervised stages' QA cache (generated there on first use)

    def __post_init__(self):
        if self.minibatches > self.groups:
            raise ValueError(f"minibatches must be 1..groups ({self.groups}), got {self.minibatches}")


def brain_source(source, embodiment: str, weights: bool = True) -> Bundle | PolicyMeta:
    """The final bundle of the brain run ``source`` (its meta alone without ``weights``); UserError in one line."""
    if not source:
        raise UserError("algo=grpo trains a spatial brain from a trained one: pass init_from=<a specialist or "
                        "merged brain run>")
    try:
        directory = RunDir(str(source)).policy(FINAL)
        bundle = read_bundle(directory) if weights else None
        meta = bundle.meta if bundle is not None else read_meta(directory)
    except (PolicyError, OSError) as e:
        raise UserError(f"init_from={source}: {' '.join(str(e).split())[:200]}") from None
    if meta.kind != "spatial_brain":
        raise UserError(f"init_from={source}: a {meta.kind} run, not a spatial brain")
    spec = (meta.config.get("embodiments") or {}).get(embodiment) or {}
    if not spec.get("goal_dim"):
        raise UserError(f"init_from={source}: the brain has no goal head for embodiment {embodiment!r}")
    return bundle if bundle is not None else meta


class BrainQA:
    """One embodiment's QA questions and the brain's accuracy on them, as the supervised stages measure it.

    ``qa_batch`` and ``qa_accuracy`` are :class:`BrainTrainer`'s own (they read ``model``, ``config``,
    ``qa`` and ``qa_eval``), so both stages count the same answers; the training questions are loaded
    only when they train (``qa_weight`` > 0).
    """

    qa_batch = BrainTrainer.qa_batch
    qa_accuracy = BrainTrainer.qa_accuracy

    def __init__(self, model, data_dir: Path, source: str, scenes: int, eval_scenes: int, train: bool):
        self.model, self.config, self.source = model, model.config, source
        # the stages' fixed sets: training questions drawn with seed 0, held-out templates with seed 1
        self.qa = {source: qa_dataset(data_dir, source, scenes, "seen") if train else None}
        self.qa_eval = {source: qa_dataset(data_dir, source, eval_scenes, "held_out")}

    def held_out(self) -> dict[str, float]:
        try:
            return self.qa_accuracy("held_out")
        finally:
            self.model.eval()  # qa_accuracy leaves the model in train mode

    def loss(self, rng: np.random.Generator, batch_size: int) -> torch.Tensor:
        batch, answer = self.qa_batch(self.source, rng.integers(len(self.qa[self.source]), size=batch_size))
        return torch.nn.functional.cross_entropy(self.model.qa_logits(batch), answer)


# --- flights and the update -------------------------------------------------------------------------------


@dataclass
class Flights:
    """One iteration's flights: the decision points (flat, one row each) and the reward between them.

    Member ``m`` of group ``g`` is column ``g * G + m``; decision ``t`` is row ``t`` of the (T, M) arrays.
    """

    batch: dict  # the brain's batch of every decision point's observation (N rows)
    goals: torch.Tensor  # (N, goal_dim) the sampled goals, in the goal head's frame
    logp_old: torch.Tensor  # (N,) their log-probs when sampled
    decision: np.ndarray  # (N,) int: t of each row
    member: np.ndarray  # (N,) int: column of each row
    rewards: np.ndarray  # (T, M): reward from decision t to the next (the last: to the flight's end)
    alive: np.ndarray  # (T, M) bool: decision t happened
    success: np.ndarray  # (M,) bool

    @property
    def returns(self) -> np.ndarray:
        return (self.rewards * self.alive).sum(axis=0)


def rows_of(batch: dict, rows: np.ndarray) -> dict:
    index = torch.as_tensor(rows)
    return {k: v[index] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def goal_log_probs(model, flights: Flights, rows: np.ndarray) -> torch.Tensor:
    """(N_rows,) log-probs of the rows' sampled goals under ``model`` (the Gaussian's dimensions summed)."""
    return model.goal_distribution(rows_of(flights.batch, rows)).log_prob(flights.goals[rows]).sum(-1)


def advantages(flights: Flights, groups: int, group_size: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """((T, M) advantage of each decision, kept groups): outcome or process supervision."""
    T, M = flights.alive.shape
    if kind == "outcome":
        adv, keep = outcome_advantages(flights.returns.reshape(groups, group_size))
        return np.broadcast_to(adv.reshape(1, M), (T, M)).copy(), keep
    adv, keep = process_advantages(flights.rewards.reshape(T, groups, group_size),
                                   flights.alive.reshape(T, groups, group_size))
    return adv.reshape(T, M), keep


def update(model, optimizer, flights: Flights, adv: np.ndarray, keep: np.ndarray, group_size: int, *, epochs: int,
           minibatches: int, clip: float, max_grad_norm: float, rng: np.random.Generator, beta: float = 0.0,
           logp_ref: torch.Tensor | None = None, extra_loss=None) -> dict[str, float]:
    """``epochs`` passes of the clipped surrogate over the kept groups; returns the mean of each pass's stats.

    ``logp_ref`` (N,) are the reference brain's log-probs for the k3 KL (with ``beta`` > 0); ``extra_loss()``
    is added to each minibatch's loss (the QA term).
    """
    T, M = flights.alive.shape
    t_idx, m_idx = torch.as_tensor(flights.decision), torch.as_tensor(flights.member)

    def grid(values: torch.Tensor) -> torch.Tensor:  # (N,) per decision point -> (T, M), zero where none
        return torch.zeros(T, M, dtype=values.dtype).index_put((t_idx, m_idx), values)

    old, mask = grid(flights.logp_old), torch.as_tensor(flights.alive, dtype=torch.float32)
    ref = grid(logp_ref) if logp_ref is not None else None
    adv_t = torch.as_tensor(np.ascontiguousarray(adv), dtype=torch.float32)
    kept = np.flatnonzero(keep)
    infos = []
    for _ in range(epochs):
        for chunk in np.array_split(rng.permutation(kept), min(minibatches, len(kept))):
            members = (chunk[:, None] * group_size + np.arange(group_size)).ravel()
            rows = np.flatnonzero(np.isin(flights.member, members))
            logp = torch.zeros(T, M).index_put((t_idx[rows], m_idx[rows]), goal_log_probs(model, flights, rows))
            cols = torch.as_tensor(members)
            loss, info = grpo_loss(logp[:, cols], old[:, cols], adv_t[:, cols], mask[:, cols], clip, beta,
                                   None if ref is None else ref[:, cols])
            if extra_loss is not None:
                qa = extra_loss()
                loss = loss + qa
                info["qa_ce"] = float(qa.detach())
            info["loss"] = float(loss.detach())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            infos.append(info)
    return {k: float(np.mean([i[k] for i in infos])) for k in infos[0]} if infos else {}


# --- the trainer -------------------------------------------------------------------------------------------

STAT_KEYS = ("return_mean", "success", "frac_zero_spread", "clip_fraction", "kl_ref", "loss", "qa_ce", "log_std",
             "goal_std_m", "iteration_s", "update_s")


class BrainGRPOTrainer(GradientTrainer):
    """GRPO of a trained spatial brain in its embodiment's find env; ``self.step`` counts env steps."""

    Settings = BrainGRPOSettings

    @classmethod
    def validate(cls, cfg: DictConfig) -> None:
        check(cfg.algo, BrainGRPOSettings, "algo")
        try:
            embodiment = embodiment_of(cfg.env.id)
        except PolicyError as e:
            raise UserError(f"algo=grpo with policy=spatial_brain needs a find env (env=uav_find): {e}") from None
        if embodiment not in QA_SOURCES:
            raise UserError(f"the spatial brain has no QA questions for embodiment {embodiment!r}")
        brain_source(cfg.get("init_from"), embodiment, weights=False)

    def __init__(self, cfg: DictConfig, run: RunDir, loggers: list):
        super().__init__(cfg, run, loggers)
        self.settings = s = BrainGRPOSettings(**plain(cfg.algo))
        torch.set_num_threads(int(cfg.threads))
        torch.manual_seed(int(cfg.seed))
        self.rng = np.random.default_rng(int(cfg.seed))
        self.env_cfg = OmegaConf.to_container(cfg.env, resolve=True)
        self.embodiment = embodiment_of(self.env_cfg["id"])
        self.init_bundle = brain_source(cfg.init_from, self.embodiment)
        try:
            self.model = load_module("spatial_brain", self.init_bundle, self.init_bundle.tensors).eval()
        except PolicyError as e:
            raise UserError(f"init_from={cfg.init_from}: {e}") from None
        self.config = self.model.config
        self._warn_ignored_sizes(cfg)
        every, decisions = decision_schedule(self.init_bundle.meta, self.embodiment)
        self.decide_every, self.decisions = s.decide_every or every, s.decisions or decisions
        self.reference = copy.deepcopy(self.model).requires_grad_(False) if s.kl_coef else None
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=s.learning_rate)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _: 1.0)  # constant (resumable)
        self.env = make_env(self.env_cfg)
        self.follower = brain_follower(self.model, self.embodiment, self.env_cfg)
        limit = (self.env.spec.max_episode_steps if self.env.spec else None) or getattr(self.env.unwrapped,
                                                                                        "max_steps", None)
        self.horizon = min(s.horizon or limit, limit) if limit else s.horizon
        if not self.horizon:
            raise UserError(f"algo.horizon=0 needs an env with an episode limit; set algo.horizon for {cfg.env.name}")
        self.qa = BrainQA(self.model, Path(s.data_dir), self.embodiment, s.qa_scenes, s.qa_eval_scenes,
                          train=s.qa_weight > 0)
        self.qa_before: dict[str, float] = {}
        self.schedule = {"next_eval": s.eval_every, "next_checkpoint": s.checkpoint_every, "iterations": 0}
        self.step, self.train_s = 0, 0.0

    def _warn_ignored_sizes(self, cfg: DictConfig) -> None:
        asked = OmegaConf.to_container(cfg.policy.actor, resolve=True) or {}
        have = self.config.to_dict()
        differ = sorted(k for k, v in asked.items() if k in have and have[k] != (list(v) if isinstance(v, tuple) else v))
        if differ:
            log.warning("policy.actor is not read: the sizes are init_from's (%s differ)", ", ".join(differ))

    # --- resumable state ----------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        return {"schedule": dict(self.schedule), "qa_before": dict(self.qa_before),
                "reference": None if self.reference is None else self.reference.state_dict()}

    def restore_extra(self, state: dict) -> None:
        self.schedule = {k: int(v) for k, v in state["schedule"].items()}
        self.qa_before = {k: float(v) for k, v in state["qa_before"].items()}
        if self.reference is not None:
            self.reference.load_state_dict(state["reference"])

    # --- flights ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def fly(self, seeds: np.ndarray) -> Flights:
        """``group_size`` flights from each seed's reset, goals sampled at the decision points."""
        G, T = self.settings.group_size, self.decisions
        M = len(seeds) * G
        rewards, alive = np.zeros((T, M)), np.zeros((T, M), bool)
        success = np.zeros(M, bool)
        obs_rows, goals, logps, decision, member = [], [], [], [], []
        for m in range(M):
            obs, info = self.env.reset(seed=int(seeds[m // G]))
            self.follower.reset()
            t = -1
            for step in range(self.horizon):
                if t + 1 < T and step % self.decide_every == 0:
                    t += 1
                    row = {k: np.array(obs[k], copy=True) for k in ("image", "depth", "state") if k in obs}
                    row["instruction"] = str(obs["instruction"])
                    dist = self.model.goal_distribution(brain_batch(self.embodiment, [row],
                                                                    self.config.max_text_tokens))
                    goal = dist.sample()[0]
                    obs_rows.append(row)
                    goals.append(goal)
                    logps.append(dist.log_prob(goal).sum())
                    decision.append(t)
                    member.append(m)
                    alive[t, m] = True
                    target = self.follower.to_world(obs, goal.numpy().astype(np.float64))
                obs, reward, terminated, truncated, info = self.env.step(self.follower.act(obs, target))
                rewards[t, m] += float(reward)
                self.step += 1
                if terminated or truncated:
                    break
            success[m] = bool(info.get("is_success", False))
        batch = brain_batch(self.embodiment, obs_rows, self.config.max_text_tokens)
        return Flights(batch, torch.stack(goals), torch.stack(logps), np.array(decision), np.array(member),
                       rewards, alive, success)

    def log_std(self) -> torch.Tensor:
        """The goal head's log-std as the head reads it (clamped)."""
        head = self.model.heads[self.embodiment]
        return head.log_std.detach().clamp(*head.log_std_range)

    def iteration(self) -> dict:
        s = self.settings
        started = time.time()
        self.model.eval()
        seeds = self.rng.integers(*TRAIN_SEED_SPACE, size=s.groups)  # never the evaluation seeds (10000+)
        flights = self.fly(seeds)
        adv, keep = advantages(flights, s.groups, s.group_size, s.advantage)
        stats = {"return_mean": float(flights.returns.mean()), "success": float(flights.success.mean()),
                 "frac_zero_spread": float(1.0 - keep.mean())}
        logp_ref = None
        if self.reference is not None:
            with torch.no_grad():
                logp_ref = goal_log_probs(self.reference, flights, np.arange(len(flights.member)))
        extra = (lambda: s.qa_weight * self.qa.loss(self.rng, s.qa_batch_size)) if s.qa_weight > 0 else None
        flown = time.time()
        if keep.any():
            info = update(self.model, self.optimizer, flights, adv, keep, s.group_size, epochs=s.epochs,
                          minibatches=s.minibatches, clip=s.clip_range, max_grad_norm=s.max_grad_norm, rng=self.rng,
                          beta=s.kl_coef, logp_ref=logp_ref, extra_loss=extra)
            if "qa_ce" in info:
                info["qa_ce"] /= s.qa_weight  # the cross-entropy itself, not its weighted term
            stats.update(info)
        log_std = self.log_std()
        stats.update(log_std=float(log_std.mean()), iteration_s=round(time.time() - started, 2),
                     update_s=round(time.time() - flown, 2),
                     goal_std_m=float((self.model.heads[self.embodiment].scale * log_std.exp()).mean()))
        if not all(math.isfinite(v) for v in stats.values()):
            raise UserError(f"GRPO diverged at {self.step} env steps ({stats}); lower algo.learning_rate")
        return stats

    # --- evaluation and checkpoints ---------------------------------------------------------------------
    def closed_loop(self, episodes: int, held_out: bool = False) -> dict[str, float]:
        """The brain's mean goals steering its follower on the evaluation seeds (seen or held-out wordings)."""
        if episodes <= 0:
            return {}
        follower = brain_follower(self.model, self.embodiment, self.env_cfg)
        policy = BrainPolicy(self.model, self._meta, follower, self.embodiment, self.decide_every, self.decisions)
        env = make_env({**self.env_cfg, "held_out": True, "paraphrase": None} if held_out else self.env_cfg)
        try:
            result = run_episodes(env, policy, episodes, seed=EVAL_SEED_BASE)
        finally:
            env.close()
        metrics = result.metric_means()
        return {"success": float(metrics.get("is_success", math.nan)), "return": result.return_mean,
                "distance_to_goal": float(metrics.get("distance_to_goal", math.nan))}

    def meta(self) -> PolicyMeta:
        env = make_env(self.env_cfg)
        try:
            interface = EnvInterface.of(env)
        finally:
            env.close()
        init = self.init_bundle.meta
        extra = {"stage": "grpo", "embodiment": self.embodiment, "decide_every": self.decide_every,
                 "decisions": self.decisions, "answers": (init.extra or {}).get("answers"),
                 "init_from": str(self.cfg.init_from),
                 # the init run's other trained embodiments stay deployable (and measurable for forgetting)
                 "embodiments": {**trained_envs(init), self.embodiment: dict(self.env_cfg)}}
        if (init.extra or {}).get("experts"):
            extra["experts"] = [dict(e, **({"decide_every": self.decide_every, "decisions": self.decisions}
                                           if e.get("embodiment") == self.embodiment else {}))
                                for e in init.extra["experts"]]
        return PolicyMeta.for_env("spatial_brain", self.config.to_dict(), self.env_cfg, interface, steps=self.step,
                                  extra=extra)

    def write_bundle(self, directory: Path) -> None:
        self._meta.steps = self.step
        save_bundle(directory, self._meta, self.model.state_dict())

    def record(self, stats: dict, evaluate: bool) -> None:
        """One metrics row per iteration (the first, at step 0, is the initial brain's); evaluations when due."""
        started = time.time()
        loop = self.closed_loop(self.settings.eval_episodes) if evaluate else {}
        qa = self.qa.held_out() if evaluate else {}
        row = {"steps": self.step, "iteration": self.schedule["iterations"], "train_s": round(self.train_s, 1),
               **{k: stats.get(k, math.nan) for k in STAT_KEYS},
               "eval_success": loop.get("success", math.nan), "eval_return": loop.get("return", math.nan),
               "eval_distance_to_goal": loop.get("distance_to_goal", math.nan),
               **{f"qa_heldout_{k}": qa.get(k, math.nan) for k in self.qa.qa_eval},
               "eval_s": round(time.time() - started, 1)}
        self.metrics.append(row)
        for logger in self.loggers:
            logger.log_metrics(row, self.step)
        log.info("iteration %d, %d env steps: return %.2f, group success %.2f, clip %.2f, log-std %.2f (%.1f s)%s",
                 row["iteration"], self.step, row["return_mean"], row["success"], row["clip_fraction"], row["log_std"],
                 row["iteration_s"], f" | eval success {loop['success']:.2f}, held-out QA "
                 f"{' '.join(f'{v:.3f}' for v in qa.values())}" if evaluate and loop else "")

    # --- the loop -------------------------------------------------------------------------------------------
    def learn(self) -> dict:
        s = self.settings
        batch_max = s.groups * s.group_size * self.horizon
        if s.total_timesteps < batch_max:
            raise UserError(f"algo.total_timesteps={s.total_timesteps} is less than one iteration ({s.groups} x "
                            f"{s.group_size} flights x {self.horizon} steps = {batch_max}); raise it or lower "
                            "algo.horizon")
        self._meta = self.meta()
        resumed = self.try_resume()
        self.model.eval()
        if not resumed:
            self.qa_before = self.qa.held_out()
        log.info("grpo: spatial brain from %s (%d parameters), %d groups x %d flights of %d steps, decisions at "
                 "every %d steps x %d, %d env steps%s", self.cfg.init_from, self.model.parameter_count(), s.groups,
                 s.group_size, self.horizon, self.decide_every, self.decisions, s.total_timesteps,
                 f", resuming at {self.step}" if resumed else "")
        sched = self.schedule
        try:
            with self.stop:
                if not resumed:
                    self.record({}, evaluate=True)
                while self.step + batch_max <= s.total_timesteps:  # never more env steps than asked
                    t0 = time.time()
                    stats = self.iteration()
                    self.train_s += time.time() - t0
                    sched["iterations"] += 1
                    evaluate = self.step >= sched["next_eval"]
                    if evaluate:
                        sched["next_eval"] += s.eval_every * ((self.step - sched["next_eval"]) // s.eval_every + 1)
                    self.record(stats, evaluate)
                    if s.checkpoint_every and self.step >= sched["next_checkpoint"]:
                        sched["next_checkpoint"] += s.checkpoint_every * (
                            (self.step - sched["next_checkpoint"]) // s.checkpoint_every + 1)
                        self.save_checkpoint(f"step_{self.step}", self.write_bundle)
                        self.save_checkpoint(LAST, self.write_bundle, self.state())
                    if self.stop.requested:
                        raise self.stopped(self.step, self.write_bundle, self.state())
            self.save_checkpoint(FINAL, self.write_bundle)
            qa_after = self.qa.held_out()
            loop = self.closed_loop(s.final_eval_episodes)
            loop_held_out = self.closed_loop(s.final_eval_episodes, held_out=True)
        finally:
            self.env.close()
        iterations = sched["iterations"]
        return {
            "success_rate": loop.get("success", math.nan),
            "success_rate_held_out_wordings": loop_held_out.get("success", math.nan),
            "distance_to_goal": loop.get("distance_to_goal", math.nan), "return_mean": loop.get("return", math.nan),
            "eval_episodes": s.final_eval_episodes,
            "qa_held_out_before": self.qa_before, "qa_held_out": qa_after,
            "qa_held_out_mean_before": float(np.mean(list(self.qa_before.values()))),
            "qa_held_out_mean": float(np.mean(list(qa_after.values()))),
            "steps": self.step, "iterations": iterations, "params": self.model.parameter_count(),
            "train_time_s": round(self.train_s, 1), "s_per_iteration": round(self.train_s / max(iterations, 1), 1),
            "decide_every": self.decide_every, "decisions": self.decisions,
            "env": self.cfg.env.name, "policy": "spatial_brain", "algo": str(s.name), "seed": int(self.cfg.seed),
            "init_from": str(self.cfg.init_from),
        }
