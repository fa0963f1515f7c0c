"""GRPO on the spatial brain's goals (agents/brain_grpo.py): the CLI, resuming, init_from errors, the update."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from test_brain_training import TINY_BRAIN

import envs

from conftest import assert_names, config_error, run_module, train_in_process

SIZES = [o for o in TINY_BRAIN if o.startswith("policy")]  # the tiny brain's sizes (GRPO reads them from its bundle)
SHORT = ["env=uav_find", "env.episode_seconds=1", "threads=1", "progress_bar=false"]  # 100-step flights


@pytest.fixture(scope="module")
def brain(tmp_path_factory):
    """A tiny specialist (from scratch) deciding at steps 0 and 20 of 100-step flights, and its data directory."""
    root = tmp_path_factory.mktemp("brain_grpo")
    data = f"algo.data_dir={root / 'data'}"
    train_in_process(root / "specialist", [*TINY_BRAIN, *SHORT, "algo=specialize", "algo.total_steps=2",
                                           "algo.eval_every=2", "algo.demos=2", "algo.val_demos=0",
                                           "algo.eval_episodes=0", "algo.final_eval_episodes=1",
                                           "algo.decide_every=20", "algo.decisions=2", data])
    grpo = [*SIZES, *SHORT, "algo=grpo", f"init_from={root / 'specialist'}", "algo.groups=2", "algo.group_size=2",
            "algo.eval_every=1", "algo.eval_episodes=1", "algo.final_eval_episodes=1", "algo.qa_scenes=16",
            "algo.qa_eval_scenes=8", data]
    return root, grpo


def weights(run: Path, name: str = "final") -> dict[str, torch.Tensor]:
    from policies.bundle import read_bundle

    return read_bundle(run / "checkpoints" / name).tensors


def test_cli_trains_and_writes_a_loadable_bundle(brain):
    root, grpo = brain
    run = root / "cli"
    result = run_module("agents.train", *grpo, "algo.total_timesteps=800", "algo.checkpoint_every=400",
                        "algo.qa_weight=0.5", f"hydra.run.dir={run}", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.last_line.startswith("return_mean=") and "success_rate=" in result.last_line
    s = json.loads((run / "summary.json").read_text())
    assert (s["algo"], s["steps"], s["iterations"]) == ("grpo", 800, 2)  # 2 x 2 flights of 100 steps each
    assert (s["decide_every"], s["decisions"]) == (20, 2)  # the specialist's schedule, from its bundle
    assert set(s["qa_held_out_before"]) == set(s["qa_held_out"]) == {"uav"}
    assert 0.0 <= s["success_rate"] <= 1.0 and 0.0 <= s["success_rate_held_out_wordings"] <= 1.0
    rows = [line.split(",") for line in (run / "metrics.csv").read_text().splitlines()]
    header = rows[0]
    assert {"return_mean", "success", "frac_zero_spread", "clip_fraction", "log_std", "qa_ce"} <= set(header)
    assert [int(r[header.index("steps")]) for r in rows[1:]] == [0, 400, 800]
    assert {"step_400", "step_800", "last", "final"} <= {p.name for p in (run / "checkpoints").iterdir()}

    from policies.registry import load_policy
    from policies.run_dir import RunDir

    trained, start = weights(run), weights(root / "specialist")
    assert any(not torch.equal(trained[k], start[k]) for k in start)  # the updates moved the brain
    policy = load_policy(RunDir(run).policy())
    assert policy.meta.extra["stage"] == "grpo" and policy.decisions == 2 and policy.decide_every == 20
    assert set(policy.meta.extra["embodiments"]) == {"uav"}  # the bodies it can be evaluated on (its init's and its own)
    env = gym.make(envs.UAV_FIND)
    obs, _ = env.reset(seed=3)
    action = policy.act(obs)
    env.close()
    assert action.shape == env.action_space.shape and np.all(np.isfinite(action))


def test_a_stopped_run_resumes_where_it_stopped(brain, monkeypatch):
    """SIGTERM after the first iteration, a rerun in the same directory: the same brain as an uninterrupted run."""
    from agents.brain_grpo import BrainGRPOTrainer
    from agents.stopping import TrainingStopped

    root, grpo = brain
    args = [*grpo, "algo.total_timesteps=800", "algo.advantage=process", "algo.learning_rate=1e-3"]
    straight = train_in_process(root / "straight", args)
    iteration = BrainGRPOTrainer.iteration

    def then_sigterm(self):
        stats = iteration(self)
        os.kill(os.getpid(), signal.SIGTERM)
        return stats

    monkeypatch.setattr(BrainGRPOTrainer, "iteration", then_sigterm)
    with pytest.raises(TrainingStopped):
        train_in_process(root / "stopped", args)
    monkeypatch.undo()
    assert (root / "stopped" / "checkpoints" / "last").is_dir() and not (root / "stopped" / "summary.json").exists()
    assert (root / "stopped" / "metrics.csv").read_text().splitlines()[-1].startswith("400,")  # after iteration 1
    resumed = train_in_process(root / "stopped", args)
    assert resumed["steps"] == straight["steps"] == 800 and resumed["iterations"] == 2
    assert resumed["qa_held_out_before"] == straight["qa_held_out_before"]
    a, b, start = weights(root / "straight"), weights(root / "stopped"), weights(root / "specialist")
    assert all(torch.equal(a[k], b[k]) for k in a) and not all(torch.equal(a[k], start[k]) for k in a)
    steps = [line.split(",")[0] for line in (root / "stopped" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == ["0", "400", "800"]


def test_init_from_must_be_a_brain_run(tmp_path):
    """Refused in one line before any file is written: missing, not a run, not a brain."""
    from policies.bundle import save_bundle
    from policies.registry import initial_policy

    base = ["policy=spatial_brain", "algo=grpo", "env=uav_find"]
    assert_names(config_error(base), "init_from=", "specialist")
    assert_names(config_error([*base, f"init_from={tmp_path / 'nothing'}"]), "init_from", "does not exist")
    env = gym.make(envs.UAV_HOVER)
    mlp = initial_policy({"kind": "mlp", "actor": {}}, env, {"name": "uav_hover", "id": envs.UAV_HOVER})
    env.close()
    save_bundle(tmp_path / "mlp" / "checkpoints" / "final", mlp.meta, mlp.tensors())
    assert_names(config_error([*base, f"init_from={tmp_path / 'mlp'}"]), "init_from", "not a spatial brain")
    assert_names(config_error(["policy=spatial_brain", "algo=grpo", "env=swimmer", f"init_from={tmp_path}"]),
                 "find env")


def test_the_update_raises_the_log_prob_of_the_better_goal():
    """Two start states, two decisions, two members each, rows shuffled: each goal's log-prob moves with its advantage."""
    from agents.brain_grpo import Flights, advantages, goal_log_probs, update
    from policies.brain_policy import brain_batch
    from policies.spatial_brain import SpatialBrain, SpatialBrainConfig

    torch.manual_seed(0)
    model = SpatialBrain(SpatialBrainConfig(layers=1, width=32, heads=2, ffn=64, vision_channels=(8, 8, 8))).eval()
    env = gym.make(envs.UAV_FIND)
    views = []  # views[g][t]: group g's observation at decision t (both members see it)
    for seed in (0, 1):
        obs, _ = env.reset(seed=seed)
        first = dict(obs)
        for _ in range(20):
            obs, *_ = env.step(np.full(4, 0.2, np.float32))
        views.append([first, dict(obs)])
    env.close()
    # rows in a shuffled order: (group, member, decision); member m of group g is column 2g + m
    order = [(g, m, t) for g in (0, 1) for m in (0, 1) for t in (0, 1)]
    order = [order[i] for i in np.random.default_rng(0).permutation(len(order))]
    batch = brain_batch("uav", [views[g][t] for g, _, t in order], model.config.max_text_tokens)
    with torch.no_grad():
        dist = model.goal_distribution(batch)
    better = torch.tensor([(m + g) % 2 == 0 for g, m, _ in order])  # group 0's member 0, group 1's member 1
    goals = dist.mean + torch.where(better, 1.0, -1.0)[:, None] * dist.stddev  # one std either side of the mean
    rewards = np.zeros((2, 4))
    for g, m, t in order:
        rewards[t, 2 * g + m] = 1.0 if (m + g) % 2 == 0 else 0.0  # the better goals earn at both decisions
    flights = Flights(batch, goals, dist.log_prob(goals).sum(-1), np.array([t for *_, t in order]),
                      np.array([2 * g + m for g, m, _ in order]), rewards, np.ones((2, 4), bool), np.zeros(4, bool))
    adv, keep = advantages(flights, groups=2, group_size=2, kind="outcome")
    assert keep.all() and (adv[:, [0, 3]] > 0).all() and (adv[:, [1, 2]] < 0).all()
    before = flights.logp_old.clone()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    stats = update(model, optimizer, flights, adv, keep, 2, epochs=2, minibatches=2, clip=0.2, max_grad_norm=1.0,
                   rng=np.random.default_rng(0))
    with torch.no_grad():
        after = goal_log_probs(model, flights, np.arange(len(order)))
    assert (after - before)[better].min() > 0 and (after - before)[~better].max() < 0, (after - before, better)
    assert 0.0 <= stats["clip_fraction"] <= 1.0 and np.isfinite(stats["loss"])
