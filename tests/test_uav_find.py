"""The landmark-finding UAV env (envs/uav/find.py), its instructions (envs/find_instructions.py) and
the ray-cast camera it sees through (envs/raycast_camera.py).

Relations are checked here by an oracle written from the docstring of envs/find_instructions.py
(lateral / forward differences in the view frame, nearest by planar distance), not by calling the
module's own ``referents``, so a bug there cannot hide itself.
"""

from __future__ import annotations

import math
import pickle
import time

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs import find_instructions as fi
from envs.raycast_camera import RaycastCamera
from envs.scene import COLOURS, SHAPES, SceneObject
from envs.snapshot import restore_snapshot, take_snapshot
from envs.uav.find import COLOUR_RGBA, VIEW_FRAME, UAVFindConfig, UAVFindEnv, find_state, pid_observation
from envs.uav.observation import uav_observation
from policies.pid import CascadedPID, gains_for

from conftest import check_quietly

MARGIN = fi.RELATION_MARGIN


@pytest.fixture(scope="module")
def env():
    e = UAVFindEnv()
    yield e
    e.close()


# --- an independent oracle for "names exactly one landmark" ------------------------------------------


def _view(p) -> tuple[float, float]:
    """(forward, lateral) in the view frame: the arena seen from the origin facing +x (yaw 0)."""
    c, s = math.cos(VIEW_FRAME.yaw), math.sin(VIEW_FRAME.yaw)
    dx, dy = p[0] - VIEW_FRAME.origin[0], p[1] - VIEW_FRAME.origin[1]
    return c * dx + s * dy, -s * dx + c * dy


def _amount(relation: str, a, b) -> float:
    (fa, la), (fb, lb) = _view(a.position), _view(b.position)
    return {"left_of": la - lb, "right_of": lb - la, "behind": fa - fb, "in_front_of": fb - fa}[relation]


def assert_names_only(objects, target: int, d: fi.Description, frame: fi.ViewFrame = fi.ViewFrame()) -> None:
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
    else:
        assert _amount(d.relation, t, a) >= MARGIN
        assert all(_amount(d.relation, objects[i], a) <= 0.0 for i in others)


def _random_objects(rng, n: int) -> list[SceneObject]:
    """A crowded scene from a small palette, so that many targets need a relation or have none."""
    shapes, colours = SHAPES[:3], COLOURS[:3]
    return [SceneObject(name=f"o{i}", shape=str(rng.choice(shapes)), colour=str(rng.choice(colours)),
                        position=np.array([rng.uniform(0.5, 4.0), rng.uniform(-2.0, 2.0), 0.3]), size=0.3)
            for i in range(n)]


# --- instructions (pure functions) ------------------------------------------------------------------


def test_describe_names_exactly_one_object_over_random_scenes():
    rng = np.random.default_rng(0)
    counts = {"attribute": 0, "none": 0, **{r: 0 for r in fi.RELATIONS}}
    for _ in range(400):
        objects = _random_objects(rng, int(rng.integers(3, 8)))
        target = int(rng.integers(len(objects)))
        d = fi.describe(objects, target, rng=np.random.default_rng(1))
        if d is None:
            counts["none"] += 1
            continue
        counts[d.template] += 1
        assert_names_only(objects, target, d)
        assert fi.referents(d, objects) == [target]
        # The shortest: no attribute-only description is unique when a relation was chosen, and shape
        # alone is not unique when the colour is said.
        same_shape = sum(o.shape == d.shape for o in objects)
        if d.relation is not None or d.colour:
            assert same_shape > 1
        if d.relation is not None:
            assert sum(o.shape == d.shape and o.colour == objects[target].colour for o in objects) > 1
        # Deterministic given the rng.
        assert fi.describe(objects, target, rng=np.random.default_rng(1)) == d
    assert all(counts[k] > 0 for k in counts), counts  # every kind of description occurs


