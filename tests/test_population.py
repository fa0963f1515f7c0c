"""Population training: env snapshots (envs/snapshot.py), the batched lock-step engine
(agents/batched_rollout.py), GRPO (agents/grpo.py), ES (agents/es.py) and their trainer shell
(agents/population.py), from hand-computed maths to short runs through the CLI.

Every rollout here is a few hundred env steps; the training runs use 2000 env steps, one
evaluation episode and no intermediate evaluations, so the file runs in well under a minute.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import envs
from agents.batched_rollout import BatchedEnvs
from agents.es import ESTrainer, OpenES, centered_ranks
from agents.grpo import GRPOTrainer, clipped_surrogate, grpo_loss, k3_kl, outcome_advantages, process_advantages
from envs.snapshot import restore_snapshot, take_snapshot
from policies.bundle import read_meta
from policies.pid import pid_for_env
from policies.registry import load_policy
from policies.run_dir import RunDir

from conftest import (
    SUMMARY_LINE_EVAL,
    SUMMARY_LINE_TRAIN,
    assert_names,
    assert_one_line_error,
    cli_env,
    compose_train,
    config_error,
    train_in_process,
)

SWIMMER = {"name": "swimmer", "id": "embodied/Swimmer-v0", "task": "swim", "n_links": 6}
# Hover with every source of randomness on: sensor noise, gusts and a randomised vehicle.
UAV_NOISY = {"name": "uav_hover", "id": "embodied/UAV-v0", "task": "hover", "position_noise": 0.05,
             "velocity_noise": 0.05, "gyro_noise": 0.02, "gust_speed": 3.0, "gust_interval": 0.3,
             "gust_duration": (0.2, 0.5), "mass_scale": (0.8, 1.2), "motor_strength": (0.9, 1.1)}
UAV_WAYPOINTS_NOISY = {**UAV_NOISY, "name": "uav_waypoints", "task": "waypoints"}

# A population run: no intermediate evaluation, one evaluation episode, no periodic checkpoints.
POP_TINY = ["algo.eval_every=1000000", "algo.eval_episodes=1", "algo.final_eval_episodes=1",
            "algo.checkpoint_every=0", "threads=1", "progress_bar=false", "seed=0"]
# 2 groups x 4 members (or 8 ES members) x 50 steps = 400 env steps per batch; 2100 allows 5 batches.
GRPO_SMALL = ["algo=grpo", "algo.groups=2", "algo.group_size=4", "algo.horizon=50", "algo.total_timesteps=2100"]
ES_SMALL = ["algo=es", "algo.population=8", "algo.horizon=50", "algo.total_timesteps=2100"]
TOTAL, BATCH = 2100, 400


def make(cfg: dict) -> gym.Env:
    return gym.make(cfg["id"], **envs.env_kwargs(cfg))


def play(env: gym.Env, actions: np.ndarray) -> dict:
    """Step ``env`` through ``actions``; everything an episode shows, stacked per step."""
    out = {"obs": [], "reward": [], "terminated": [], "qpos": [], "info": []}
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        out["obs"].append(obs)
        out["reward"].append(reward)
        out["terminated"].append(terminated or truncated)
        out["qpos"].append(env.unwrapped.data.qpos.copy())
        out["info"].append(info)
    return {k: (v if k == "info" else np.array(v)) for k, v in out.items()}


def assert_same_trajectory(a: dict, b: dict, info_keys=()) -> None:
    for key in ("obs", "reward", "terminated", "qpos"):
        assert np.array_equal(a[key], b[key]), key
    for key in info_keys:
        assert np.array_equal(np.array([i[key] for i in a["info"]]), np.array([i[key] for i in b["info"]])), key


def near_hover_actions(n: int, seed: int, scale: float = 0.05) -> np.ndarray:
    """Rotor commands jittering around the hover thrust (action 0): the vehicle stays airborne."""
    return np.random.default_rng(seed).uniform(-scale, scale, size=(n, 4))


# --- snapshot / restore -----------------------------------------------------------------------


@pytest.mark.parametrize("task", ["swim", "navigate"])
def test_swimmer_snapshot_replays_exactly(task):
    env = gym.make("embodied/Swimmer-v0", task=task)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(1)
    for a in rng.uniform(-1, 1, (10, 5)):
        obs, *_ = env.step(a)
    snap = take_snapshot(env, obs)
    actions = rng.uniform(-1, 1, (60, 5))
    first = play(env, actions)
    play(env, rng.uniform(-1, 1, (20, 5)))  # wander off, then come back
    restore_snapshot(env, snap)
    assert env.unwrapped.step_count == 10
    second = play(env, actions)
    assert_same_trajectory(first, second, info_keys=("distance_travelled", "distance_to_target", "x_position"))
    # the clock in the observation continues from the snapshot's step, not from the later one
    assert first["obs"][0, -1] == pytest.approx(11 / 1000)
    assert np.ptp(first["reward"]) > 0  # a real trajectory, not a constant
    env.close()


def test_swimmer_snapshot_restores_into_another_instance():
    """Another env, reset with another seed (other pose, other target): the restore overwrites all of it."""
    a = gym.make("embodied/Swimmer-v0", task="navigate")
    obs, _ = a.reset(seed=0)
    rng = np.random.default_rng(2)
    for act in rng.uniform(-1, 1, (15, 5)):
        obs, *_ = a.step(act)
    snap = take_snapshot(a, obs)
    actions = rng.uniform(-1, 1, (40, 5))
    first = play(a, actions)

    b = gym.make("embodied/Swimmer-v0", task="navigate")
    b_obs, _ = b.reset(seed=123)
    assert not np.array_equal(b.unwrapped.task_state()["target_pos"], snap.task["target_pos"])
    restore_snapshot(b, snap)
    second = play(b, actions)
    assert_same_trajectory(first, second, info_keys=("distance_travelled", "distance_to_target"))
    a.close()
    b.close()


@pytest.mark.parametrize("cfg", [UAV_WAYPOINTS_NOISY, {**UAV_NOISY, "action_mode": "ctbr"}],
                         ids=["waypoints-noise-gusts-mass", "hover-ctbr"])
def test_uav_snapshot_replays_noise_gusts_and_randomisation(cfg):
    env = make(cfg)
    obs, _ = env.reset(seed=4)
    pid = pid_for_env(env)  # flies through the gusts; its commands are then replayed open-loop
    pid.reset()
    for _ in range(20):
        obs, *_ = env.step(pid.act(obs))
    snap = take_snapshot(env, obs)
    gust_at_snapshot = env.unwrapped.task_state()["gusts"]["start"]
    actions = []
    for _ in range(150):
        actions.append(pid.act(obs))
        obs, *_ = env.step(actions[-1])
    actions = np.array(actions)
    restore_snapshot(env, snap)
    first = play(env, actions)
    assert not first["terminated"].any()  # the comparison covers a flight, not a crash
    # gusts were redrawn after the snapshot (the redraws come from the env's rng) and blew
    assert env.unwrapped.task_state()["gusts"]["start"] != gust_at_snapshot
    winds = np.array([i["wind"] for i in first["info"]])
    assert np.linalg.norm(winds, axis=1).max() > 0.5
    play(env, near_hover_actions(30, seed=2))
    restore_snapshot(env, snap)
    second = play(env, actions)
    assert_same_trajectory(first, second, info_keys=("wind", "position_error", "hover_rmse", "control_effort"))

    # into another instance with another seed: other vehicle mass, other course, other rng
    other = make(cfg)
    other.reset(seed=99)
    assert other.unwrapped.model.body_mass[other.unwrapped._body] != env.unwrapped.model.body_mass[env.unwrapped._body]
    restore_snapshot(other, snap)
    third = play(other, actions)
    assert_same_trajectory(first, third, info_keys=("wind", "position_error", "hover_rmse", "control_effort"))
    env.close()
    other.close()


def test_uav_snapshot_mass_randomisation_is_restored():
    env = make(UAV_NOISY)
    obs, _ = env.reset(seed=0)
    snap = take_snapshot(env, obs)
    mass = float(env.unwrapped.model.body_mass[env.unwrapped._body])
    env.reset(seed=1)
    assert float(env.unwrapped.model.body_mass[env.unwrapped._body]) != mass
    restore_snapshot(env, snap)
    assert float(env.unwrapped.model.body_mass[env.unwrapped._body]) == mass
    env.close()


def test_restore_without_rng_redraws_the_sensor_noise():
    """rng=False keeps the env's own stream: the same physics, other noise in the observations."""
    cfg = {"id": "embodied/UAV-v0", "task": "hover", "position_noise": 0.05}
    env = make(cfg)
    obs, _ = env.reset(seed=3)
    snap = take_snapshot(env, obs)
    actions = near_hover_actions(30, seed=5)
    first = play(env, actions)
    restore_snapshot(env, snap, rng=False)
    second = play(env, actions)
    assert np.array_equal(first["qpos"], second["qpos"])  # no gusts: the noise does not touch the physics
    assert np.array_equal(first["reward"], second["reward"])  # rewards come from the true state
    assert not np.array_equal(first["obs"], second["obs"])
    restore_snapshot(env, snap)  # with the rng: the same noise again
    assert np.array_equal(play(env, actions)["obs"], first["obs"])
    env.close()


