"""Procedural spatial QA: labels against independent geometry, splits, margins, and the QA dataset format."""

from __future__ import annotations

import json
import math
import re
from collections import Counter

import numpy as np
import pytest

from agents.dataset import DatasetError
from agents.qa_data import MANIFEST, SHARDS, EnvSource, collect_qa, load_qa
from envs import spatial_qa as sq
from envs.generic_scene import GenericSceneSampler, look_at, sample_layout
from envs.scene import COLOURS, SHAPES, Scene, SceneObject


def obj(name, shape, colour, xyz, size=0.2) -> SceneObject:
    return SceneObject(name, shape, colour, np.array(xyz, dtype=float), size)


def scene_of(objects, agent=(0.0, 0.0, 1.0), yaw=0.0, camera=(-1.0, 0.0, 1.5), target=(5.0, 0.0, 1.0),
             **extras) -> Scene:
    return Scene("generic", tuple(objects), np.array(agent, float), float(yaw), np.array(camera, float),
                 look_at(np.array(camera, float), np.array(target, float)), {"camera_fovy_deg": 90.0, **extras})


def ask(scene, family, n=200, split="seen", seed=0, **kw):
    return sq.questions(scene, np.random.default_rng(seed), split, n, families=(family,), **kw)


def form(qa) -> str:
    return sq.TEMPLATES[qa.family][qa.template].form


def random_scene(rng) -> Scene:
    """A generic-arena Scene without rendering (the frustum decides what is in view)."""
    layout = sample_layout(rng)
    objects = [SceneObject(f"{p.colour}_{p.shape}_{i}", p.shape, p.colour, p.position, p.size)
               for i, p in enumerate(layout)]
    bearing = rng.uniform(-math.pi, math.pi)
    cam = np.array([4.5 * math.cos(bearing), 4.5 * math.sin(bearing), rng.uniform(0.6, 2.5)])
    agent = cam if rng.random() < 0.5 else np.array([*rng.uniform(-2.5, 2.5, 2), rng.uniform(0.3, 1.5)])
    return Scene("generic", tuple(objects), agent, float(rng.uniform(-math.pi, math.pi)), cam,
                 look_at(cam, np.array([*rng.uniform(-1, 1, 2), 0.4])), {"camera_fovy_deg": 60.0})


# ------------------------------------------------------------------------- an independent label oracle

SLOT_PATTERNS = {"rel": "above|below", "side": "left|right", "where": "ahead of|behind",
                 "rank": "nearest to|farthest from", "colour": "|".join(COLOURS)}


def _parse(qa) -> dict:
    """The slot values of a question, read back through its template's text."""
    text = sq.TEMPLATES[qa.family][qa.template].text
    pattern = re.escape(text[0].upper() + text[1:])
    pattern = re.sub(r"\\\{(\w+)\\\}", lambda m: f"(?P<{m[1]}>{SLOT_PATTERNS.get(m[1], '.+?')})", pattern)
    m = re.fullmatch(pattern, qa.question)
    assert m, (qa.question, text)
    return m.groupdict()


def _resolve(scene, description) -> SceneObject:
    hits = [o for o in scene.objects if description in
            {o.shape.replace("_", " "), f"{o.colour} object", f"{o.colour} {o.shape.replace('_', ' ')}"}]
    assert len(hits) == 1, f"{description!r} names {len(hits)} objects"
    return hits[0]


def _agent_xyz(position, yaw, point):
    """Point in an agent frame, by projecting on the heading and its left normal (not Scene.in_agent_frame)."""
    d = np.asarray(point) - position
    heading, left = np.array([math.cos(yaw), math.sin(yaw)]), np.array([-math.sin(yaw), math.cos(yaw)])
    return np.array([d[:2] @ heading, d[:2] @ left, d[2]])


def _clear(lateral, along, size, margin_deg):
    return abs(lateral) > size and math.degrees(math.atan2(abs(lateral), abs(along))) >= margin_deg