def test_wordings_are_distinct_bounded_and_split_into_seen_and_held_out():
    assert set(fi.WORDINGS) == {"attribute", *fi.RELATIONS}
    for template, words in fi.WORDINGS.items():
        assert len(words) == fi.N_WORDINGS, template
        rendered = [w.format(target="red box", anchor="blue pillar") for w in words]
        assert len(set(rendered)) == fi.N_WORDINGS, template  # a held-out wording never equals a seen one
    assert fi.longest_instruction() <= fi.MAX_CHARS
    seen, held = fi.paraphrase_pool(False), fi.paraphrase_pool(True)
    assert list(held) == list(range(fi.N_WORDINGS - fi.HELD_OUT, fi.N_WORDINGS)) and not set(seen) & set(held)
    rng = np.random.default_rng(0)
    assert {fi.draw_paraphrase(rng) for _ in range(200)} == set(seen)
    assert {fi.draw_paraphrase(rng, held_out=True) for _ in range(200)} == set(held)
    with pytest.raises(ValueError, match="paraphrase"):
        fi.instruction(fi.Description("box"), [], fi.N_WORDINGS)


# --- the ray-cast camera ---------------------------------------------------------------------------

CAMERA_XML = """
<mujoco>
  <worldbody>
    <geom name="floor" type="plane" size="10 10 0.1" rgba="0.5 0.5 0.5 1"/>
    <geom name="wall" type="box" pos="3 0 1" size="0.1 0.5 1" rgba="1 0 0 1"/>
    <geom name="hidden" type="sphere" pos="1.5 0 1" size="0.2" rgba="0 1 0 1" group="3"/>
    <body name="agent" pos="0 0 1">
      <freejoint/>
      <geom name="shell" type="sphere" size="0.3" rgba="0 0 1 1"/>
    </body>
  </worldbody>
</mujoco>
"""
FORWARD = np.column_stack([[0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]])  # camera -> world, looking along +x


def test_camera_depth_geoms_and_exclusions():
    model = mujoco.MjModel.from_xml_string(CAMERA_XML)
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    agent = model.body("agent").id
    groups = [1, 1, 1, 0, 1, 1]  # group 3 (the "hidden" sphere) off
    cam = RaycastCamera(model, 33, 33, 60.0, 8.0, bodyexclude=agent, geomgroup=groups)
    frame = cam.render(data, np.array([0.0, 0.0, 1.0]), FORWARD)  # inside the agent's own shell
    assert frame.rgb.shape == (33, 33, 3) and frame.rgb.dtype == np.uint8
    assert frame.depth.shape == frame.geom.shape == (33, 33)
    assert frame.depth.dtype == np.float32 and frame.geom.dtype == np.int32
    centre = (16, 16)
    assert frame.geom[centre] == model.geom("wall").id
    assert frame.depth[centre] == pytest.approx(2.9, abs=1e-5)  # the wall's near face, along the optical axis
    assert frame.rgb[centre][0] > 200 and frame.rgb[centre][1] < 30  # red, lit head-on
    assert frame.geom[0, 16] == -1 and frame.depth[0, 16] == pytest.approx(8.0)  # sky at the top
    assert np.abs(frame.rgb[0, 16].astype(int) - np.array(cam.sky) * 255).max() <= 1
    assert frame.geom[-1, 16] == model.geom("floor").id  # the floor at the bottom
    # Planar depth: the floor row at the bottom is at the same depth across the image.
    floor_row = frame.depth[-1]
    assert np.allclose(floor_row, floor_row[16], rtol=1e-4)
    # Nothing of the agent's own body, nothing of a disabled group.
    assert not np.isin(frame.geom, [model.geom("shell").id, model.geom("hidden").id]).any()
    everything = RaycastCamera(model, 33, 33, 60.0, 8.0).render(data, np.array([0.0, 0.0, 1.0]), FORWARD)
    assert (everything.geom == model.geom("shell").id).all()  # seen from inside, the shell fills the view
    # Rows are top-down and +x of the camera is the image's right: look at the wall from its left side.
    left = RaycastCamera(model, 33, 33, 60.0, 8.0, bodyexclude=agent, geomgroup=groups)
    off = left.render(data, np.array([0.0, 0.6, 1.0]), FORWARD).geom
    wall_cols = np.flatnonzero((off == model.geom("wall").id).any(axis=0))
    assert wall_cols.mean() > 16  # the wall lies to the camera's right