def test_snapshot_into_another_body_is_a_clear_error():
    six = gym.make("embodied/Swimmer-v0", n_links=6)
    four = gym.make("embodied/Swimmer-v0", n_links=4)
    obs, _ = six.reset(seed=0)
    four.reset(seed=0)
    snap = take_snapshot(six, obs)
    before = four.unwrapped.task_state()
    with pytest.raises(ValueError, match=r"physics values.*needs \d+"):
        restore_snapshot(four, snap)
    # nothing was half-restored
    after = four.unwrapped.task_state()
    assert np.array_equal(before["target_pos"], after["target_pos"]) and after["step_count"] == 0
    six.close()
    four.close()


def test_env_without_task_state_cannot_be_snapshotted():
    env = gym.make("Swimmer-v5")  # gymnasium's stock swimmer: MuJoCo, but no task_state()
    obs, _ = env.reset(seed=0)
    with pytest.raises(TypeError, match="cannot be snapshotted"):
        take_snapshot(env, obs)
    own = gym.make("embodied/Swimmer-v0")
    own_obs, _ = own.reset(seed=0)
    with pytest.raises(TypeError, match="task_state"):
        restore_snapshot(env, take_snapshot(own, own_obs))
    env.close()
    own.close()


# --- the batched engine -----------------------------------------------------------------------


