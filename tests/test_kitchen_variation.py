"""Kitchen variation levels change what they claim to, and nothing else."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from envs.kitchen.model import compile_kitchen, kitchen_spec
from envs.kitchen.variation import (
    APPLIANCE_SHIFT,
    KITCHEN_SHIFT,
    PARKED_Z,
    SceneVariation,
    add_distractors,
    check_level,
)


@pytest.fixture(scope="module")
def scene():
    spec = kitchen_spec()
    add_distractors(spec)
    model = compile_kitchen(spec)
    data = mujoco.MjData(model)
    kettle = model.jnt_qposadr[model.joint("kettle").id]
    return model, data, SceneVariation(model, kettle)


def changed(a: np.ndarray, b: np.ndarray) -> bool:
    return not np.array_equal(a, b)


def robot_bodies(model) -> list[int]:
    return [b for b in range(model.nbody) if model.body(b).name.startswith("panda0")]


def test_l0_is_the_nominal_scene(scene):
    model, data, var = scene
    var.apply("L1", np.random.default_rng(0), data)
    var.apply("L0", np.random.default_rng(0), data)
    nom = var.nominal
    assert np.array_equal(model.body_pos, nom["body_pos"]) and np.array_equal(model.light_pos, nom["light_pos"])
    assert np.array_equal(model.mat_rgba, nom["mat_rgba"]) and np.array_equal(model.mat_texid, nom["mat_texid"])
    assert np.all(data.mocap_pos[:, 2] == PARKED_Z)  # distractors out of sight
    assert np.all(var.kettle_offset == 0)


def test_l1_moves_objects_and_lights_but_not_the_robot_or_the_materials(scene):
    model, data, var = scene
    var.apply("L1", np.random.default_rng(1), data)
    nom = var.nominal
    moved = np.abs(model.body_pos - nom["body_pos"]).max(axis=1)
    assert moved[var.kitchen] > 0 and moved[var.kitchen] <= KITCHEN_SHIFT * np.sqrt(2)
    assert all(0 < moved[b] <= (APPLIANCE_SHIFT) * np.sqrt(2) for b in var.appliances)
    assert not moved[robot_bodies(model)].any()
    assert changed(model.light_pos, nom["light_pos"]) and changed(model.light_diffuse, nom["light_diffuse"])
    assert np.allclose(np.linalg.norm(model.light_dir, axis=1), 1.0)
    assert np.array_equal(model.mat_rgba, nom["mat_rgba"]) and np.all(data.mocap_pos[:, 2] == PARKED_Z)
    qpos = np.zeros(model.nq)
    var.kettle_start(qpos)
    assert qpos[var.kettle_adr : var.kettle_adr + 2].any() and not qpos[var.kettle_adr + 2 :].any()


def test_l2_retextures_the_scene_and_places_distractors(scene):
    model, data, var = scene
    var.apply("L2", np.random.default_rng(2), data)
    nom = var.nominal
    assert changed(model.mat_rgba, nom["mat_rgba"])
    robot_mats = {int(model.geom_matid[g]) for g in range(model.ngeom)
                  if model.geom_bodyid[g] in robot_bodies(model) and model.geom_matid[g] >= 0}
    for mat in robot_mats - set(var.scene_materials):
        assert np.array_equal(model.mat_rgba[mat], nom["mat_rgba"][mat])
    assert len(var.distractors) >= 1 and np.all(data.mocap_pos[:, 2] > 1.0)
    assert all(model.geom_contype[g] == 0 and model.geom_conaffinity[g] == 0 for g in var.distractor_geoms)


def test_levels_are_a_function_of_the_rng_and_snapshots_restore_them(scene):
    model, data, var = scene
    var.apply("L2", np.random.default_rng(5), data)
    first = var.state()
    var.apply("L2", np.random.default_rng(6), data)
    assert changed(model.body_pos, first["body_pos"])
    var.set_state(first)
    for key, value in first.items():
        assert np.array_equal(value, var.state()[key]), key
    var.apply("L2", np.random.default_rng(5), data)
    for key, value in first.items():
        assert np.array_equal(value, var.state()[key]), key


def test_unknown_level_is_named():
    with pytest.raises(ValueError, match="L7"):
        check_level("L7")


# --- through the env ---------------------------------------------------------------------------------
def kitchen(**kwargs):
    import envs

    return envs.make_from_config({"name": "kitchen", "id": "embodied/Kitchen-v0", "cameras": [], **kwargs}).unwrapped


def test_env_levels_draw_per_episode_and_l0_never_moves():
    l0, l1 = kitchen(task="microwave", level="L0"), kitchen(task="microwave", level="L1")
    desk = l1.model.body("desk").id
    positions = []
    for seed in (0, 1):
        l0.reset(seed=seed)
        l1.reset(seed=seed)
        assert np.array_equal(l0.model.body_pos, l0.variation.nominal["body_pos"])
        positions.append(l1.model.body_pos[desk].copy())
    assert changed(positions[0], positions[1]) and changed(positions[0], l1.variation.nominal["body_pos"][desk])


def test_l3_words_instructions_with_held_out_paraphrases_only():
    from envs.kitchen.instructions import paraphrase_pool

    train, l3 = kitchen(task="kettle", level="L0", paraphrase=None), kitchen(task="kettle", level="L3", paraphrase=None)
    seen_train = {train.reset(seed=s)[1] and train.episode_paraphrase for s in range(20)}
    seen_l3 = {l3.reset(seed=s)[1] and l3.episode_paraphrase for s in range(20)}
    assert seen_train <= set(paraphrase_pool("kettle", False)) and len(seen_train) > 1
    assert seen_l3 <= set(paraphrase_pool("kettle", True)) and not seen_train & seen_l3


def test_snapshot_replays_an_l2_episode_exactly():
    from envs.snapshot import restore_snapshot, take_snapshot

    env, other = kitchen(task="microwave", level="L2"), kitchen(task="microwave", level="L2")
    obs, _ = env.reset(seed=3)
    other.reset(seed=4)
    snap = take_snapshot(env, obs)
    rng = np.random.default_rng(0)
    actions = [np.r_[env.data.qpos[:7] + rng.normal(0, 0.05, 7), 0.5] for _ in range(5)]
    first = [env.step(a)[0]["object_state"] for a in actions]
    restore_snapshot(other, snap)
    assert np.array_equal(other.model.body_pos, env.model.body_pos) and np.array_equal(other.data.mocap_pos, env.data.mocap_pos)
    second = [other.step(a)[0]["object_state"] for a in actions]
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


def test_expert_succeeds_at_l1_on_fixed_seeds():
    from envs.kitchen.experts import make_expert

    for task in ("microwave", "kettle"):
        env = kitchen(task=task, level="L1")
        expert = make_expert(env)
        obs, _ = env.reset(seed=11)
        expert.reset(seed=11)
        done, info = False, {}
        while not done:
            obs, _, terminated, truncated, info = env.step(expert.act(obs))
            done = terminated or truncated
        assert info["is_success"], task


# --- semantic augmentation ---------------------------------------------------------------------------
def test_augmentation_changes_pixels_not_actions_or_states(tmp_path):
    import envs
    from agents.augment import rerender
    from agents.collect import record_episode
    from envs.kitchen.experts import make_expert

    env = envs.make_from_config({"name": "kitchen", "id": "embodied/Kitchen-v0", "task": "light_switch",
                                 "cameras": ["scene", "wrist"], "image_size": 24, "terminate_on_success": False})
    episode = record_episode(env, make_expert(env.unwrapped), seed=5, noise=0.0)
    copy1, again = rerender(env, episode, 1), rerender(env, episode, 1)
    copy2 = rerender(env, episode, 2)
    for key in ("proprio", "object_state"):
        assert np.array_equal(copy1.obs[key], episode.obs[key])
    assert np.array_equal(copy1.actions, episode.actions) and np.array_equal(copy1.qpos, episode.qpos)
    assert copy1.augmentation == 1 and copy1.instruction == episode.instruction
    for cam in ("scene", "wrist"):
        assert copy1.obs[cam].shape == episode.obs[cam].shape
        assert changed(copy1.obs[cam], episode.obs[cam]) and changed(copy1.obs[cam], copy2.obs[cam])
        assert np.array_equal(copy1.obs[cam], again.obs[cam])  # a copy is a function of (episode seed, k)
    # Nominal appearance again afterwards: re-rendering the recorded states reproduces the recorded frames.
    core = env.unwrapped
    core.data.qpos[:] = episode.qpos[-1]
    assert np.array_equal(core.render_cameras()["scene"], episode.obs["scene"][-1])
