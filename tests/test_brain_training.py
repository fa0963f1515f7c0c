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
                        "algo.qa_sources=[generic,uav]",  # two of the four: the swimmer and kitchen stages test theirs
                            data, f"hydra.run.dir={scaffold}", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    specialist = root / "specialist"
    result = run_module("agents.train", *TINY_BRAIN, "algo=specialize", "env=uav_find", f"init_from={scaffold}",
                        "env.episode_seconds=1.01",  # 101-step flights: the 3 decision points, and quick evaluations
                            "algo.total_steps=6", "algo.eval_every=3", "algo.demos=4", "algo.val_demos=2", "algo.eval_episodes=1",
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


def test_evaluate_asks_a_brain_questions(brain_runs):
    """qa=<source>: accuracy on the held-out templates, on the dataset the trainer generated (none is regenerated)."""
    root, _, specialist = brain_runs
    before = sorted(p.name for p in (root / "data").iterdir())
    result = run_module("agents.evaluate", f"run={specialist}", "qa=uav", "qa_scenes=8",
                        f"data_dir={root / 'data'}", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    line = result.stdout.strip().splitlines()[-1]
    assert_names(line, "qa_accuracy", "questions", "qa_source", "qa_split")
    fields = dict(f.split("=", 1) for f in line.split())
    assert 0.0 <= float(fields["qa_accuracy"]) <= 1.0 and int(fields["questions"]) > 8  # several per scene
    assert fields["qa_split"] == "held_out" and sorted(p.name for p in (root / "data").iterdir()) == before


def test_a_brain_is_not_evaluated_where_it_has_no_trained_head(brain_runs):
    root, _, specialist = brain_runs
    result = run_module("agents.evaluate", f"run={specialist}", "env=swimmer_find", "episodes=1", cwd=root)
    assert_one_line_error(result, "no trained goal head for swimmer", "uav (uav_find)")


def test_noisy_demonstrations_leave_the_expert_path_but_keep_true_labels(tmp_path):
    """DART: with goal_noise the later decision points differ, and every label is still the true goal's offset."""
    from agents.brain_trainer import DEMO_KEYS, goal_demonstrations

    env_cfg = {"name": "uav_find", "id": envs.UAV_FIND}
    clean = goal_demonstrations(tmp_path, env_cfg, 2, 50, 3, seed=0)
    assert set(clean) == set(DEMO_KEYS)
    assert clean["target_mask"][clean["decision"] == 0].any(axis=(1, 2)).all()  # the named landmark is in view at the start
    noisy = goal_demonstrations(tmp_path, env_cfg, 2, 50, 3, seed=0, goal_noise=1.0)
    assert list(clean["decision"]) == [0, 1, 2, 0, 1, 2] == list(noisy["decision"])
    first = clean["decision"] == 0
    np.testing.assert_array_equal(clean["state"][first], noisy["state"][first])  # the same start
    assert np.abs(clean["state"][~first, :3] - noisy["state"][~first, :3]).max() > 0.05  # flown elsewhere
    env = gym.make(envs.UAV_FIND)
    _, info = env.reset(seed=1)  # the second demonstration's episode
    env.close()
    for row in (3, 4, 5):
        np.testing.assert_allclose(noisy["goal_world"][row], info["goal"])
    validation = goal_demonstrations(tmp_path, env_cfg, 2, 50, 3, seed=0, first_seed=90_000)
    assert not np.array_equal(validation["state"][0], clean["state"][0])
    assert len(list(tmp_path.glob("goals_*.npz"))) == 3  # each kind of data cached under its own key


def test_the_pointing_target_follows_the_named_objects_pixels():
    """Pointing supervision: the object's pixels per patch where it is seen, else the goal's patch, else nothing;
    and the loss falls when the pointing moves onto the target."""
    import torch

    from agents.brain_trainer import pointing_losses, pointing_target

    mask = np.zeros((3, 32, 32), bool)
    mask[0, 0:8, 4:12] = True  # half its pixels in patch 0, half in patch 1
    target = pointing_target(mask, torch.tensor([5, 7, -1]), grid=4)
    torch.testing.assert_close(target[0, :2], torch.tensor([0.5, 0.5]))
    assert target[1].argmax() == 7 and target[1].sum() == 1 and target[2].sum() == 0
    goal = torch.zeros(3, 3)
    points = torch.zeros(3, 16, 3)
    on, off = torch.zeros(3, 16), torch.zeros(3, 16)
    on[0, :2], on[1, 7] = 5.0, 5.0
    off[:, 12] = 5.0
    assert pointing_losses(on, points, goal, target)["point_ce"] < pointing_losses(off, points, goal, target)["point_ce"]


def test_specialize_needs_a_find_env():
    assert_names(config_error(["policy=spatial_brain", "algo=specialize", "env=swimmer"]), "find env", "uav_find")


def test_an_unknown_qa_source_is_named():
    assert_names(config_error(["policy=spatial_brain", "algo=scaffold", "algo.qa_sources=[generic,boat]"]),
                 "qa_sources", "boat")


def test_init_from_a_run_that_is_not_a_brain_is_one_line(ncap_run, run_cli, tmp_path):
    result = run_cli("agents.train", *TINY_BRAIN, "algo=specialize", "env=uav_find", f"init_from={ncap_run}",
                     f"algo.data_dir={tmp_path / 'data'}")
    assert_one_line_error(result, "init_from", "not a spatial brain")