SWIMMER_NAVIGATE = {**SWIMMER, "task": "navigate"}


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("cfg", [SWIMMER, SWIMMER_NAVIGATE, UAV_NOISY], ids=["swimmer", "navigate", "uav-noisy"])
def test_batched_step_matches_gym_make(cfg, workers):
    """N envs in lock-step (5 >= 2 x workers, so two threads really share them) == N gym.make envs."""
    n, steps = 5, 40
    seeds = [7, 8, 9, 10, 11]
    engine = BatchedEnvs(cfg, n, workers=workers)
    assert engine.workers == workers
    refs = [make(cfg) for _ in range(n)]
    obs = engine.reset(seeds)
    ref_obs = np.stack([r.reset(seed=s)[0] for r, s in zip(refs, seeds)])
    assert np.array_equal(obs, ref_obs)
    rng = np.random.default_rng(0)
    scale = 1.0 if cfg is SWIMMER else 0.3
    active = np.ones(n, dtype=bool)
    for _ in range(steps):
        actions = rng.uniform(-scale, scale, (n, engine.action_dim))
        obs, rewards, done = engine.step(actions, active)
        for i in np.flatnonzero(active):
            o, r, te, tr, _ = refs[i].step(actions[i])
            assert np.array_equal(obs[i], o) and rewards[i] == r and done[i] == (te or tr), i
        assert not obs[~active].any() and not rewards[~active].any()  # inactive envs were not stepped
        active &= ~done
    engine.close()
    for r in refs:
        r.close()


def crash_or_hover(falling: np.ndarray):
    """Actions: all rotors off (-1) for the ``falling`` envs, hover thrust (0) for the rest; counts calls."""
    calls = []

    def act(obs: np.ndarray) -> np.ndarray:
        calls.append(obs.copy())
        return np.where(falling[:, None], -1.0, 0.0) * np.ones((len(obs), 4))

    return act, calls


def test_rollout_alive_mask_stops_at_termination():
    cfg = {"id": "embodied/UAV-v0", "task": "hover", "init_tilt_deg": 5.0, "init_rate_range": 0.1,
           "init_vel_range": 0.1}
    n, horizon, seeds = 5, 120, [0, 1, 2, 3, 4]
    falling = np.array([True, False, True, True, False])
    engine = BatchedEnvs(cfg, n, workers=2)
    start = engine.reset(seeds)
    act, calls = crash_or_hover(falling)
    batch = engine.rollout(start, act, horizon)

    # reference: each env alone, with gym.make, until its episode ends
    lengths, returns, finals = [], [], []
    for i, s in enumerate(seeds):
        env = make(cfg)
        env.reset(seed=s)
        total, t, done = 0.0, 0, False
        while not done and t < horizon:
            o, r, te, tr, _ = env.step(np.full(4, -1.0 if falling[i] else 0.0))
            total, t, done = total + r, t + 1, te or tr
        lengths.append(t)
        returns.append(total)
        finals.append(o)
        env.close()
    lengths = np.array(lengths)
    assert (lengths[falling] < horizon).all() and (lengths[~falling] == horizon).all()
    assert len(set(lengths[falling])) > 1  # they hit the ground at different steps

    assert np.array_equal(batch.lengths, lengths)
    for i in range(n):  # alive is a prefix: True up to the terminating step, False after
        assert batch.alive[: lengths[i], i].all() and not batch.alive[lengths[i]:, i].any()
        assert not batch.rewards[lengths[i]:, i].any()
    assert batch.rewards[lengths[falling] - 1, np.flatnonzero(falling)].max() < -5  # the crash penalty
    np.testing.assert_allclose(batch.returns, returns, rtol=1e-12)
    assert batch.env_steps == lengths.sum() == int(batch.alive.sum())
    assert np.array_equal(batch.final_obs, np.stack(finals))
    np.testing.assert_array_equal(batch.obs[0], start.astype(np.float32))
    engine.close()


def test_rollout_stops_calling_the_policy_when_all_ended():
    cfg = {"id": "embodied/UAV-v0", "task": "hover"}
    engine = BatchedEnvs(cfg, 3, workers=1)
    start = engine.reset([0, 1, 2])
    act, calls = crash_or_hover(np.ones(3, dtype=bool))
    batch = engine.rollout(start, act, 500)
    assert len(calls) == batch.lengths.max() < 500
    assert not batch.alive[batch.lengths.max():].any()
    engine.close()


