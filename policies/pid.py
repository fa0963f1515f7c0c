"""Cascaded PID flight controller: position → velocity → attitude → body rate → mixer.

The reference every learned UAV controller is compared against, and a scripted expert. It reads
only the env's observation (body-frame errors and velocity, the attitude matrix, the gyro), so
it flies in simulation and behind the ROS 2 adapter alike, and it uses only nominal vehicle
parameters: mass or motor randomisation and wind are rejected by the velocity integrator.

- position P: velocity setpoint ``k_pos·e``, limited to ``max_speed``;
- velocity PI: acceleration setpoint, limited to ``max_tilt_deg`` of lean;
- thrust vector ``m·(a* + g)``; collective thrust is its projection on the body z axis;
- attitude P on the geometric SO(3) tilt error (Lee et al. 2010) and a separate yaw P loop to the
  target heading;
- body-rate P with gyroscopic feed-forward and the mixer (shared with the env, ``envs/uav/control.py``).

In the env's ``rotor`` action mode all stages run here at the control rate; in ``ctbr`` mode the
controller stops at the rate setpoint and the env's inner loop does the rest at the physics rate.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from envs.uav.control import RATE_GAINS, Mixer, RateLoop, action_from_thrust, rotation_error
from envs.uav.model import GRAVITY, QuadrotorParams
from envs.uav.observation import UAVLayout
from policies.protocol import EnvInterface, Policy, PolicyError, PolicyMeta
from policies.typed import check_field_types


@dataclass
class PIDGains:
    pos_xy: float = 2.0          # 1/s
    pos_z: float = 2.0           # 1/s
    vel_xy: float = 4.0          # 1/s
    vel_z: float = 4.0           # 1/s
    vel_i_xy: float = 2.0        # 1/s²
    vel_i_z: float = 2.0         # 1/s²
    integral_limit: float = 3.0  # m/s², the integrator's acceleration authority
    max_speed_xy: float = 2.0    # m/s
    max_speed_z: float = 1.0     # m/s
    max_tilt_deg: float = 35.0
    att_rp: float = 8.0          # 1/s
    att_yaw: float = 3.0         # 1/s
    rate: tuple[float, float, float] = (20.0, 20.0, 8.0)  # 1/s

    def __post_init__(self):
        check_field_types(self)
        self.rate = tuple(float(r) for r in self.rate)
        for f in fields(self):
            values = self.rate if f.name == "rate" else (getattr(self, f.name),)
            if len(values) != (3 if f.name == "rate" else 1) or not all(math.isfinite(v) and v >= 0 for v in values):
                raise ValueError(f"PID gain {f.name} must be finite and >= 0, got {getattr(self, f.name)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rate"] = list(self.rate)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PIDGains:
        return gains_for("", d)


# Tuned in still air on the hover task (benchmarks/uav.py reports the result): the 27 g vehicle
# takes the faster loops its 20 ms motors allow; the 1.3 kg one is held to its 40 ms motors.
TUNED = {
    "cf2": PIDGains(rate=RATE_GAINS["cf2"]),
    "x2": PIDGains(pos_xy=1.5, pos_z=1.5, vel_xy=3.0, vel_z=3.0, vel_i_xy=1.5, vel_i_z=1.5, att_rp=5.0,
                   att_yaw=2.0, rate=RATE_GAINS["x2"]),
}


def gains_for(preset_name: str, overrides: dict | None = None) -> PIDGains:
    base = asdict(TUNED.get(preset_name, PIDGains()))
    known = {f.name for f in fields(PIDGains)}
    unknown = set(overrides or {}) - known
    if unknown:
        raise ValueError(f"unknown PID gain(s) {sorted(unknown)}; known: {sorted(known)}")
    base.update(overrides or {})
    return PIDGains(**base)


@dataclass
class CascadedPID(Policy):
    params: QuadrotorParams
    gains: PIDGains
    control_dt: float
    action_mode: str = "rotor"
    layout: UAVLayout = field(default_factory=UAVLayout)
    meta: PolicyMeta | None = None

    def __post_init__(self):
        self.mixer = Mixer(self.params)
        self.rate_loop = RateLoop(self.params, self.gains.rate)
        self.integral = np.zeros(3)

    def reset(self) -> None:
        self.integral[:] = 0.0

    def _part(self, obs: np.ndarray, name: str) -> np.ndarray:
        lo, hi = getattr(self.layout, name)
        return obs[lo:hi]

    def command(self, obs: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """(collective thrust N, body-rate setpoint rad/s, body rates rad/s) for one observation."""
        g, p = self.gains, self.params
        rot = self._part(obs, "attitude").reshape(3, 3)  # body → target-heading frame
        error = rot @ self._part(obs, "position_error")
        velocity = rot @ self._part(obs, "velocity")
        rates = self._part(obs, "angular_velocity")

        v_sp = np.array([g.pos_xy * error[0], g.pos_xy * error[1], g.pos_z * error[2]])
        speed_xy = math.hypot(v_sp[0], v_sp[1])
        if speed_xy > g.max_speed_xy:
            v_sp[:2] *= g.max_speed_xy / speed_xy
        v_sp[2] = np.clip(v_sp[2], -g.max_speed_z, g.max_speed_z)
        v_err = v_sp - velocity
        k_i = np.array([g.vel_i_xy, g.vel_i_xy, g.vel_i_z])
        self.integral = np.clip(self.integral + k_i * v_err * self.control_dt, -g.integral_limit, g.integral_limit)
        acc = np.array([g.vel_xy, g.vel_xy, g.vel_z]) * v_err + self.integral
        acc[2] = max(acc[2], -0.8 * GRAVITY)  # never command a dive with the rotors off
        max_xy = (GRAVITY + acc[2]) * math.tan(math.radians(g.max_tilt_deg))
        acc_xy = math.hypot(acc[0], acc[1])
        if acc_xy > max_xy:
            acc[:2] *= max_xy / acc_xy
        force = p.mass * (acc + np.array([0.0, 0.0, GRAVITY]))
        thrust = float(force @ rot[:, 2])

        # Tilt toward the thrust vector about the current heading (the geometric error is poorly
        # behaved far from the target yaw), then turn to the target heading with its own P loop.
        yaw = math.atan2(rot[1, 0], rot[0, 0])
        b3 = force / np.linalg.norm(force)
        b2 = np.cross(b3, np.array([math.cos(yaw), math.sin(yaw), 0.0]))
        b2 /= np.linalg.norm(b2)
        r_des = np.column_stack([np.cross(b2, b3), b2, b3])
        rate_sp = -g.att_rp * rotation_error(rot, r_des)
        rate_sp[2] = g.att_yaw * math.remainder(-yaw, 2.0 * math.pi)
        rate_sp = np.clip(rate_sp, -p.max_body_rate, p.max_body_rate)
        return thrust, rate_sp, rates

    def act(self, obs: np.ndarray) -> np.ndarray:
        thrust, rate_sp, rates = self.command(np.asarray(obs, dtype=np.float64))
        p = self.params
        if self.action_mode == "ctbr":
            collective = action_from_thrust(thrust, p.weight, len(p.rotor_xy) * p.thrust_max)
            return np.concatenate([[collective], rate_sp / p.max_body_rate]).astype(np.float32)
        rotors = self.mixer(thrust, self.rate_loop.torque(rate_sp, rates))
        return action_from_thrust(rotors, p.hover_thrust, p.thrust_max).astype(np.float32)


def pid_for_env(env, overrides: dict | None = None, env_config: dict | None = None) -> CascadedPID:
    """The tuned controller for an ``embodied/UAV*`` env (its preset, rate and action mode)."""
    uav = env.unwrapped
    if not hasattr(uav, "params") or not hasattr(uav, "control_dt"):
        raise PolicyError("policy pid flies the UAV envs only (env=uav_hover or env=uav_waypoints)")
    try:
        gains = gains_for(uav.params.name, overrides)
    except (TypeError, ValueError) as e:
        raise PolicyError(str(e)) from None
    meta = PolicyMeta.for_env("pid", gains.to_dict(), env_config or {}, EnvInterface.of(env))
    return CascadedPID(uav.params, gains, uav.control_dt, uav.action_mode, uav.layout, meta)
