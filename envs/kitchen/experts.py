"""Scripted experts for the kitchen tasks: gripper waypoints, turned into joint targets by IK.

Each task is a short list of gripper poses relative to the object's handle, knob or lever (read
from the model, so moved objects move the plan): approach, grasp or contact, a path along the
door arc / slide / knob rotation, release, retreat. Between waypoints the gripper pose is
interpolated (smoothstep in time, linear in position, geodesic in rotation); every control step
one pose becomes absolute arm joint targets by damped least squares on MuJoCo's site Jacobian
(``mj_jacSite``), warm-started from the previous solution on a scratch ``MjData`` (the env's
own state is never touched). Our own ~40 lines of IK instead of ``mink``: one site, seven
joints, box joint limits, no collision constraints, so a QP solver (and its dependency chain)
buys nothing here.

The plan is made from the object state when a task starts and then played in time. The loop is
closed in two places: before a grasp the gripper waits (up to 15 steps) until the arm has
really reached the pre-grasp and grasp poses (the servos lag the targets on long moves); and
while something should be in hand, a gripper closed on nothing (missed or slipped) makes the
expert plan the task again from the object's current state (at most twice per task).
``make_expert(env, noise=σ)`` adds Gaussian noise (rad, and gripper units) to every action for
diverse demonstrations; the expert's own target trajectory stays clean (noise is added to what
it sends, not to what it tracks).

``expert.act(obs_or_env)`` takes the env (or an observation dict with ``proprio`` and
``object_state``); a task sequence is followed task after task (the next starts once the
previous plan, release and retreat included, has played out with that task done);
``expert.done`` says when the last plan has played out. A task whose plan plays out without
success is not tried again: the expert then holds still until the episode is truncated.

Every plan is anchored on its object's *interaction point* (:data:`INTERACTION_POINTS`,
:func:`interaction_point`): the handle, knob grip or lever tip the hand goes for. A plan function
``PLANS[task](ik, object_state, point=None)`` given a ``point`` (world xyz, m) builds the plan on
that point instead of the true one: everything attached to the object (a door's hinge, a
slide's travel) moves with it, as if the object stood where the point says (the scene's
variations only translate objects, so this is the plan of an object at the pointed place).
What is not the object's stays put: the kettle is still set down on the goal burner.
:class:`envs.kitchen.point.PointedExpert` drives a plan from a pointed location this way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import mujoco
import numpy as np

from envs.kitchen.env import OBJECT_SLICES, TASK_BY_NAME, KitchenEnv, qpos_layout, task_success
from envs.kitchen.model import ARM_JOINTS, GRIPPER_SITE

OPEN, CLOSED = 1.0, 0.0


def rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rot_axis(axis, angle: float) -> np.ndarray:
    quat = np.empty(4)
    mujoco.mju_axisAngle2Quat(quat, np.asarray(axis, dtype=np.float64), float(angle))
    mat = np.empty(9)
    mujoco.mju_quat2Mat(mat, quat)
    return mat.reshape(3, 3)


# Gripper frames (columns: site x, y = finger axis, z = approach direction).
FORWARD = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])  # points +y, jaws along x (home pose)
TILTED = np.array([[-1.0, 0.0, 0.0], [0.0, 0.7071, 0.7071], [0.0, 0.7071, -0.7071]])  # 45° down, jaws in the y-z plane


@dataclass(frozen=True)
class Waypoint:
    pos: np.ndarray  # gripper site position, world (m)
    rot: np.ndarray  # gripper site orientation, world (3x3)
    grip: float  # gripper command, 0 closed .. 1 open
    steps: int | None = None  # control steps to get here from the previous waypoint (None: from the distance)
    hold: int = 0  # extra control steps at this pose
    settle: bool = False  # then wait (up to SETTLE_STEPS) until the gripper is within SETTLE_TOL of the pose
    holding: bool = False  # something must be in the gripper here (else the grasp missed or slipped: re-plan)


SPEED = 0.012  # m per control step (0.15 m/s) when a waypoint's duration follows from its distance
TURN = 0.08  # rad per control step (1 rad/s)
SETTLE_TOL = 0.008  # m
SETTLE_STEPS = 15
EMPTY_GRIP = 0.15  # gripper opening (0..1) below which a closed gripper holds nothing (the knob grip is 0.35)
MAX_REPLANS = 2


class ArmIK:
    """Damped least-squares IK for the gripper site over the 7 arm joints.

    The arm is redundant (7 joints, 6-d pose): the null space pulls towards a rest posture (the
    home pose), or the elbow drifts and a small gripper motion can ask for a large arm swing.
    """

    def __init__(self, model: mujoco.MjModel, rest: np.ndarray, damping: float = 0.03, rot_weight: float = 0.5,
                 posture_gain: float = 0.02):
        self.model = model
        self.data = mujoco.MjData(model)
        self.site = model.site(GRIPPER_SITE).id
        joints = [model.joint(n).id for n in ARM_JOINTS]
        self.qadr = model.jnt_qposadr[joints]
        self.dofs = model.jnt_dofadr[joints]
        self.lo, self.hi = model.jnt_range[joints, 0] + 0.01, model.jnt_range[joints, 1] - 0.01
        self.damping = damping
        self.rot_weight = rot_weight
        self.rest = np.asarray(rest, dtype=np.float64)  # preferred posture, pulled towards in the null space
        self.posture_gain = posture_gain
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))

    def set_objects(self, qpos: np.ndarray) -> None:
        """Copy a full qpos (objects included) into the scratch state."""
        self.data.qpos[:] = qpos
        self._kinematics()

    def _kinematics(self) -> None:
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)

    def pose(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.data.qpos[self.qadr] = q
        self._kinematics()
        return self.data.site_xpos[self.site].copy(), self.data.site_xmat[self.site].reshape(3, 3).copy()

    def solve(self, q0: np.ndarray, pos: np.ndarray, rot: np.ndarray, iters: int = 30, tol: float = 1e-4):
        """Joint angles putting the site at (pos, rot), from ``q0``; returns (q, position error m)."""
        q = np.clip(np.asarray(q0, dtype=np.float64), self.lo, self.hi)
        d, w = self.data, self.rot_weight
        for _ in range(iters):
            d.qpos[self.qadr] = q
            self._kinematics()
            cur_p, cur_r = d.site_xpos[self.site], d.site_xmat[self.site].reshape(3, 3)
            e_p = pos - cur_p
            e_r = 0.5 * (np.cross(cur_r[:, 0], rot[:, 0]) + np.cross(cur_r[:, 1], rot[:, 1])
                         + np.cross(cur_r[:, 2], rot[:, 2]))
            if e_p @ e_p < tol * tol and e_r @ e_r < (10 * tol) ** 2:
                break
            mujoco.mj_jacSite(self.model, d, self._jacp, self._jacr, self.site)
            jac = np.vstack([self._jacp[:, self.dofs], w * self._jacr[:, self.dofs]])
            err = np.concatenate([e_p, w * e_r])
            pinv = jac.T @ np.linalg.inv(jac @ jac.T + self.damping**2 * np.eye(6))
            step = pinv @ err + (np.eye(7) - pinv @ jac) @ (self.posture_gain * (self.rest - q))
            q = np.clip(q + step, self.lo, self.hi)
        d.qpos[self.qadr] = q
        self._kinematics()
        return q, float(np.linalg.norm(pos - d.site_xpos[self.site]))


def _duration(a: Waypoint, b: Waypoint) -> int:
    rel = a.rot.T @ b.rot
    angle = np.arccos(np.clip((np.trace(rel) - 1.0) / 2.0, -1.0, 1.0))
    return max(2, int(np.ceil(max(np.linalg.norm(b.pos - a.pos) / SPEED, angle / TURN))))


def _interp_rot(r0: np.ndarray, r1: np.ndarray, s: float) -> np.ndarray:
    q0, q1 = np.empty(4), np.empty(4)
    mujoco.mju_mat2Quat(q0, r0.ravel())
    mujoco.mju_mat2Quat(q1, r1.ravel())
    if q0 @ q1 < 0:
        q1 = -q1
    vel = np.empty(3)
    mujoco.mju_subQuat(vel, q1, q0)  # q1 = q0 * exp(vel)
    q = q0.copy()
    mujoco.mju_quatIntegrate(q, vel, s)
    mat = np.empty(9)
    mujoco.mju_quat2Mat(mat, q)
    return mat.reshape(3, 3)


class KitchenExpert:
    """Scripted expert for a :class:`~envs.kitchen.env.KitchenEnv`'s task (or task sequence)."""

    def __init__(self, env, noise: float = 0.0, seed: int | None = None):
        env = getattr(env, "unwrapped", env)
        if not isinstance(env, KitchenEnv):
            raise TypeError(f"the kitchen expert needs a KitchenEnv, got {type(env).__name__}")
        if not noise >= 0:
            raise ValueError(f"expert noise must be >= 0, got {noise}")
        self.env = env
        self.tasks = env.tasks
        self.noise = float(noise)
        self.rng = np.random.default_rng(seed)
        self.ik = ArmIK(env.model, rest=env._rest_qpos[env.layout["arm"]])
        self.layout = qpos_layout(env.model)
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self._task_index = 0
        self._plan: list[Waypoint] | None = None
        self._q: np.ndarray | None = None
        self._replans = 0

    @property
    def done(self) -> bool:
        """Every task's plan played out (released and retreated): the demonstration is over."""
        return (self._plan is not None and self._task_index == len(self.tasks) - 1
                and self._cursor >= len(self._plan))

    # --- state ----------------------------------------------------------------------------------
    def _read(self, obs_or_env) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(obs_or_env, Mapping):
            return np.asarray(obs_or_env["proprio"]), np.asarray(obs_or_env["object_state"])
        env = getattr(obs_or_env, "unwrapped", obs_or_env)
        return env.proprio(), env.object_state()

    def _scratch_qpos(self, proprio: np.ndarray, object_state: np.ndarray) -> np.ndarray:
        qpos = self.env._rest_qpos.copy()
        qpos[self.layout["arm"]] = proprio[:7]
        qpos[self.layout["object_state"]] = object_state
        return qpos

    # --- acting ---------------------------------------------------------------------------------
    def act(self, obs_or_env) -> np.ndarray:
        proprio, object_state = self._read(obs_or_env)
        if (self._plan is not None and self._cursor >= len(self._plan) and self._task_index < len(self.tasks) - 1
                and task_success(self.tasks[self._task_index], object_state)):
            self._task_index += 1  # this task's plan is played out (released, retreated) and it is done
            self._plan = None
            self._replans = 0
        if self._plan is None:
            self._start_plan(proprio, object_state)
        elif self._lost_grip(proprio) and self._replans < MAX_REPLANS:
            self._replans += 1  # missed or slipped: plan again from the object's current state
            self._start_plan(proprio, object_state)
        action = self._next_action(proprio)
        if self.noise:
            action = action + self.rng.normal(0.0, self.noise, size=8)
        return np.clip(action, self.env.action_space.low, self.env.action_space.high).astype(np.float32)

    def _lost_grip(self, proprio: np.ndarray) -> bool:
        """A waypoint that needs something in hand, reached with the gripper closed on nothing."""
        plan, i = self._plan, self._cursor
        return i < len(plan) and plan[i].holding and self._t >= 2 and proprio[7] < EMPTY_GRIP

    def _start_plan(self, proprio: np.ndarray, object_state: np.ndarray) -> None:
        task = self.tasks[self._task_index]
        self.ik.set_objects(self._scratch_qpos(proprio, object_state))
        q = proprio[:7].copy() if self._q is None else self._q
        pos, rot = self.ik.pose(q)
        self._plan = self._make_plan(task, object_state)
        self._start = Waypoint(pos, rot, OPEN if proprio[7] > 0.5 else CLOSED, 1)
        self._cursor = 0  # index of the waypoint being approached
        self._t = 0
        self._q = q

    def _make_plan(self, task: str, object_state: np.ndarray) -> list[Waypoint]:
        """The task's waypoints (the scratch data holds the object state); a subclass may anchor them elsewhere."""
        return PLANS[task](self.ik, object_state)

    def _next_action(self, proprio: np.ndarray) -> np.ndarray:
        plan = self._plan
        if self._cursor >= len(plan):
            return np.r_[self._q, plan[-1].grip]
        target = plan[self._cursor]
        prev = self._start if self._cursor == 0 else plan[self._cursor - 1]
        steps = target.steps if target.steps is not None else _duration(prev, target)
        self._t += 1
        if self._t <= steps:
            s = self._t / steps
            s = s * s * (3.0 - 2.0 * s)  # smoothstep: starts and stops at rest
            pos = prev.pos + s * (target.pos - prev.pos)
            rot = _interp_rot(prev.rot, target.rot, s)
            self._q, _ = self.ik.solve(self._q, pos, rot)
        done = self._t >= steps + target.hold
        if done and target.settle and self._t < steps + target.hold + SETTLE_STEPS:
            reached, _ = self.ik.pose(proprio[:7])
            done = np.linalg.norm(reached - target.pos) < SETTLE_TOL
        if done:
            self._cursor += 1
            self._t = 0
        return np.r_[self._q, target.grip]


