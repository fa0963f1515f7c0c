"""A policy on a vector observation: standardise, run the actor (NCAP, MLP), clip to the action bounds.

The exported form of every RL-trained actor: what evaluation, the learning curve's periodic
checks and the ROS node run, with no SB3 and no pickle. Stateless, so a batch of episodes is one
forward pass. Where the actor has a NumPy forward (``policies/numpy_inference.py``) the policy
offers it for a control loop's hot path, after checking it against torch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from policies.protocol import BatchedPolicy, Forward, Policy, PolicyMeta

NUMPY_CHECK_SAMPLES = 64
NUMPY_CHECK_ATOL = 1e-4


class VectorPolicy(Policy, nn.Module):
    """Deterministic: normalise the observation, run the actor, clip to the action bounds."""

    def __init__(self, actor: nn.Module, meta: PolicyMeta, obs_mean: torch.Tensor | None = None,
                 obs_var: torch.Tensor | None = None,
                 numpy_actor: Callable[[nn.Module], Forward | None] | None = None):
        nn.Module.__init__(self)
        self.actor = actor
        self.meta = meta
        self._numpy_actor = numpy_actor
        self.register_buffer("obs_mean", obs_mean if obs_mean is not None else torch.zeros(0))
        self.register_buffer("obs_var", obs_var if obs_var is not None else torch.zeros(0))
        self.register_buffer("low", torch.tensor(meta.action_low, dtype=torch.float32))
        self.register_buffer("high", torch.tensor(meta.action_high, dtype=torch.float32))

    @property
    def normalizes(self) -> bool:
        return self.obs_mean.numel() > 0

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        obs = obs.to(torch.float32)
        if self.normalizes:
            clip = self.meta.normalization["clip"]
            obs = ((obs - self.obs_mean) / torch.sqrt(self.obs_var + 1e-8)).clamp(-clip, clip)
        return torch.max(torch.min(self.actor(obs), self.high), self.low)

    @torch.inference_mode()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """One action for one observation, or (B, A) actions for (B, obs_dim) observations."""
        return self(torch.as_tensor(np.asarray(obs), dtype=torch.float32)).numpy()

    def batched(self, slots: int) -> BatchedPolicy:
        return _Stacked(self)

    def tensors(self) -> dict[str, torch.Tensor]:
        """What the bundle stores: the actor's state and, when normalising, the observation statistics."""
        out = {f"actor.{k}": v.detach().float() for k, v in self.actor.state_dict().items()}
        if self.normalizes:
            out["obs_mean"], out["obs_var"] = self.obs_mean, self.obs_var
        return out

    def numpy_forward(self, atol: float = NUMPY_CHECK_ATOL) -> Forward | None:
        """``act`` in NumPy (normalisation, actor, clipping), or None if the actor has none or it disagrees.

        Compared with torch on random observations first (integer clock values where the actor
        reads a clock, which exercise an oscillator's phase); any action off by more than
        ``atol`` gives None.
        """
        actor = self._numpy_actor(self.actor) if self._numpy_actor is not None else None
        if actor is None:
            return None
        low, high = self.low.numpy().astype(np.float64), self.high.numpy().astype(np.float64)
        if self.normalizes:
            # In float32, as torch normalises: a clock feature then reaches the oscillator bit-identical.
            mean = self.obs_mean.numpy()
            std = np.sqrt(self.obs_var.numpy() + np.float32(1e-8))
            clip = np.float32(self.meta.normalization["clip"])

            def act(obs: np.ndarray) -> np.ndarray:
                normalized = np.clip((np.asarray(obs, dtype=np.float32) - mean) / std, -clip, clip)
                return np.clip(actor(normalized.astype(np.float64)), low, high)
        else:

            def act(obs: np.ndarray) -> np.ndarray:
                return np.clip(actor(np.asarray(obs, dtype=np.float64)), low, high)

        rng = np.random.default_rng(0)
        samples = rng.normal(size=(NUMPY_CHECK_SAMPLES, self.meta.obs_dim))
        config = getattr(self.actor, "config", None)
        time_index = getattr(config, "time_index", None)
        if time_index is not None:
            samples[:, time_index] = rng.integers(0, 1000, size=NUMPY_CHECK_SAMPLES) / config.time_scale_steps
        for obs in samples:
            if not np.allclose(act(obs), self.act(obs), atol=atol, rtol=0.0):
                return None
        return act


class _Stacked(BatchedPolicy):
    """A stateless policy over many episodes: one forward pass on the stacked observations."""

    def __init__(self, policy: VectorPolicy):
        self.policy = policy

    def reset(self, slot: int) -> None:
        pass

    def act(self, observations: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        slots = list(observations)
        actions = self.policy.act(np.stack([observations[s] for s in slots]))
        return dict(zip(slots, actions, strict=True))
