"""The swimmer's target-finding env (envs/swimmer/find.py) and its expert, the steering NCAP
(policies/swimmer_steering.py).

Instructions are checked here by an oracle written from the docstring of envs/find_instructions.py
(lateral / forward differences in the episode's view frame, nearest by planar distance), not by
calling the module's own ``referents``, so a bug there cannot hide itself.
"""

from __future__ import annotations

import math
import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs import find_instructions as fi
from envs.snapshot import restore_snapshot, take_snapshot
from envs.swimmer.env import swimmer_observation
from envs.swimmer.find import (
    COLOUR_RGBA,
    NOSE_AHEAD,
    STATE_LAYOUT,
    TARGET_SHAPES,
    SwimmerFindConfig,
    SwimmerFindEnv,
    find_state,
    navigate_observation,
)
from policies.swimmer_steering import SwimmerSteering

from conftest import check_quietly

MARGIN = fi.RELATION_MARGIN


@pytest.fixture(scope="module")
def env():
    e = SwimmerFindEnv()
    yield e
    e.close()


# --- an independent oracle for "names exactly one target" ----------------------------------------


def _view(frame: fi.ViewFrame, p) -> tuple[float, float]:
    """(forward, lateral) of a world point in the view frame: metres ahead of the start pose and to its left."""
    c, s = math.cos(frame.yaw), math.sin(frame.yaw)
    dx, dy = p[0] - frame.origin[0], p[1] - frame.origin[1]
    return c * dx + s * dy, -s * dx + c * dy


def assert_names_only(objects, target: int, d: fi.Description, frame: fi.ViewFrame) -> None:
    """``d`` fits ``objects[target]`` clearly and no other object even ambiguously; the anchor is unique."""
    t = objects[target]
    assert d.shape == t.shape and d.colour in ("", t.colour)
    like = [i for i, o in enumerate(objects) if o.shape == d.shape and (not d.colour or o.colour == d.colour)]
    if d.relation is None:
        assert like == [target]
        return
    a = objects[d.anchor]
    assert d.anchor != target
    anchors = [i for i, o in enumerate(objects) if o.shape == a.shape and (not d.anchor_colour or o.colour == d.anchor_colour)]
    assert anchors == [d.anchor] and d.anchor_colour in ("", a.colour)
    others = [i for i in like if i not in (target, d.anchor)]
    if d.relation == "nearest_to":
        dist = {i: float(np.hypot(*(objects[i].position[:2] - a.position[:2]))) for i in like if i != d.anchor}
        assert all(dist[i] >= dist[target] + MARGIN for i in others)
        return
    fa, la = _view(frame, a.position)

    def amount(o) -> float:
        fo, lo = _view(frame, o.position)
        return {"left_of": lo - la, "right_of": la - lo, "behind": fo - fa, "in_front_of": fa - fo}[d.relation]

    assert amount(t) >= MARGIN
    assert all(amount(objects[i]) <= 0.0 for i in others)


def _line_distance(p, a, b) -> float:
    ab, ap = np.subtract(b, a), np.subtract(p, a)
    t = np.clip(np.dot(ap, ab) / np.dot(ab, ab), 0.0, 1.0)
    return float(np.linalg.norm(ap - t * ab))


# --- the env ------------------------------------------------------------------------------------------


def test_registered_checked_and_pickles(env):
    made = gym.make(envs.SWIMMER_FIND)
    try:
        assert made.spec.max_episode_steps is None  # the env times its own episodes
        assert isinstance(made.unwrapped, SwimmerFindEnv)
    finally:
        made.close()
    assert envs.config_class(envs.SWIMMER_FIND) is SwimmerFindConfig
    check_quietly(check_env, SwimmerFindEnv(episode_seconds=0.6), skip_render_check=True)
    obs, info = env.reset(seed=0)
    space = env.observation_space
    assert space["image"].shape == (32, 32, 3) and space["image"].dtype == np.uint8
    assert space["depth"].shape == (32, 32) and space["depth"].dtype == np.float32
    assert space["state"].shape == (STATE_LAYOUT.size,) == (28,) and space["state"].dtype == np.float64
    assert obs["image"].dtype == np.uint8 and obs["depth"].dtype == np.float32 and obs["state"].dtype == np.float64
    assert space.contains(obs)
    assert env.action_space.shape == (5,)
    assert obs["instruction"] == info["instruction"] and len(obs["instruction"]) <= fi.MAX_CHARS
    assert set(info) >= {"goal", "target", "instruction", "paraphrase", "is_success", "distance_to_goal"}
    assert info["goal"].shape == (2,) and info["goal"].dtype == np.float64
    clone = pickle.loads(pickle.dumps(env))
    assert isinstance(clone, SwimmerFindEnv) and clone.find_config == env.find_config


