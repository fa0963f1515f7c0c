"""The N-link swimmer env (envs/swimmer/env.py, envs/swimmer/model.py) and the Swimmer-v5 wrapper."""

from __future__ import annotations

import math
import pickle

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from gymnasium.envs.mujoco.utils import check_mujoco_reset_state
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.vec_env import DummyVecEnv

import envs
from envs.physics import SimulationDiverged
from envs.swimmer.env import (
    SwimmerConfig,
    SwimmerEnv,
    navigate_reward,
    swimmer_layout,
    swimmer_observation,
)
from envs.swimmer.model import joint_limit, swimmer_mjcf

from conftest import check_quietly

REGISTERED = [envs.SWIMMER, envs.SWIMMER_SWIM, envs.SWIMMER_NAVIGATE, envs.SWIMMER_GYM, envs.SWIMMER_FIND]
SWIMMER_IDS = [envs.SWIMMER, envs.SWIMMER_SWIM, envs.SWIMMER_NAVIGATE]
KNOWN_CHECK_WARNINGS = ("infinity", "wrapper applied")




def _rollout(env, seed: int, actions: np.ndarray):
    obs, info = env.reset(seed=seed)
    traj = [(obs.copy(), 0.0, dict(info))]
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        traj.append((obs.copy(), reward, dict(info)))
    return traj


# --- registration and gymnasium's own checkers ---------------------------------------------


def test_all_embodied_ids_are_registered():
    embodied = sorted(k for k in gym.registry if k.startswith("embodied/") and "Swimmer" in k)
    assert embodied == sorted(REGISTERED)


@pytest.mark.parametrize("env_id", REGISTERED)
def test_check_env_registered(env_id):
    env = gym.make(env_id)
    try:
        check_quietly(check_env, env.unwrapped, skip_render_check=True, allowed=KNOWN_CHECK_WARNINGS)
        check_quietly(check_mujoco_reset_state, env.unwrapped, allowed=KNOWN_CHECK_WARNINGS)
    finally:
        env.close()


@pytest.mark.parametrize("task", ["swim", "navigate"])
@pytest.mark.parametrize("n_links", [3, 6, 15])
def test_check_env_n_links(task, n_links):
    env = gym.make(envs.SWIMMER, task=task, n_links=n_links)
    try:
        check_quietly(check_env, env.unwrapped, skip_render_check=True, allowed=KNOWN_CHECK_WARNINGS)
        check_quietly(check_mujoco_reset_state, env.unwrapped, allowed=KNOWN_CHECK_WARNINGS)
        assert env.observation_space.shape == (swimmer_layout(n_links, task).size,)
        assert env.action_space.shape == (n_links - 1,)
    finally:
        env.close()


def test_check_env_gym_swimmer_with_time_feature():
    """The wrapped Swimmer-v5 (what training sees) passes too, and its layout is reachable."""
    env = gym.make(envs.SWIMMER_GYM)
    try:
        check_quietly(check_env, env, skip_render_check=True, allowed=KNOWN_CHECK_WARNINGS)
        layout = env.get_wrapper_attr("layout")
        assert layout.joints == (1, 3) and layout.time == 8 and layout.size == 9
        assert env.observation_space.shape == (9,)
        assert env.action_space.shape == (2,)
        obs, _ = env.reset(seed=0)
        assert obs[layout.time] == 0.0
        qpos = env.unwrapped.data.qpos
        np.testing.assert_allclose(obs[slice(*layout.joints)], qpos[3:5])
        for k in range(1, 4):
            obs, *_ = env.step(np.zeros(2))
            assert obs[layout.time] == pytest.approx(k / 1000, abs=1e-6)
    finally:
        env.close()


@pytest.mark.parametrize("env_id", SWIMMER_IDS)
def test_task_of_registered_ids(env_id):
    env = gym.make(env_id)
    expected = "navigate" if env_id == envs.SWIMMER_NAVIGATE else "swim"
    assert env.unwrapped.task == expected
    assert env.spec.max_episode_steps == 1000
    _, info = env.reset(seed=0)
    assert ("is_success" in info) == (expected == "navigate")
    for key in ("forward_speed", "distance_travelled", "distance_to_target", "x_position", "y_position"):
        assert key in info


# --- model: MJCF, physics constants, timing -------------------------------------------------


