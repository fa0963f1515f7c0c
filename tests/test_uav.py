"""The quadrotor UAV embodiment: env (envs/uav/env.py, its docstring is the spec), vehicle model
(envs/uav/model.py), thrust map, mixer and motor lag (envs/uav/control.py), observation
(envs/uav/observation.py), disturbances (envs/uav/disturbances.py), the cascaded PID
(policies/pid.py), the CLIs with policy=pid, and short PPO and SAC runs on the hover task.

Hand-made states are set with ``set_state`` on a level vehicle at rest: with every rotor at the
nominal hover thrust it then holds exactly still, so rewards and infos can be checked exactly.
"""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import mujoco
import numpy as np
import pytest
import torch
from gymnasium.envs.mujoco.utils import check_mujoco_reset_state
from gymnasium.utils.env_checker import check_env
from stable_baselines3 import PPO, SAC
from torch import nn

import envs
from agents.sb3_trainer import export_policy
from envs.uav.control import Mixer, action_from_thrust, allocation_matrix, thrust_from_action
from envs.uav.env import PHYSICS_TIMESTEP, UAVConfig, UAVEnv
from envs.uav.model import GRAVITY, PRESETS, preset, quadrotor_mjcf
from envs.uav.observation import uav_observation
from envs.uav.rewards import proximity_reward
from policies.bundle import read_meta
from policies.mlp import MLPActor, MLPConfig
from policies.numpy_inference import mlp_forward
from policies.pid import pid_for_env
from policies.protocol import EnvInterface, PolicyMeta
from policies.registry import load_policy
from policies.run_dir import RunDir
from policies.vector_policy import VectorPolicy

from conftest import SUMMARY_LINE_EVAL, TINY, check_quietly, restored_sb3_trainer, train_in_process

VEHICLES = sorted(PRESETS)  # cf2, x2
TASKS = ("hover", "waypoints")
MODES = ("rotor", "ctbr")
LEVEL = (1.0, 0.0, 0.0, 0.0)
HOVER_SIZE = 22




def yaw_quat(yaw: float) -> tuple[float, float, float, float]:
    return (math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2))


def place(env: UAVEnv, pos, quat=LEVEL, vel=(0.0, 0.0, 0.0), rates=(0.0, 0.0, 0.0)) -> None:
    """Put the vehicle in a hand-made state with every motor at the nominal hover thrust."""
    env.set_state(np.concatenate([pos, quat]).astype(np.float64), np.concatenate([vel, rates]).astype(np.float64))
    env.data.act[:] = env.params.hover_thrust


def quiet_env(**kwargs) -> UAVEnv:
    """An env whose hover reset starts exactly at the target, level and at rest (any yaw)."""
    return UAVEnv(**{"init_pos_range": 0.0, "init_vel_range": 0.0, "init_tilt_deg": 0.0,
                     "init_rate_range": 0.0, **kwargs})


RATE_PENALTY, SMOOTHNESS_PENALTY = 0.005, 0.002  # the documented defaults


def hover_reward(d: float, rates, delta_action) -> float:
    """The docstring's hover reward."""
    rates, delta_action = np.asarray(rates), np.asarray(delta_action)
    return (0.5 * math.exp(-d / 0.5) + 0.5 * math.exp(-d / 0.05) - RATE_PENALTY * float(rates @ rates)
            - SMOOTHNESS_PENALTY * float(delta_action @ delta_action))


def fly_pid(env: UAVEnv, seed: int, positions: list | None = None):
    """One episode under the tuned PID; returns (steps, last info)."""
    obs, info = env.reset(seed=seed)
    pid = pid_for_env(env)
    pid.reset()
    steps, done = 0, False
    while not done:
        obs, _, terminated, truncated, info = env.step(pid.act(obs))
        steps += 1
        done = terminated or truncated
        if positions is not None:
            positions.append(env.state()[0])
    return steps, info


# --- registration, gymnasium's checkers, spaces ---------------------------------------------


def test_uav_ids_are_registered_without_time_limit():
    for env_id, task in ((envs.UAV, "hover"), (envs.UAV_HOVER, "hover"), (envs.UAV_WAYPOINTS, "waypoints")):
        env = gym.make(env_id)
        try:
            assert env.unwrapped.task == task
            assert env.spec.max_episode_steps is None  # the env times its own episodes
        finally:
            env.close()


@pytest.mark.parametrize("vehicle", VEHICLES)
@pytest.mark.parametrize("action_mode", MODES)
@pytest.mark.parametrize("task", TASKS)
def test_check_env(task, action_mode, vehicle):
    env = gym.make(envs.UAV, task=task, vehicle=vehicle, action_mode=action_mode, episode_seconds=1.0)
    try:
        uav = env.unwrapped
        check_quietly(check_env, uav, skip_render_check=True)
        check_quietly(check_mujoco_reset_state, uav)
        assert uav.params.name == vehicle and uav.action_mode == action_mode
        assert env.action_space == gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        expected = HOVER_SIZE + (3 * 1 if task == "waypoints" else 0)  # n_lookahead defaults to 1
        assert env.observation_space.shape == (expected,) == (uav.layout.size,)
        assert env.observation_space.dtype == np.float64
        obs, _ = env.reset(seed=0)
        assert obs.shape == (expected,)
    finally:
        env.close()


@pytest.mark.parametrize(("task", "n_lookahead", "size"), [("hover", 3, 22), ("waypoints", 0, 22),
                                                           ("waypoints", 1, 25), ("waypoints", 3, 31)])
def test_observation_size_matches_layout(task, n_lookahead, size):
    env = UAVEnv(task=task, n_lookahead=n_lookahead)
    layout = env.layout
    assert layout.size == size == env.observation_space.shape[0]
    parts = [layout.position_error, layout.velocity, layout.attitude, layout.angular_velocity, layout.last_action,
             layout.lookahead]
    assert [hi - lo for lo, hi in parts] == [3, 3, 9, 3, 4, 3 * layout.n_lookahead]
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:])), parts  # contiguous, in the documented order
    assert parts[0][0] == 0 and parts[-1][1] == size
    d = layout.to_dict()
    assert d["size"] == size and d["lookahead"] == list(layout.lookahead)
    obs, _ = env.reset(seed=1)
    assert obs.shape == (size,)