def test_seeded_episodes_are_deterministic():
    a, b = SwimmerFindEnv(), SwimmerFindEnv()
    layouts = set()
    actions = np.random.default_rng(0).uniform(-1, 1, size=(5, 5))
    for seed in range(6):
        obs_a, info_a = a.reset(seed=seed)
        obs_b, info_b = b.reset(seed=seed)
        scene_a, scene_b = a.scene(), b.scene()
        assert [o.name for o in scene_a.objects] == [o.name for o in scene_b.objects]
        assert all(np.array_equal(x.position, y.position) for x, y in zip(scene_a.objects, scene_b.objects))
        assert info_a["instruction"] == info_b["instruction"] and np.array_equal(info_a["goal"], info_b["goal"])
        for action in actions:
            obs_a, reward_a, *_ = a.step(action)
            obs_b, reward_b, *_ = b.step(action)
            assert reward_a == reward_b
        for key in ("image", "depth", "state"):
            assert np.array_equal(obs_a[key], obs_b[key]), key
        layouts.add((tuple(o.name for o in scene_a.objects), info_a["instruction"]))
    assert len(layouts) == 6


def test_every_instruction_names_exactly_one_target_in_a_valid_layout(env):
    c = env.find_config
    templates, counts = set(), set()
    for seed in range(120):
        _, info = env.reset(seed=seed)
        scene, d, frame = env.scene(), env.description, env.view_frame
        names = [o.name for o in scene.objects]
        target = names.index(info["target"])
        counts.add(len(names))
        assert c.n_targets[0] <= len(names) <= c.n_targets[1]
        assert_names_only(scene.objects, target, d, frame)
        t = scene.objects[target]
        assert t.shape in TARGET_SHAPES
        # A distractor shares the target's colour or shape, so the whole description is needed.
        assert any(o.shape == t.shape or o.colour == t.colour for i, o in enumerate(scene.objects) if i != target)
        assert d.colour or d.relation  # never the bare shape
        target_words, anchor_words = fi.phrase(d, scene.objects)
        assert t.shape in target_words and (not d.colour or t.colour in target_words)
        assert target_words in info["instruction"] and anchor_words in info["instruction"]
        assert np.allclose(info["goal"], t.position[:2])
        # The layout: a wedge ahead of the start pose, spaced, nobody on another's sightline.
        origin = np.array(frame.origin)
        assert np.allclose(origin, scene.agent_position[:2]) and frame.yaw == pytest.approx(scene.agent_yaw)
        for i, o in enumerate(scene.objects):
            forward, lateral = _view(frame, o.position)
            assert c.target_distance[0] - 1e-9 <= math.hypot(forward, lateral) <= c.target_distance[1] + 1e-9
            assert abs(math.degrees(math.atan2(lateral, forward))) <= c.target_bearing_deg + 1e-6
            for j, p in enumerate(scene.objects):
                if i != j:
                    assert np.hypot(*(o.position[:2] - p.position[:2])) >= c.target_spacing
                    assert _line_distance(o.position[:2], origin, p.position[:2]) >= c.sightline_clearance
        templates.add(d.template)
    assert counts == {3, 4, 5}
    assert "attribute" in templates and len(templates & set(fi.RELATIONS)) >= 3, templates


def test_held_out_wordings_only_when_asked():
    train, held = SwimmerFindEnv(image_width=4, image_height=4), SwimmerFindEnv(image_width=4, image_height=4, held_out=True)
    held_words = set()
    for seed in range(40):
        _, info = train.reset(seed=seed)
        d, objects = train.description, train.scene().objects
        assert info["paraphrase"] in fi.paraphrase_pool(False)
        unseen = {fi.instruction(d, objects, k) for k in fi.paraphrase_pool(True)}
        assert info["instruction"] not in unseen
        _, info = held.reset(seed=seed)
        assert info["paraphrase"] in fi.paraphrase_pool(True)
        assert info["instruction"] == fi.instruction(held.description, held.scene().objects, info["paraphrase"])
        held_words.add(info["paraphrase"])
    assert held_words == set(fi.paraphrase_pool(True))
    _, info = train.reset(seed=3, options={"paraphrase": 5})
    assert info["paraphrase"] == 5 and info["instruction"] == fi.instruction(train.description, train.scene().objects, 5)
    _, info = train.reset(seed=3)
    assert info["paraphrase"] in fi.paraphrase_pool(False)  # the option holds for one episode
    assert SwimmerFindEnv(paraphrase=1).reset(seed=0)[1]["paraphrase"] == 1
    with pytest.raises(ValueError, match="paraphrase"):
        train.reset(seed=0, options={"paraphrase": 6})
    with pytest.raises(ValueError, match="reset options"):
        train.reset(seed=0, options={"colour": "red"})


