"""OpenAI-style evolution strategies (Salimans et al. 2017), the NCAP paper's third training method.

Each generation perturbs the policy's parameters θ with ``population / 2`` Gaussian directions
ε, evaluated mirrored (θ + σε and θ − σε on the same start state: common random numbers),
ranks all returns to centred ranks in [−0.5, 0.5] (fitness shaping: robust to the return's
scale and outliers), and ascends g = Σ_i (F⁺_i − F⁻_i) ε_i / population with Adam and an L2
penalty (``weight_decay``), as OpenAI's ``es-distributed`` and the NCAP repo's ``estorch`` do.
The policy acts deterministically (its mean); all members run in one batch with their own
parameters through ``torch.func.vmap``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.func import functional_call, vmap

from agents.errors import UserError
from agents.population import MAX_POPULATION_ENVS, PopulationSettings, PopulationTrainer
from agents.schema import setting


def centered_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks of ``x`` mapped linearly to [−0.5, 0.5] (ties broken by position)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    ranks = np.empty(len(x))
    ranks[np.argsort(x, kind="stable")] = np.arange(len(x))
    return ranks / max(len(x) - 1, 1) - 0.5


class OpenES:
    """Ask/tell ES on a flat parameter vector (maximises the fitness)."""

    def __init__(self, theta: np.ndarray, sigma: float, learning_rate: float, population: int,
                 weight_decay: float = 0.0, seed: int = 0):
        if population < 2 or population % 2:
            raise ValueError(f"the ES population must be even and >= 2 (mirrored pairs), got {population}")
        if sigma <= 0 or learning_rate <= 0:
            raise ValueError(f"ES sigma and learning_rate must be > 0, got {sigma} and {learning_rate}")
        self.theta = torch.nn.Parameter(torch.as_tensor(theta, dtype=torch.float64).clone())
        self.sigma = float(sigma)
        self.pairs = population // 2
        self.optimizer = torch.optim.Adam([self.theta], lr=learning_rate, weight_decay=weight_decay)
        self.rng = np.random.default_rng(seed)
        self.eps: np.ndarray | None = None

    def ask(self) -> np.ndarray:
        """(population, dim) candidates: rows 2k and 2k+1 are θ ± σε_k."""
        self.eps = self.rng.standard_normal((self.pairs, self.theta.numel()))
        theta = self.theta.detach().numpy()
        plus, minus = theta + self.sigma * self.eps, theta - self.sigma * self.eps
        return np.stack([plus, minus], axis=1).reshape(2 * self.pairs, -1)

    def tell(self, fitness: np.ndarray) -> np.ndarray:
        """Update θ from the candidates' fitness (in ask()'s order); returns the gradient estimate."""
        if self.eps is None:
            raise RuntimeError("tell() before ask()")
        shaped = centered_ranks(fitness).reshape(self.pairs, 2)
        grad = (shaped[:, 0] - shaped[:, 1]) @ self.eps / (2 * self.pairs)
        self.optimizer.zero_grad()
        self.theta.grad = torch.as_tensor(-grad)  # Adam minimises
        self.optimizer.step()
        self.eps = None
        return grad


@dataclass
class ESSettings(PopulationSettings):
    population: int = setting(16, low=2, high=MAX_POPULATION_ENVS)  # members per generation, mirrored pairs
    sigma: float = setting(0.02, above=0.0)  # perturbation std in parameter space
    weight_decay: float = setting(0.005, low=0.0)  # L2 coefficient

    def __post_init__(self):
        if self.population % 2:
            raise ValueError(f"population must be even (mirrored pairs), got {self.population}")


class ESTrainer(PopulationTrainer):
    STAT_KEYS = ("rollout_return_max", "grad_norm")
    Settings = ESSettings
    ENVS_KNOB = "algo.population"

    def __init__(self, cfg, run, loggers):
        algo = cfg.algo
        population = int(algo.population)
        super().__init__(cfg, run, loggers, n_envs=population)
        self.names = [n for n, p in self.policy.actor.named_parameters() if p.requires_grad]
        self.shapes = [p.shape for n, p in self.policy.actor.named_parameters() if p.requires_grad]
        theta = torch.cat([p.detach().reshape(-1) for p in self.policy.actor.parameters() if p.requires_grad])
        try:
            self.es = OpenES(theta.double().numpy(), float(algo.sigma), float(algo.learning_rate), population,
                             float(algo.weight_decay), seed=int(cfg.seed))
        except ValueError as e:
            raise UserError(str(e)) from None
        self._batched_actor = vmap(self._actor_with, in_dims=(0, 0))

    def algo_state(self) -> dict:
        es = self.es
        return {"theta": es.theta.detach().clone(), "optimizer": es.optimizer.state_dict(),
                "rng": es.rng.bit_generator.state}

    def restore_algo(self, state: dict) -> None:
        es = self.es
        with torch.no_grad():
            es.theta.copy_(state["theta"])
        es.optimizer.load_state_dict(state["optimizer"])
        es.rng.bit_generator.state = state["rng"]

    def _unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out, i = {}, 0
        for name, shape in zip(self.names, self.shapes):
            n = int(np.prod(shape))
            out[name] = flat[..., i : i + n].reshape(*flat.shape[:-1], *shape)
            i += n
        return out

    def _actor_with(self, flat: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        return functional_call(self.policy.actor, self._unflatten(flat), (obs,))

    def _set_actor(self, flat: np.ndarray) -> None:
        params = self._unflatten(torch.as_tensor(flat, dtype=torch.float32))
        with torch.no_grad():
            for name, p in self.policy.actor.named_parameters():
                if name in params:
                    p.copy_(params[name])

    def iteration(self) -> dict:
        candidates = torch.as_tensor(self.es.ask(), dtype=torch.float32)

        def act(obs: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return self._batched_actor(candidates, torch.as_tensor(self.normalizer(obs))).numpy()

        start = self.start_groups(self.engine.n_envs // 2, 2)  # each mirrored pair shares a start state
        batch = self.engine.rollout(start, act, self.horizon)
        self.steps += batch.env_steps
        self.normalizer.update(batch.obs[batch.alive])
        grad = self.es.tell(batch.returns)
        self._set_actor(self.es.theta.detach().numpy())
        return {
            "rollout_return_mean": float(batch.returns.mean()),
            "rollout_return_max": float(batch.returns.max()),
            "grad_norm": float(np.linalg.norm(grad)),
        }
