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


def test_a_kitchen_specialist_trains_and_points(tmp_path):
    """The third embodiment: one decision before the arm moves, the plan of the instructed task."""
    run = tmp_path / "kitchen"
    result = run_module("agents.train", *TINY_BRAIN, "algo=specialize", "env=kitchen_point", "init_from=null",
                        "algo.total_steps=2", "algo.eval_every=2", "algo.demos=3", "algo.val_demos=1",
                        "algo.eval_episodes=0", "algo.final_eval_episodes=0", f"algo.data_dir={tmp_path / 'data'}",
                        f"hydra.run.dir={run}", cwd=tmp_path)  # the closed loop: the true-point test below
    assert result.returncode == 0, result.stderr[-3000:]
    s = summary(run)
    assert s["env"] == "kitchen_point" and s["train_goal_samples"] == 3 and set(s["qa_held_out"]) == {"kitchen"}
    assert s["success_rate"] is None and s["eval_episodes"] == 0  # none asked for: none reported


def test_a_swimmer_specialist_trains_and_swims(tmp_path):
    """The second embodiment through the same stage: swimmer_find demonstrations and QA, its own schedule."""
    run = tmp_path / "swimmer"
    result = run_module("agents.train", *TINY_BRAIN, "algo=specialize", "env=swimmer_find", "init_from=null",
                        "algo.total_steps=2", "algo.eval_every=2", "algo.demos=2", "algo.val_demos=1",
                        "algo.eval_episodes=0", "algo.final_eval_episodes=1", f"algo.data_dir={tmp_path / 'data'}",
                        f"hydra.run.dir={run}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    s = summary(run)
    assert s["env"] == "swimmer_find" and 0.0 <= s["success_rate"] <= 1.0
    assert 2 < s["train_goal_samples"] <= 2 * 5  # up to 5 decisions each (every 100 steps) until the target is reached
    assert set(s["qa_held_out"]) == {"swimmer"}

    from policies.registry import load_policy
    from policies.run_dir import RunDir

    policy = load_policy(RunDir(run).policy())
    assert (policy.decide_every, policy.decisions) == (100, 5)
    env = gym.make(envs.SWIMMER_FIND)
    obs, _ = env.reset(seed=0)
    action = policy.act(obs)
    assert action.shape == env.action_space.shape and np.all(np.isfinite(action)) and policy.goal.shape == (2,)
    env.close()


def test_the_kitchen_controller_runs_the_instructed_task_at_the_pointed_location():
    """A brain that points at the true interaction point succeeds on every task; the task comes from the wording."""
    from envs.kitchen.env import TASKS
    from policies.brain_policy import follower_for

    env = gym.make(envs.KITCHEN_POINT, level="L1")
    follower = follower_for("kitchen", {"name": "kitchen_point", "id": envs.KITCHEN_POINT}, "camera")
    outcomes = {}
    for k, task in enumerate(TASKS):
        obs, info = env.reset(seed=k, options={"task": task})
        goal = follower.to_world(obs, follower.label(obs, info["goal"]))  # through the camera frame
        follower.reset()
        done = False
        while not done:
            obs, _, terminated, truncated, info = env.step(follower.act(obs, goal))
            done = terminated or truncated
        outcomes[task] = bool(info["is_success"])
    env.close()
    assert all(outcomes.values()), outcomes


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


def test_the_brain_with_a_perfect_goal_reaches_the_named_landmark():
    """The follower and the frames: a brain that emits the expert's label succeeds; one pointing elsewhere fails."""
    import torch

    from policies.brain_policy import BrainPolicy, follower_for
    from policies.spatial_brain import SpatialBrain, SpatialBrainConfig

    env_cfg = {"name": "uav_find", "id": envs.UAV_FIND}
    brain = SpatialBrain(SpatialBrainConfig(layers=1, width=32, heads=2, ffn=64, vision_channels=(8, 8, 8)))
    env = gym.make(envs.UAV_FIND)
    outcomes = {}
    for name, shift, frame in (("true", 0.0, "native"), ("off", 2.5, "native"), ("true camera", 0.0, "camera")):
        follower = follower_for("uav", env_cfg, frame)
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
    assert outcomes == {"true": 3, "off": 0, "true camera": 3}, outcomes
    assert torch.get_num_threads() >= 1


@pytest.mark.parametrize("embodiment, env_id, away", [("uav", envs.UAV_FIND, [2.0, 1.0, 2.0]),
                                                      ("swimmer", envs.SWIMMER_FIND, [1.0, 1.0]),
                                                      ("kitchen", envs.KITCHEN_POINT, [-0.3, 0.5, 2.2])])
def test_a_camera_frame_goal_is_where_the_image_shows_it(embodiment, env_id, away):
    """The pointing head's frame is the image's: an object's centre, put in the camera frame by the follower's
    label, projects onto a pixel that sees that object; and to_world undoes label."""
    from envs.raycast_camera import camera_rays
    from policies.brain_policy import follower_for

    env = gym.make(env_id)
    follower = follower_for(embodiment, {"name": embodiment, "id": env_id}, "camera")
    rays = camera_rays(32, 32, env.unwrapped.camera.fovy_deg).reshape(32, 32, 3)
    checked = 0
    for seed in range(4):
        obs, _ = env.reset(seed=seed)
        for _ in range(30):  # moving, tilted or mid-stroke
            obs, *_ = env.step(follower.act(obs, np.array(away)))
        for obj in env.unwrapped.scene().objects:
            if obj.shape == "ring":
                continue  # its centre is the hole: the camera looks through it
            point = None if embodiment == "swimmer" else follower.label(obs, obj.position)
            if embodiment == "swimmer":  # planar goals: the label lifts them to a target's middle height
                origin, rotation = follower._pose(obs)
                point = rotation.T @ (obj.position - origin)
                np.testing.assert_allclose(follower.to_world(obs, follower.label(obs, obj.position[:2])),
                                           obj.position[:2], atol=1e-9)
            elif embodiment == "kitchen":
                np.testing.assert_allclose(follower.to_world(obs, point), obj.position, atol=1e-9)
            else:
                above = obj.position + np.array([0.0, 0.0, 1.0])  # inside the flight volume, which to_world clips to
                np.testing.assert_allclose(follower.to_world(obs, follower.label(obs, above)), above, atol=1e-9)
            direction = point / np.linalg.norm(point)
            row, col = np.unravel_index(np.argmax(rays @ direction), (32, 32))  # the pixel whose ray is closest
            if np.max(rays @ direction) > np.cos(np.radians(2.0)):  # inside the image
                seen = env.unwrapped.frame.geom[row, col]
                if seen in obj.geom_ids or seen < 0:
                    checked += seen in obj.geom_ids
                else:  # another landmark in front of it: nearer along that pixel
                    assert env.unwrapped.frame.depth[row, col] < -point[2]
    env.close()
    assert checked >= 6