def test_head_camera_sees_the_targets_and_not_the_swimmer(env):
    swimmer_geoms = [g for g in range(env.model.ngeom) if env.model.geom_bodyid[g] != 0]
    swimmer_geoms = [g for g in swimmer_geoms if not env.model.body(int(env.model.geom_bodyid[g])).name.startswith("target")]
    seen, n = 0, 40
    for seed in range(n):
        obs, info = env.reset(seed=seed)
        image, depth = obs["image"], obs["depth"]
        assert image.reshape(-1, 3).std(axis=0).max() > 5  # not a constant image
        assert depth.min() < 3.0 and depth.max() <= env.find_config.max_depth
        target = env.scene().object(info["target"])
        seen += np.isin(env.frame.geom, target.geom_ids).any()
        assert np.array_equal(env.frame.rgb, image) and np.array_equal(env.frame.depth, depth)
        for _ in range(3):  # a curled body never shows
            obs, *_ = env.step(np.ones(5))
            assert not np.isin(env.frame.geom, swimmer_geoms).any()
    assert seen / n >= 0.9, f"target visible in {seen}/{n} resets"


def test_state_layout_and_scene_match_the_simulator(env):
    rng = np.random.default_rng(1)
    for seed in (0, 1, 2):
        obs, info = env.reset(seed=seed)
        for _ in range(20):
            obs, *_, info = env.step(rng.uniform(-1, 1, 5))
        state, layout, d = obs["state"], STATE_LAYOUT, env.data
        head, nose = d.body("head").xpos, d.geom("nose").xpos
        assert np.allclose(state[slice(*layout.head_position)], head[:2], atol=1e-12)
        c, s = state[slice(*layout.heading)]
        assert c * c + s * s == pytest.approx(1.0)
        assert np.allclose(head[:2] + NOSE_AHEAD * np.array([c, s]), nose[:2], atol=1e-9)  # the heading is where the nose is
        assert np.allclose(state[slice(*layout.joints)], d.qpos[3:])
        assert np.allclose(state[slice(*layout.body_velocities)], env.body_velocities())
        assert state[layout.time] == pytest.approx(20 / 1000)
        position, yaw = env.head_pose()
        assert np.array_equal(state, find_state(env.joint_angles(), env.body_velocities(), position, yaw, 20))
        # navigate_observation is the navigate task's observation of the goal (its hidden marker sits there).
        expected = swimmer_observation(env.joint_angles(), env.body_velocities(), 20, 1000, env.nose_to_target())
        assert np.allclose(navigate_observation(state, info["goal"]), expected, atol=1e-12)
        assert info["distance_to_goal"] == pytest.approx(np.hypot(*(info["goal"] - nose[:2])))
        scene = env.scene()
        assert scene.embodiment == "swimmer" and scene.extras["target"] == info["target"]
        assert np.allclose(scene.agent_position, head) and scene.agent_yaw == pytest.approx(math.atan2(s, c))
        cam = env.model.camera("eye").id  # the model's camera and the ray camera share the pose
        assert np.allclose(scene.camera_position, d.cam_xpos[cam], atol=1e-9)
        assert np.allclose(scene.camera_rotation, d.cam_xmat[cam].reshape(3, 3), atol=1e-9)
        shown = set()
        for obj in scene.objects:
            ids = list(obj.geom_ids)
            shown.update(ids)
            xpos = d.geom_xpos[ids]
            assert np.allclose(xpos[:, :2].mean(axis=0), obj.position[:2], atol=1e-9), obj.name
            if obj.shape != "cone":  # a mesh's frame sits at its centroid, below the box centre
                assert np.allclose(xpos[:, 2], obj.position[2], atol=1e-9), obj.name
            assert np.allclose(env.model.geom_rgba[ids], COLOUR_RGBA[obj.colour])
            assert (env.model.geom_contype[ids] == 0).all() and (env.model.geom_conaffinity[ids] == 0).all()
        target_geoms = {g for g in range(env.model.ngeom) if env.model.geom(g).name.startswith("target")
                        and env.model.geom(g).name != "target"}
        assert (env.model.geom_rgba[sorted(target_geoms - shown), 3] == 0).all()