def test_camera_render_time_at_32x32(env):
    env.reset(seed=0)
    position, rotation = env.camera_pose()
    env.camera.render(env.data, position, rotation)
    start, n = time.process_time(), 100
    for _ in range(n):
        env.camera.render(env.data, position, rotation)
    per_frame = (time.process_time() - start) / n
    assert per_frame < 3e-3, f"{per_frame * 1e3:.2f} ms per 32x32 frame"  # a loose bound: CPU time, not wall time


# --- the env ------------------------------------------------------------------------------------------


def test_registered_checked_and_pickles(env):
    made = gym.make(envs.UAV_FIND)
    try:
        assert made.spec.max_episode_steps is None  # the env times its own episodes
        assert isinstance(made.unwrapped, UAVFindEnv)
    finally:
        made.close()
    assert envs.config_class(envs.UAV_FIND) is UAVFindConfig
    check_quietly(check_env, UAVFindEnv(episode_seconds=1.0), skip_render_check=True)
    obs, info = env.reset(seed=0)
    space = env.observation_space
    assert space["image"].shape == (32, 32, 3) and space["depth"].shape == (32, 32) and space["state"].shape == (22,)
    assert obs["instruction"] == info["instruction"] and len(obs["instruction"]) <= fi.MAX_CHARS
    assert set(info) >= {"goal", "target", "instruction", "is_success", "distance_to_goal", "crashed"}
    clone = pickle.loads(pickle.dumps(env))
    assert isinstance(clone, UAVFindEnv) and clone.find_config == env.find_config


def test_seeded_resets_reproduce_layout_and_instruction():
    a, b = UAVFindEnv(), UAVFindEnv()
    layouts = set()
    for seed in range(8):
        obs_a, info_a = a.reset(seed=seed)
        obs_b, info_b = b.reset(seed=seed)
        scene_a, scene_b = a.scene(), b.scene()
        assert [o.name for o in scene_a.objects] == [o.name for o in scene_b.objects]
        assert all(np.array_equal(x.position, y.position) for x, y in zip(scene_a.objects, scene_b.objects))
        assert info_a["instruction"] == info_b["instruction"] and np.array_equal(info_a["goal"], info_b["goal"])
        assert np.array_equal(obs_a["image"], obs_b["image"]) and np.array_equal(obs_a["state"], obs_b["state"])
        layouts.add((tuple(o.name for o in scene_a.objects), info_a["instruction"]))
    assert len(layouts) == 8


def test_every_instruction_names_exactly_one_landmark(env):
    templates = set()
    for seed in range(150):
        _, info = env.reset(seed=seed)
        scene, d = env.scene(), env.description
        names = [o.name for o in scene.objects]
        target = names.index(info["target"])
        assert 4 <= len(names) <= 6
        assert_names_only(scene.objects, target, d, VIEW_FRAME)
        t = scene.objects[target]
        # A distractor shares the target's colour or shape, so the whole description is needed.
        assert any(o.shape == t.shape or o.colour == t.colour for i, o in enumerate(scene.objects) if i != target)
        assert d.colour or d.relation  # never the bare shape
        target_words, anchor_words = fi.phrase(d, scene.objects)
        assert target_words in info["instruction"] and anchor_words in info["instruction"]
        goal = info["goal"]
        assert np.allclose(goal[:2], t.position[:2]) and goal[2] == pytest.approx(2 * t.position[2] + 0.5)
        templates.add(d.template)
    assert templates == {"attribute", *fi.RELATIONS}