# --- plans: gripper waypoints from the object state (the scratch data holds it) -------------------
def _body(ik: ArmIK, name: str) -> np.ndarray:
    return ik.data.xpos[ik.model.body(name).id].copy()


# The point of each task's object that its plan is anchored on: a site of the model plus a world
# offset (m). The scene's variations translate objects and never turn them, so a world offset
# stays on the same part of the object.
INTERACTION_POINTS: dict[str, tuple[str, tuple[float, float, float]]] = {
    "microwave": ("microhandle_site", (0.0, 0.0, 0.08)),  # upper part of the door's handle bar: nearer the arm
    "kettle": ("kettle_site", (0.0, 0.0, 0.0)),  # the top of the handle, grasped from above-behind
    "light_switch": ("light_site", (0.0, 0.0, 0.0)),  # the lever's tip, pushed by the closed fingers
    "slide_cabinet": ("slide_site", (0.0, 0.0, 0.0)),  # the sliding door's handle
    "hinge_cabinet": ("hinge_site2", (0.0, 0.0, 0.0)),  # the right door's handle
    "bottom_burner": ("knob2_site", (0.0, -0.03, 0.0)),  # the knob's grip, in front of its disc
    "top_burner": ("knob4_site", (0.0, -0.03, 0.0)),
}


