"""The spatial brain's stages through the CLI: scaffold -> specialize -> evaluate, and the errors on the way."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import envs

from conftest import assert_names, assert_one_line_error, config_error, run_module

TINY_BRAIN = ["policy=spatial_brain", "policy.actor.layers=1", "policy.actor.width=32", "policy.actor.heads=2",
              "policy.actor.ffn=64", "policy.actor.vision_channels=[8,16,16]", "algo.batch_size=8",
              "algo.qa_scenes=16", "algo.qa_eval_scenes=8", "algo.warmup_steps=2", "algo.log_every=0",
              "threads=1", "progress_bar=false"]


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


@pytest.fixture(scope="module")
def brain_runs(tmp_path_factory):
    """A tiny scaffold, and a specialist trained from it on uav_find (shared data directory)."""
    root = tmp_path_factory.mktemp("brain")
    data = f"algo.data_dir={root / 'data'}"
    scaffold = root / "scaffold"
    result = run_module("agents.train", *TINY_BRAIN, "algo=scaffold", "algo.total_steps=6", "algo.eval_every=3",
                            data, f"hydra.run.dir={scaffold}", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    specialist = root / "specialist"
    result = run_module("agents.train", *TINY_BRAIN, "algo=specialize", "env=uav_find", f"init_from={scaffold}",
                            "algo.total_steps=6", "algo.eval_every=3", "algo.demos=4", "algo.eval_episodes=1",
                            "algo.final_eval_episodes=2", data, f"hydra.run.dir={specialist}", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, scaffold, specialist


def test_scaffold_answers_and_the_specialist_acts(brain_runs):
    root, scaffold, specialist = brain_runs
    s = summary(scaffold)
    assert s["algo"] == "scaffold" and s["steps"] == 6
    assert set(s["qa_held_out"]) == {"generic", "uav"} and all(0.0 <= v <= 1.0 for v in s["qa_held_out"].values())
    p = summary(specialist)
    assert p["algo"] == "specialize" and p["init_from"] == str(scaffold) and p["eval_episodes"] == 2
    assert 0.0 <= p["success_rate"] <= 1.0 and p["train_goal_samples"] == 4 * 3  # 3 decision points per demo
    # the generated data sit in one shared directory, generated once for both stages
    assert sorted(d.name.split("_")[1] for d in (root / "data").glob("qa_*")) == ["generic", "generic", "uav", "uav"]

    from policies.registry import load_policy
    from policies.run_dir import RunDir

    policy = load_policy(RunDir(specialist).policy())
    env = gym.make(envs.UAV_FIND)
    obs, _ = env.reset(seed=3)
    policy.reset()
    action = policy.act(obs)
    assert action.shape == env.action_space.shape and np.all(np.isfinite(action))
    assert policy.decided == 1 and policy.goal is not None
    env.close()


def test_evaluate_runs_a_brain_run(brain_runs):
    root, _, specialist = brain_runs
    result = run_module("agents.evaluate", f"run={specialist}", "episodes=2", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("{")))
    assert report["env"] == "uav_find" and report["episodes"] == 2 and 0.0 <= report["is_success"] <= 1.0


def test_specialize_needs_a_find_env():
    assert_names(config_error(["policy=spatial_brain", "algo=specialize", "env=swimmer"]), "find env", "uav_find")


def test_an_unknown_qa_source_is_named():
    assert_names(config_error(["policy=spatial_brain", "algo=scaffold", "algo.qa_sources=[generic,boat]"]),
                 "qa_sources", "boat")


def test_init_from_a_run_that_is_not_a_brain_is_one_line(ncap_run, run_cli, tmp_path):
    result = run_cli("agents.train", *TINY_BRAIN, "algo=specialize", "env=uav_find", f"init_from={ncap_run}",
                     f"algo.data_dir={tmp_path / 'data'}")
    assert_one_line_error(result, "init_from", "not a spatial brain")


def test_the_brain_with_a_perfect_goal_reaches_the_named_landmark():
    """The follower and the frames: a brain that emits the expert's label succeeds; one pointing elsewhere fails."""
    import torch

    from policies.brain_policy import BrainPolicy, follower_for
    from policies.spatial_brain import SpatialBrain, SpatialBrainConfig

    env_cfg = {"name": "uav_find", "id": envs.UAV_FIND}
    follower = follower_for("uav", env_cfg)
    brain = SpatialBrain(SpatialBrainConfig(layers=1, width=32, heads=2, ffn=64, vision_channels=(8, 8, 8)))
    env = gym.make(envs.UAV_FIND)
    outcomes = {}
    for name, shift in (("true", 0.0), ("off", 2.5)):
        policy = BrainPolicy(brain, None, follower, "uav")
        successes = 0
        for seed in range(3):
            obs, info = env.reset(seed=seed)
            goal = np.asarray(info["goal"]) + np.array([shift, 0.0, 0.0])
            policy.goal_offset = lambda o, goal=goal: follower.label(o, goal)
            policy.reset()
            done = False
            while not done:
                obs, _, terminated, truncated, info = env.step(policy.act(obs))
                done = terminated or truncated
            successes += bool(info["is_success"])
        outcomes[name] = successes
    env.close()
    assert outcomes == {"true": 3, "off": 0}, outcomes
    assert torch.get_num_threads() >= 1