def _oracle(scene, qa) -> None:
    """Recompute a question's answer from the raw geometry and check the margins held."""
    slots, f = _parse(qa), form(qa)
    if qa.family in ("agent_direction", "after_motion"):
        o = _resolve(scene, slots["a"])
        pos, yaw = scene.agent_position.copy(), scene.agent_yaw
        if qa.family == "after_motion":
            move = slots["move"]
            if m := re.fullmatch(r"you (?:move|step) (\d+) m (?:to your )?(forward|backward|left|right)", move):
                step = {"forward": (1, 0), "backward": (-1, 0), "left": (0, 1), "right": (0, -1)}[m[2]]
                heading, left = np.array([math.cos(yaw), math.sin(yaw)]), np.array([-math.sin(yaw), math.cos(yaw)])
                pos[:2] += float(m[1]) * (step[0] * heading + step[1] * left)
            elif move == "you turn around":
                yaw += math.pi
            else:
                m = re.fullmatch(r"you turn (left|right) by 90 degrees", move)
                yaw += math.pi / 2 if m[1] == "left" else -math.pi / 2
        x, y, z = _agent_xyz(pos, yaw, o.position)
        lr, fb, ud = ("left" if y > 0 else "right"), ("ahead" if x > 0 else "behind"), ("above" if z > 0 else "below")
        if f in ("lr", "side", "side_yesno"):
            assert _clear(y, x, o.size, sq.ANGLE_MARGIN_DEG)
            want = lr if f != "side_yesno" else ("yes" if slots["side"] == lr else "no")
        elif f in ("fb", "front_yesno"):
            assert _clear(x, y, o.size, sq.ANGLE_MARGIN_DEG)
            want = fb if f == "fb" else ("yes" if slots["where"].split()[0] == fb else "no")
        else:
            assert _clear(z, math.hypot(x, y), o.size, sq.ANGLE_MARGIN_DEG)
            want = ud
    elif qa.family == "camera_direction":
        o = _resolve(scene, slots["a"])
        c = scene.camera_rotation.T @ (o.position - scene.camera_position)
        value = c[0] if f == "lr" else c[1]
        assert _clear(value, -c[2], o.size, sq.CAMERA_MARGIN_DEG)
        want = ("right" if value > 0 else "left") if f == "lr" else ("above" if value > 0 else "below")
    elif qa.family == "distance":
        d = float(np.linalg.norm(_resolve(scene, slots["a"]).position - scene.agent_position))
        assert all(abs(d - e) >= 0.1 * e for e in (1, 2, 4)), d
        want = "<1m" if d < 1 else "1-2m" if d < 2 else "2-4m" if d < 4 else ">4m"
    elif qa.family == "relation":
        a, b = _resolve(scene, slots["a"]), _resolve(scene, slots["b"])
        dz = a.position[2] - b.position[2]
        assert abs(dz) >= max(sq.HEIGHT_MARGIN, (a.size + b.size) / 2)
        truth = "above" if dz > 0 else "below"
        want = truth if f == "which" else ("yes" if slots["rel"] == truth else "no")
    elif qa.family in ("nearest", "nearest_to"):
        in_view = [o for o in scene.objects if sq.view_status(scene, o) == "in"]
        if qa.family == "nearest":
            ref = scene.agent_position
            members = [o for o in in_view if ("shape" not in slots or o.shape == slots["shape"])
                       and ("shapes" not in slots or sq.plural(o.shape) == slots["shapes"])
                       and ("colour" not in slots or o.colour == slots["colour"])]
            farthest = slots["rank"].startswith("farthest")
        else:
            b = _resolve(scene, slots["b"])
            ref, members, farthest = b.position, [o for o in in_view if o is not b], False
        ds = sorted((float(np.linalg.norm(o.position - ref)), k) for k, o in enumerate(members))
        if len(ds) > 1:
            best, second = (ds[-1], ds[-2]) if farthest else (ds[0], ds[1])
            assert max(best[0], second[0]) >= sq.RANK_RATIO * min(best[0], second[0])
        winner = members[(ds[-1] if farthest else ds[0])[1]]
        want = winner.colour if f.startswith("colour") else winner.shape
    elif qa.family == "count":
        in_view = [o for o in scene.objects if sq.view_status(scene, o) == "in"]
        if f == "colour":
            want = str(sum(o.colour == slots["colour"] for o in in_view))
        elif f == "shape":
            want = str(sum(sq.plural(o.shape) == slots["shapes"] for o in in_view))
        else:
            want = str(len(in_view))
    else:
        raise AssertionError(qa.family)
    assert qa.answer == want, (qa, want)