def test_restore_one_snapshot_into_all_envs():
    n = 4
    engine = BatchedEnvs(UAV_NOISY, n, workers=2)
    obs = engine.reset([20, 21, 22, 23])
    assert len({o.tobytes() for o in obs}) == n  # four different starts
    for _ in range(5):
        obs, _, _ = engine.step(np.zeros((n, 4)), np.ones(n, dtype=bool))
    snap = engine.snapshot(2, obs[2])
    start = engine.restore([snap] * n)
    assert np.array_equal(start, np.repeat(obs[2:3], n, axis=0))

    def same_for_all(o: np.ndarray) -> np.ndarray:  # a deterministic feedback law: identical obs -> actions
        return 0.2 * np.tanh(o[:, :4])

    batch = engine.rollout(start, same_for_all, 60)
    for i in range(1, n):
        assert np.array_equal(batch.obs[:, i], batch.obs[:, 0])
        assert np.array_equal(batch.rewards[:, i], batch.rewards[:, 0])
        assert np.array_equal(batch.final_obs[i], batch.final_obs[0])
    assert np.ptp(batch.obs[:, 0], axis=0).max() > 0

    # the same snapshot with different actions per member: the rollouts part
    engine.restore([snap] * n)
    rng = np.random.default_rng(0)
    batch = engine.rollout(start, lambda o: rng.uniform(-0.2, 0.2, (n, 4)), 60)
    assert not np.array_equal(batch.obs[:, 1], batch.obs[:, 0])
    engine.close()


def test_grpo_start_groups_share_a_state_within_a_group_only():
    cfg = compose_train(["env=swimmer", "policy=ncap", *GRPO_SMALL, "algo.groups=3", "algo.group_size=2", *POP_TINY])
    trainer = GRPOTrainer(cfg, RunDir("."), loggers=[])
    try:
        start = trainer.start_groups(3, 2)
        assert start.shape == (6, trainer.engine.obs_dim)
        for g in range(3):
            assert np.array_equal(start[2 * g], start[2 * g + 1])
        assert len({start[2 * g].tobytes() for g in range(3)}) == 3
        targets = [e.task_state()["target_pos"] for e in trainer.engine.envs]
        assert np.array_equal(targets[0], targets[1]) and not np.array_equal(targets[0], targets[2])
    finally:
        trainer.engine.close()


# --- GRPO maths -------------------------------------------------------------------------------


def test_outcome_advantages_by_hand():
    returns = np.array([
        [1.0, 3.0, 1.0, 3.0],  # mean 2, std 1
        [7.0, 7.0, 7.0, 7.0],  # no spread: dropped
        [0.0, 0.0, 0.0, 6.0],  # mean 1.5, std sqrt(6.75) = 1.5 sqrt(3)
    ])
    adv, keep = outcome_advantages(returns)
    assert keep.tolist() == [True, False, True]
    r3 = 1 / math.sqrt(3)
    np.testing.assert_allclose(adv, [[-1, 1, -1, 1], [0, 0, 0, 0], [-r3, -r3, -r3, 3 * r3]], atol=1e-12)
    # float noise on a large return is no spread either
    adv, keep = outcome_advantages(np.array([[1000.0, 1000.0 + 1e-9]]))
    assert keep.tolist() == [False] and not adv.any()


def test_process_advantages_by_hand():
    """T=3, two groups of G=2. Group 0: member 0 lives 3 steps (rewards 0, 2, 0), member 1 ends after
    one (reward 2; what stands in its dead steps must not count). Live rewards 0, 2, 0, 2: mean 1,
    std 1, normalised -1, 1, -1 | 1; return-to-go -1, 0, -1 | 1. Group 1 has no spread."""
    rewards = np.zeros((3, 2, 2))
    alive = np.zeros((3, 2, 2), dtype=bool)
    rewards[:, 0, 0] = [0.0, 2.0, 0.0]
    rewards[:, 0, 1] = [2.0, 50.0, -50.0]  # 50s are after the end
    alive[:, 0, 0] = True
    alive[0, 0, 1] = True
    rewards[:, 1, :] = 5.0
    alive[:, 1, 0] = True
    alive[:2, 1, 1] = True
    adv, keep = process_advantages(rewards, alive)
    assert adv.shape == (3, 2, 2)
    assert keep.tolist() == [True, False]
    np.testing.assert_allclose(adv[:, 0, 0], [-1.0, 0.0, -1.0], atol=1e-12)
    np.testing.assert_allclose(adv[:, 0, 1], [1.0, 0.0, 0.0], atol=1e-12)
    assert not adv[:, 1].any()


def test_clipped_surrogate_inside_and_outside_the_clip_range():
    ratios = torch.tensor([1.1, 1.1, 1.5, 1.5, 0.5, 0.5])
    adv = torch.tensor([2.0, -2.0, 2.0, -2.0, 2.0, -2.0])
    logp_old = torch.tensor([0.3, -1.0, 0.0, 2.0, -0.7, 0.1])
    out = clipped_surrogate(logp_old + torch.log(ratios), logp_old, adv, clip=0.2)
    # inside: ratio x adv; above 1.2 with A>0: capped at 1.2 A; with A<0 the unclipped -3 is lower (pessimistic);
    # below 0.8 with A>0 the unclipped 1.0 is lower; with A<0: 0.8 A
    torch.testing.assert_close(out, torch.tensor([2.2, -2.2, 2.4, -3.0, 1.0, -1.6]), rtol=0, atol=1e-5)


