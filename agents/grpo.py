"""GRPO for continuous control: group-relative advantages instead of a critic.

DeepSeekMath's objective (Shao et al. 2024, eq. 3) with the robot-learning way of forming
groups: ``groups`` start states per iteration, each snapshotted and restored into
``group_size`` members that differ only in their sampled actions (SimpleVLA-RL, TGRPO).

- Outcome advantages: Â_i,t = (R_i − mean_G R) / std_G R for every step of member i.
- Process advantages: step rewards normalised by the group's mean and std over all its
  members' steps, then Â_i,t = the return-to-go of the normalised rewards.
- Groups whose members all scored the same carry no signal and are dropped; the fraction
  dropped is logged (TRL's ``frac_reward_zero_std``).
- Loss: −(1/G) Σ_i (1/|o_i|) Σ_t [min(ρ Â, clip(ρ, 1−ε, 1+ε) Â) − β D_KL], with the unbiased
  k3 estimator D_KL = π_ref/π_θ − log(π_ref/π_θ) − 1 against the policy at the start of
  training (β = 0 by default, as ACE-Brain; then no reference is kept).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from agents.population import MAX_POPULATION_ENVS, PopulationSettings, PopulationTrainer
from agents.schema import setting

ADVANTAGES = ("outcome", "process")
ZERO_SPREAD = 1e-8


def _zero_spread(std: np.ndarray, mean: np.ndarray) -> np.ndarray:
    return std <= ZERO_SPREAD * np.maximum(1.0, np.abs(mean))


def outcome_advantages(returns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(advantage per member, kept groups) for returns of shape (groups, G); std over the group (ddof 0)."""
    mean = returns.mean(axis=1, keepdims=True)
    std = returns.std(axis=1, keepdims=True)
    keep = ~_zero_spread(std[:, 0], mean[:, 0])
    adv = np.where(keep[:, None], (returns - mean) / np.where(keep[:, None], std, 1.0), 0.0)
    return adv, keep