def test_every_label_matches_independent_geometry_on_random_scenes():
    rng = np.random.default_rng(0)
    seen = Counter()
    for _ in range(150):
        scene = random_scene(rng)
        for qa in sq.questions(scene, rng, "seen", 16):
            _oracle(scene, qa)
            assert qa.answer in sq.ANSWERS
            seen[qa.family] += 1
    assert set(seen) == set(sq.FAMILIES), seen  # every family was asked and checked


def test_object_to_the_left_is_left_and_turning_around_flips_it():
    # Agent facing +x (yaw 0): a cone at +y is on its left, in front, and below its 1 m height.
    cone = obj("cone", "cone", "red", (3.0, 2.0, 0.2))
    s = scene_of([cone])
    answers = {form(qa): qa.answer for qa in ask(s, "agent_direction")}
    assert answers == {"lr": "left", "fb": "ahead", "ud": "below"}
    # The same world, agent facing -x (yaw 180): the cone is now on its right and behind it.
    flipped = {form(qa): qa.answer for qa in ask(sq.move_agent(s, 0.0, 0.0, 180.0), "agent_direction",
                                                 visible_only=False)}
    assert flipped == {"lr": "right", "fb": "behind", "ud": "below"}
    # Facing +y (yaw 90): the cone at (3, 2) is ahead and to the right.
    north = Scene("generic", (cone,), s.agent_position, math.pi / 2, s.camera_position, s.camera_rotation, s.extras)
    assert {form(qa): qa.answer for qa in ask(north, "agent_direction")}["lr"] == "right"
    # Moving 4 m forward puts it behind.
    assert sq.agent_directions(sq.move_agent(s, 4.0, 0.0, 0.0).in_agent_frame(cone.position), cone.size)["fb"] == "behind"


def test_camera_frame_is_the_image_frame():
    # Camera at (-1, 0, 1.5) looking along +x: world +y is the image's left, higher z is the image's top.
    high_left = scene_of([obj("a", "box", "red", (4.0, 2.0, 3.0))])
    low_right = scene_of([obj("b", "cone", "blue", (4.0, -2.0, 0.2))])
    assert {form(qa): qa.answer for qa in ask(high_left, "camera_direction")} == {"lr": "left", "ud": "above"}
    assert {form(qa): qa.answer for qa in ask(low_right, "camera_direction")} == {"lr": "right", "ud": "below"}


def test_held_out_templates_never_in_seen_draws_and_back():
    rng = np.random.default_rng(1)
    used = {"seen": set(), "held_out": set()}
    for _ in range(200):
        scene = random_scene(rng)
        for split in sq.SPLITS:
            for qa in sq.questions(scene, rng, split, 16):
                assert sq.TEMPLATES[qa.family][qa.template].held_out == (split == "held_out"), qa
                used[split].add((qa.family, qa.template))
    assert not used["seen"] & used["held_out"]
    for family, templates in sq.TEMPLATES.items():
        held = [t.held_out for t in templates]
        assert held == sorted(held) and any(held) and not all(held), family  # the last templates are held out
        texts = {split: {t.text for t in templates if t.held_out == (split == "held_out")} for split in sq.SPLITS}
        assert not texts["seen"] & texts["held_out"]
    every = {(f, i) for f, ts in sq.TEMPLATES.items() for i, t in enumerate(ts)}
    assert used["seen"] | used["held_out"] == every  # each wording is reachable in its split


def test_answers_closed_vocabulary():
    assert len(set(sq.ANSWERS)) == len(sq.ANSWERS)
    for word in (*COLOURS, *SHAPES, "left", "behind", "yes", "0", "6", "<1m", ">4m", "kettle", "light switch"):
        assert word in sq.ANSWERS
    kitchen = scene_of([obj("k", "kettle", "", (3, 1, 1)), obj("t", "top_burner", "", (3, -1, 0.9)),
                        obj("b", "bottom_burner", "", (3.5, -1.2, 0.5)), obj("l", "light_switch", "", (4, 0.5, 1.6))],
                       agent=(0, 0, 1.2))
    qas = sq.questions(kitchen, np.random.default_rng(0), "seen", 100)
    assert qas and all(qa.answer in sq.ANSWERS for qa in qas)
    assert sq.answer_word(kitchen.object("t")) == "burner" and "burner" in {qa.answer for qa in qas}
    assert not any(qa.answer in COLOURS for qa in qas)  # appliances have no colour to ask about