@pytest.mark.parametrize(("kwargs", "needle"), [
    (dict(task="orbit"), "task"),
    (dict(vehicle="f450"), "f450"),
    (dict(action_mode="velocity"), "action_mode"),
    (dict(control_hz=300.0), "control_hz"),   # 500/300 is not an integer
    (dict(control_hz=1000.0), "control_hz"),  # faster than the physics
    (dict(control_hz=7.0), "control_hz"),
    (dict(control_hz=-100.0), "control_hz"),
    (dict(control_hz=0.0), "control_hz"),
    (dict(mass_scale=(1.2, 0.8)), "mass_scale"),
    (dict(mass_scale=(0.0, 1.0)), "mass_scale"),
    (dict(inertia_scale=(-1.0, 1.0)), "inertia_scale"),
    (dict(motor_strength=(1.0,)), "motor_strength"),
    (dict(gust_duration=(2.0, 0.5)), "gust_duration"),
    (dict(waypoint_spacing=(0.0, 1.0)), "waypoint_spacing"),
    (dict(target=(0.0, 1.5)), "target"),
    (dict(wind=(1.0, 0.0)), "wind"),
    (dict(init_tilt_deg=-5.0), "init_tilt_deg"),
    (dict(n_waypoints=0), "n_waypoints"),
    (dict(n_lookahead=-1), "n_lookahead"),
])
def test_bad_kwargs_raise_value_error(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        UAVEnv(**kwargs)


def test_config_is_the_one_keyword_list():
    env = UAVEnv(task="waypoints", wind=(1.0, 0.0, 0.0), n_lookahead=2)
    assert env.config == UAVConfig(task="waypoints", wind=(1.0, 0.0, 0.0), n_lookahead=2)
    clone = pickle.loads(pickle.dumps(env))  # EzPickle rebuilds it from the same keywords
    assert clone.config == env.config and clone.layout == env.layout
    with pytest.raises(TypeError, match="'wnd'"):
        UAVEnv(wnd=(1.0, 0.0, 0.0))


@pytest.mark.parametrize("control_hz", [50.0, 100.0, 250.0, 500.0])
def test_control_hz_dividing_the_physics_rate(control_hz):
    env = UAVEnv(control_hz=control_hz, episode_seconds=0.2)
    assert env.frame_skip * PHYSICS_TIMESTEP == pytest.approx(1.0 / control_hz)
    assert env.control_dt == pytest.approx(1.0 / control_hz)
    env.reset(seed=0)
    t0 = env.data.time
    env.step(np.zeros(4))
    assert env.data.time - t0 == pytest.approx(1.0 / control_hz)
    steps, done = 1, False
    while not done:
        *_, terminated, truncated, _ = env.step(np.zeros(4))
        steps += 1
        done = terminated or truncated
    if not terminated:
        assert steps == round(0.2 * control_hz)


@pytest.mark.parametrize("action_mode", MODES)
@pytest.mark.parametrize("bad", [
    [np.nan, 0.0, 0.0, 0.0], [0.0, np.inf, 0.0, 0.0], [0.0, 0.0, -np.inf, 0.0], [0.0, 0.0, 0.0], [0.0] * 5,
])
def test_bad_actions_raise_value_error(action_mode, bad):
    env = UAVEnv(action_mode=action_mode)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(np.array(bad))


def test_hover_reset_distribution():
    env = UAVEnv(target=(0.5, -0.5, 2.0), init_pos_range=0.8, init_vel_range=0.4, init_tilt_deg=20.0,
                 init_rate_range=0.7)
    yaws = []
    for seed in range(20):
        obs, info = env.reset(seed=seed)
        pos, vel, rot, rates = env.state()
        assert np.all(np.abs(pos - env.target) <= 0.8 + 1e-12)
        assert np.all(np.abs(vel) <= 0.4 + 1e-12) and np.all(np.abs(rates) <= 0.7 + 1e-12)
        assert rot[2, 2] >= math.cos(math.radians(20.0) * math.sqrt(2)) - 1e-9  # roll and pitch each within 20°
        np.testing.assert_allclose(env.data.act, env.params.hover_thrust)  # motors spinning at hover speed
        yaws.append(math.atan2(rot[1, 0], rot[0, 0]))
        assert info["crash"] is False and info["waypoints_reached"] == 0 and info["is_success"] is False
    assert np.ptp(yaws) > math.pi  # any yaw


def test_waypoint_course_geometry():
    env = UAVEnv(task="waypoints", n_waypoints=5, waypoint_spacing=(1.0, 2.0), arena_half_width=3.0, ceiling=4.0)
    for seed in range(5):
        env.reset(seed=seed)
        start = env.state()[0]
        course = env._waypoints  # private: the env exposes only the current waypoint (env.target)
        assert course.shape == (5, 3)
        np.testing.assert_allclose(env.target, course[0])
        legs = np.linalg.norm(np.diff(np.vstack([start, course]), axis=0), axis=1)
        assert np.all((legs >= 1.0 - 1e-9) & (legs <= 2.0 + 1e-9)), legs
        assert np.all(np.abs(course[:, :2]) <= 2.5 + 1e-9) and np.all((course[:, 2] >= 0.5) & (course[:, 2] <= 3.5))


def test_controller_modules_load_without_the_env():
    """The PID and the ROS 2 adapter read control, observation and model; none of them pulls in the gym env."""
    code = ("import sys, policies.pid, envs.uav.control, envs.uav.observation, envs.uav.model, envs.uav.disturbances, "
            "envs.uav.rewards; loaded = [m for m in ('envs.uav.env', 'gymnasium.envs.mujoco') if m in sys.modules]; "
            "assert not loaded, loaded")
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


# --- vehicle model: hover, allocation, mixer, motor lag --------------------------------------


@pytest.mark.parametrize("vehicle", VEHICLES)
def test_hover_thrust_holds_the_vehicle(vehicle):
    env = UAVEnv(vehicle=vehicle)
    env.reset(seed=0)
    p = env.params
    assert p.hover_thrust * 4 == pytest.approx(p.mass * GRAVITY)
    assert env.model.body_mass[env.model.body("quad").id] == pytest.approx(p.mass)
    assert float(thrust_from_action(0.0, p.hover_thrust, p.thrust_max)) == pytest.approx(p.hover_thrust)
    place(env, (0.3, -0.2, 1.5), quat=yaw_quat(0.7))
    for _ in range(round(1.0 / env.control_dt)):
        env.step(np.zeros(4))
    pos = env.state()[0]
    np.testing.assert_allclose(env.data.ctrl, p.hover_thrust)
    assert np.max(np.abs(pos - (0.3, -0.2, 1.5))) < 1e-3, pos


def test_thrust_action_map():
    p = preset("cf2")
    a = np.array([-1.0, -0.5, 0.0, 0.5, 1.0, 2.0, -3.0])
    t = thrust_from_action(a, p.hover_thrust, p.thrust_max)
    np.testing.assert_allclose(t, [0.0, 0.5 * p.hover_thrust, p.hover_thrust,
                                   p.hover_thrust + 0.5 * (p.thrust_max - p.hover_thrust), p.thrust_max,
                                   p.thrust_max, 0.0])
    np.testing.assert_allclose(action_from_thrust(t[:5], p.hover_thrust, p.thrust_max), a[:5], atol=1e-12)


@pytest.mark.parametrize("vehicle", VEHICLES)
def test_model_matches_preset_and_allocation(vehicle):
    """MuJoCo's actuator forces on a level vehicle are the allocation matrix's [T, τx, τy, τz]."""
    p = preset(vehicle)
    model = mujoco.MjModel.from_xml_string(quadrotor_mjcf(p, PHYSICS_TIMESTEP))
    data = mujoco.MjData(model)
    assert model.opt.timestep == PHYSICS_TIMESTEP and model.nu == 4
    np.testing.assert_allclose(model.actuator_ctrlrange, np.tile([0.0, p.thrust_max], (4, 1)))
    assert np.all(model.actuator_dyntype == mujoco.mjtDyn.mjDYN_FILTER)
    np.testing.assert_allclose(model.actuator_dynprm[:, 0], p.motor_tau)
    np.testing.assert_allclose(model.actuator_gear[:, 5], np.array(p.rotor_spin) * p.k_m)
    np.testing.assert_allclose(model.body_inertia[model.body("quad").id], p.inertia)
    a = allocation_matrix(p)
    for thrusts in ([1.0, 2.0, 3.0, 4.0], [4.0, 0.5, 2.0, 1.0]):
        data.act[:] = np.array(thrusts) * p.thrust_max / 4
        mujoco.mj_forward(model, data)
        np.testing.assert_allclose(data.qfrc_actuator[2:6], a @ data.act, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(data.qfrc_actuator[:2], 0.0, atol=1e-12)


@pytest.mark.parametrize("vehicle", VEHICLES)
def test_mixer_inverts_the_allocation_matrix(vehicle):
    p = preset(vehicle)
    a, mixer = allocation_matrix(p), Mixer(p)
    rng = np.random.default_rng(0)
    for _ in range(50):
        rotors = rng.uniform(0.05, 0.95, 4) * p.thrust_max
        wrench = a @ rotors
        np.testing.assert_allclose(mixer(wrench[0], wrench[1:]), rotors, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(a @ mixer(wrench[0], wrench[1:]), wrench, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("vehicle", VEHICLES)
def test_mixer_gives_up_yaw_first_when_saturated(vehicle):
    p = preset(vehicle)
    a, mixer = allocation_matrix(p), Mixer(p)
    hover = p.hover_thrust
    arm = abs(p.rotor_xy[0][0])
    for thrust, roll, pitch, yaw in [
        (4 * hover, 0.0, 0.0, 6 * hover * p.k_m),       # pure yaw beyond what the rotors can give at hover
        (4 * hover, 0.2 * hover * arm, 0.0, -5 * hover * p.k_m),
        (4 * hover, 0.0, -0.3 * hover * arm, 4.5 * hover * p.k_m),
        (3 * hover, 0.1 * hover * arm, 0.1 * hover * arm, -4 * hover * p.k_m),
    ]:
        unsaturated = np.linalg.inv(a) @ [thrust, roll, pitch, yaw]
        assert unsaturated.min() < -0.01 * hover or unsaturated.max() > p.thrust_max + 0.01 * hover  # really saturates
        rotors = mixer(thrust, np.array([roll, pitch, yaw]))
        assert np.all(rotors >= 0.0) and np.all(rotors <= p.thrust_max + 1e-12)
        got = a @ rotors
        np.testing.assert_allclose(got[:3], [thrust, roll, pitch], rtol=1e-9, atol=1e-12)
        assert 0.0 < got[3] / yaw < 1.0  # yaw reduced, same sign
        # as much yaw as fits: some rotor sits at a limit
        assert np.isclose(rotors, 0.0, atol=1e-12).any() or np.isclose(rotors, p.thrust_max, rtol=1e-9).any()
    # beyond any yaw-free solution the rotors still stay within their limits
    rotors = mixer(5 * p.thrust_max, np.array([hover * arm, 0.0, 0.0]))
    assert np.all(rotors >= 0.0) and np.all(rotors <= p.thrust_max)


@pytest.mark.parametrize("vehicle", VEHICLES)
def test_motor_lag_time_constant(vehicle):
    env = UAVEnv(vehicle=vehicle)
    env.reset(seed=0)
    p = env.params
    tau = float(env.model.actuator_dynprm[0, 0])
    assert tau == pytest.approx(p.motor_tau)
    place(env, (0.0, 0.0, 1.5))
    steps = round(tau / env.control_dt)
    assert steps * env.control_dt == pytest.approx(tau)
    for _ in range(steps):
        env.step(np.ones(4))  # step the command to thrust_max
    np.testing.assert_allclose(env.data.ctrl, p.thrust_max)
    fraction = (env.data.act - p.hover_thrust) / (p.thrust_max - p.hover_thrust)
    np.testing.assert_allclose(fraction, 1.0 - math.exp(-1.0), atol=0.03)
    for _ in range(4 * steps):
        env.step(np.ones(4))
    fraction = (env.data.act - p.hover_thrust) / (p.thrust_max - p.hover_thrust)
    assert np.all(fraction > 0.98)


# --- the cascaded PID ----------------------------------------------------------------------


@pytest.mark.parametrize("action_mode", MODES)
@pytest.mark.parametrize("vehicle", VEHICLES)
def test_pid_holds_hover_in_still_air(vehicle, action_mode):
    env = UAVEnv(vehicle=vehicle, action_mode=action_mode)  # 10 s episodes
    window = round(2.0 / env.control_dt)
    for seed in (0, 1, 2):
        positions = []
        steps, info = fly_pid(env, seed, positions)
        assert steps == round(10.0 / env.control_dt), info
        assert not info["crash"] and not info["out_of_bounds"]
        errors = np.linalg.norm(np.array(positions[-window:]) - env.target, axis=1)
        rmse = float(np.sqrt(np.mean(errors**2)))
        assert rmse <= 0.02, (seed, rmse)
        assert info["hover_rmse"] == pytest.approx(rmse, rel=1e-9, abs=1e-12)  # info's RMSE is the same window
        assert info["position_error"] == pytest.approx(errors[-1], abs=1e-12)
        assert info["is_success"] is True


@pytest.mark.parametrize("action_mode", MODES)
@pytest.mark.parametrize("vehicle", VEHICLES)
def test_pid_completes_the_waypoint_course(vehicle, action_mode):
    env = UAVEnv(task="waypoints", vehicle=vehicle, action_mode=action_mode)
    for seed in (0, 1, 2):
        steps, info = fly_pid(env, seed)
        assert info["is_success"] is True, (seed, info)
        assert info["waypoints_reached"] == env.n_waypoints
        assert not info["crash"] and not info["out_of_bounds"]
        # the course ends well inside the time limit; the vehicle then holds at the last waypoint
        assert info["time_to_complete"] < 0.6 * env.max_steps * env.control_dt
        assert steps == env.max_steps
        assert info["position_error"] < 0.02


@pytest.mark.parametrize("vehicle", VEHICLES)
def test_pid_rejects_wind_and_randomisation(vehicle):
    """Nominal-parameter PID: the velocity integrator takes up constant wind, mass and motor errors."""
    env = UAVEnv(vehicle=vehicle, wind=(1.0, 0.5, 0.0), mass_scale=(0.9, 1.1), inertia_scale=(0.9, 1.1),
                 motor_strength=(0.95, 1.05))
    for seed in (0, 1):
        _, info = fly_pid(env, seed)
        assert not info["crash"] and not info["out_of_bounds"]
        assert info["hover_rmse"] <= 0.02, (seed, info["hover_rmse"])


def test_pid_refuses_other_envs():
    env = gym.make(envs.SWIMMER)
    try:
        with pytest.raises(ValueError, match="uav"):
            pid_for_env(env)
    finally:
        env.close()


# --- wind, gusts and randomisation ----------------------------------------------------------


@pytest.mark.parametrize("vehicle", VEHICLES)
def test_constant_wind_drag_on_a_vehicle_at_rest(vehicle):
    wind = np.array([2.0, -1.0, 0.5])
    env = UAVEnv(vehicle=vehicle, wind=tuple(wind))
    env.reset(seed=0)
    p = env.params
    place(env, (0.0, 0.0, 1.5))
    _, _, _, _, info = env.step(np.zeros(4))
    v_rel = -wind
    expected = -(p.drag_linear + p.drag_quadratic * np.linalg.norm(v_rel)) * v_rel
    body = env.model.body("quad").id
    np.testing.assert_allclose(env.data.xfrc_applied[body, :3], expected, rtol=1e-9)
    np.testing.assert_allclose(env.data.xfrc_applied[body, 3:], 0.0)
    # the drag is the only unbalanced force: the vehicle picks up F/m in one control step
    np.testing.assert_allclose(env.state()[1], expected / p.mass * env.control_dt, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(info["wind"], wind)
    # moving through the wind: v_rel = v − wind
    vel = np.array([1.0, 0.5, -0.2])
    place(env, (0.0, 0.0, 1.5), vel=vel)
    env.step(np.zeros(4))
    v_rel = vel - wind
    expected = -(p.drag_linear + p.drag_quadratic * np.linalg.norm(v_rel)) * v_rel
    np.testing.assert_allclose(env.data.xfrc_applied[body, :3], expected, rtol=1e-9)


def test_reset_info_reports_the_constant_wind():
    env = UAVEnv(wind=(1.5, 0.0, 0.0))
    _, info = env.reset(seed=0)
    np.testing.assert_allclose(info["wind"], [1.5, 0.0, 0.0])


@pytest.mark.parametrize("wind", [(0.0, 0.0, 0.0), (1.0, -0.5, 0.0)])
def test_no_gusts_means_constant_air(wind):
    env = quiet_env(wind=wind, gust_speed=0.0, gust_interval=0.2, episode_seconds=3.0)
    env.reset(seed=0)
    for _ in range(300):
        place(env, env.target)
        *_, info = env.step(np.zeros(4))
        np.testing.assert_array_equal(info["wind"], wind)


def test_gusts_reach_their_peak_speed():
    speed = 2.0
    env = quiet_env(gust_speed=speed, gust_interval=0.5, gust_duration=(0.5, 1.0), episode_seconds=30.0)
    env.reset(seed=0)
    winds = []
    for _ in range(3000):
        place(env, env.target)  # keep the vehicle in place: the air does not depend on it
        *_, info = env.step(np.zeros(4))
        winds.append(info["wind"])
    winds = np.array(winds)
    horizontal = np.linalg.norm(winds[:, :2], axis=1)
    np.testing.assert_array_equal(winds[:, 2], 0.0)  # gusts blow horizontally
    assert horizontal.max() <= speed + 1e-9
    assert horizontal.max() >= 0.97 * speed
    assert (horizontal == 0.0).mean() > 0.05  # calm pauses between gusts
    assert (horizontal > 0.5 * speed).mean() > 0.1
    # several gusts, in different directions
    gusting = horizontal > 0.5 * speed
    headings = np.arctan2(winds[gusting, 1], winds[gusting, 0])
    assert np.ptp(headings) > 1.0


def test_mass_and_motor_randomisation_within_range():
    env = UAVEnv(mass_scale=(0.8, 1.2), inertia_scale=(0.9, 1.1), motor_strength=(0.85, 1.15))
    p, body = env.params, env.model.body("quad").id
    masses, gains = [], []
    for seed in range(8):
        env.reset(seed=seed)
        m = env.model.body_mass[body] / p.mass
        inertia = env.model.body_inertia[body] / np.array(p.inertia)
        g = env.model.actuator_gainprm[:, 0].copy()
        assert 0.8 <= m <= 1.2
        assert np.allclose(inertia, inertia[0]) and 0.8 * 0.9 - 1e-9 <= inertia[0] <= 1.2 * 1.1 + 1e-9
        assert np.all((g >= 0.85) & (g <= 1.15))
        masses.append(m)
        gains.append(g)
    assert np.ptp(masses) > 0.1
    assert np.ptp(np.array(gains)) > 0.1 and any(np.ptp(g) > 0.01 for g in gains)  # each motor drawn separately


def test_fixed_scales_set_mass_inertia_and_gain_exactly():
    env = UAVEnv(mass_scale=(1.2, 1.2), inertia_scale=(1.5, 1.5), motor_strength=(0.9, 0.9))
    env.reset(seed=0)
    p, body = env.params, env.model.body("quad").id
    assert env.model.body_mass[body] == pytest.approx(1.2 * p.mass)
    np.testing.assert_allclose(env.model.body_inertia[body], 1.2 * 1.5 * np.array(p.inertia))
    np.testing.assert_allclose(env.model.actuator_gainprm[:, 0], 0.9)
    # a later episode with the nominal env draws from the nominal values again, not compounding
    env.reset(seed=1)
    assert env.model.body_mass[body] == pytest.approx(1.2 * p.mass)


@pytest.mark.parametrize(("kwargs", "climbs"), [
    (dict(mass_scale=(1.25, 1.25)), False),
    (dict(mass_scale=(0.8, 0.8)), True),
    (dict(motor_strength=(1.2, 1.2)), True),
    (dict(motor_strength=(0.8, 0.8)), False),
])
def test_open_loop_nominal_hover_climbs_or_sinks(kwargs, climbs):
    env = UAVEnv(**kwargs)
    env.reset(seed=0)
    place(env, (0.0, 0.0, 1.5))
    for _ in range(50):  # 0.5 s of the nominal hover command
        *_, terminated, _, _ = env.step(np.zeros(4))
        assert not terminated
    pos, vel, rot, _ = env.state()
    dz = pos[2] - 1.5
    assert (dz > 0.05) if climbs else (dz < -0.05), dz
    assert rot[2, 2] > 0.999  # equal motors: it stays level
    np.testing.assert_allclose(pos[:2], 0.0, atol=1e-9)


def test_same_seed_same_randomisation():
    kwargs = dict(mass_scale=(0.7, 1.3), inertia_scale=(0.8, 1.2), motor_strength=(0.8, 1.2), gust_speed=2.0,
                  gust_interval=0.3, position_noise=0.01)
    a, b = UAVEnv(**kwargs), UAVEnv(**kwargs)
    body = a.model.body("quad").id

    def draw(env, seed):
        obs, _ = env.reset(seed=seed)
        winds = [env.step(np.zeros(4))[-1]["wind"] for _ in range(100)]
        return (env.model.body_mass[body], env.model.body_inertia[body].copy(),
                env.model.actuator_gainprm[:, 0].copy(), obs, np.array(winds))

    first, again, other = draw(a, 7), draw(b, 7), draw(a, 8)
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(first[2], other[2]) and first[0] != other[0]
    assert np.abs(first[4]).max() > 0  # gusts blew, so their equality above means something


# --- reward and termination on hand-made states ----------------------------------------------


@pytest.mark.parametrize("vehicle", VEHICLES)
def test_hover_reward_at_target_at_rest_is_one(vehicle):
    env = quiet_env(vehicle=vehicle)
    env.reset(seed=0)
    place(env, env.target)
    _, reward, terminated, truncated, info = env.step(np.zeros(4))
    assert reward == pytest.approx(1.0, abs=1e-9)
    assert not terminated and not truncated
    assert info["position_error"] == pytest.approx(0.0, abs=1e-9)
    assert info["control_effort"] == pytest.approx(0.0, abs=1e-12)
    # a pure yaw rate (a principal axis, no torque) costs rate_penalty·ω²
    place(env, env.target, rates=(0.0, 0.0, 2.0))
    _, reward, *_ = env.step(np.zeros(4))
    assert reward == pytest.approx(1.0 - RATE_PENALTY * 4.0, abs=1e-6)
    # the weights are env keys
    env = quiet_env(vehicle=vehicle, rate_penalty=0.1)
    env.reset(seed=0)
    place(env, env.target, rates=(0.0, 0.0, 2.0))
    _, reward, *_ = env.step(np.zeros(4))
    assert reward == pytest.approx(1.0 - 0.1 * 4.0, abs=1e-6)


def test_hover_reward_formula_on_hand_made_states():
    env = quiet_env()
    env.reset(seed=0)
    target = env.target
    place(env, target + (0.3, -0.1, 0.05))
    _, reward, *_ = env.step(np.zeros(4))  # at rest 0.32 m away: only the distance terms
    d = float(np.linalg.norm((0.3, -0.1, 0.05)))
    assert reward == pytest.approx(0.5 * math.exp(-d / 0.5) + 0.5 * math.exp(-d / 0.05), abs=1e-9)
    place(env, target + (0.02, 0.0, 0.0), quat=yaw_quat(0.4), vel=(0.1, 0.2, -0.1), rates=(0.5, -0.3, 1.0))
    previous = np.zeros(4)
    for action in ([0.05, -0.02, 0.03, 0.0], [0.05, -0.02, 0.03, 0.0], [-0.1, 0.2, 0.0, 0.1]):
        action = np.array(action)
        _, reward, _, _, info = env.step(action)
        pos, _, _, rates = env.state()
        d = float(np.linalg.norm(target - pos))
        assert reward == pytest.approx(hover_reward(d, rates, action - previous), abs=1e-9)
        assert info["position_error"] == pytest.approx(d, abs=1e-12)
        previous = action


def test_control_effort_with_rotors_off():
    env = quiet_env()
    env.reset(seed=0)
    for _ in range(3):  # rotors commanded to 0 N: Σ|0 − T_hover| / (4·T_hover) = 1 every step
        *_, info = env.step(-np.ones(4))
    assert info["control_effort"] == pytest.approx(1.0)


@pytest.mark.parametrize("vehicle", VEHICLES)
def test_ground_contact_is_a_crash(vehicle):
    env = quiet_env(vehicle=vehicle)
    env.reset(seed=0)
    half_height = env.params.frame_half_size[2]
    place(env, (0.0, 0.0, 0.5 * half_height))  # the frame's box intersects the floor
    _, reward, terminated, truncated, info = env.step(np.zeros(4))
    pos, _, _, rates = env.state()
    assert terminated and not truncated
    assert info["crash"] is True and info["out_of_bounds"] is False and info["is_success"] is False
    d = float(np.linalg.norm(env.target - pos))
    assert reward == pytest.approx(hover_reward(d, rates, np.zeros(4)) - env.crash_penalty, abs=1e-9)
    assert env.crash_penalty == 10.0


def test_crash_penalty_is_configurable():
    env = quiet_env(crash_penalty=3.0)
    env.reset(seed=0)
    place(env, (0.0, 0.0, 0.005))
    _, reward, terminated, _, info = env.step(np.zeros(4))
    pos, _, _, rates = env.state()
    assert terminated and info["crash"]
    assert reward == pytest.approx(hover_reward(float(np.linalg.norm(env.target - pos)), rates, np.zeros(4)) - 3.0,
                                   abs=1e-9)


@pytest.mark.parametrize("task", TASKS)
def test_upside_down_is_a_crash(task):
    env = quiet_env(task=task)
    env.reset(seed=0)
    place(env, (0.0, 0.0, 2.0), quat=(0.0, 1.0, 0.0, 0.0))  # rolled 180°
    _, reward, terminated, _, info = env.step(np.zeros(4))
    assert terminated and info["crash"] is True and info["out_of_bounds"] is False
    assert reward < -env.crash_penalty + 1.0 + 1e-9  # the penalty is in (the rest is at most 1 or a small progress)
    # tilted 80°: still flying
    env.reset(seed=0)
    tilt = math.radians(80.0)
    place(env, (0.0, 0.0, 2.0), quat=(math.cos(tilt / 2), math.sin(tilt / 2), 0.0, 0.0))
    *_, terminated, _, info = env.step(np.zeros(4))
    assert not terminated and info["crash"] is False


HOVER_TERMS = ("rate_penalty", "smoothness_penalty", "proximity", "crash_penalty")
WAYPOINT_TERMS = ("rate_penalty", "smoothness_penalty", "progress", "waypoint_bonus", "proximity", "crash_penalty")


def sum_in_order(values) -> float:
    """Left to right, the order the env adds its terms in (float addition is not associative)."""
    total, *rest = values
    for value in rest:
        total += value
    return total


@pytest.mark.parametrize("action_mode", MODES)
@pytest.mark.parametrize("task", TASKS)
def test_reward_terms_in_info_add_up_to_the_reward(task, action_mode):
    env = UAVEnv(task=task, action_mode=action_mode, gust_speed=1.0, waypoint_radius=0.3)
    obs, info = env.reset(seed=3)
    assert not any(key.startswith("reward_") for key in info)  # reset has no reward
    names = HOVER_TERMS if task == "hover" else WAYPOINT_TERMS
    pid = pid_for_env(env)
    pid.reset()
    rng = np.random.default_rng(0)
    done = False
    while not done:
        obs, reward, terminated, truncated, info = env.step(np.clip(pid.act(obs) + rng.normal(0, 0.1, 4), -1, 1))
        done = terminated or truncated
        assert tuple(key[len("reward_"):] for key in info if key.startswith("reward_")) == names
        assert reward == sum_in_order(info[f"reward_{name}"] for name in names)  # exactly, not approximately
        assert info["reward_proximity"] == proximity_reward(info["position_error"])
        assert info["reward_crash_penalty"] == (-env.crash_penalty if terminated else 0.0)
        if task == "waypoints":
            assert info["reward_waypoint_bonus"] == info["waypoints_reached"]


def test_reward_terms_of_a_crash_and_a_passed_waypoint():
    env = quiet_env(task="waypoints", n_waypoints=3, waypoint_radius=0.15)
    env.reset(seed=0)
    first = env.target.copy()
    place(env, first + (0.1, 0.0, 0.0))
    _, reward, _, _, info = env.step(np.zeros(4))
    assert info["reward_waypoint_bonus"] == 1.0 and info["reward_crash_penalty"] == 0.0
    assert info["reward_proximity"] == proximity_reward(info["position_error"])  # to the next waypoint
    assert info["reward_progress"] == pytest.approx(0.0, abs=1e-9)  # at rest: measured to the waypoint just passed
    assert info["reward_rate_penalty"] == pytest.approx(0.0, abs=1e-12)
    assert info["reward_smoothness_penalty"] == 0.0  # the same (zero) action as the reset's last action
    place(env, (0.0, 0.0, 2.0), quat=(0.0, 1.0, 0.0, 0.0))  # upside down
    _, reward, terminated, _, info = env.step(np.ones(4))
    assert terminated and info["reward_crash_penalty"] == -10.0
    assert info["reward_smoothness_penalty"] == pytest.approx(-SMOOTHNESS_PENALTY * 4.0)
    assert reward == sum_in_order(info[f"reward_{name}"] for name in WAYPOINT_TERMS)


@pytest.mark.parametrize("pos", [(3.2, 0.0, 1.5), (0.0, -3.2, 1.5), (-3.1, 3.1, 1.0), (0.0, 0.0, 4.2)])
def test_leaving_the_flight_volume(pos):
    env = quiet_env(arena_half_width=3.0, ceiling=4.0)
    env.reset(seed=0)
    place(env, pos)
    _, reward, terminated, truncated, info = env.step(np.zeros(4))
    p, _, _, rates = env.state()
    assert terminated and not truncated
    assert info["out_of_bounds"] is True and info["crash"] is False and info["is_success"] is False
    d = float(np.linalg.norm(env.target - p))
    assert reward == pytest.approx(hover_reward(d, rates, np.zeros(4)) - env.crash_penalty, abs=1e-9)
    # just inside is fine
    env.reset(seed=0)
    place(env, (2.9, -2.9, 3.9))
    *_, terminated, _, info = env.step(np.zeros(4))
    assert not terminated and not info["out_of_bounds"]


def test_hover_success_only_at_truncation():
    env = quiet_env(episode_seconds=0.3, success_radius=0.1)
    env.reset(seed=0)
    n = round(0.3 / env.control_dt)
    for k in range(1, n + 1):
        _, _, terminated, truncated, info = env.step(np.zeros(4))
        assert not terminated
        assert truncated == (k == n)
        assert info["is_success"] == (k == n), k  # held at the target, but success is judged at the end
    assert info["hover_rmse"] == pytest.approx(0.0, abs=1e-9)
    # held 0.2 m off the target: truncated without success
    env.reset(seed=0)
    place(env, env.target + (0.2, 0.0, 0.0))
    for _ in range(n):
        _, _, terminated, truncated, info = env.step(np.zeros(4))
    assert truncated and not terminated
    assert info["hover_rmse"] == pytest.approx(0.2, abs=1e-9) and info["is_success"] is False


def test_hover_rmse_uses_the_last_window():
    env = quiet_env(episode_seconds=1.0, rmse_window=0.2)
    env.reset(seed=0)
    place(env, env.target + (0.0, 0.0, 0.3))  # 0.3 m off, held in place by the hover thrust
    for _ in range(30):
        *_, info = env.step(np.zeros(4))
    place(env, env.target)
    for _ in range(10):  # half the 20-step window back at the target
        *_, info = env.step(np.zeros(4))
    assert info["hover_rmse"] == pytest.approx(math.sqrt(0.5 * 0.3**2), abs=1e-9)
    for _ in range(10):
        *_, info = env.step(np.zeros(4))
    assert info["hover_rmse"] == pytest.approx(0.0, abs=1e-9)


def test_waypoint_reward_counts_passed_waypoints():
    env = quiet_env(task="waypoints", n_waypoints=3, waypoint_radius=0.15)
    env.reset(seed=0)
    first = env.target.copy()
    # 0.2 m away at rest: not reached; the reward is the proximity alone
    place(env, first + (0.2, 0.0, 0.0))
    _, reward, terminated, _, info = env.step(np.zeros(4))
    assert info["waypoints_reached"] == 0 and not terminated
    assert reward == pytest.approx(proximity_reward(info["position_error"]), abs=1e-9)
    lingering = reward
    # within the radius: reached, the next waypoint becomes the target, and the reward is 1 + p(d_next)
    place(env, first + (0.1, 0.0, 0.0))
    _, reward, terminated, _, info = env.step(np.zeros(4))
    assert info["waypoints_reached"] == 1
    assert not terminated and not info["is_success"] and "time_to_complete" not in info
    second = env.target
    assert np.linalg.norm(second - first) >= 1.0  # legs are waypoint_spacing long
    assert info["position_error"] == pytest.approx(np.linalg.norm(second - env.state()[0]))
    assert reward == pytest.approx(1.0 + proximity_reward(info["position_error"]), abs=1e-9)
    assert reward > lingering  # passing always pays more than lingering before the waypoint
    # moving toward it with body rates: 1 + p(d) + 10·(d_prev − d) − rate_penalty·‖ω‖²
    place(env, second + (0.6, 0.0, 0.0), vel=(-1.0, 0.0, 0.0), rates=(0.0, 0.0, 0.5))
    d_prev = float(np.linalg.norm(second - env.state()[0]))
    _, reward, *_ = env.step(np.zeros(4))
    pos, _, _, rates = env.state()
    d = float(np.linalg.norm(second - pos))
    assert d < d_prev
    assert reward == pytest.approx(1.0 + proximity_reward(d) + 10.0 * (d_prev - d)
                                   - RATE_PENALTY * float(rates @ rates), abs=1e-9)


def test_completing_the_course_is_success_and_the_vehicle_holds():
    env = quiet_env(task="waypoints", n_waypoints=3, episode_seconds=0.5)
    env.reset(seed=2)
    course = env._waypoints.copy()
    for k in range(1, 4):
        place(env, env.target)
        _, reward, terminated, truncated, info = env.step(np.zeros(4))
        assert info["waypoints_reached"] == k
        assert not terminated and not truncated
        assert info["is_success"] == (k == 3)
        assert ("time_to_complete" in info) == (k == 3)
    assert info["time_to_complete"] == pytest.approx(3 * env.control_dt)
    # done: the target stays at the last waypoint and every step pays N + p(d)
    np.testing.assert_allclose(env.target, course[-1])
    assert reward == pytest.approx(3.0 + proximity_reward(info["position_error"]), abs=1e-9)
    done = False
    while not done:
        _, reward, terminated, truncated, info = env.step(np.zeros(4))
        done = terminated or truncated
    assert truncated and not terminated and info["is_success"] and info["waypoints_reached"] == 3
    assert info["crash"] is False and info["out_of_bounds"] is False


def test_waypoints_timeout_is_truncation_without_success():
    env = quiet_env(task="waypoints", episode_seconds=0.2)
    env.reset(seed=0)
    done = False
    while not done:
        _, _, terminated, truncated, info = env.step(np.zeros(4))
        done = terminated or truncated
    assert truncated and not terminated and info["is_success"] is False and info["waypoints_reached"] == 0


# --- observation ---------------------------------------------------------------------------


def test_observation_is_in_the_body_frame():
    env = quiet_env(target=(0.0, 0.0, 1.5))
    env.reset(seed=0)
    lay = env.layout

    def observe(yaw, vel=(0.0, 0.0, 0.0)):
        place(env, (-0.5, 0.0, 1.5), quat=yaw_quat(yaw), vel=vel)
        obs, *_ = env.step(np.zeros(4))
        return obs

    obs = observe(0.0)
    np.testing.assert_allclose(obs[slice(*lay.position_error)], [0.5, 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(obs[slice(*lay.attitude)], np.eye(3).ravel(), atol=1e-9)
    obs = observe(math.pi / 2)  # body x = world y: a target along world +x lies along body -y
    np.testing.assert_allclose(obs[slice(*lay.position_error)], [0.0, -0.5, 0.0], atol=1e-9)
    np.testing.assert_allclose(obs[slice(*lay.attitude)], [0, -1, 0, 1, 0, 0, 0, 0, 1], atol=1e-9)
    obs = observe(math.pi / 2, vel=(1.0, 0.0, 0.0))
    _, vel, rot, _ = env.state()
    np.testing.assert_allclose(obs[slice(*lay.velocity)], rot.T @ vel, atol=1e-12)
    np.testing.assert_allclose(obs[slice(*lay.velocity)], [0.0, -1.0, 0.0], atol=0.02)


def test_attitude_is_relative_to_the_target_heading():
    yaw = 0.8
    env = quiet_env(target_yaw=yaw)
    env.reset(seed=0)
    place(env, env.target, quat=yaw_quat(yaw))
    obs, *_ = env.step(np.zeros(4))
    np.testing.assert_allclose(obs[slice(*env.layout.attitude)], np.eye(3).ravel(), atol=1e-9)


@pytest.mark.parametrize("task", TASKS)
def test_uav_observation_matches_the_env(task):
    env = UAVEnv(task=task, n_lookahead=2, n_waypoints=3, target_yaw=0.3 if task == "hover" else 0.0)
    obs, _ = env.reset(seed=4)
    rng = np.random.default_rng(0)
    for k in range(40):
        action = rng.uniform(-0.3, 0.3, 4).astype(np.float32)
        if k == 20 and task == "waypoints":
            place(env, env.target)  # reach one waypoint, so the lookahead shifts (and repeats the last)
        obs, _, terminated, truncated, _ = env.step(action)
        assert not terminated
        pos, vel, rot, rates = env.state()
        lookahead = []
        if task == "waypoints":
            course = env._waypoints  # private: the lookahead needs the course
            i = int(np.argmin(np.linalg.norm(course - env.target, axis=1)))
            lookahead = [course[min(i + j, len(course) - 1)] for j in (1, 2)]
        expected = uav_observation(pos, vel, rot, rates, action, env.target, lookahead, env.target_yaw)
        np.testing.assert_allclose(obs, expected, rtol=0, atol=1e-12)
        np.testing.assert_allclose(obs[slice(*env.layout.last_action)], action, atol=1e-7)


def test_observation_noise_has_the_configured_std():
    noise = dict(position_noise=0.05, velocity_noise=0.1, gyro_noise=0.2)
    env = quiet_env(**noise)
    env.reset(seed=0)
    lay = env.layout
    diffs = {"position_error": [], "velocity": [], "angular_velocity": []}
    for _ in range(400):
        place(env, env.target, quat=yaw_quat(0.6))
        obs, *_ = env.step(np.zeros(4))
        pos, vel, rot, rates = env.state()
        clean = uav_observation(pos, vel, rot, rates, np.zeros(4), env.target)
        for part in diffs:
            diffs[part].append((obs - clean)[slice(*getattr(lay, part))])
        # attitude and last action carry no noise
        np.testing.assert_allclose(obs[slice(*lay.attitude)], clean[slice(*lay.attitude)], atol=1e-12)
        np.testing.assert_allclose(obs[slice(*lay.last_action)], 0.0)
    for part, std in (("position_error", 0.05), ("velocity", 0.1), ("angular_velocity", 0.2)):
        d = np.concatenate(diffs[part])
        assert abs(d.mean()) < 0.2 * std, part
        assert d.std() == pytest.approx(std, rel=0.15), part


# --- CLIs ----------------------------------------------------------------------------------


def assert_one_line_error(result, *needles: str) -> str:
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr[-3000:]
    lines = result.stderr_lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])
    return lines[0]


def test_evaluate_pid_cli(run_cli):
    result = run_cli("agents.evaluate", "env=uav_hover", "policy=pid", "episodes=2")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [ln for ln in result.stdout.splitlines() if ln.strip()]
    m = SUMMARY_LINE_EVAL.match(lines[-1])
    assert m, lines[-1]
    metrics = json.loads(lines[-2])
    assert metrics["env"] == "uav_hover" and metrics["policy"] == "pid" and metrics["episodes"] == 2
    assert metrics["run"] is None
    assert 0.0 <= metrics["hover_rmse"] <= 0.02
    assert metrics["crash"] == 0.0 and metrics["is_success"] == 1.0
    assert float(m["mean"]) > 0.0


def test_evaluate_pid_cli_waypoints_ctbr(run_cli):
    result = run_cli("agents.evaluate", "env=uav_waypoints", "policy=pid", "env.action_mode=ctbr", "env.vehicle=x2",
                     "episodes=1")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [ln for ln in result.stdout.splitlines() if ln.strip()]
    assert SUMMARY_LINE_EVAL.match(lines[-1]), lines[-1]
    metrics = json.loads(lines[-2])
    assert metrics["waypoints_reached"] == 4 and metrics["is_success"] == 1.0 and "time_to_complete" in metrics


def test_evaluate_pid_unknown_gain_is_one_line_error(run_cli):
    result = run_cli("agents.evaluate", "env=uav_hover", "policy=pid", "+policy.gains.pos_q=1.0", "episodes=1")
    assert_one_line_error(result, "pos_q")


def test_train_pid_is_one_line_error(run_cli):
    result = run_cli("agents.train", "env=uav_hover", "policy=pid")
    line = assert_one_line_error(result, "evaluate")
    assert "pid" in line


@pytest.mark.parametrize("env_name", ["swimmer", "uav_hover"])
def test_sac_with_ncap_is_one_line_error(run_cli, env_name):
    result = run_cli("agents.train", f"env={env_name}", "policy=ncap", "algo=sac", "algo.total_timesteps=256",
                     "progress_bar=false")
    assert_one_line_error(result, "ncap")


# --- short training runs -------------------------------------------------------------------

SAC_TINY = [
    "algo.total_timesteps=2000", "algo.sb3.learning_starts=500", "algo.sb3.buffer_size=5000",
    "algo.eval_every=1000", "algo.eval_episodes=1", "algo.final_eval_episodes=1", "algo.checkpoint_every=0",
    "threads=1", "progress_bar=false",
]


@pytest.fixture(scope="module")
def uav_ppo_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("uav") / "ppo"
    summary = train_in_process(run, ["env=uav_hover", "policy=mlp", "algo=ppo", "algo.total_timesteps=1024",
                                     "seed=0", *TINY, "env.episode_seconds=1"])
    return run, summary


@pytest.fixture(scope="module")
def uav_sac_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("uav") / "sac"
    summary = train_in_process(run, ["env=uav_hover", "policy=mlp", "algo=sac", "seed=0", *SAC_TINY,
                                     "env.episode_seconds=1"])
    return run, summary


def _uav_observations(env_cfg: dict, n: int = 40) -> np.ndarray:
    env = envs.make_from_config(env_cfg)
    obs, _ = env.reset(seed=3)
    out = [obs]
    rng = np.random.default_rng(0)
    for _ in range(n):
        obs, _, terminated, truncated, _ = env.step(rng.uniform(-0.2, 0.2, 4))
        out.append(obs)
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()
    return np.array(out)


def _check_run(run, summary, algo_cls, scratch):
    final = RunDir(run).policy()
    for name in ("policy.json", "policy.safetensors", "trainer_state.json", "trainer_state.safetensors"):
        assert (final / name).is_file(), name
    for name in ("config.yaml", "metrics.csv", "summary.json"):
        assert (run / name).is_file(), name
    assert np.isfinite(summary["return_mean"])
    meta = read_meta(final)
    assert meta.env["id"] == envs.UAV and meta.env["task"] == "hover" and meta.env["episode_seconds"] == 1.0
    policy = load_policy(final, EnvInterface.of(envs.make_from_config(meta.env)))
    assert policy.normalizes and policy.meta.kind == "mlp" and policy.meta.obs_dim == HOVER_SIZE
    obs = _uav_observations(meta.env)
    actions = policy.act(obs)
    assert actions.shape == (len(obs), 4) and np.all(np.abs(actions) <= 1.0)

    trainer = restored_sb3_trainer(run, scratch)
    model, venv = trainer.model, trainer.venv
    assert isinstance(model, algo_cls)
    try:
        np.testing.assert_allclose(policy.obs_mean.numpy(), venv.obs_rms.mean, rtol=1e-5, atol=1e-6)
        # the exported actor of the restored SB3 model acts as the loaded policy does
        exported = export_policy(model, trainer.meta)
        np.testing.assert_allclose(policy.act(obs), exported.act(obs), atol=1e-6)
        for name, tensor in exported.actor.state_dict().items():
            torch.testing.assert_close(policy.actor.state_dict()[name], tensor.float(), rtol=0, atol=0)
        # and as SB3's deterministic prediction on normalised observations
        sb3_actions, _ = model.predict(venv.normalize_obs(obs), deterministic=True)
        np.testing.assert_allclose(policy.act(obs), sb3_actions, atol=1e-5)
        for o, a in zip(obs[:3], sb3_actions[:3]):
            np.testing.assert_allclose(policy.act(o), a, atol=1e-5)
    finally:
        venv.close()
    return policy, obs


def test_ppo_run_on_uav_hover(uav_ppo_run, tmp_path):
    run, summary = uav_ppo_run
    assert summary["algo"] == "ppo" and summary["env"] == "uav_hover" and summary["steps"] == 1024
    policy, _ = _check_run(run, summary, PPO, tmp_path / "restored")
    assert policy.actor.config.squash is False and policy.meta.action_std is not None
    assert "hover_rmse" in summary and "crash" in summary


def test_sac_run_on_uav_hover(uav_sac_run, tmp_path):
    run, summary = uav_sac_run
    assert summary["algo"] == "sac" and summary["env"] == "uav_hover" and summary["policy"] == "mlp"
    assert summary["steps"] >= 2000
    policy, obs = _check_run(run, summary, SAC, tmp_path / "restored")
    assert isinstance(policy.actor, MLPActor) and policy.actor.config.squash is True
    assert policy.meta.config["squash"] is True and policy.meta.action_std is None
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) >= 3  # header, step 0, step 1000, ...
    # the ROS node's NumPy path agrees with the SAC policy too
    fast = policy.numpy_forward()
    assert fast is not None
    np.testing.assert_allclose(np.stack([fast(o) for o in obs]), policy.act(obs), atol=1e-5)


# --- NumPy inference of a squashed MLP --------------------------------------------------------


@pytest.mark.parametrize("activation", ["tanh", "relu", "elu"])
@pytest.mark.parametrize("normalize", [False, True])
def test_numpy_policy_squashed_mlp(activation, normalize):
    cfg = MLPConfig(obs_dim=HOVER_SIZE, action_dim=4, hidden=[32, 16], activation=activation, squash=True)
    torch.manual_seed(0)
    actor = MLPActor(cfg)
    with torch.no_grad():  # outputs of order 1-3 before the tanh: the squash matters, some saturate
        for m in actor.net:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=2.0 / m.in_features**0.5)
                nn.init.normal_(m.bias, std=0.5)
    meta = PolicyMeta(kind="mlp", config=cfg.to_dict(), env={"name": "uav_hover", "id": envs.UAV},
                      observation={"shape": [HOVER_SIZE]}, action_low=[-1.0] * 4, action_high=[1.0] * 4)
    mean = var = None
    if normalize:
        gen = torch.Generator().manual_seed(1)
        mean, var = 0.2 * torch.randn(HOVER_SIZE, generator=gen), 0.25 + torch.rand(HOVER_SIZE, generator=gen)
        meta.normalization = {"clip": 5.0}
    policy = VectorPolicy(actor.eval(), meta, mean, var, numpy_actor=mlp_forward)
    fast = policy.numpy_forward()
    assert fast is not None
    obs = np.random.default_rng(0).normal(size=(300, HOVER_SIZE)) * 2.0
    expected = policy.act(obs)
    assert np.abs(expected).max() > 0.95 and np.abs(expected).min() < 0.5  # both saturated and linear outputs
    with torch.no_grad():
        raw = actor.net(torch.as_tensor(obs if not normalize else
                                        np.clip((obs - mean.numpy()) / np.sqrt(var.numpy() + 1e-8), -5, 5),
                                        dtype=torch.float32)).numpy()
    assert np.abs(raw).max() > 1.5  # pre-squash values beyond [-1, 1]: only the tanh keeps them in range
    got = np.stack([fast(o) for o in obs])
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


# --- curriculum: init_from -----------------------------------------------------------------


def test_init_from_starts_waypoints_from_a_hover_run(uav_ppo_run, tmp_path):
    """A waypoint run (lookahead off) starts from the hover run's weights and observation statistics."""
    hover, _ = uav_ppo_run
    run = tmp_path / "waypoints"
    train_in_process(run, ["env=uav_waypoints", "policy=mlp", "algo=ppo", "algo.total_timesteps=1024", "seed=0",
                           *TINY, "env.episode_seconds=1", "env.n_lookahead=0", f"init_from={hover}",
                           "algo.sb3.learning_rate=0.0"])  # no update: the result must equal the start
    start, finished = load_policy(RunDir(hover).policy()), load_policy(RunDir(run).policy())
    for name, value in start.actor.state_dict().items():
        torch.testing.assert_close(finished.actor.state_dict()[name], value)
    # the observation statistics are the hover run's, held (the policy's inputs keep their meaning)
    torch.testing.assert_close(finished.obs_mean, start.obs_mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(finished.obs_var, start.obs_var, atol=1e-6, rtol=0)


def test_init_from_a_mismatched_run_is_one_line_error(uav_ppo_run, run_cli):
    hover, _ = uav_ppo_run
    result = run_cli("agents.train", "env=uav_waypoints", "policy=mlp", "algo=ppo", f"init_from={hover}",
                     "algo.total_timesteps=256", "progress_bar=false")  # lookahead on: 25-d, not hover's 22-d
    line = assert_one_line_error(result, "init_from")
    assert "does not fit" in line or "observations" in line
    result = run_cli("agents.train", "env=uav_hover", "policy=mlp", "algo=ppo", "init_from=/nonexistent/run",
                     "algo.total_timesteps=256", "progress_bar=false")
    assert_one_line_error(result, "init_from", "/nonexistent/run", "does not exist")


def test_error_clip_shortens_the_observed_error_only():
    env = quiet_env(task="waypoints", error_clip=0.5)
    env.reset(seed=0)
    place(env, env.target + (1.2, 0.0, 0.0))
    obs, reward, *_ = env.step(np.zeros(4))
    pos = env.state()[0]
    true_error = float(np.linalg.norm(env.target - pos))
    assert true_error > 1.0
    observed = obs[slice(*env.layout.position_error)]
    assert float(np.linalg.norm(observed)) == pytest.approx(0.5)
    np.testing.assert_allclose(observed / 0.5, env.state()[2].T @ (env.target - pos) / true_error, atol=1e-12)
    # the reward sees the true distance
    assert reward == pytest.approx(proximity_reward(true_error), abs=0.05)
    place(env, env.target + (0.2, 0.0, 0.0))  # within the clip: unchanged
    obs, *_ = env.step(np.zeros(4))
    np.testing.assert_allclose(obs[slice(*env.layout.position_error)],
                               env.state()[2].T @ (env.target - env.state()[0]), atol=1e-12)
    with pytest.raises(ValueError, match="error_clip"):
        UAVEnv(error_clip=0.0)