@pytest.mark.parametrize("n_links", range(3, 16))
def test_mjcf_compiles_with_dm_control_constants(n_links):
    model = mujoco.MjModel.from_xml_string(swimmer_mjcf(n_links))
    n_joints = n_links - 1
    assert model.nbody == n_links + 1  # world + head + segments
    assert model.njnt == n_joints + 3  # rootx, rooty, rootz + hinges
    assert model.nu == n_joints
    hinges = [model.joint(f"joint_{i}") for i in range(n_joints)]
    limit = math.radians(360.0 / n_links)
    assert joint_limit(n_links) == pytest.approx(limit)
    for j in hinges:
        assert j.limited[0] == 1
        np.testing.assert_allclose(j.range, [-limit, limit], rtol=1e-9)
    np.testing.assert_allclose(model.actuator_gear[:, 0], 5e-4)
    np.testing.assert_allclose(model.actuator_ctrlrange, np.tile([-1.0, 1.0], (n_joints, 1)))
    assert model.opt.density == 3000.0
    assert model.opt.viscosity == 0.0
    assert model.opt.timestep == 0.002
    assert model.opt.disableflags & mujoco.mjtDisableBit.mjDSBL_CONTACT
    # every link has 10 g of mass (dm_control's inertial box)
    np.testing.assert_allclose(model.body_mass[1:], 0.01)


def test_mjcf_fluid_parameters_are_written():
    model = mujoco.MjModel.from_xml_string(swimmer_mjcf(6, fluid_density=1234.0, fluid_viscosity=0.5, timestep=0.001))
    assert model.opt.density == 1234.0
    assert model.opt.viscosity == 0.5
    assert model.opt.timestep == 0.001


@pytest.mark.parametrize("bad", [2, 16, 0, -6, 6.0, "6", None])
def test_invalid_n_links_raises(bad):
    with pytest.raises(ValueError, match="n_links"):
        swimmer_mjcf(bad)
    with pytest.raises(ValueError, match="n_links"):
        SwimmerEnv(n_links=bad)


@pytest.mark.parametrize("bad", ["fly", "", "Swim", None])
def test_invalid_task_raises(bad):
    with pytest.raises(ValueError, match="task"):
        SwimmerEnv(task=bad)
    with pytest.raises(ValueError):
        gym.make(envs.SWIMMER, task=bad)


def test_config_is_the_one_keyword_list():
    env = SwimmerEnv(task="navigate", n_links=5, control_timestep=0.02)
    assert env.config == SwimmerConfig(task="navigate", n_links=5, control_timestep=0.02)
    assert env.frame_skip == 10
    clone = pickle.loads(pickle.dumps(env))  # EzPickle rebuilds it from the same keywords
    assert clone.config == env.config and clone.layout == env.layout
    with pytest.raises(ValueError, match="control_timestep"):
        SwimmerEnv(control_timestep=0.003)
    with pytest.raises(TypeError, match="'n_link'"):
        SwimmerEnv(n_link=5)


def test_negative_fluid_parameters_raise():
    with pytest.raises(ValueError):
        swimmer_mjcf(6, fluid_density=-1.0)
    with pytest.raises(ValueError):
        swimmer_mjcf(6, fluid_viscosity=-0.1)


def test_timing_spaces_and_truncation_at_1000_steps():
    env = gym.make(envs.SWIMMER)
    u = env.unwrapped
    assert u.dt == pytest.approx(0.03)
    assert u.frame_skip == 15
    assert u.model.opt.timestep == 0.002
    assert env.metadata["render_fps"] == 33
    assert env.action_space.dtype == np.float32
    np.testing.assert_array_equal(env.action_space.low, -np.ones(5, dtype=np.float32))
    np.testing.assert_array_equal(env.action_space.high, np.ones(5, dtype=np.float32))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (24,) and obs.dtype == np.float64
    t0 = u.data.time
    action = np.full(5, 0.3)
    for k in range(1, 1001):
        obs, _, terminated, truncated, _ = env.step(action)
        assert not terminated
        assert truncated == (k == 1000), k
        assert obs[-1] == pytest.approx(k / 1000)
    assert u.data.time - t0 == pytest.approx(30.0)
    env.close()


def test_layout_matches_the_documented_observation_order():
    swim = swimmer_layout(6, "swim")
    assert swim.joints == (0, 5) and swim.to_target is None
    assert swim.body_velocities == (5, 23) and swim.time == 23 and swim.size == 24
    nav = swimmer_layout(6, "navigate")
    assert nav.joints == (0, 5) and nav.to_target == (5, 7)
    assert nav.body_velocities == (7, 25) and nav.time == 25 and nav.size == 26
    assert nav.joint_limit == pytest.approx(2 * math.pi / 6)
    d = nav.to_dict()
    assert d["joints"] == [0, 5] and d["to_target"] == [5, 7] and d["time"] == 25