def test_ambiguous_descriptions_are_never_used():
    twins = [obj("r1", "box", "red", (3, 1.5, 0.3)), obj("r2", "box", "red", (4, -1.5, 0.3)),
             obj("c", "cone", "blue", (3.5, 0.0, 2.0))]
    s = scene_of(twins)
    assert sq.descriptions(s, s.object("r1")) == [] and set(sq.descriptions(s, s.object("c"))) == {
        "cone", "blue object", "blue cone"}
    qas = sq.questions(s, np.random.default_rng(0), "seen", 200)
    named = [qa for qa in qas if {"a", "b"} & set(_parse(qa))]
    assert named
    for qa in named:  # every object named is the cone, the only one with a unique description
        assert {_resolve(s, d).name for k, d in _parse(qa).items() if k in "ab"} == {"c"}, qa
    # A second cone of another colour makes "cone" ambiguous but "blue cone" still unique.
    s2 = scene_of([*twins, obj("c2", "cone", "green", (2.0, 2.0, 0.3))])
    assert set(sq.descriptions(s2, s2.object("c"))) == {"blue object", "blue cone"}


def test_margins_skip_near_boundary_geometry():
    # 5 degrees off straight ahead: no left/right question; 20 degrees: asked.
    near = obj("n", "sphere", "red", (4 * math.cos(math.radians(5)), 4 * math.sin(math.radians(5)), 1.0), 0.1)
    far = obj("f", "cone", "blue", (4 * math.cos(math.radians(20)), -4 * math.sin(math.radians(20)), 1.0), 0.1)
    qas = ask(scene_of([near, far]), "agent_direction")
    lr = {qa.question for qa in qas if form(qa) == "lr"}
    assert lr and all("cone" in q or "blue" in q for q in lr)
    # Level with the agent: no above/below question about either.
    assert not [qa for qa in qas if form(qa) == "ud"]
    # Distances 1.05 m (within 10 % of the 1 m edge) and 1.5 m (clear).
    a = obj("a", "box", "red", (1.05, 0.0, 1.0), 0.05)
    b = obj("b", "pillar", "green", (0.0, 1.5, 1.0), 0.05)
    qas = ask(scene_of([a, b], camera=(-3.0, 0.0, 1.0), target=(0, 0, 1)), "distance")
    assert [(qa.answer, "pillar" in qa.question or "green" in qa.question) for qa in qas] == [("1-2m", True)]
    # Two objects at almost the same distance: no nearest/farthest question of all objects.
    tie = scene_of([obj("a", "box", "red", (4.0, 1.0, 1.0)), obj("b", "cone", "blue", (4.05, -1.0, 1.0))])
    assert not [qa for qa in ask(tie, "nearest") if form(qa) in ("colour", "shape")]
    # Heights 0.1 m apart: no above/below between them.
    flat = scene_of([obj("a", "box", "red", (4.0, 1.0, 1.0), 0.05), obj("b", "cone", "blue", (4.0, -1.0, 1.1), 0.05)])
    assert not ask(flat, "relation")