def interaction_point(model: mujoco.MjModel, data: mujoco.MjData, task: str) -> np.ndarray:
    """World xyz (m) of ``task``'s interaction point in ``data``'s kinematics (call ``mj_kinematics`` first)."""
    site, offset = INTERACTION_POINTS[task]
    return data.site_xpos[model.site(site).id] + np.asarray(offset)


def _anchor(ik: ArmIK, task: str, point) -> tuple[np.ndarray, np.ndarray]:
    """(the point a plan is built on, its offset from the true interaction point): ``point`` if given."""
    true = interaction_point(ik.model, ik.data, task)
    if point is None:
        return true, np.zeros(3)
    point = np.asarray(point, dtype=np.float64).reshape(3)
    return point, point - true


def _closed_yaw(ik: ArmIK, door_body: str, angle: float) -> float:
    """The yaw of a door's frame when closed (its hinge joint at 0), from its current pose and angle."""
    mat = ik.data.xmat[ik.model.body(door_body).id].reshape(3, 3)
    return float(np.arctan2(mat[1, 0], mat[0, 0])) - angle


def _door_arc(ik: ArmIK, door_body: str, handle: np.ndarray, angles, yaw_follow: float, closed_yaw: float,
              now: float, steps_per_rad: float = 30.0, shift: np.ndarray | None = None) -> list[Waypoint]:
    """Waypoints holding a vertical handle bar through a door's swing about its vertical hinge.

    ``angles`` are the door angles to pass (rad), starting after ``now``, the current one. The gripper turns by
    ``yaw_follow`` times the door's turn: closed around a round bar it may turn about the bar,
    and turning less (or the other way) keeps the arm inside its reach and joint limits. ``shift``
    (m) moves the hinge with a handle placed off its true position.
    """
    hinge = _body(ik, door_body) + (0.0 if shift is None else shift)
    out, prev = [], now
    for a in angles:
        yaw = closed_yaw + now + yaw_follow * (a - now)
        pos = hinge + rot_z(a - now) @ (handle - hinge)
        out.append(Waypoint(pos, rot_z(yaw) @ FORWARD, CLOSED, max(2, int(round(abs(a - prev) * steps_per_rad))),
                            holding=True))
        prev = a
    return out


