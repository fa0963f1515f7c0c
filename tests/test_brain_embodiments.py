"""The spatial brain on each of its bodies: the swimmer's and the kitchen's stages, the followers' frames, and
closed loops with a perfect goal (split from test_brain_training.py so the two test workers share the load)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from test_brain_training import TINY_BRAIN, summary

import envs

from conftest import assert_one_line_error, run_module


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


def test_a_joint_run_learns_two_bodies_and_acts_in_either(tmp_path):
    """algo=joint: one model, a find task per embodiment; its bundle deploys in each env it trained for."""
    run = tmp_path / "joint"
    result = run_module("agents.train", *TINY_BRAIN, "algo=joint", "algo.envs=[kitchen_point,uav_find]",
                        "init_from=null", "algo.total_steps=4", "algo.eval_every=2", "algo.demos=2",
                        "algo.val_demos=1", "algo.eval_episodes=0", "algo.final_eval_episodes=0",
                        f"algo.data_dir={tmp_path / 'data'}", f"hydra.run.dir={run}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    s = summary(run)
    assert s["algo"] == "joint" and s["env"] == "kitchen_point,uav_find" and set(s["qa_held_out"]) == {"kitchen", "uav"}
    assert s["per_env"]["kitchen_point"]["train_goal_samples"] == 2 and s["per_env"]["uav_find"]["train_goal_samples"] == 6
    metrics = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"kitchen_val_goal_err", "uav_val_goal_err_2", "kitchen_eval_success", "uav_eval_success"} <= set(metrics)

    from policies.bundle import read_meta
    from policies.run_dir import RunDir

    meta = read_meta(RunDir(run).policy())
    assert meta.env["name"] == "kitchen_point" and set(meta.extra["embodiments"]) == {"kitchen", "uav"}
    result = run_module("agents.evaluate", f"run={run}", "env=uav_find", "episodes=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "return_mean=" in result.stdout.splitlines()[-1] and '"env": "uav_find"' in result.stdout


def test_joint_needs_one_find_env_per_body(tmp_path):
    from agents.errors import UserError
    from agents.overrides import check_overrides
    from agents.train import validate

    for envs_value, words in (("[uav_find,uav_hover]", ("uav_hover", "acts in")),
                              ("[uav_find,no_such_env]", ("unknown env 'no_such_env'",))):
        with pytest.raises(UserError) as e:  # in process: the same check the CLI runs before any run directory
            check_overrides("train", [*TINY_BRAIN, "algo=joint", f"algo.envs={envs_value}"], validate)
        assert all(w.lower() in str(e.value).lower() for w in words), str(e.value)
    result = run_module("agents.train", *TINY_BRAIN, "algo=joint", "algo.envs=[uav_find,uav_find]", cwd=tmp_path)
    assert_one_line_error(result, "one find env per embodiment")


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