def test_out_of_view_objects_are_not_named_and_edge_objects_block_counts():
    inside = obj("i", "box", "red", (4.0, 0.5, 1.2))
    behind = obj("b", "cone", "blue", (-4.0, 0.0, 1.2))  # behind the camera
    s = scene_of([inside, behind])
    assert sq.view_status(s, inside) == "in" and sq.view_status(s, behind) == "out"
    for qa in sq.questions(s, np.random.default_rng(0), "seen", 200):
        assert all(_resolve(s, d) is inside for k, d in _parse(qa).items() if k in "ab"), qa
        _oracle(s, qa)
    blue = [qa.answer for qa in ask(s, "count") if _parse(qa).get("colour") == "blue"]
    assert blue == ["0"]  # counting is of what the camera shows
    # An object whose pixels are too few is "at the edge": counting its colour is not asked.
    edge = scene_of([inside, obj("e", "cone", "blue", (4.0, -0.5, 1.2))], visible_pixels={"i": 40, "e": 1})
    assert sq.view_status(edge, edge.object("e")) == "edge"
    asked = {qa.question for qa in ask(edge, "count", n=300)}
    assert not [q for q in asked if "blue" in q or "cones" in q or q.startswith(("How many objects", "Count the objects"))]
    # Occluded (no pixels) is out of view even inside the frustum.
    hidden = scene_of([inside], visible_pixels={"i": 0})
    assert sq.view_status(hidden, inside) == "out"


def test_answer_counts_balance_answers_across_scenes():
    rng = np.random.default_rng(2)
    plain, balanced = Counter(), Counter()
    counts = Counter()
    for _ in range(200):
        scene = random_scene(rng)
        plain.update(qa.answer for qa in sq.questions(scene, rng, n=8, families=("count",)))
        balanced.update(qa.answer for qa in sq.questions(scene, rng, n=8, families=("count",), answer_counts=counts))
    assert balanced["0"] < plain["0"] and balanced["3"] > plain["3"]
    assert sum(counts.values()) == sum(balanced.values())


def test_questions_are_deterministic_and_validate_arguments():
    scene = random_scene(np.random.default_rng(3))
    assert sq.questions(scene, np.random.default_rng(5)) == sq.questions(scene, np.random.default_rng(5))
    with pytest.raises(ValueError, match="split"):
        sq.questions(scene, np.random.default_rng(0), split="test")
    with pytest.raises(ValueError, match="unknown families"):
        sq.questions(scene, np.random.default_rng(0), families=("colour_of_sky",))


# ------------------------------------------------------------------------------------------- the arena

def test_generic_sampler_images_match_its_scene():
    sampler = GenericSceneSampler(width=32, height=32, seed=0)
    obs, scene = sampler.sample(np.random.default_rng(0))
    assert obs["image"].shape == (32, 32, 3) and obs["image"].dtype == np.uint8
    assert obs["depth"].shape == (32, 32) and obs["state"].shape == (7,) and np.isfinite(obs["state"]).all()
    assert scene.embodiment == "generic" and 3 <= len(scene.objects) <= 8
    np.testing.assert_allclose(obs["state"][:3], scene.in_camera_frame(scene.agent_position), atol=1e-5)
    # The same generator state gives the same arena.
    obs2, scene2 = sampler.sample(np.random.default_rng(0))
    np.testing.assert_array_equal(obs["image"], obs2["image"])
    # Every object reported visible is where the camera frame says, within the image.
    pixels = scene.extras["visible_pixels"]
    for o in scene.objects:
        if sq.view_status(scene, o) == "in":
            assert pixels[o.name] >= sq.MIN_PIXELS
            c = scene.in_camera_frame(o.position)
            assert c[2] < 0
    for qa in sq.questions(scene, np.random.default_rng(1), n=16):
        _oracle(scene, qa)


# -------------------------------------------------------------------------------------------- datasets

class FakeSource:
    """A fast source with another embodiment, a 3-long state and no depth (exercises padding)."""

    name = "fake"

    def sample(self, rng):
        scene = random_scene(rng)
        scene = Scene("fake", scene.objects, scene.agent_position, scene.agent_yaw, scene.camera_position,
                      scene.camera_rotation, scene.extras)
        return {"image": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), "depth": None,
                "state": rng.normal(size=3)}, scene


@pytest.fixture
def sources():
    return [GenericSceneSampler(seed=0), FakeSource()]


def _single_line_error(excinfo, *needles):
    message = str(excinfo.value)
    assert "\n" not in message and len(message) < 400, message
    for needle in needles:
        assert needle in message, (needle, message)


