"""Quadrotor MJCF generated from a vehicle preset (no Menagerie download needed).

One free-floating rigid body with four rotor sites. Each rotor is a MuJoCo ``general``
actuator on its site with ``gear = (0, 0, 1, 0, 0, ±k_m)`` (thrust along the body z axis plus the
yaw reaction torque, the pattern of Menagerie's Skydio X2) and ``dyntype="filter"``, MuJoCo's
built-in first-order lag ``dT/dt = (T_cmd - T) / tau``, so the motor lag is integrated by the
simulator itself. ``ctrlrange`` is the rotor's thrust limit in newtons. A gyro and an
accelerometer sit at the IMU site; a box collision geom touches the ground plane.

## Presets
``cf2`` (27 g Crazyflie 2.x class) and ``x2`` (1.325 kg Skydio X2 class). Sources:
- cf2 mass and inertia: Menagerie ``bitcraze_crazyflie_2/cf2.xml`` (datasheet + MIT sys-ID);
  arm 0.0397 m, thrust-to-weight 2.25 and k_m = k_torque / k_thrust = 7.94e-12 / 3.16e-10 =
  0.0251 m: gym-pybullet-drones ``cf2x.urdf``.
- x2 mass 1.325 kg, rotor positions (±0.14, ±0.18) m, thrust limit 13 N per rotor and
  k_m = 0.0201 m: Menagerie ``skydio_x2/x2.xml``. Its inertia is computed here from the same
  mass layout as that file (four 0.25 kg rotor pods at the rotor positions plus a 0.325 kg
  body), because the MJCF derives it from geoms.
- Motor time constants (20 ms for cf2, 40 ms for x2) and drag coefficients are assumptions of
  the usual order for these sizes, not measured values: the cf2's linear drag 6.2e-3 N·s/m is
  Förster's (ETH 2015) Crazyflie rotor-drag coefficient at hover speed; the x2's is scaled by
  thrust, so both vehicles feel a comparable share of their weight at the same airspeed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

GRAVITY = 9.81


@dataclass(frozen=True)
class QuadrotorParams:
    name: str
    mass: float                      # kg
    inertia: tuple[float, float, float]  # kg·m², principal axes = body axes
    rotor_xy: tuple[tuple[float, float], ...]  # rotor positions in the body frame, m
    rotor_spin: tuple[int, ...]      # +1: reaction torque along +z for positive thrust
    rotor_z: float                   # rotor plane height above the CoM, m
    thrust_max: float                # N per rotor
    k_m: float                       # yaw reaction torque per newton of thrust, m
    motor_tau: float                 # s, first-order motor lag
    drag_linear: float               # N per (m/s) of airspeed (rotor drag)
    drag_quadratic: float            # N per (m/s)² (body drag)
    frame_half_size: tuple[float, float, float]  # collision box, m
    rotor_radius: float              # visual only, m
    max_body_rate: float             # rad/s, the body-rate command range of the ctbr action mode

    @property
    def weight(self) -> float:
        return self.mass * GRAVITY

    @property
    def hover_thrust(self) -> float:
        """Per-rotor thrust that holds the nominal vehicle still."""
        return self.weight / len(self.rotor_xy)

    @property
    def thrust_to_weight(self) -> float:
        return self.thrust_max * len(self.rotor_xy) / self.weight

    def to_dict(self) -> dict:
        return asdict(self)


def _x_layout(arm: float) -> tuple[tuple[float, float], ...]:
    a = arm / math.sqrt(2.0)
    # front-right, back-right, back-left, front-left (x forward, y left)
    return ((a, -a), (-a, -a), (-a, a), (a, a))


CF2 = QuadrotorParams(
    name="cf2",
    mass=0.027,
    inertia=(2.3951e-5, 2.3951e-5, 3.2347e-5),
    rotor_xy=_x_layout(0.0397),
    rotor_spin=(-1, 1, -1, 1),
    rotor_z=0.0,
    thrust_max=2.25 * 0.027 * GRAVITY / 4,
    k_m=7.94e-12 / 3.16e-10,
    motor_tau=0.02,
    drag_linear=6.2e-3,
    drag_quadratic=2.5e-3,
    frame_half_size=(0.04, 0.04, 0.012),
    rotor_radius=0.023,
    max_body_rate=10.0,
)

_X2_POD, _X2_BODY = 0.25, 0.325
_X2_XY = ((0.14, -0.18), (-0.14, -0.18), (-0.14, 0.18), (0.14, 0.18))
X2 = QuadrotorParams(
    name="x2",
    mass=4 * _X2_POD + _X2_BODY,
    inertia=(
        4 * _X2_POD * 0.18**2 + _X2_BODY * (0.05**2 + 0.03**2) / 3,
        4 * _X2_POD * 0.14**2 + _X2_BODY * (0.10**2 + 0.03**2) / 3,
        4 * _X2_POD * (0.14**2 + 0.18**2) + _X2_BODY * (0.10**2 + 0.05**2) / 3,
    ),
    rotor_xy=_X2_XY,
    rotor_spin=(-1, 1, -1, 1),
    rotor_z=0.05,
    thrust_max=13.0,
    k_m=0.0201,
    motor_tau=0.04,
    drag_linear=6.2e-3 * (4 * _X2_POD + _X2_BODY) / 0.027,
    drag_quadratic=0.02,
    frame_half_size=(0.18, 0.22, 0.05),
    rotor_radius=0.12,
    max_body_rate=6.0,
)

PRESETS = {"cf2": CF2, "x2": X2}


def preset(name: str) -> QuadrotorParams:
    if name not in PRESETS:
        raise ValueError(f"unknown quadrotor preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def quadrotor_mjcf(p: QuadrotorParams, timestep: float = 0.002) -> str:
    """MJCF string of ``p`` above a ground plane, with a free camera that follows it."""
    hx, hy, hz = p.frame_half_size
    rotors, actuators = [], []
    for i, ((x, y), spin) in enumerate(zip(p.rotor_xy, p.rotor_spin)):
        rotors.append(
            f'<site name="rotor{i}" pos="{x} {y} {p.rotor_z}" size="{p.rotor_radius * 0.2}" rgba="0 0 0 0"/>'
            f'<geom name="prop{i}" type="cylinder" pos="{x} {y} {p.rotor_z + hz * 0.6}" '
            f'size="{p.rotor_radius} {hz * 0.1}" contype="0" conaffinity="0" mass="0" '
            f'rgba="{0.8 if spin > 0 else 0.2} 0.3 {0.2 if spin > 0 else 0.8} 0.4"/>'
        )
        actuators.append(
            f'<general name="motor{i}" site="rotor{i}" gear="0 0 1 0 0 {spin * p.k_m}" ctrllimited="true" '
            f'ctrlrange="0 {p.thrust_max}" dyntype="filter" dynprm="{p.motor_tau}" gaintype="fixed" gainprm="1" '
            f'biastype="none"/>'
        )
    arm_len = math.hypot(*p.rotor_xy[0])
    return f"""