def _grasp(pos: np.ndarray, rot: np.ndarray, back: float = 0.12) -> list[Waypoint]:
    """Pre-grasp ``back`` m behind the pose along the approach, the pose, close."""
    return [
        Waypoint(pos - back * rot[:, 2], rot, OPEN, settle=True),
        Waypoint(pos, rot, OPEN, settle=True),
        Waypoint(pos, rot, CLOSED, 1, hold=5),
    ]


def _arc_angles(now: float, end: float, step: float = 0.1) -> np.ndarray:
    """Door angles from just past ``now`` to ``end``, about ``step`` rad apart."""
    n = max(1, int(np.ceil(abs(end - now) / step)))
    return np.linspace(now, end, n + 1)[1:]


def _release(last: Waypoint, back: float = 0.1) -> list[Waypoint]:
    """Open where the last waypoint left the gripper, then back off along the approach."""
    return [Waypoint(last.pos, last.rot, OPEN, 1, hold=3), Waypoint(last.pos - back * last.rot[:, 2], last.rot, OPEN, 10)]


# How far the gripper turns with a door (see _door_arc). The microwave's handle ends up near the
# edge of the arm's reach; turning the hand against the door keeps the wrist closer to the robot.
MICROWAVE_YAW = -0.5
HINGE_YAW = 0.5
HINGE_STEPS_PER_RAD = 45  # slower than the microwave: the arm lags a faster swing and the handle slips