def test_dataset_round_trips(tmp_path, sources):
    out = tmp_path / "qa"
    summary = collect_qa(sources, out, samples=10, seed=3, questions_per_scene=6, shard_size=4)
    assert summary["written"] == 3 and summary["scenes"] == 10 and summary["scenes_per_s"] > 0
    ds = load_qa(out)
    assert ds.image.shape == (10, 32, 32, 3) and ds.state.shape == (10, 7)
    assert ds.state_dim.tolist() == [7, 3] * 5 and (ds.state[1::2, 3:] == 0).all()
    assert ds.has_depth.tolist() == [True, False] * 5 and list(ds.embodiment[:2]) == ["generic", "fake"]
    assert ds.sample.tolist() == list(range(10)) and len(ds) == summary["questions"] > 0
    assert all(ds.vocabulary[a] in sq.ANSWERS for a in ds.answer) and ds.scene.max() < 10
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["counts"]["questions"] == len(ds) and manifest["vocabulary"] == list(sq.ANSWERS)
    assert manifest["generator_version"] == sq.GENERATOR_VERSION and len(manifest["shards"]) == 3
    assert all(not sq.TEMPLATES[f][t].held_out for f, t in zip(ds.family, ds.template))
    # Scene 0 is sample 0 of the first source with the generator [seed, 0], which then draws its questions.
    rng = np.random.default_rng([3, 0])
    obs0, scene0 = sources[0].sample(rng)
    expected = sq.questions(scene0, rng, "seen", 6, answer_counts=Counter())
    np.testing.assert_array_equal(ds.image[0], obs0["image"])
    assert ds.question[ds.scene == 0].tolist() == [qa.question for qa in expected]
    assert [ds.vocabulary[a] for a in ds.answer[ds.scene == 0]] == [qa.answer for qa in expected]
    # Another configuration in the same directory is refused.
    with pytest.raises(DatasetError, match="another config") as e:
        collect_qa(sources, out, samples=12, seed=3, questions_per_scene=6, shard_size=4)
    _single_line_error(e, str(out))


def test_rerun_resumes_after_deleted_or_corrupted_shard(tmp_path, sources):
    out = tmp_path / "qa"
    collect_qa(sources, out, samples=10, seed=3, questions_per_scene=6, shard_size=4)
    before = load_qa(out)
    again = collect_qa(sources, out, samples=10, seed=3, questions_per_scene=6, shard_size=4)
    assert again["written"] == 0 and again["skipped"] == 3

    (out / SHARDS / "00001.npz").unlink()
    with pytest.raises(DatasetError) as e:
        load_qa(out)
    _single_line_error(e, "00001.npz", "missing")
    resumed = collect_qa(sources, out, samples=10, seed=3, questions_per_scene=6, shard_size=4)
    assert (resumed["written"], resumed["skipped"], resumed["recollected"]) == (1, 2, 1)
    after = load_qa(out)
    for key in ("image", "depth", "state", "question", "answer", "template", "scene"):
        np.testing.assert_array_equal(getattr(before, key), getattr(after, key))

    shard = out / SHARDS / "00002.npz"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DatasetError) as e:
        load_qa(out)
    _single_line_error(e, "00002.npz", "sha256")
    resumed = collect_qa(sources, out, samples=10, seed=3, questions_per_scene=6, shard_size=4)
    assert (resumed["written"], resumed["recollected"]) == (1, 1)
    np.testing.assert_array_equal(load_qa(out).answer, before.answer)


def test_interrupted_collection_is_reported_then_finished(tmp_path):
    class Failing:
        name = "flaky"

        def __init__(self):
            self.calls = 0

        def sample(self, rng):
            self.calls += 1
            if self.calls == 5:
                raise RuntimeError("simulated crash")
            return FakeSource().sample(rng)

    out = tmp_path / "qa"
    with pytest.raises(RuntimeError):
        collect_qa([Failing()], out, samples=8, seed=0, shard_size=4)
    assert not [p for p in (out / SHARDS).iterdir() if p.name.startswith(".")]  # no temporary left behind
    with pytest.raises(DatasetError) as e:
        load_qa(out)
    _single_line_error(e, "00001.npz", "never written")
    assert collect_qa([Failing()], out, samples=8, seed=0, shard_size=4)["skipped"] == 1
    assert len(load_qa(out).image) == 8