def swim(env: SwimmerFindEnv, steering: SwimmerSteering, seed: int, wrong: bool = False) -> dict:
    """One episode under the steering NCAP, to the named target or (``wrong``) another one."""
    obs, info = env.reset(seed=seed)
    goal = info["goal"]
    if wrong:
        goal = next(o for o in env.scene().objects if o.name != info["target"]).position[:2]
    steering.reset()
    done = False
    while not done:
        obs, reward, terminated, truncated, info = env.step(steering.act(obs, goal))
        assert reward == pytest.approx(sum(v for k, v in info.items() if k.startswith("reward_")))
        done = terminated or truncated
    return info


def test_steering_ncap_finds_the_named_target_and_only_it():
    # A tiny camera: the expert reads only the state, and the swim is the same at any image size.
    env = SwimmerFindEnv(image_width=4, image_height=4)
    steering = SwimmerSteering()
    for seed in range(3):
        info = swim(env, steering, seed)
        assert info["is_success"] and info["distance_to_goal"] <= env.find_config.success_radius, seed
        assert info["reward_success_bonus"] == env.find_config.success_bonus
    short = SwimmerFindEnv(image_width=4, image_height=4, episode_seconds=20.0)
    for seed in range(2):
        info = swim(short, steering, seed, wrong=True)
        assert not info["is_success"] and info["distance_to_goal"] > short.find_config.target_spacing / 2


def test_steering_waypoint_and_actions():
    steering = SwimmerSteering(carrot=0.3)
    state = np.zeros(STATE_LAYOUT.size)
    state[slice(*STATE_LAYOUT.heading)] = (1.0, 0.0)  # head at the origin facing +x, nose at x = NOSE_AHEAD
    assert np.allclose(steering.waypoint(state, [2.0 + NOSE_AHEAD, 0.0]), [0.3 + NOSE_AHEAD, 0.0])
    assert np.allclose(steering.waypoint(state, [0.1, 0.2]), [0.1, 0.2])  # near goals are steered at directly
    action = steering.act({"state": state}, [2.0, 0.0])
    assert action.shape == (5,) and action.dtype == np.float32 and np.all(np.abs(action) <= 1.0)
    assert np.array_equal(action, steering.act(state, [2.0, 0.0]))
    assert np.array_equal(steering.act(state, [NOSE_AHEAD + 0.05, 0.0]), np.zeros(5))  # at the goal: the circuit rests
    with pytest.raises(ValueError, match="carrot"):
        SwimmerSteering(carrot=0.1)


def test_snapshot_restores_the_layout():
    env, other = SwimmerFindEnv(), SwimmerFindEnv()
    obs, _ = env.reset(seed=11)
    for _ in range(10):
        obs, *_ = env.step(np.full(5, 0.3))
    snap = take_snapshot(env, obs)
    after = [env.step(np.full(5, -0.5))[0] for _ in range(3)]
    other.reset(seed=12)
    restore_snapshot(other, snap)
    assert other.instruction == env.instruction and np.allclose(other.goal, env.goal)
    assert other.view_frame == env.view_frame
    replay = [other.step(np.full(5, -0.5))[0] for _ in range(3)]
    for x, y in zip(after, replay):
        assert np.array_equal(x["image"], y["image"]) and np.array_equal(x["state"], y["state"])


@pytest.mark.parametrize(("field", "value"), [
    ("n_targets", [2, 5]), ("n_targets", [5, 4]), ("n_targets", [4]), ("n_targets", [3, 7]), ("image_width", 0),
    ("image_height", 16.5), ("fovy_deg", 180.0), ("max_depth", -1.0), ("success_radius", 0.0),
    ("episode_seconds", "long"), ("paraphrase", 6), ("held_out", "yes"), ("relation_prob", 1.5),
    ("target_distance", [1.0, 9.0]), ("target_distance", [2.0, 1.0]), ("target_bearing_deg", 95.0),
    ("control_timestep", 0.031), ("control_timestep", 0.0), ("camera_height", 0.0), ("camera_tilt_deg", 100.0),
    ("sightline_clearance", -0.1), ("start_yaw_deg", 200.0), ("fluid_density", -1.0), ("target_spacing", 0),
])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SwimmerFindConfig(**{field: value})


def test_an_impossible_layout_is_a_clear_error():
    env = SwimmerFindEnv(n_targets=(5, 5), target_distance=(0.6, 0.8), target_bearing_deg=10.0, image_width=4,
                         image_height=4)
    with pytest.raises(ValueError, match="cannot place 5 targets"):
        env.reset(seed=0)