def test_clipped_surrogate_gradient_vanishes_when_clipped():
    logp = torch.log(torch.tensor([1.5, 1.1])).requires_grad_(True)
    clipped_surrogate(logp, torch.zeros(2), torch.tensor([1.0, 1.0]), 0.2).sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([0.0, 1.1]))  # d(rho A)/d logp = rho A inside


def test_k3_kl_formula_and_sign():
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(1000, generator=g, dtype=torch.float64) * 2
    logp_ref = torch.randn(1000, generator=g, dtype=torch.float64) * 2
    kl = k3_kl(logp, logp_ref)
    r = torch.exp(logp_ref - logp)
    torch.testing.assert_close(kl, r - torch.log(r) - 1)
    assert (kl >= 0).all() and (kl > 0).sum() > 990
    assert torch.equal(k3_kl(logp, logp.clone()), torch.zeros_like(logp))


def test_k3_kl_estimates_the_kl_to_the_reference():
    """Mean of k3 over samples of pi_theta = KL(pi_theta || pi_ref): N(0,1) vs N(0.5,1) gives 0.125."""
    x = torch.randn(400_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    theta, ref = torch.distributions.Normal(0.0, 1.0), torch.distributions.Normal(0.5, 1.0)
    assert float(k3_kl(theta.log_prob(x), ref.log_prob(x)).mean()) == pytest.approx(0.125, abs=0.005)


def test_grpo_loss_weighs_trajectories_not_steps():
    """A 1-step trajectory with A=3 and a 3-step one with A=1: mean over trajectories of their step
    means is 2 (a mean over all 4 steps would say 1.5)."""
    mask = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    adv = torch.tensor([[3.0, 1.0], [100.0, 1.0], [-100.0, 1.0]])  # +-100 lie after the first one ended
    logp = torch.zeros(3, 2, requires_grad=True)
    loss, info = grpo_loss(logp, torch.zeros(3, 2), adv, mask, clip=0.2)
    assert loss.item() == pytest.approx(-2.0)
    loss.backward()
    # d(-objective)/d logp at ratio 1: -A / (length x trajectories); nothing for dead steps
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.5, -1 / 6], [0.0, -1 / 6], [0.0, -1 / 6]]))
    assert info["clip_fraction"] == 0.0 and info["kl_ref"] == 0.0


def test_grpo_loss_kl_term():
    mask = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    zeros = torch.zeros(2, 2)
    logp_ref = torch.full((2, 2), math.log(2.0))  # pi_ref / pi_theta = 2: k3 = 2 - ln 2 - 1
    k3 = 1 - math.log(2.0)
    loss, info = grpo_loss(zeros, zeros, zeros, mask, 0.2, beta=0.04, logp_ref=logp_ref)
    assert float(loss) == pytest.approx(0.04 * k3)
    assert info["kl_ref"] == pytest.approx(k3)
    adv = torch.tensor([[1.0, -1.0], [0.0, -1.0]])
    with_kl, _ = grpo_loss(zeros, zeros, adv, mask, 0.2, beta=0.5, logp_ref=logp_ref)
    without, _ = grpo_loss(zeros, zeros, adv, mask, 0.2, beta=0.0, logp_ref=logp_ref)
    assert float(without) == pytest.approx(0.0)
    assert float(with_kl) - float(without) == pytest.approx(0.5 * k3)


# --- ES ---------------------------------------------------------------------------------------


def test_centered_ranks_by_hand():
    ranks = centered_ranks(np.array([3.0, 1.0, 2.0, 1.0]))  # the tied 1s: the first gets the lower rank
    np.testing.assert_allclose(ranks, [0.5, -0.5, 1 / 6, -1 / 6], atol=1e-15)
    assert ranks.min() == -0.5 and ranks.max() == 0.5
    wide = centered_ranks(np.array([1e9, -1e9, 0.0, 5.0, 4.0, -3.0]))  # the scale of the returns is gone
    assert wide.min() == -0.5 and wide.max() == 0.5
    np.testing.assert_allclose(wide, np.array([5, 0, 2, 4, 3, 1]) / 5 - 0.5, atol=1e-15)


def test_open_es_asks_mirrored_pairs():
    theta = np.array([0.5, -1.0, 2.0])
    es = OpenES(theta, sigma=0.1, learning_rate=0.01, population=6, seed=0)
    x = es.ask()
    assert x.shape == (6, 3)
    np.testing.assert_allclose((x[0::2] + x[1::2]) / 2, np.tile(theta, (3, 1)), atol=1e-12)
    np.testing.assert_allclose((x[0::2] - x[1::2]) / 2, 0.1 * es.eps, atol=1e-12)
    assert len({row.tobytes() for row in x}) == 6  # three different directions
    es.tell(np.arange(6.0))
    with pytest.raises(RuntimeError, match="ask"):
        es.tell(np.arange(6.0))  # every tell needs its own ask


