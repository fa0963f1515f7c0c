"""The kitchen pointing env (envs/kitchen/point.py) and its pointed expert.

Interaction points are checked against the sites and offsets the module docstring's table
names, written out here (not read from ``INTERACTION_POINTS``), so a wrong entry there shows.
"""

from __future__ import annotations

import math
import pickle

import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.kitchen.env import TASKS
from envs.kitchen.instructions import INSTRUCTIONS, paraphrase_pool
from envs.kitchen.model import GRIPPER_SITE
from envs.kitchen.point import (
    CAMERA_FOVY_DEG,
    CAMERA_POSITION,
    CAMERA_ROTATION,
    KitchenPointConfig,
    KitchenPointEnv,
    PointedExpert,
)
from envs.raycast_camera import RaycastCamera
from envs.snapshot import restore_snapshot, take_snapshot

from conftest import CONFIG_DIR, check_quietly

KNOWN_CHECK_WARNINGS = ("infinity", "symmetric and normalized")  # unbounded state Box; joint-angle action box
# The docstring's table: site and world offset (m) of each task's interaction point.
POINTS = {
    "microwave": ("microhandle_site", (0.0, 0.0, 0.08)), "kettle": ("kettle_site", (0.0, 0.0, 0.0)),
    "light_switch": ("light_site", (0.0, 0.0, 0.0)), "slide_cabinet": ("slide_site", (0.0, 0.0, 0.0)),
    "hinge_cabinet": ("hinge_site2", (0.0, 0.0, 0.0)), "bottom_burner": ("knob2_site", (0.0, -0.03, 0.0)),
    "top_burner": ("knob4_site", (0.0, -0.03, 0.0)),
}


@pytest.fixture(scope="module")
def env():
    e = KitchenPointEnv()
    yield e
    e.close()


@pytest.fixture(scope="module")
def expert(env):
    return PointedExpert(env)


def run_episode(env: KitchenPointEnv, expert: PointedExpert, task: str, seed: int, offset=(0.0, 0.0, 0.0)) -> dict:
    """One episode of ``task`` with the expert pointed at the true current point plus ``offset`` (m)."""
    obs, info = env.reset(seed=seed, options={"task": task})
    expert.reset()
    nearest = math.inf
    while True:
        point = info["goal"] + np.asarray(offset)
        obs, _, terminated, truncated, info = env.step(expert.act(env, point))
        nearest = min(nearest, float(np.linalg.norm(env.gripper_position() - point)))
        if terminated or truncated:
            return {**info, "steps": env.step_count, "nearest_to_point": nearest}


# --- configuration ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("field", "value"), [
    ("tasks", []), ("tasks", ["oven"]), ("tasks", ["kettle", "kettle"]), ("level", "L3"), ("level", "L9"),
    ("paraphrase", 5), ("paraphrase", True), ("held_out", "yes"), ("episode_steps", 0), ("episode_steps", 1.5),
    ("image_width", 0), ("image_height", 2048), ("max_depth", 0.0), ("reset_noise", -0.1),
    ("terminate_on_success", "no"),
])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        KitchenPointConfig(**{field: value})


def test_registered_config_file_and_pickles(env):
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "env" / "kitchen_point.yaml"))
    assert cfg["name"] == "kitchen_point" and cfg["id"] == envs.KITCHEN_POINT == "embodied/KitchenPoint-v0"
    assert envs.config_class(envs.KITCHEN_POINT) is KitchenPointConfig
    KitchenPointConfig(**envs.constructor_kwargs(cfg))  # every key of the file is a field
    made = envs.make_from_config(cfg, tasks=["light_switch"])
    try:
        assert made.spec.max_episode_steps is None  # the env times its own episodes
        assert isinstance(made.unwrapped, KitchenPointEnv) and made.unwrapped.task_pool == ("light_switch",)
    finally:
        made.close()
    clone = pickle.loads(pickle.dumps(env))
    assert isinstance(clone, KitchenPointEnv) and clone.point_config == env.point_config
    clone.close()