def test_held_out_wordings_only_when_asked():
    train, held = UAVFindEnv(), UAVFindEnv(held_out=True)
    held_words = set()
    for seed in range(60):
        _, info = train.reset(seed=seed)
        d, objects = train.description, train.scene().objects
        assert info["paraphrase"] in fi.paraphrase_pool(False)
        unseen = {fi.instruction(d, objects, k) for k in fi.paraphrase_pool(True)}
        assert info["instruction"] not in unseen
        _, info = held.reset(seed=seed)
        assert info["paraphrase"] in fi.paraphrase_pool(True)
        held_words.add(info["paraphrase"])
    assert held_words == set(fi.paraphrase_pool(True))
    _, info = train.reset(seed=3, options={"paraphrase": 5})
    assert info["paraphrase"] == 5 and info["instruction"] == fi.instruction(train.description, train.scene().objects, 5)
    _, info = train.reset(seed=3)
    assert info["paraphrase"] in fi.paraphrase_pool(False)  # the option holds for one episode
    fixed = UAVFindEnv(paraphrase=1)
    assert fixed.reset(seed=0)[1]["paraphrase"] == 1
    with pytest.raises(ValueError, match="paraphrase"):
        train.reset(seed=0, options={"paraphrase": 6})
    with pytest.raises(ValueError, match="reset options"):
        train.reset(seed=0, options={"colour": "red"})


def test_onboard_camera_sees_the_landmarks(env):
    seen = 0
    n = 40
    for seed in range(n):
        obs, info = env.reset(seed=seed)
        image, depth = obs["image"], obs["depth"]
        assert image.reshape(-1, 3).std(axis=0).max() > 5  # not a constant image
        assert depth.min() < env.find_config.max_depth and depth.max() <= env.find_config.max_depth
        target = env.scene().object(info["target"])
        seen += np.isin(env.frame.geom, target.geom_ids).any()
        assert np.array_equal(env.frame.rgb, image)
    assert seen / n >= 0.9, f"target visible in {seen}/{n} resets"


def test_scene_matches_the_model(env):
    for seed in (0, 1, 2, 3):
        obs, info = env.reset(seed=seed)
        for _ in range(5):
            obs, *_ = env.step(np.zeros(4))
        mujoco.mj_forward(env.model, env.data)
        scene = env.scene()
        shown = set()
        for obj in scene.objects:
            ids = list(obj.geom_ids)
            shown.update(ids)
            xpos = env.data.geom_xpos[ids]
            assert np.allclose(xpos[:, :2].mean(axis=0), obj.position[:2], atol=1e-9), obj.name
            if obj.shape == "cone":  # a mesh's frame sits at its centroid, below the box centre
                assert 0.0 < xpos[0, 2] < 2 * obj.position[2]
            else:
                assert np.allclose(xpos.mean(axis=0)[2], obj.position[2], atol=1e-9), obj.name
            assert np.allclose(env.model.geom_rgba[ids], COLOUR_RGBA[obj.colour])
            assert (env.model.geom_contype[ids] == 1).all()
        landmark_geoms = {g for g in range(env.model.ngeom) if env.model.geom(g).name.startswith("landmark")}
        hidden = sorted(landmark_geoms - shown)
        assert (env.model.geom_rgba[hidden, 3] == 0).all() and (env.model.geom_contype[hidden] == 0).all()
        assert np.allclose(scene.agent_position, env.data.qpos[:3])
        assert np.allclose(obs["state"][:3], env.data.qpos[:3])
        cam = env.model.camera("onboard").id  # the model's camera and the ray camera share the pose
        assert np.allclose(scene.camera_position, env.data.cam_xpos[cam], atol=1e-9)
        assert np.allclose(scene.camera_rotation, env.data.cam_xmat[cam].reshape(3, 3), atol=1e-9)
        assert scene.embodiment == "uav" and scene.extras["target"] == info["target"]
        assert np.allclose(scene.extras["goal"], info["goal"])