@pytest.mark.parametrize("population", [7, 1, 0])
def test_open_es_needs_an_even_population(population):
    with pytest.raises(ValueError, match="even"):
        OpenES(np.zeros(3), sigma=0.1, learning_rate=0.01, population=population)


def test_open_es_maximises_a_quadratic():
    c = np.array([0.8, -0.6, 0.3, -0.9, 0.5])
    es = OpenES(np.zeros(5), sigma=0.05, learning_rate=0.05, population=20, seed=0)
    iterations = 300
    for i in range(iterations):
        for group in es.optimizer.param_groups:  # linear decay: Adam's constant step would jitter around c
            group["lr"] = 0.05 * (1 - i / iterations) + 1e-3
        x = es.ask()
        es.tell(-((x - c) ** 2).sum(axis=1))
    assert np.linalg.norm(es.theta.detach().numpy() - c) < 1e-2


def test_es_batched_members_act_with_their_own_parameters():
    cfg = compose_train(["env=swimmer", "policy=ncap", *ES_SMALL, "algo.population=4", *POP_TINY])
    trainer = ESTrainer(cfg, RunDir("."), loggers=[])
    try:
        candidates = trainer.es.ask()
        obs = trainer.engine.reset([1, 2, 3, 4])
        with torch.no_grad():
            batched = trainer._batched_actor(torch.as_tensor(candidates, dtype=torch.float32),
                                             torch.as_tensor(obs, dtype=torch.float32)).numpy()
            for i, flat in enumerate(candidates):
                trainer._set_actor(flat)
                one = trainer.policy.actor(torch.as_tensor(obs[i], dtype=torch.float32)).numpy()
                np.testing.assert_allclose(batched[i], one, atol=1e-6)
        assert not np.allclose(batched[0], batched[1])
    finally:
        trainer.engine.close()