# --- spaces -------------------------------------------------------------------------------------------
def test_spaces_dtypes_and_check_env(env):
    obs, info = env.reset(seed=0)
    space = env.observation_space
    assert set(space.spaces) == set(obs) == {"image", "depth", "state", "instruction"}
    assert obs["image"].shape == (32, 32, 3) and obs["image"].dtype == np.uint8
    assert obs["depth"].shape == (32, 32) and obs["depth"].dtype == np.float32
    assert obs["state"].shape == (8,) and obs["state"].dtype == np.float64
    np.testing.assert_array_equal(obs["state"], env.proprio())  # 7 arm angles + gripper opening
    assert space.contains(obs)
    assert 0.5 < obs["depth"].min() and obs["depth"].max() <= env.point_config.max_depth
    assert len(np.unique(obs["image"].reshape(-1, 3), axis=0)) > 20  # a picture, not a flat colour
    assert env.action_space.shape == (8,) and env.dt == pytest.approx(0.08)
    assert obs["instruction"] == info["instruction"]
    assert set(info) >= {"goal", "target", "instruction", "paraphrase", "is_success", "distance_to_goal"}
    assert info["goal"].shape == (3,) and info["target"] in TASKS and not info["is_success"]
    check_quietly(check_env, KitchenPointEnv(episode_steps=5), skip_render_check=True, allowed=KNOWN_CHECK_WARNINGS)


def test_seeded_resets_are_deterministic():
    a, b = KitchenPointEnv(level="L2"), KitchenPointEnv(level="L2")
    tasks = set()
    for seed in range(6):
        obs_a, info_a = a.reset(seed=seed)
        obs_b, info_b = b.reset(seed=seed)
        for key in ("image", "depth", "state"):
            np.testing.assert_array_equal(obs_a[key], obs_b[key])
        assert obs_a["instruction"] == obs_b["instruction"] and info_a["target"] == info_b["target"]
        np.testing.assert_array_equal(info_a["goal"], info_b["goal"])
        tasks.add(info_a["target"])
    action = a.action_space.sample()
    np.testing.assert_array_equal(a.step(action)[0]["image"], b.step(action)[0]["image"])
    assert len(tasks) >= 3  # the task is drawn per episode
    obs_c, info_c = a.reset(seed=100)
    assert not np.array_equal(obs_c["image"], obs_a["image"]) or info_c["target"] != info_a["target"]
    a.close()
    b.close()


def test_level_two_colours_follow_the_materials():
    """L2 recolours and retextures materials per episode: the camera reads them at every frame."""
    env = KitchenPointEnv(level="L2")
    images = []
    for seed in (0, 1):
        images.append(env.reset(seed=seed, options={"task": "microwave"})[0]["image"])
        fresh = RaycastCamera(env.model, 4, 4, CAMERA_FOVY_DEG, 4.0)  # built now: this episode's materials
        np.testing.assert_allclose(env.camera.colours(), fresh.colours())
    assert np.abs(images[0].astype(int) - images[1].astype(int)).mean() > 5
    env.close()


# --- the goal: each task's interaction point, and the camera sees it ----------------------------------
def test_goal_is_the_named_tasks_interaction_point(env):
    fovy_tan = math.tan(math.radians(CAMERA_FOVY_DEG) / 2)
    for seed, task in enumerate(TASKS):
        obs, info = env.reset(seed=seed, options={"task": task})
        assert info["target"] == task == env.target and obs["instruction"] in INSTRUCTIONS[task]
        site, offset = POINTS[task]
        expected = env.data.site_xpos[env.model.site(site).id] + offset
        np.testing.assert_allclose(info["goal"], expected, atol=1e-9)
        gripper = env.data.site_xpos[env.model.site(GRIPPER_SITE).id]
        assert info["distance_to_goal"] == pytest.approx(float(np.linalg.norm(gripper - expected)))
        scene = env.scene()
        assert scene.embodiment == "kitchen" and [o.name for o in scene.objects] == list(TASKS)
        np.testing.assert_allclose(scene.extras["goal"], info["goal"])
        # Every interaction point lies well inside the image, and the pixel it falls on shows its object.
        for name, point in scene.extras["interaction_points"].items():
            x, y, z = scene.in_camera_frame(point)
            u, v = x / -z / fovy_tan, y / -z / fovy_tan
            assert max(abs(u), abs(v)) < 0.8, (name, u, v)
            row, col = int((1 - v) / 2 * 32), int((u + 1) / 2 * 32)
            assert env.frame.geom[row, col] in scene.object(name).geom_ids, name
            assert obs["depth"][row, col] == pytest.approx(-z, abs=0.06), name
            assert scene.extras["visible_pixels"][name] >= 3, name