def plan_microwave(ik: ArmIK, object_state: np.ndarray, point=None) -> list[Waypoint]:
    now = float(object_state[OBJECT_SLICES["microwave"]][0])
    closed_yaw = _closed_yaw(ik, "microdoorroot", now)
    handle, shift = _anchor(ik, "microwave", point)
    rot = rot_z(closed_yaw + now) @ FORWARD
    arc = _door_arc(ik, "microdoorroot", handle, _arc_angles(now, min(now, -0.85)), MICROWAVE_YAW, closed_yaw, now,
                    shift=shift)
    return _grasp(handle, rot) + arc + _release(arc[-1])


def plan_hinge_cabinet(ik: ArmIK, object_state: np.ndarray, point=None) -> list[Waypoint]:
    now = float(object_state[OBJECT_SLICES["hinge_cabinet"]][1])  # the right door
    closed_yaw = _closed_yaw(ik, "hingerightdoor", now)
    handle, shift = _anchor(ik, "hinge_cabinet", point)
    rot = rot_z(closed_yaw + now) @ FORWARD
    arc = _door_arc(ik, "hingerightdoor", handle, _arc_angles(now, max(now, 1.5)), HINGE_YAW, closed_yaw, now,
                    HINGE_STEPS_PER_RAD, shift)
    return _grasp(handle, rot) + arc + _release(arc[-1])