# --- short training runs ----------------------------------------------------------------------


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def grpo_cli_run(tmp_path_factory):
    """GRPO (outcome advantages) on NCAP + swimmer through the real CLI, with periodic checkpoints."""
    base = tmp_path_factory.mktemp("grpo_cli")
    run = base / "grpo run"
    proc = subprocess.run(
        [sys.executable, "-m", "agents.train", "env=swimmer", "policy=ncap", *GRPO_SMALL, *POP_TINY,
         "algo.checkpoint_every=800", f"hydra.run.dir={run}"],
        cwd=base, env=cli_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, proc


@pytest.fixture(scope="module")
def population_runs(tmp_path_factory, grpo_cli_run) -> dict[str, tuple[Path, int]]:
    """Run directory and algo.total_timesteps of each short run."""
    base = tmp_path_factory.mktemp("pop_runs")
    runs = {"grpo_outcome": (grpo_cli_run[0], TOTAL)}
    for name, overrides, total in [
        ("grpo_process_kl", ["env=swimmer", "policy=ncap", *GRPO_SMALL, "algo.advantage=process", "algo.kl_coef=0.04"],
         TOTAL),
        ("es", ["env=swimmer", "policy=ncap", *ES_SMALL], TOTAL),
        ("uav_mlp_grpo", ["env=uav_hover", "policy=mlp", *GRPO_SMALL, "algo.total_timesteps=2000"], 2000),
    ]:
        train_in_process(base / name, [*overrides, *POP_TINY])
        runs[name] = (base / name, total)
    return runs


RUN_NAMES = ["grpo_outcome", "grpo_process_kl", "es", "uav_mlp_grpo"]


@pytest.mark.parametrize("name", RUN_NAMES)
def test_population_run_directory_like_ppo(population_runs, name):
    run, total = population_runs[name]
    for f in ("config.yaml", "metrics.csv", "summary.json", "learning_curve.png"):
        assert (run / f).is_file() and (run / f).stat().st_size > 0, f
    final = RunDir(run).policy()
    for f in ("policy.safetensors", "policy.json", "trainer_state.json", "trainer_state.safetensors"):
        assert (final / f).is_file(), f
    summary = json.loads((run / "summary.json").read_text())
    cfg = OmegaConf.load(run / "config.yaml")
    assert summary["algo"] == cfg.algo.name == ("es" if name == "es" else "grpo")
    assert 0 < summary["steps"] <= cfg.algo.total_timesteps == total
    if cfg.env.name == "swimmer":  # swimmer rollouts never end early: whole batches only
        assert summary["steps"] == (total // BATCH) * BATCH
    assert read_meta(final).steps == summary["steps"]
    rows = read_rows(run / "metrics.csv")
    assert int(rows[0]["steps"]) == 0 and int(rows[-1]["steps"]) == summary["steps"]
    assert np.isfinite(summary["return_mean"]) and summary["eval_episodes"] == 1


def test_grpo_cli_last_line_and_periodic_checkpoints(grpo_cli_run):
    run, proc = grpo_cli_run
    last = [ln for ln in proc.stdout.splitlines() if ln.strip()][-1]
    head, _, run_dir = last.partition(" run_dir=")
    assert Path(run_dir) == run
    m = SUMMARY_LINE_TRAIN.match(head + " run_dir=x")
    assert m, last
    assert int(m["steps"]) == 2000 and int(m["params"]) == 4
    assert "Traceback" not in proc.stderr
    assert RunDir(run).checkpoints() == ["final", "last", "step_1600", "step_800"]
    assert read_meta(RunDir(run).policy("step_800")).steps == 800
    assert not [p for p in run.rglob("*") if p.name.endswith((".tmp", ".old"))]
    meta = read_meta(RunDir(run).policy())
    assert meta.normalization is None  # NCAP reads raw observations
    np.testing.assert_allclose(meta.action_std, [0.5] * 5, rtol=1e-5)  # the tuned fixed sigma


@pytest.mark.parametrize("name", ["grpo_outcome", "grpo_process_kl", "es"])
def test_evaluate_loads_population_runs(population_runs, run_cli, name):
    run, _ = population_runs[name]
    summary = json.loads((run / "summary.json").read_text())
    result = run_cli("agents.evaluate", f"run={run}", "episodes=1")
    assert result.returncode == 0, result.stderr[-3000:]
    m = SUMMARY_LINE_EVAL.match(result.last_line)
    assert m, result.last_line
    # the final evaluation used one episode from the evaluation seed base, as evaluate does
    assert float(m["mean"]) == pytest.approx(summary["return_mean"], abs=0.01)


def test_uav_mlp_run_exports_observation_statistics(population_runs):
    run, _ = population_runs["uav_mlp_grpo"]
    final = RunDir(run).policy()
    meta = read_meta(final)
    assert meta.kind == "mlp" and meta.normalization == {"clip": 10.0}
    policy = load_policy(final)
    assert policy.normalizes
    mean, var = policy.obs_mean.numpy(), policy.obs_var.numpy()
    assert mean.shape == var.shape == (meta.obs_dim,)
    assert np.all(np.isfinite(mean)) and np.all(var > 0)
    assert np.abs(mean).max() > 1e-3 and not np.allclose(var, 1.0)  # updated from data, not the initial (0, 1)
    assert len(meta.action_std) == 4


def test_trained_mlp_exports_what_it_trained():
    """The exported policy (normaliser + actor mean, clipped to the bounds) acts as the trainer's policy did."""
    cfg = compose_train(["env=uav_hover", "policy=mlp", *GRPO_SMALL, *POP_TINY])
    trainer = GRPOTrainer(cfg, RunDir("."), loggers=[])
    try:
        stats = trainer.iteration()
        assert trainer.steps > 0 and 0.0 <= stats["frac_zero_spread"] <= 1.0
        policy = trainer.export()
        assert policy.normalizes
        obs = trainer.engine.reset([5, 6, 7, 8, 9, 10, 11, 12])
        with torch.no_grad():
            own = trainer.policy.actor(torch.as_tensor(trainer.normalizer(obs))).numpy()
        np.testing.assert_allclose(policy.act(obs), np.clip(own, -1, 1), atol=1e-5)
    finally:
        trainer.engine.close()


@pytest.mark.parametrize("kl_coef", [0.0, 0.04])
def test_grpo_kl_coef_builds_a_frozen_reference(kl_coef):
    cfg = compose_train(["env=swimmer", "policy=ncap", *GRPO_SMALL, "algo.advantage=process",
                         f"algo.kl_coef={kl_coef}", *POP_TINY])
    trainer = GRPOTrainer(cfg, RunDir("."), loggers=[])
    try:
        before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
        stats = trainer.iteration()
        after = trainer.policy.state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before), "GRPO did not update the policy"
        if kl_coef:
            assert trainer.reference is not None
            ref = trainer.reference.state_dict()
            assert all(torch.equal(before[k], ref[k]) for k in before)  # the policy at the start, unchanged
            assert not any(p.requires_grad for p in trainer.reference.parameters())
            assert stats["kl_ref"] > 0  # the policy moved away from it in the later epochs
        else:
            assert trainer.reference is None and stats["kl_ref"] == 0.0
    finally:
        trainer.engine.close()


def test_population_metrics_have_the_algorithms_stats(population_runs):
    """Per-iteration stats are columns of metrics.csv: empty (nan) at step 0, numbers after an update."""
    expected = {"grpo_outcome": ("frac_zero_spread", "clip_fraction", "kl_ref", "action_std"),
                "grpo_process_kl": ("frac_zero_spread", "clip_fraction", "kl_ref", "action_std"),
                "es": ("grad_norm", "rollout_return_max")}
    for name, columns in expected.items():
        run, _ = population_runs[name]
        rows = read_rows(run / "metrics.csv")
        for col in columns:
            assert col in rows[0], (name, col, list(rows[0]))
            assert math.isnan(float(rows[0][col])), (name, col)  # nothing trained yet at step 0
            assert np.isfinite(float(rows[-1][col])), (name, col)
        if name.startswith("grpo"):
            assert 0.0 <= float(rows[-1]["frac_zero_spread"]) <= 1.0
            assert 0.0 <= float(rows[-1]["clip_fraction"]) <= 1.0
            assert float(rows[-1]["action_std"]) == pytest.approx(0.5, rel=1e-5)  # NCAP's sigma stays fixed
        else:
            assert float(rows[-1]["grad_norm"]) > 0
    # beta = 0 keeps no reference (its KL column reads 0); beta = 0.04 measures the drift from it
    assert float(read_rows(population_runs["grpo_outcome"][0] / "metrics.csv")[-1]["kl_ref"]) == 0.0
    assert float(read_rows(population_runs["grpo_process_kl"][0] / "metrics.csv")[-1]["kl_ref"]) > 0.0


# --- one-line errors --------------------------------------------------------------------------


@pytest.mark.parametrize("args,needles", [
    (["algo=es", "algo.population=7"], ["population", "7"]),
    (["algo=es", "algo.sigma=0"], ["sigma"]),
    (["algo=grpo", "algo.advantage=typo"], ["advantage", "typo"]),
    (["algo=grpo", "algo.group_size=1"], ["group_size"]),
    (["algo=grpo", "algo.minibatches=9"], ["minibatches"]),
    (["algo=grpo", "init_from=/nonexistent/run"], ["init_from", "grpo"]),
], ids=["es-odd-population", "es-sigma", "grpo-advantage", "grpo-group-size", "grpo-minibatches",
        "grpo-init-from"])
def test_population_config_errors_are_one_line(args, needles):
    assert_names(config_error(["env=swimmer", "policy=ncap", *args]), *needles)


@pytest.mark.parametrize("args,needles", [
    (["algo=grpo", "algo.total_timesteps=1000"], ["total_timesteps=1000", "3200"]),  # 4 groups x 8 x 100 steps
    (["algo=es", "algo.total_timesteps=1000"], ["total_timesteps=1000", "3200"]),  # 16 x 200 steps
    (["algo=grpo", "env=swimmer_gym"], ["swimmer_gym", "snapshot"]),  # gymnasium's stock swimmer has no task state
], ids=["grpo-budget-below-batch", "es-budget-below-batch", "grpo-stock-swimmer"])
def test_population_errors_found_with_the_env_are_one_line(run_cli, tmp_path, args, needles):
    """Known only once the engine has built the env (its episode limit, its snapshots), so through the CLI."""
    result = run_cli("agents.train", "env=swimmer", "policy=ncap", *args, "progress_bar=false",
                     f"hydra.run.dir={tmp_path / 'r'}")
    assert_one_line_error(result, *needles)


def test_batched_rollouts_stop_at_the_episode_limit():
    """gym.make's TimeLimit is unwrapped away; the engine keeps the limit itself."""
    with BatchedEnvs(SWIMMER, 2, workers=1) as engine:
        assert engine.max_episode_steps == 1000
        start = engine.reset([0, 1])
        for env in engine.envs:  # as if 995 steps had passed
            env.set_task_state({**env.task_state(), "step_count": 995})
        batch = engine.rollout(start, lambda obs: np.zeros((2, engine.action_dim)), 20)
        assert batch.lengths.tolist() == [5, 5]


@pytest.mark.parametrize("workers", [1, 2])
def test_swimmer_batch_step_steps_only_the_active_envs(workers):
    """The swimmer's vectorised step_batch path on a partial batch: the others keep their state."""
    n = 6
    active = np.array([True, False, True, True, False, True])
    with BatchedEnvs(SWIMMER, n, workers=workers) as engine:
        refs = [make(SWIMMER) for _ in range(n)]
        engine.reset(range(n))
        for i, r in enumerate(refs):
            r.reset(seed=i)
        rng = np.random.default_rng(1)
        for _ in range(10):
            actions = rng.uniform(-1, 1, (n, engine.action_dim))
            obs, rewards, done = engine.step(actions, active)
            for i in np.flatnonzero(active):
                o, r, *_ = refs[i].step(actions[i])
                assert np.array_equal(obs[i], o) and rewards[i] == r
        assert [e.step_count for e in engine.envs] == [10 if a else 0 for a in active]
        assert not obs[~active].any() and not done.any()


@pytest.mark.parametrize("name", ["es", "uav_mlp_grpo"])
def test_ros_policy_node_deploys_population_runs(population_runs, ros_context, name):
    """A GRPO or ES run deploys like a PPO run: the ROS policy node acts as the exported policy does."""
    from conftest import capturing_policy_node

    run, _ = population_runs[name]
    robot = "uav" if name.startswith("uav") else "swimmer"
    node, published = capturing_policy_node(ros_context, run, robot=robot)
    env = envs.make_from_config(RunDir.env_config_of(run)).unwrapped
    obs, _ = env.reset(seed=3)
    policy = load_policy(RunDir(run).policy())
    try:
        for topic, msg in node.adapter.encode_state(env, node.get_clock().now().nanoseconds).items():
            node._make_callback(topic)(msg)
        assert len(published) == 1, node.last_reject
        action = node.adapter.decode_command(published[0]) if robot == "uav" else published[0]
        np.testing.assert_allclose(action, policy.act(obs), atol=1e-4)
    finally:
        node.destroy_node()