# --- reset, determinism ---------------------------------------------------------------------


@pytest.mark.parametrize("env_id", SWIMMER_IDS + [envs.SWIMMER_GYM])
def test_seeded_trajectories_are_reproducible(env_id):
    env_a, env_b = gym.make(env_id), gym.make(env_id)
    actions = np.random.default_rng(123).uniform(-1, 1, size=(60,) + env_a.action_space.shape)
    traj_a = _rollout(env_a, 7, actions)
    traj_b = _rollout(env_b, 7, actions)
    # The same env again, after it has been run: reset(seed) must fully restore the start.
    traj_c = _rollout(env_a, 7, actions)
    for (oa, ra, ia), (ob, rb, ib), (oc, rc, ic) in zip(traj_a, traj_b, traj_c):
        np.testing.assert_array_equal(oa, ob)
        np.testing.assert_array_equal(oa, oc)
        assert ra == rb == rc
        assert ia == ib == ic
    other, _ = env_b.reset(seed=8)
    assert not np.array_equal(other, traj_a[0][0])
    env_a.close(), env_b.close()


def test_reset_state_distribution():
    env = gym.make(envs.SWIMMER)
    u = env.unwrapped
    lim = joint_limit(6)
    headings, joints = [], []
    for seed in range(40):
        obs, info = env.reset(seed=seed)
        np.testing.assert_array_equal(u.data.qvel, 0.0)
        np.testing.assert_array_equal(obs[5:23], 0.0)  # at rest
        assert obs[-1] == 0.0
        assert info["distance_travelled"] == 0.0
        joints.append(obs[:5])
        headings.append(u.data.qpos[2])
    joints = np.array(joints)
    assert np.all(np.abs(joints) <= lim)
    assert joints.std() > 0.3 * lim  # actually random, not all zeros
    assert min(headings) >= -np.pi and max(headings) < np.pi and np.std(headings) > 1.0


# --- observation assembly -------------------------------------------------------------------


@pytest.mark.parametrize("task", ["swim", "navigate"])
@pytest.mark.parametrize("n_links", [3, 6, 9])
def test_swimmer_observation_matches_env(task, n_links):
    env = gym.make(envs.SWIMMER, task=task, n_links=n_links)
    u = env.unwrapped
    obs, _ = env.reset(seed=3)
    rng = np.random.default_rng(0)
    for step in range(1, 26):
        obs, *_ = env.step(rng.uniform(-1, 1, n_links - 1))
    m, d = u.model, u.data
    # Independent readouts straight from MuJoCo, not through the env's helpers.
    joints = d.qpos[3:]
    vel = np.zeros((n_links, 3))
    res = np.zeros(6)
    for row, site in enumerate(["head"] + [f"site_{i}" for i in range(n_links - 1)]):
        mujoco.mj_objectVelocity(m, d, mujoco.mjtObj.mjOBJ_SITE, m.site(site).id, res, 1)
        vel[row] = res[3], res[4], res[2]
    to_target = None
    if task == "navigate":
        delta = d.geom("target").xpos - d.geom("nose").xpos
        to_target = delta @ d.body("head").xmat.reshape(3, 3)[:, :2]
    expected = swimmer_observation(joints, vel, 25, 1000, to_target)
    np.testing.assert_allclose(obs, expected, rtol=1e-9, atol=1e-12)
    layout = u.layout
    np.testing.assert_allclose(obs[slice(*layout.joints)], joints)
    np.testing.assert_allclose(obs[slice(*layout.body_velocities)], vel.ravel(), atol=1e-12)
    assert obs[layout.time] == pytest.approx(0.025)
    if task == "navigate":
        np.testing.assert_allclose(obs[slice(*layout.to_target)], to_target, atol=1e-12)
    env.close()


def test_swimmer_observation_pure_function():
    obs = swimmer_observation([0.1, -0.2], np.arange(9.0).reshape(3, 3), 250, 1000, to_target=[1.5, -2.5])
    np.testing.assert_array_equal(obs, [0.1, -0.2, 1.5, -2.5, *range(9), 0.25])
    assert obs.dtype == np.float64
    obs = swimmer_observation(np.zeros(2), np.ones(9), 30, time_scale_steps=60)
    assert obs.shape == (12,) and obs[-1] == 0.5


# --- rewards and info -----------------------------------------------------------------------