def test_paraphrases_and_held_out_wordings():
    train, held = KitchenPointEnv(tasks=["kettle"]), KitchenPointEnv(tasks=["kettle"], held_out=True)
    seen = {train.reset(seed=s)[1]["paraphrase"] for s in range(12)}
    unseen = {held.reset(seed=s)[1]["paraphrase"] for s in range(12)}
    assert seen <= set(paraphrase_pool("kettle", False)) and unseen <= set(paraphrase_pool("kettle", True))
    assert len(unseen) == 2
    obs, info = train.reset(seed=0, options={"paraphrase": 4, "task": "microwave"})
    assert info["paraphrase"] == 4 and obs["instruction"] == INSTRUCTIONS["microwave"][4]
    assert KitchenPointEnv(paraphrase=1).reset(seed=3)[1]["paraphrase"] == 1
    with pytest.raises(ValueError, match="'colour'"):
        train.reset(options={"colour": "red"})
    with pytest.raises(ValueError, match="unknown kitchen task 'oven'"):
        train.reset(options={"task": "oven"})
    train.close()
    held.close()


def test_snapshot_restores_the_task(env):
    env.reset(seed=1, options={"task": "slide_cabinet"})
    snap = take_snapshot(env)
    env.reset(seed=2, options={"task": "kettle"})
    restore_snapshot(env, snap)
    assert env.target == "slide_cabinet" and env.instruction in INSTRUCTIONS["slide_cabinet"]


# --- the pointed expert --------------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_pointed_expert_with_the_true_point_succeeds(env, expert, task):
    info = run_episode(env, expert, task, seed=TASKS.index(task))
    assert info["is_success"] and info["target"] == task, info
    assert info["steps"] < env.point_config.episode_steps


def test_a_point_twenty_cm_off_fails(env, expert):
    """The knob's grip pointed 20 cm out in front of it: the hand closes and turns on air, the burner stays off."""
    info = run_episode(env, expert, "bottom_burner", seed=0, offset=(0.0, -0.2, 0.0))
    assert not info["is_success"] and info["steps"] == env.point_config.episode_steps
    assert info["nearest_to_point"] < 0.02  # the hand went where it was pointed


def test_expert_acts_alike_from_observations(env, expert):
    """Observations carry no object state: at the start the expert assumes the objects at rest, which they are."""
    other = PointedExpert(env)
    obs, info = env.reset(seed=5, options={"task": "kettle"})  # L1: the kettle starts off its nominal place
    expert.reset()
    other.reset()
    for _ in range(30):
        point = info["goal"] + [0.01, 0.0, 0.0]
        from_env, from_obs = expert.act(env, point), other.act(obs, point)
        np.testing.assert_allclose(from_obs, from_env, atol=1e-6)
        obs, _, _, _, info = env.step(from_env)
    with pytest.raises(ValueError, match="point must be 3 finite numbers"):
        expert.act(env, [0.0, np.nan, 1.0])
    with pytest.raises(TypeError, match="KitchenPointEnv"):
        PointedExpert(envs.make_from_config({"id": envs.KITCHEN, "cameras": []}))


def test_camera_pose_is_the_models_camera(env):
    """render() through the model's camera ``pointing`` sees what the observation sees."""
    cam = env.model.camera("pointing").id
    mujoco.mj_kinematics(env.model, env.data)
    np.testing.assert_allclose(env.data.cam_xpos[cam], CAMERA_POSITION, atol=1e-9)
    np.testing.assert_allclose(env.data.cam_xmat[cam].reshape(3, 3), CAMERA_ROTATION, atol=1e-6)
    assert env.model.cam_fovy[cam] == pytest.approx(CAMERA_FOVY_DEG)
