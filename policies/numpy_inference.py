"""NumPy forward passes of the deployable policies, for the ROS node's hot path.

Why: on a control loop that sleeps between ticks every call runs with cold caches, and an eager
torch forward of these tiny networks then spends most of its time in operator dispatch, where
the same arithmetic in NumPy does not (``benchmarks/ros_latency.py`` measures both). Each
function mirrors one actor's ``forward`` and is checked against it: by the tests on many
configurations, and by :meth:`policies.vector_policy.VectorPolicy.numpy_forward` on random
observations before use. Actors (or NCAP variants) without a NumPy forward give ``None``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from policies.mlp import MLPActor
from policies.ncap import NCAP
from policies.protocol import Forward


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float64)


def mlp_forward(actor: MLPActor) -> Forward:
    layers = [(_array(m.weight), _array(m.bias)) for m in actor.net if isinstance(m, nn.Linear)]
    act = {
        "tanh": np.tanh,
        "relu": lambda x: np.maximum(x, 0.0),
        "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
    }[actor.config.activation]

    def forward(obs: np.ndarray) -> np.ndarray:
        h = obs
        for w, b in layers[:-1]:
            h = act(w @ h + b)
        w, b = layers[-1]
        out = w @ h + b
        return np.tanh(out) if squash else out

    squash = actor.config.squash
    return forward


def ncap_forward(actor: NCAP) -> Forward | None:
    """None for a learned period: its smooth oscillator amplifies float32-vs-float64 rounding of
    the clock beyond the 1e-4 agreement we require, so those circuits stay on torch."""
    c = actor.config
    if c.learn_period:
        return None
    with torch.no_grad():
        w = {name: _array(actor.weight(name)) for name in actor.signs}
        task_map = (_array(actor.task_map.weight), _array(actor.task_map.bias)) if c.task_control == "learned" else None

    def side(name: str, s: int) -> np.ndarray:
        return w[name] if c.weight_sharing else w[name][s]

    lo, hi = c.joint_slice
    osc_w = (side("bneuron_osc", 0), side("bneuron_osc", 1))
    prop_w = (side("bneuron_prop", 0), side("bneuron_prop", 1))
    ipsi = (side("muscle_ipsi", 0), side("muscle_ipsi", 1))
    contra = (side("muscle_contra", 0), side("muscle_contra", 1))
    head_only = np.zeros(c.n_joints)
    head_only[0] = 1.0
    whole_period = int(round(c.oscillator_period))

    def oscillator(obs: np.ndarray) -> float:
        steps = float(np.float32(obs[c.time_index]) * np.float32(c.time_scale_steps))  # as torch, in float32
        return float(np.remainder(np.round(steps), whole_period) < whole_period // 2)

    def task_signals(obs: np.ndarray) -> tuple[float, float, float]:
        tlo, thi = c.target_slice
        target = obs[tlo:thi]
        if c.task_control == "hardcoded":
            x = target[0]
            return float(np.linalg.norm(target) > 0.12), float(x < -0.1), float(x > 0.1)
        out = 1.0 / (1.0 + np.exp(-(task_map[0] @ target + task_map[1])))
        return float(out[0]), float(out[1]), float(out[2])

    def forward(obs: np.ndarray) -> np.ndarray:
        q = np.clip(obs[lo:hi] / c.joint_limit, -1.0, 1.0)
        sens = (np.clip(q, 0.0, 1.0), np.clip(-q, 0.0, 1.0))
        osc_d = oscillator(obs)
        osc = (osc_d, 1.0 - osc_d)
        b_in = [np.concatenate([np.atleast_1d(osc_w[s] * osc[s]), prop_w[s] * sens[s][:-1]]) for s in (0, 1)]
        if c.task_control != "none":
            speed, turn_d, turn_v = task_signals(obs)
            inhibit = w["bneuron_speed"] * (1.0 - speed)
            b_in[0] = b_in[0] + inhibit + w["bneuron_turn"] * turn_d * head_only
            b_in[1] = b_in[1] + inhibit + w["bneuron_turn"] * turn_v * head_only
        b_d, b_v = np.clip(b_in[0], 0.0, 1.0), np.clip(b_in[1], 0.0, 1.0)
        m_d = np.clip(ipsi[0] * b_d + contra[0] * b_v, 0.0, 1.0)
        m_v = np.clip(ipsi[1] * b_v + contra[1] * b_d, 0.0, 1.0)
        return m_d - m_v

    return forward