def test_damaged_content_gives_one_line_errors(tmp_path):
    out = tmp_path / "qa"
    collect_qa([FakeSource()], out, samples=4, seed=0, shard_size=2)
    manifest = json.loads((out / MANIFEST).read_text())

    def rewrite_shard(name, **changes):
        import hashlib

        path = out / SHARDS / name
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        arrays.update(changes)
        np.savez_compressed(path, **arrays)
        manifest["shards"][name]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        (out / MANIFEST).write_text(json.dumps(manifest))
        return arrays

    with np.load(out / SHARDS / "00000.npz") as z:
        state = z["state"].copy()
    state[1, 0] = np.nan
    rewrite_shard("00000.npz", state=state)
    with pytest.raises(DatasetError) as e:
        load_qa(out)
    _single_line_error(e, "00000.npz", "NaN", "scene 1")

    state[1, 0] = 0.0
    with np.load(out / SHARDS / "00000.npz") as z:
        answer = z["answer"].copy()
    answer[0] = len(sq.ANSWERS) + 3
    rewrite_shard("00000.npz", state=state, answer=answer)
    with pytest.raises(DatasetError) as e:
        load_qa(out)
    _single_line_error(e, "00000.npz", "answer")

    (out / SHARDS / "00000.npz").write_bytes(b"PK\x03\x04 not a zip")
    manifest["shards"]["00000.npz"]["sha256"] = __import__("hashlib").sha256(b"PK\x03\x04 not a zip").hexdigest()
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DatasetError) as e:
        load_qa(out)
    _single_line_error(e, "00000.npz", "unreadable")

    manifest["vocabulary"] = [*sq.ANSWERS[:-1], "teapot"]
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DatasetError) as e:
        load_qa(out)
    _single_line_error(e, "vocabulary")

    (out / MANIFEST).write_text("{not json")
    with pytest.raises(DatasetError) as e:
        load_qa(out)
    _single_line_error(e, MANIFEST)
    with pytest.raises(DatasetError) as e:
        load_qa(tmp_path / "nowhere")
    _single_line_error(e, "nowhere")


def test_held_out_dataset_uses_only_held_out_templates(tmp_path):
    out = tmp_path / "held"
    collect_qa([FakeSource()], out, samples=6, seed=9, split="held_out", shard_size=6)
    ds = load_qa(out)
    assert len(ds) and all(sq.TEMPLATES[f][t].held_out for f, t in zip(ds.family, ds.template))


def test_env_source_adapts_any_env_with_a_scene():
    import gymnasium as gym

    class SceneEnv(gym.Env):
        observation_space = gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (8, 8, 3), np.uint8),
                                             "pose": gym.spaces.Box(-10, 10, (4,), np.float32)})
        action_space = gym.spaces.Box(-1, 1, (2,), np.float32)

        def reset(self, seed=None, options=None):
            super().reset(seed=seed)
            self.x = float(self.np_random.uniform(-1, 1))
            return self._obs(), {}

        def step(self, action):
            self.x += float(action[0])
            return self._obs(), 0.0, False, False, {}

        def _obs(self):
            return {"image": np.full((8, 8, 3), 100, np.uint8), "pose": np.array([self.x, 0, 0, 0], np.float32)}

        def scene(self):
            return scene_of([obj("a", "box", "red", (4, 1, 1))], agent=(self.x, 0, 1))

    if "test/SceneEnv-v0" not in gym.registry:
        gym.register("test/SceneEnv-v0", entry_point=SceneEnv)
    source = EnvSource("test/SceneEnv-v0", keys={"state": "pose", "depth": None}, warmup_steps=2)
    obs, scene = source.sample(np.random.default_rng(0))
    obs2, _ = source.sample(np.random.default_rng(0))
    assert obs["depth"] is None and obs["state"].shape == (4,) and scene.embodiment == "generic"
    np.testing.assert_array_equal(obs["state"], obs2["state"])  # the sample's generator seeds reset and warm-up
    assert obs["state"][0] == pytest.approx(scene.agent_position[0])
    bad = EnvSource("test/SceneEnv-v0")
    with pytest.raises(DatasetError, match="no 'depth' for depth"):
        bad.sample(np.random.default_rng(0))
    source.close()
    bad.close()