def test_swim_reward_is_clipped_forward_speed():
    env = gym.make(envs.SWIMMER)
    u = env.unwrapped
    env.reset(seed=0)
    rewards, speeds = [], []
    res = np.zeros(6)
    for k in range(300):
        # A travelling wave: the swimmer accelerates forward through the clip range.
        action = np.sin(2 * np.pi * k / 60 - np.arange(5) * 0.9)
        _, reward, _, _, info = env.step(action)
        assert reward == pytest.approx(float(np.clip(info["forward_speed"] / 0.1, 0.0, 1.0)), abs=1e-12)
        # forward speed = head velocity along the head -> nose direction (computed independently)
        mujoco.mj_objectVelocity(u.model, u.data, mujoco.mjtObj.mjOBJ_SITE, u.model.site("head").id, res, 0)
        heading = u.data.geom("nose").xpos - u.data.site("head").xpos
        heading /= np.linalg.norm(heading)
        assert info["forward_speed"] == pytest.approx(float(res[3:] @ heading), abs=1e-9)
        rewards.append(reward)
        speeds.append(info["forward_speed"])
    rewards = np.array(rewards)
    assert rewards.min() >= 0.0 and rewards.max() <= 1.0
    assert np.any((rewards > 0.0) & (rewards < 1.0)), "the clip's linear range was never exercised"
    assert np.any(np.array(speeds) < 0) or np.any(rewards == 0.0)


@pytest.mark.parametrize("task", ["swim", "navigate"])
def test_reward_term_in_info(task):
    env = gym.make(envs.SWIMMER, task=task)
    _, info = env.reset(seed=0)
    assert not any(key.startswith("reward_") for key in info)
    rng = np.random.default_rng(0)
    for _ in range(50):
        _, reward, _, _, info = env.step(rng.uniform(-1, 1, 5))
        assert [key for key in info if key.startswith("reward_")] == [f"reward_{task}"]
        assert info[f"reward_{task}"] == reward
    env.close()


def test_navigate_reward_values():
    assert navigate_reward(0.0) == 1.0
    assert navigate_reward(0.05) == 1.0
    assert navigate_reward(0.1) == 1.0
    assert navigate_reward(0.6) == pytest.approx(0.1)
    assert navigate_reward(1.1) == pytest.approx(1.0 / 37.0)  # long tail: 1 / ((2 * 3)^2 + 1)
    values = [navigate_reward(d) for d in np.linspace(0.1, 4.0, 50)]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert 0.0 < navigate_reward(10.0) < 0.01


def test_navigate_env_reward_and_success_follow_distance():
    env = gym.make(envs.SWIMMER_NAVIGATE)
    u = env.unwrapped
    obs, info = env.reset(seed=4)
    rng = np.random.default_rng(1)
    for _ in range(20):
        obs, reward, _, _, info = env.step(rng.uniform(-1, 1, 5))
        nose, target = u.data.geom("nose").xpos[:2], u.data.geom("target").xpos[:2]
        dist = float(np.linalg.norm(target - nose))
        assert info["distance_to_target"] == pytest.approx(dist)
        assert reward == pytest.approx(navigate_reward(dist))
        assert info["is_success"] == (dist <= 0.1)
        # the observed target vector is in the head frame: same length as the world distance
        assert np.linalg.norm(obs[5:7]) == pytest.approx(dist, abs=1e-9)
    # Put the target on the nose: reward 1 and success.
    u.model.geom_pos[u.model.geom("target").id, :2] = u.data.geom("nose").xpos[:2]
    _, reward, _, _, info = env.step(np.zeros(5))
    assert info["distance_to_target"] < 0.1
    assert reward == 1.0 and info["is_success"] is True
    env.close()


def test_target_hidden_on_swim_and_visible_on_navigate():
    swim, nav = SwimmerEnv(task="swim"), SwimmerEnv(task="navigate")
    assert swim.model.geom_rgba[swim.model.geom("target").id, 3] == 0.0
    assert nav.model.geom_rgba[nav.model.geom("target").id, 3] > 0.0


def test_zero_torque_gives_zero_return():
    env = gym.make(envs.SWIMMER)
    _, info0 = env.reset(seed=5)
    total, done = 0.0, False
    while not done:
        _, reward, terminated, truncated, info = env.step(np.zeros(5))
        total += reward
        done = terminated or truncated
    assert total == pytest.approx(0.0, abs=1e-6)
    assert info["distance_travelled"] < 1e-6
    env.close()