<mujoco model="quadrotor_{p.name}">
  <compiler angle="radian"/>
  <option timestep="{timestep}" gravity="0 0 -{GRAVITY}"/>
  <visual><headlight ambient="0.5 0.5 0.5"/><global offwidth="640" offheight="480"/></visual>
  <asset>
    <texture name="grid" type="2d" builtin="checker" rgb1=".2 .3 .4" rgb2=".3 .4 .5" width="300" height="300"/>
    <material name="grid" texture="grid" texrepeat="8 8" reflectance="0"/>
  </asset>
  <worldbody>
    <light pos="0 0 6" dir="0 0 -1" diffuse="0.6 0.6 0.6"/>
    <geom name="floor" type="plane" size="20 20 0.1" material="grid"/>
    <site name="target" pos="0 0 1" size="{max(0.02, arm_len * 0.3)}" rgba="0 0.9 0 0.5" type="sphere"/>
    <body name="quad" pos="0 0 1">
      <freejoint name="root"/>
      <inertial pos="0 0 0" mass="{p.mass}" diaginertia="{p.inertia[0]} {p.inertia[1]} {p.inertia[2]}"/>
      <geom name="frame" type="box" size="{hx} {hy} {hz}" mass="0" rgba="0.3 0.3 0.3 1"/>
      <geom name="arm_a" type="capsule" fromto="{p.rotor_xy[0][0]} {p.rotor_xy[0][1]} 0 {p.rotor_xy[2][0]} {p.rotor_xy[2][1]} 0"
            size="{hz * 0.3}" contype="0" conaffinity="0" mass="0" rgba="0.5 0.5 0.5 1"/>
      <geom name="arm_b" type="capsule" fromto="{p.rotor_xy[1][0]} {p.rotor_xy[1][1]} 0 {p.rotor_xy[3][0]} {p.rotor_xy[3][1]} 0"
            size="{hz * 0.3}" contype="0" conaffinity="0" mass="0" rgba="0.5 0.5 0.5 1"/>
      <site name="imu" pos="0 0 0"/>
      {''.join(rotors)}
      <camera name="chase" mode="trackcom" pos="{-12 * arm_len - 0.3} 0 {6 * arm_len + 0.2}" xyaxes="0 -1 0 0.45 0 1"/>
    </body>
    <camera name="overview" pos="0 -6 4" xyaxes="1 0 0 0 0.55 0.83"/>
  </worldbody>
  <actuator>{''.join(actuators)}</actuator>
  <sensor>
    <gyro name="gyro" site="imu"/>
    <accelerometer name="accelerometer" site="imu"/>
    <framequat name="attitude" objtype="site" objname="imu"/>
  </sensor>
</mujoco>
"""
