"""MLP actor: the unstructured baseline NCAP is compared against."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from policies.typed import check_field_types

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU}
MAX_LAYERS, MAX_WIDTH = 64, 65536  # far above any MLP here: beyond them a config is a typo


@dataclass
class MLPConfig:
    """Sizes come from the env at run time; ``hidden`` and ``activation`` from the config."""

    obs_dim: int = 24
    action_dim: int = 5
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = "tanh"
    squash: bool = False  # tanh on the output (SAC's deterministic action)

    def __post_init__(self):
        check_field_types(self)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {sorted(ACTIVATIONS)}")
        for name in ("obs_dim", "action_dim"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.hidden, list | tuple) or len(self.hidden) > MAX_LAYERS or not all(
                isinstance(h, int) and not isinstance(h, bool) and 1 <= h <= MAX_WIDTH for h in self.hidden):
            raise ValueError(f"hidden must be a list of at most {MAX_LAYERS} layer widths of 1..{MAX_WIDTH}, "
                             f"got {str(self.hidden)[:80]}")
        self.hidden = list(self.hidden)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MLPConfig:
        return cls(**d)


class MLPActor(nn.Module):
    """Observation -> action mean. Orthogonal init with a small last layer, as SB3 does."""

    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = config.obs_dim
        for h in config.hidden:
            layers += [nn.Linear(width, h), ACTIVATIONS[config.activation]()]
            width = h
        layers.append(nn.Linear(width, config.action_dim))
        self.net = nn.Sequential(*layers)
        linears = [m for m in self.net if isinstance(m, nn.Linear)]
        for i, m in enumerate(linears):
            nn.init.orthogonal_(m.weight, gain=0.01 if i == len(linears) - 1 else 2**0.5)
            nn.init.zeros_(m.bias)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        out = self.net(obs)
        return torch.tanh(out) if self.config.squash else out
