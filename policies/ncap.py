"""NCAP: the C. elegans swimmer circuit as a policy (Bhattasali, Zador & Engel, NeurIPS 2022).

Each joint has a dorsal/ventral pair of B-class motor neurons and of muscles. The head joint's
B-neurons are driven by an anti-phase square-wave oscillator; every other joint's B-neurons
sense the bend of the joint in front (proprioception), which carries the wave head to tail.
B-neurons excite the same-side muscle and inhibit the opposite one; torque = dorsal − ventral.
Activations are graded, ``clip(x, 0, 1)``. Signs are enforced by clamping in the forward pass
(excitatory ``w ≥ 0``, inhibitory ``w ≤ 0``), as the authors did, so the raw parameters stay
unconstrained for the optimiser. With weight sharing the circuit has 4 parameters and the
same weights drive a body of any length.

For ``navigate``, a speed unit inhibits every B-neuron and two turn units excite the head's
B-neurons; their signals come from the target direction, either by fixed thresholds
(``task_control="hardcoded"``) or a learned linear map (``"learned"``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from policies.typed import check_field_types

TASK_CONTROLS = ("none", "hardcoded", "learned")
MAX_JOINTS = 64


def graded(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0.0, 1.0)


@dataclass
class NCAPConfig:
    """Circuit switches; ``n_joints`` and the observation indices come from the env at run time."""

    n_joints: int = 5
    weight_sharing: bool = True
    sign_constraints: bool = True
    constant_init: bool = True
    oscillator_period: float = 60.0  # control steps (1.8 s at 30 ms)
    learn_period: bool = False
    oscillator_sharpness: float = 10.0  # only for the smooth oscillator a learned period needs
    task_control: str = "none"  # none | hardcoded | learned (navigate's speed and turn units)
    # Observation layout (filled from the env): joint angles, clock and target indices.
    joint_slice: tuple[int, int] = (0, 5)
    joint_limit: float = 2 * math.pi / 6
    time_index: int = -1
    time_scale_steps: int = 1000
    target_slice: tuple[int, int] | None = None
    init_seed: int = 0

    def __post_init__(self):
        check_field_types(self)
        if self.task_control not in TASK_CONTROLS:
            raise ValueError(f"task_control must be one of {', '.join(TASK_CONTROLS)}, got {self.task_control!r}")
        for name in ("oscillator_period", "oscillator_sharpness", "joint_limit"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not self.learn_period and round(self.oscillator_period) < 2:
            raise ValueError(f"oscillator_period must be at least 2 control steps, got {self.oscillator_period}")
        if not 1 <= self.n_joints <= MAX_JOINTS:
            raise ValueError(f"n_joints must be 1..{MAX_JOINTS}, got {self.n_joints}")
        if self.time_scale_steps < 1:
            raise ValueError(f"time_scale_steps must be positive, got {self.time_scale_steps}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["joint_slice"] = list(self.joint_slice)
        d["target_slice"] = list(self.target_slice) if self.target_slice else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> NCAPConfig:
        d = dict(d)
        d["joint_slice"] = tuple(d["joint_slice"])
        if d.get("target_slice") is not None:
            d["target_slice"] = tuple(d["target_slice"])
        return cls(**d)


# name -> (sign, per-joint parameter count in the unshared circuit as a function of J)
_EXC, _INH = 1, -1
_WEIGHTS = {
    "bneuron_osc": _EXC,
    "bneuron_prop": _EXC,
    "muscle_ipsi": _EXC,
    "muscle_contra": _INH,
}
_TASK_WEIGHTS = {"bneuron_speed": _INH, "bneuron_turn": _EXC}


def _unshared_shape(name: str, n_joints: int) -> tuple[int, ...]:
    """Per-side (dorsal, ventral) weights: oscillator on the head only, proprioception on J-1 joints."""
    if name == "bneuron_osc":
        return (2,)
    if name == "bneuron_prop":
        return (2, n_joints - 1)
    if name in ("muscle_ipsi", "muscle_contra"):
        return (2, n_joints)
    return (1,)  # speed and turn units stay shared


class NCAP(nn.Module):
    """Maps observations to joint torques in [-1, 1] through the swimmer circuit."""

    def __init__(self, config: NCAPConfig):
        super().__init__()
        if config.task_control != "none" and config.target_slice is None:
            raise ValueError("NCAP task_control needs the target in the observation (navigate task)")
        if config.n_joints < 2 and not config.weight_sharing:
            raise ValueError("the unshared circuit needs at least 2 joints")
        self.config = config
        gen = torch.Generator().manual_seed(config.init_seed)
        names = dict(_WEIGHTS)
        if config.task_control != "none":
            names.update(_TASK_WEIGHTS)
        self.signs = names
        for name, sign in names.items():
            shape = (1,) if config.weight_sharing else _unshared_shape(name, config.n_joints)
            self.register_parameter(name, nn.Parameter(self._init(sign, shape, gen)))
        if config.learn_period:
            self.log_period = nn.Parameter(torch.tensor([math.log(config.oscillator_period)]))
        if config.task_control == "learned":
            self.task_map = nn.Linear(2, 3)  # to_target (x, y) -> speed, turn-dorsal, turn-ventral

    def _init(self, sign: int, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
        c = self.config
        if c.sign_constraints:
            if c.constant_init:
                return torch.full(shape, float(sign))
            return sign * torch.rand(shape, generator=gen)
        if c.constant_init:  # unsigned: ±1 at random
            return torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, 1.0)
        return torch.rand(shape, generator=gen) * 2 - 1

    def weight(self, name: str) -> torch.Tensor:
        w = getattr(self, name)
        if not self.config.sign_constraints:
            return w
        return w.clamp(min=0.0) if self.signs[name] > 0 else w.clamp(max=0.0)

    def _side(self, name: str, side: int) -> torch.Tensor:
        """Weight for one side (0 dorsal, 1 ventral), broadcastable over (batch, joints)."""
        w = self.weight(name)
        return w if self.config.weight_sharing else w[side]

    def period(self) -> torch.Tensor:
        if self.config.learn_period:
            return self.log_period.exp()
        return torch.tensor(self.config.oscillator_period)

    def oscillator(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dorsal and ventral oscillator outputs, shape (..., 1)."""
        c = self.config
        steps = obs[..., c.time_index : c.time_index + 1 or None] * c.time_scale_steps
        if c.learn_period:
            # A smooth square wave so the period receives gradients.
            s = torch.sin(2 * math.pi * steps / self.period())
            dorsal = torch.sigmoid(c.oscillator_sharpness * s)
        else:
            period = int(round(c.oscillator_period))
            phase = torch.remainder(torch.round(steps), period)
            dorsal = (phase < period // 2).to(obs.dtype)
        return dorsal, 1.0 - dorsal

    def task_signals(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(speed, turn toward dorsal, turn toward ventral) in [0, 1], each shape (..., 1)."""
        lo, hi = self.config.target_slice
        target = obs[..., lo:hi]  # head frame (x, y); the head points along -y
        if self.config.task_control == "hardcoded":
            x = target[..., 0:1]
            speed = (torch.linalg.vector_norm(target, dim=-1, keepdim=True) > 0.12).to(obs.dtype)
            # Dorsal head bend turns the swimmer toward -x in its head frame (measured on navigate).
            return speed, (x < -0.1).to(obs.dtype), (x > 0.1).to(obs.dtype)
        out = torch.sigmoid(self.task_map(target))
        return out[..., 0:1], out[..., 1:2], out[..., 2:3]

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        c = self.config
        lo, hi = c.joint_slice
        q = (obs[..., lo:hi] / c.joint_limit).clamp(-1.0, 1.0)
        sens_d, sens_v = q.clamp(0.0, 1.0), (-q).clamp(0.0, 1.0)
        osc_d, osc_v = self.oscillator(obs)

        # B-neuron drive: the oscillator on the head joint, proprioception from the joint in front.
        def drive(side: int, osc: torch.Tensor, sens: torch.Tensor) -> torch.Tensor:
            w_osc = self._side("bneuron_osc", side)
            w_prop = self._side("bneuron_prop", side)
            return torch.cat([w_osc * osc, w_prop * sens[..., :-1]], dim=-1)

        b_d_in, b_v_in = drive(0, osc_d, sens_d), drive(1, osc_v, sens_v)
        if c.task_control != "none":
            speed, turn_d, turn_v = self.task_signals(obs)
            inhibit = self.weight("bneuron_speed") * (1.0 - speed)
            turn = self.weight("bneuron_turn")
            head_only = torch.zeros(c.n_joints, dtype=obs.dtype, device=obs.device)
            head_only[0] = 1.0
            b_d_in = b_d_in + inhibit + turn * turn_d * head_only
            b_v_in = b_v_in + inhibit + turn * turn_v * head_only
        b_d, b_v = graded(b_d_in), graded(b_v_in)

        m_d = graded(self._side("muscle_ipsi", 0) * b_d + self._side("muscle_contra", 0) * b_v)
        m_v = graded(self._side("muscle_ipsi", 1) * b_v + self._side("muscle_contra", 1) * b_d)
        return m_d - m_v


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