def test_travelling_wave_swims_forward():
    """A hand-made head-to-tail wave moves the swimmer well beyond the zero-torque baseline."""
    env = gym.make(envs.SWIMMER)
    env.reset(seed=0)
    total = 0.0
    for k in range(1000):
        _, reward, _, _, info = env.step(np.sign(np.sin(2 * np.pi * k / 60 - np.arange(5) * 1.0)))
        total += reward
    assert total > 100
    assert info["distance_travelled"] > 0.3
    env.close()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_action_raises_value_error(bad):
    env = gym.make(envs.SWIMMER)
    env.reset(seed=0)
    action = np.zeros(5)
    action[2] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        env.unwrapped.step(action)
    env.close()


def test_unstable_physics_raises_simulation_diverged():
    """An absurd fluid density makes MuJoCo's integrator blow up; the env must say so.

    MuJoCo answers a non-finite acceleration by *resetting* the state (warning mjWARN_BADQACC),
    so the observation stays finite and a check on the observation alone never fires.
    """
    env = gym.make(envs.SWIMMER, fluid_density=1e9)
    env.reset(seed=0)
    with pytest.raises(SimulationDiverged):
        for _ in range(20):
            env.step(np.ones(5))
    env.close()


def test_fluid_density_changes_dynamics():
    actions = np.sign(np.sin(2 * np.pi * np.arange(1000)[:, None] / 60 - np.arange(5)[None] * 1.0))

    def run(density):
        env = gym.make(envs.SWIMMER, fluid_density=density)
        assert env.unwrapped.model.opt.density == density
        env.reset(seed=2)
        obs_list, total = [], 0.0
        for a in actions:
            obs, reward, _, _, info = env.step(a)
            obs_list.append(obs)
            total += reward
        env.close()
        return np.array(obs_list), total, info["distance_travelled"]

    obs_3000, ret_3000, dist_3000 = run(3000.0)
    obs_6000, ret_6000, dist_6000 = run(6000.0)
    assert np.abs(obs_3000[:50] - obs_6000[:50]).max() > 1e-3
    # A denser fluid resists the same stroke more: the body travels clearly less far.
    assert abs(ret_3000 - ret_6000) > 50
    assert dist_6000 < 0.8 * dist_3000


# --- vectorised auto-reset ------------------------------------------------------------------


@pytest.mark.parametrize("env_id", [envs.SWIMMER, envs.SWIMMER_NAVIGATE, envs.SWIMMER_GYM])
def test_time_feature_resets_in_gymnasium_sync_vector_env(env_id):
    venv = gym.vector.SyncVectorEnv([lambda: gym.make(env_id, max_episode_steps=5) for _ in range(2)])
    obs, _ = venv.reset(seed=0)
    times = [obs[:, -1].copy()]
    dones = []
    for _ in range(13):
        obs, _, terminated, truncated, _ = venv.step(np.zeros((2,) + venv.single_action_space.shape))
        times.append(obs[:, -1].copy())
        dones.append(terminated | truncated)
    times = np.array(times)[:, 0] * 1000
    # gymnasium's next-step autoreset: 0..5, then a reset step shows 0 again.
    np.testing.assert_allclose(times, [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 0, 1], atol=1e-3)
    assert [bool(d[0]) for d in dones][:6] == [False, False, False, False, True, False]
    venv.close()


@pytest.mark.parametrize("env_id", [envs.SWIMMER, envs.SWIMMER_NAVIGATE, envs.SWIMMER_GYM])
def test_time_feature_resets_in_sb3_dummy_vec_env(env_id):
    venv = DummyVecEnv([lambda: gym.make(env_id, max_episode_steps=5) for _ in range(2)])
    venv.seed(0)
    obs = venv.reset()
    times = [obs[:, -1].copy()]
    for _ in range(12):
        obs, _, done, infos = venv.step(np.zeros((2,) + venv.action_space.shape))
        times.append(obs[:, -1].copy())
        if done[0]:
            assert infos[0]["terminal_observation"][-1] == pytest.approx(0.005, abs=1e-6)
            assert infos[0]["TimeLimit.truncated"]
    np.testing.assert_allclose(np.array(times)[:, 0] * 1000, [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1, 2], atol=1e-3)
    venv.close()


def test_n_links_sets_observation_and_action_sizes():
    for n in (3, 6, 10, 15):
        env = SwimmerEnv(n_links=n)
        obs, _ = env.reset(seed=0)
        assert obs.shape == (n - 1 + 3 * n + 1,)
        assert env.action_space.shape == (n - 1,)
        assert env.layout.joint_limit == pytest.approx(2 * math.pi / n)
        assert np.all(np.abs(obs[: n - 1]) <= 2 * math.pi / n)
        env.close()