def test_pid_observation_is_the_hover_observation(env):
    obs, info = env.reset(seed=5)
    obs, *_ = env.step(np.array([0.1, -0.1, 0.2, 0.0]))
    pos, vel, rot, rate = env.state()
    last_action = np.array([0.1, -0.1, 0.2, 0.0])
    expected = uav_observation(pos, vel, rot, rate, last_action, info["goal"])
    assert np.allclose(pid_observation(obs["state"], info["goal"]), expected)
    assert np.array_equal(obs["state"], find_state(pos, vel, rot, rate, last_action))


def fly(env: UAVFindEnv, pid: CascadedPID, seed: int, wrong: bool = False) -> dict:
    """One episode under the PID, to the named landmark's goal or (``wrong``) another landmark's."""
    obs, info = env.reset(seed=seed)
    goal = info["goal"]
    if wrong:
        other = next(o for o in env.scene().objects if o.name != info["target"])
        goal = np.array([other.position[0], other.position[1], 2 * other.position[2] + env.find_config.goal_height])
    pid.reset()
    done = False
    while not done:
        obs, reward, terminated, truncated, info = env.step(pid.act(pid_observation(obs["state"], goal)))
        assert reward == pytest.approx(sum(v for k, v in info.items() if k.startswith("reward_")))
        done = terminated or truncated
    return info


def test_cascaded_pid_finds_the_named_landmark_and_only_it():
    # A tiny camera: the PID reads only the state, and the flight is the same at any image size.
    env = UAVFindEnv(image_width=4, image_height=4)
    pid = CascadedPID(env.params, gains_for(env.params.name), env.control_dt, env.action_mode)
    results = [fly(env, pid, seed) for seed in range(20)]
    rate = np.mean([r["is_success"] for r in results])
    assert rate >= 0.95, f"PID success {rate:.2f}"
    assert all(r["distance_to_goal"] <= env.find_config.success_radius for r in results if r["is_success"])
    short = UAVFindEnv(image_width=4, image_height=4, episode_seconds=5.0)
    for seed in range(3):
        info = fly(short, pid, seed, wrong=True)
        assert not info["is_success"] and info["distance_to_goal"] > 0.9


def test_snapshot_restores_the_layout():
    env, other = UAVFindEnv(), UAVFindEnv()
    obs, _ = env.reset(seed=11)
    for _ in range(10):
        obs, *_ = env.step(np.zeros(4))
    snap = take_snapshot(env, obs)
    after = [env.step(np.full(4, 0.05))[0] for _ in range(3)]
    other.reset(seed=12)
    restore_snapshot(other, snap)
    assert other.instruction == env.instruction and np.allclose(other.goal, env.goal)
    replay = [other.step(np.full(4, 0.05))[0] for _ in range(3)]
    for x, y in zip(after, replay):
        assert np.array_equal(x["image"], y["image"]) and np.array_equal(x["state"], y["state"])


@pytest.mark.parametrize(("field", "value"), [
    ("n_landmarks", [2, 5]), ("n_landmarks", [6, 4]), ("n_landmarks", [4]), ("image_width", 0),
    ("image_height", 16.5), ("fovy_deg", 180.0), ("max_depth", -1.0), ("success_radius", 0.0),
    ("hold_seconds", "long"), ("paraphrase", 6), ("held_out", "yes"), ("relation_prob", 1.5),
    ("landmark_distance", [1.0, 9.0]), ("start_height", [1.0, 5.0]), ("vehicle", "x9"), ("action_mode", "rpm"),
    ("wind", [1.0, 0.0]), ("goal_height", 3.0), ("landmark_bearing_deg", 95.0), ("control_hz", 0.0),
    ("control_hz", 300.0),
])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        UAVFindConfig(**{field: value})