def process_advantages(rewards: np.ndarray, alive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(advantage per step, kept groups) for step rewards and alive masks of shape (T, groups, G).

    Each group's rewards are normalised by the mean and std of all its members' live steps;
    the advantage of a step is the sum of the normalised rewards from that step to the end.
    """
    n = alive.sum(axis=(0, 2))
    mean = (rewards * alive).sum(axis=(0, 2)) / np.maximum(n, 1)
    var = (((rewards - mean[None, :, None]) ** 2) * alive).sum(axis=(0, 2)) / np.maximum(n, 1)
    std = np.sqrt(var)
    keep = ~_zero_spread(std, mean)
    normed = np.where(alive, (rewards - mean[None, :, None]) / np.where(keep, std, 1.0)[None, :, None], 0.0)
    to_go = np.flip(np.cumsum(np.flip(normed, axis=0), axis=0), axis=0)
    return np.where(keep[None, :, None] & alive, to_go, 0.0), keep


def clipped_surrogate(logp: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, clip: float) -> torch.Tensor:
    """Per step: min(ρÂ, clip(ρ, 1−ε, 1+ε)Â) with ρ = π_θ/π_old."""
    ratio = torch.exp(logp - logp_old)
    return torch.minimum(ratio * adv, ratio.clamp(1.0 - clip, 1.0 + clip) * adv)


def k3_kl(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """Per step: π_ref/π_θ − log(π_ref/π_θ) − 1 (Schulman's k3; unbiased for KL(π_θ‖π_ref), never negative)."""
    log_ratio = logp_ref - logp
    return torch.exp(log_ratio) - log_ratio - 1.0


def grpo_loss(logp: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, clip: float,
              beta: float = 0.0, logp_ref: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """The negated GRPO objective over (T, M) trajectories: each trajectory's steps averaged, then the trajectories."""
    per_step = clipped_surrogate(logp, logp_old, adv, clip)
    kl = k3_kl(logp, logp_ref) if beta and logp_ref is not None else torch.zeros_like(per_step)
    per_step = per_step - beta * kl
    lengths = mask.sum(0).clamp(min=1.0)
    objective = ((per_step * mask).sum(0) / lengths).mean()
    with torch.no_grad():
        n = mask.sum().clamp(min=1.0)
        clipped = ((torch.exp(logp - logp_old) - 1.0).abs() > clip).float()
        info = {"clip_fraction": float((clipped * mask).sum() / n), "kl_ref": float((kl * mask).sum() / n)}
    return -objective, info


@dataclass
class GRPOSettings(PopulationSettings):
    groups: int = setting(4, low=1)  # B start states per iteration
    group_size: int = setting(8, low=2)  # G members per start state
    advantage: str = setting("outcome", choices=ADVANTAGES)
    epochs: int = setting(4, low=1)  # mu: passes over each batch
    minibatches: int = setting(1, low=1)  # groups are split into this many minibatches per pass
    clip_range: float = setting(0.2, above=0.0)  # epsilon of the clipped surrogate
    kl_coef: float = setting(0.0, low=0.0)  # beta of the k3 KL to the initial policy
    max_grad_norm: float = setting(0.5, above=0.0)

    def __post_init__(self):
        if self.minibatches > self.groups:
            raise ValueError(f"minibatches must be 1..groups ({self.groups}), got {self.minibatches}")
        if self.groups * self.group_size > MAX_POPULATION_ENVS:
            raise ValueError(f"groups x group_size = {self.groups * self.group_size} envs, over the "
                             f"{MAX_POPULATION_ENVS} one run steps")


class GRPOTrainer(PopulationTrainer):
    STAT_KEYS = ("frac_zero_spread", "action_std", "clip_fraction", "kl_ref")
    Settings = GRPOSettings
    ENVS_KNOB = "algo.groups x algo.group_size"

    def __init__(self, cfg, run, loggers):
        algo = cfg.algo
        self.groups, self.group_size = int(algo.groups), int(algo.group_size)
        super().__init__(cfg, run, loggers, n_envs=self.groups * self.group_size)
        trainable = [p for p in self.policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(trainable, lr=float(algo.learning_rate))
        self.beta = float(algo.kl_coef)
        self.reference = copy.deepcopy(self.policy).requires_grad_(False) if self.beta else None
        self.batch_rng = np.random.default_rng(int(cfg.seed) + 1)

    def algo_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "batch_rng": self.batch_rng.bit_generator.state,
                "reference": None if self.reference is None else self.reference.state_dict()}

    def restore_algo(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.batch_rng.bit_generator.state = state["batch_rng"]
        if self.reference is not None:
            self.reference.load_state_dict(state["reference"])

    def _sample_actions(self, obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            dist = self.policy.distribution(torch.as_tensor(self.normalizer(obs)))
            return dist.sample().numpy()

    def iteration(self) -> dict:
        algo = self.cfg.algo
        start = self.start_groups(self.groups, self.group_size)
        batch = self.engine.rollout(start, self._sample_actions, self.horizon)
        self.steps += batch.env_steps
        T, B, G = batch.alive.shape[0], self.groups, self.group_size
        returns = batch.returns.reshape(B, G)
        if algo.advantage == "outcome":
            adv_group, keep = outcome_advantages(returns)
            adv = np.broadcast_to(adv_group.reshape(1, B * G), (T, B * G))
        else:
            adv, keep = process_advantages(batch.rewards.reshape(T, B, G), batch.alive.reshape(T, B, G))
            adv = adv.reshape(T, B * G)
        stats = {
            "rollout_return_mean": float(batch.returns.mean()),
            "frac_zero_spread": float(1.0 - keep.mean()),
            "action_std": float(self.policy.log_std.detach().exp().mean()),
        }
        obs = torch.as_tensor(self.normalizer(batch.obs))  # statistics of the policy that collected it
        self.normalizer.update(batch.obs[batch.alive])
        kept = np.flatnonzero(keep)
        if len(kept) == 0:
            return stats
        actions = torch.as_tensor(batch.actions)
        mask = torch.as_tensor(batch.alive, dtype=torch.float32)
        adv_t = torch.as_tensor(np.ascontiguousarray(adv), dtype=torch.float32)
        with torch.no_grad():
            logp_old = self.policy.log_prob(obs, actions)
            logp_ref = self.reference.log_prob(obs, actions) if self.reference is not None else None
        infos = []
        for _ in range(int(algo.epochs)):
            for chunk in np.array_split(self.batch_rng.permutation(kept), min(int(algo.minibatches), len(kept))):
                members = torch.as_tensor((chunk[:, None] * G + np.arange(G)).ravel())
                logp = self.policy.log_prob(obs[:, members], actions[:, members])
                loss, info = grpo_loss(logp, logp_old[:, members], adv_t[:, members], mask[:, members],
                                       float(algo.clip_range), self.beta,
                                       None if logp_ref is None else logp_ref[:, members])
                self.optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), float(algo.max_grad_norm))
                self.optimizer.step()
                infos.append(info)
        stats.update({k: float(np.mean([i[k] for i in infos])) for k in infos[0]})
        return stats
