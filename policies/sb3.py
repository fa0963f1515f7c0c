"""Plug any project actor into SB3's on-policy algorithms as the mean of a Gaussian policy.

SB3's ``ActorCriticPolicy`` puts a linear ``action_net`` after the actor latent; here the
actor's output *is* the action mean (NCAP already emits torques in [-1, 1]), so
``action_net`` is the identity and the state-independent log-std is fixed or learned. The
critic is an MLP on the full observation. Constructor arguments are plain data so that SB3's
zip save/load round-trips the policy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn

from policies.mlp import ACTIVATIONS
from policies.registry import build_module


class _ActorCriticNets(nn.Module):
    def __init__(self, actor: nn.Module, features_dim: int, action_dim: int, critic_arch: list[int], activation: str):
        super().__init__()
        self.policy_net = actor
        layers: list[nn.Module] = []
        width = features_dim
        for h in critic_arch:
            linear = nn.Linear(width, h)
            nn.init.orthogonal_(linear.weight, gain=np.sqrt(2))
            nn.init.zeros_(linear.bias)
            layers += [linear, ACTIVATIONS[activation]()]
            width = h
        self.value_net = nn.Sequential(*layers)
        self.latent_dim_pi = action_dim
        self.latent_dim_vf = width

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_actor(features), self.forward_critic(features)

    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        return self.policy_net(features)

    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        return self.value_net(features)


class ActorCriticAdapter(ActorCriticPolicy):
    def __init__(
        self,
        observation_space,
        action_space,
        lr_schedule,
        actor_kind: str = "mlp",
        actor_config: dict | None = None,
        critic_arch: list[int] | tuple[int, ...] = (64, 64),
        critic_activation: str = "tanh",
        learn_std: bool = True,
        log_std_init: float = 0.0,
        **kwargs: Any,
    ):
        self.actor_kind = actor_kind
        self.actor_config = dict(actor_config or {})
        self.critic_arch = list(critic_arch)
        self.critic_activation = critic_activation
        self.learn_std = learn_std
        kwargs["ortho_init"] = False  # the actor and critic initialise themselves
        super().__init__(observation_space, action_space, lr_schedule, log_std_init=log_std_init, **kwargs)

    def _build_mlp_extractor(self) -> None:
        actor = build_module(self.actor_kind, self.actor_config)
        self.mlp_extractor = _ActorCriticNets(
            actor, self.features_dim, int(np.prod(self.action_space.shape)), self.critic_arch, self.critic_activation
        )

    def _build(self, lr_schedule) -> None:
        super()._build(lr_schedule)
        self.action_net = nn.Identity()
        self.log_std.requires_grad_(self.learn_std)
        nn.init.orthogonal_(self.value_net.weight, gain=1.0)
        nn.init.zeros_(self.value_net.bias)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    @property
    def actor(self) -> nn.Module:
        return self.mlp_extractor.policy_net

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            actor_kind=self.actor_kind,
            actor_config=self.actor_config,
            critic_arch=self.critic_arch,
            critic_activation=self.critic_activation,
            learn_std=self.learn_std,
        )
        return data
