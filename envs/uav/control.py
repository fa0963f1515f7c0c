"""The stages every quadrotor controller shares: the action's thrust map, the mixer and the body-rate loop.

The env's ``ctbr`` action mode (collective thrust + body rates) runs :class:`RateLoop` at the
physics rate, and the cascaded PID (``policies/pid.py``) ends in the same two stages, so the
learned and the scripted controllers fly through one implementation. :func:`thrust_from_action`
is how the env reads an action in newtons; :func:`action_from_thrust` is how a scripted
controller (the PID, the ROS 2 adapter) writes one.
"""

from __future__ import annotations

import numpy as np

from envs.uav.model import QuadrotorParams


def thrust_from_action(a: np.ndarray | float, hover: float, maximum: float) -> np.ndarray:
    """-1 → 0 N, 0 → hover thrust, +1 → maximum, linear on each side."""
    a = np.clip(a, -1.0, 1.0)
    return np.where(a < 0.0, hover * (1.0 + a), hover + a * (maximum - hover))


def action_from_thrust(thrust: np.ndarray | float, hover: float, maximum: float) -> np.ndarray:
    """Inverse of :func:`thrust_from_action` (for scripted controllers)."""
    t = np.clip(thrust, 0.0, maximum)
    return np.where(t < hover, t / hover - 1.0, (t - hover) / (maximum - hover))


def allocation_matrix(p: QuadrotorParams) -> np.ndarray:
    """``[T, τx, τy, τz] = A @ rotor_thrusts`` for thrust along body z at each rotor site."""
    x = np.array([xy[0] for xy in p.rotor_xy])
    y = np.array([xy[1] for xy in p.rotor_xy])
    spin = np.array(p.rotor_spin, dtype=np.float64)
    return np.stack([np.ones(len(x)), y, -x, spin * p.k_m])


class Mixer:
    """Collective thrust and body torques -> per-rotor thrusts within [0, thrust_max].

    When the rotors saturate, yaw torque is given up first (it is scaled down until roll,
    pitch and thrust fit), the usual priority on small multirotors.
    """

    def __init__(self, p: QuadrotorParams):
        self.p = p
        self.inverse = np.linalg.inv(allocation_matrix(p))

    def __call__(self, thrust: float, torque: np.ndarray) -> np.ndarray:
        rotors = self.inverse @ np.array([thrust, torque[0], torque[1], torque[2]])
        if rotors.min() >= 0.0 and rotors.max() <= self.p.thrust_max:
            return rotors
        no_yaw = self.inverse @ np.array([thrust, torque[0], torque[1], 0.0])
        yaw = rotors - no_yaw
        # the largest share s of the yaw torque with 0 <= no_yaw + s * yaw <= thrust_max
        with np.errstate(divide="ignore", invalid="ignore"):
            limit = np.where(yaw > 0, (self.p.thrust_max - no_yaw) / yaw, np.where(yaw < 0, -no_yaw / yaw, np.inf))
        rotors = no_yaw + float(np.clip(limit.min(), 0.0, 1.0)) * yaw
        return np.clip(rotors, 0.0, self.p.thrust_max)


class RateLoop:
    """Body-rate P loop with gyroscopic feed-forward: τ = J·k·(ω* − ω) + ω × Jω."""

    def __init__(self, p: QuadrotorParams, gain: tuple[float, float, float]):
        self.inertia = np.asarray(p.inertia, dtype=np.float64)
        self.gain = np.asarray(gain, dtype=np.float64)

    def torque(self, rate_setpoint: np.ndarray, rate: np.ndarray) -> np.ndarray:
        # Scalar arithmetic: this runs at the physics rate in the ctbr env, where numpy's
        # per-call overhead on 3-vectors (np.cross and friends) would dominate the step.
        jx, jy, jz = self.inertia
        kx, ky, kz = self.gain
        wx, wy, wz = float(rate[0]), float(rate[1]), float(rate[2])
        return np.array([
            jx * kx * (rate_setpoint[0] - wx) + (jz - jy) * wy * wz,
            jy * ky * (rate_setpoint[1] - wy) + (jx - jz) * wz * wx,
            jz * kz * (rate_setpoint[2] - wz) + (jy - jx) * wx * wy,
        ])


# Rate-loop gains (1/s) per preset: the bandwidth the motor lag allows (about 1/(2.5·tau)).
RATE_GAINS = {"cf2": (20.0, 20.0, 8.0), "x2": (10.0, 10.0, 5.0)}


def rotation_error(r: np.ndarray, r_des: np.ndarray) -> np.ndarray:
    """Geometric attitude error e_R = ½ vee(R_desᵀR − RᵀR_des), in the body frame (Lee et al. 2010)."""
    m = r_des.T @ r - r.T @ r_des
    return 0.5 * np.array([m[2, 1], m[0, 2], m[1, 0]])
