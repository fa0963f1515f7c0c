"""Policy kinds by name: the one place that maps a config's ``policy.kind`` to a module."""

from __future__ import annotations

from torch import nn

from policies.mlp import MLPActor, MLPConfig
from policies.ncap import NCAP, NCAPConfig

ACTORS = {
    "ncap": (NCAPConfig, NCAP),
    "mlp": (MLPConfig, MLPActor),
}


def build_actor(kind: str, config: dict) -> nn.Module:
    if kind not in ACTORS:
        raise ValueError(f"unknown policy kind {kind!r}; known: {', '.join(sorted(ACTORS))}")
    config_cls, module_cls = ACTORS[kind]
    try:
        cfg = config_cls.from_dict(config)
    except (TypeError, KeyError, ValueError) as e:
        raise ValueError(f"bad {kind} policy config: {type(e).__name__}: {e}") from None
    return module_cls(cfg)