def plan_slide_cabinet(ik: ArmIK, object_state: np.ndarray, point=None) -> list[Waypoint]:
    handle, _ = _anchor(ik, "slide_cabinet", point)
    now = float(object_state[OBJECT_SLICES["slide_cabinet"]][0])
    pull = Waypoint(handle + [max(0.38 - now, 0.0), 0.0, 0.0], FORWARD, CLOSED, 45, holding=True)  # slides along +x
    return _grasp(handle, FORWARD) + [pull] + _release(pull)


def plan_light_switch(ik: ArmIK, object_state: np.ndarray, point=None) -> list[Waypoint]:
    """Push the lever's tip from its right to its left with the closed fingers."""
    tip, _ = _anchor(ik, "light_switch", point)
    start = tip + [0.035, -0.02, 0.0]
    end = tip + [-0.09, -0.02, 0.0]
    return [
        Waypoint(start - [0.0, 0.1, 0.0], FORWARD, CLOSED, 22),
        Waypoint(start, FORWARD, CLOSED, 10),
        Waypoint(end, FORWARD, CLOSED, 20),
        Waypoint(end - [0.0, 0.1, 0.0], FORWARD, CLOSED, 10),
    ]


KNOB_OVERTURN = 0.1  # rad past the goal: the grip has play in the fingers, the knob lags the wrist under noise


def _plan_knob(task: str, goal: float):
    """Grasp the knob's grip from the front and turn the wrist about the knob's axis (world y)."""

    def plan(ik: ArmIK, object_state: np.ndarray, point=None) -> list[Waypoint]:
        now = float(object_state[OBJECT_SLICES[task]][0])
        pos, _ = _anchor(ik, task, point)  # the finger pads on the grip, clear of the knob's disc
        grip = rot_axis([0.0, 1.0, 0.0], -now) @ FORWARD  # the knob turns about -y: the grip as it stands
        turned = Waypoint(pos, rot_axis([0.0, 1.0, 0.0], -(goal - KNOB_OVERTURN)) @ FORWARD, CLOSED, 30, hold=2, holding=True)
        return _grasp(pos, grip) + [turned] + _release(turned)

    return plan


def plan_kettle(ik: ArmIK, object_state: np.ndarray, point=None) -> list[Waypoint]:
    """Grasp the handle from above-behind (45°: the hood over the back burners leaves no room for a
    top-down hand), lift, carry, set down on the goal burner, release. The goal burner does not move
    with a pointed handle: the carry ends where the handle is with the kettle on its goal."""
    handle, shift = _anchor(ik, "kettle", point)
    kettle = object_state[OBJECT_SLICES["kettle"]]
    target = handle - shift + (np.asarray(TASK_BY_NAME["kettle"].goal[:3]) - kettle[:3])  # the handle, kettle on the goal
    lift = np.array([0.0, 0.0, 0.08])
    carry = [
        Waypoint(handle + lift, TILTED, CLOSED, 12, holding=True),
        Waypoint(target + lift, TILTED, CLOSED, 30, holding=True),
        Waypoint(target + [0.0, 0.0, 0.01], TILTED, CLOSED, 12, hold=3, holding=True),
    ]
    return _grasp(handle, TILTED) + carry + _release(carry[-1], back=0.12)


PLANS = {
    "microwave": plan_microwave,
    "kettle": plan_kettle,
    "light_switch": plan_light_switch,
    "slide_cabinet": plan_slide_cabinet,
    "hinge_cabinet": plan_hinge_cabinet,
    "bottom_burner": _plan_knob("bottom_burner", TASK_BY_NAME["bottom_burner"].goal[0]),
    "top_burner": _plan_knob("top_burner", TASK_BY_NAME["top_burner"].goal[0]),
}


def make_expert(env, noise: float = 0.0, seed: int | None = None) -> KitchenExpert:
    """The scripted expert for ``env``'s task(s); ``noise``: Gaussian action noise (std)."""
    return KitchenExpert(env, noise=noise, seed=seed)
