"""The policy bundle (policies/bundle.py): policy.json + policy.safetensors, hashed, validated on load."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import policies.bundle as bundle_module
from policies.bundle import META_FILE, WEIGHTS_FILE, BundleError, read_bundle, read_meta, save_bundle
from policies.mlp import MLPActor, MLPConfig
from policies.ncap import NCAP, NCAPConfig
from policies.protocol import EnvInterface, PolicyError, PolicyMeta
from policies.registry import load_policy
from policies.vector_policy import VectorPolicy

ENV = {"name": "swimmer", "id": "embodied/Swimmer-v0", "task": "swim", "n_links": 6,
       "fluid_density": 3000.0, "fluid_viscosity": 0.0}


def meta_for(kind: str, config: dict, **kw) -> PolicyMeta:
    return PolicyMeta(kind=kind, config=config, env=dict(ENV), observation={"shape": [24], "dtype": "float64"},
                      action_low=[-1.0] * 5, action_high=[1.0] * 5, control_dt=0.03, **kw)


def ncap_policy(**kw) -> VectorPolicy:
    cfg = NCAPConfig(joint_slice=(0, 5), time_index=23, **kw)
    actor = NCAP(cfg)
    with torch.no_grad():
        for name, v in zip(("bneuron_osc", "bneuron_prop", "muscle_ipsi", "muscle_contra"), (0.8, 1.4, 0.9, -0.3)):
            p = getattr(actor, name)
            p.copy_(v + 0.05 * torch.arange(p.numel(), dtype=torch.float32).reshape(p.shape))
    return VectorPolicy(actor, meta_for("ncap", cfg.to_dict(), steps=123))


def mlp_policy() -> VectorPolicy:
    torch.manual_seed(0)
    cfg = MLPConfig(obs_dim=24, action_dim=5, hidden=[16, 16])
    actor = MLPActor(cfg)
    with torch.no_grad():  # a last layer large enough that clipping to the bounds matters
        actor.net[-1].weight.normal_(0, 2.0)
    rng = np.random.default_rng(0)
    mean = torch.tensor(rng.normal(size=24), dtype=torch.float32)
    var = torch.tensor(rng.uniform(0.5, 2.0, size=24), dtype=torch.float32)
    return VectorPolicy(actor, meta_for("mlp", cfg.to_dict(), normalization={"clip": 10.0}, steps=2048), mean, var)


def save(directory: Path, policy: VectorPolicy) -> Path:
    return save_bundle(directory, policy.meta, policy.tensors())


def sample_obs(n=64, seed=0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, 24)) * 0.8
    obs[:, -1] = rng.integers(0, 1000, size=n) / 1000
    return torch.tensor(obs, dtype=torch.float32)


def swimmer(n_links: int = 6) -> EnvInterface:
    env = gym.make("embodied/Swimmer-v0", n_links=n_links)
    try:
        return EnvInterface.of(env)
    finally:
        env.close()


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [{}, {"weight_sharing": False}, {"learn_period": True}])
def test_ncap_round_trip_identical_outputs(tmp_path, kw):
    policy = ncap_policy(**kw)
    save(tmp_path, policy)
    assert sorted(p.name for p in tmp_path.iterdir()) == [META_FILE, WEIGHTS_FILE]
    loaded = load_policy(tmp_path, swimmer())
    assert isinstance(loaded, VectorPolicy) and not loaded.normalizes
    assert isinstance(loaded.actor, NCAP)
    obs = sample_obs()
    torch.testing.assert_close(loaded(obs), policy(obs), rtol=0, atol=0)
    for name, p in policy.actor.state_dict().items():
        torch.testing.assert_close(loaded.actor.state_dict()[name], p, rtol=0, atol=0)
    assert loaded.meta == read_meta(tmp_path)
    assert loaded.meta.steps == 123 and loaded.meta.env == ENV and loaded.meta.control_dt == 0.03
    assert not loaded.actor.training


def test_mlp_round_trip_with_observation_normalisation(tmp_path):
    policy = mlp_policy()
    save(tmp_path, policy)
    loaded = load_policy(tmp_path, swimmer())
    assert loaded.normalizes
    torch.testing.assert_close(loaded.obs_mean, policy.obs_mean)
    torch.testing.assert_close(loaded.obs_var, policy.obs_var)
    obs = sample_obs() * 20  # some entries normalise beyond the clip
    expected = policy.actor(((obs - policy.obs_mean) / torch.sqrt(policy.obs_var + 1e-8)).clamp(-10, 10)).clamp(-1, 1)
    torch.testing.assert_close(loaded(obs), expected.detach())
    assert (policy.actor(obs).abs() > 1).any(), "the test should exercise the action clip"
    act = loaded.act(obs[0].numpy().astype(np.float64))
    assert isinstance(act, np.ndarray) and act.shape == (5,)
    np.testing.assert_allclose(act, expected[0].detach().numpy(), rtol=1e-6, atol=1e-6)
    batch = loaded.batched(3).act({0: obs[0].numpy(), 2: obs[1].numpy()})
    np.testing.assert_allclose(batch[2], expected[1].detach().numpy(), rtol=1e-6, atol=1e-6)


def test_bundle_is_plain_safetensors_and_json_with_the_weights_hash(tmp_path):
    from safetensors.torch import load_file

    save(tmp_path, mlp_policy())
    tensors = load_file(str(tmp_path / WEIGHTS_FILE))
    assert {"obs_mean", "obs_var"} <= set(tensors)
    assert all(k.startswith("actor.") for k in set(tensors) - {"obs_mean", "obs_var"})
    data = json.loads((tmp_path / META_FILE).read_text())
    assert data["format"] == "embodied-policy" and data["version"] == 2 and data["kind"] == "mlp"
    assert data["weights"]["sha256"] == bundle_module.file_sha256(tmp_path / WEIGHTS_FILE)
    assert data["observation"] == {"shape": [24], "dtype": "float64"} and data["control_dt"] == 0.03


# --- NCAP retargeting -----------------------------------------------------------------------


@pytest.mark.parametrize("n_links", [3, 10, 15])
def test_ncap_retargets_to_other_body_lengths(tmp_path, n_links):
    policy = ncap_policy()
    save(tmp_path, policy)
    env = swimmer(n_links)
    loaded = load_policy(tmp_path, env)
    n_joints = n_links - 1
    assert loaded.actor.config.n_joints == n_joints
    assert loaded.actor.config.joint_limit == pytest.approx(2 * math.pi / n_links)
    assert loaded.actor.config.time_index == env.layout["time"]
    assert loaded.low.shape == (n_joints,) and loaded.meta.obs_dim == env.obs_dim
    for name, p in policy.actor.state_dict().items():
        torch.testing.assert_close(loaded.actor.state_dict()[name], p)
    obs = torch.zeros(env.obs_dim)
    obs[0] = 0.5 * 2 * math.pi / n_links
    out = loaded(obs)
    assert out.shape == (n_joints,)
    ref = policy.actor(torch.cat([torch.tensor([0.5 * 2 * math.pi / 6]), torch.zeros(23)]))
    torch.testing.assert_close(out[:2], ref[:2])  # same circuit, same weights, same normalised bend


def test_unshared_ncap_refuses_other_lengths(tmp_path):
    save(tmp_path, ncap_policy(weight_sharing=False))
    with pytest.raises(PolicyError, match="unshared"):
        load_policy(tmp_path, swimmer(10))


def test_mlp_refuses_other_sizes(tmp_path):
    save(tmp_path, mlp_policy())
    with pytest.raises(PolicyError, match=r"shape \[24\].*\[32\]"):
        load_policy(tmp_path, swimmer(8))
    env = swimmer()
    with pytest.raises(PolicyError, match="actions"):
        load_policy(tmp_path, EnvInterface(env.observation, [-1.0] * 7, [1.0] * 7))


# --- atomic writes --------------------------------------------------------------------------


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def test_no_temporary_files_left(tmp_path):
    for _ in range(3):
        save(tmp_path, ncap_policy())
    assert sorted(p.name for p in tmp_path.iterdir()) == [META_FILE, WEIGHTS_FILE]


def test_failing_weights_write_keeps_previous_file(tmp_path, monkeypatch):
    policy = ncap_policy()
    save(tmp_path, policy)
    before = _snapshot(tmp_path)

    def broken_save_file(tensors, path, metadata=None):
        Path(path).write_bytes(b"half a file")  # a crash (or a full disk) mid-write
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bundle_module, "save_file", broken_save_file)
    with torch.no_grad():
        policy.actor.bneuron_osc.fill_(0.1)
    with pytest.raises(OSError, match="No space"):
        save(tmp_path, policy)
    assert _snapshot(tmp_path) == before  # unchanged, and no *.tmp left behind
    monkeypatch.undo()
    assert load_policy(tmp_path).actor.bneuron_osc.item() == pytest.approx(0.8)


def test_failing_meta_write_keeps_previous_file(tmp_path, monkeypatch):
    policy = ncap_policy()
    save(tmp_path, policy)
    old_meta = (tmp_path / META_FILE).read_bytes()
    real_write_text = Path.write_text

    def broken_write_text(self, text, *a, **k):
        real_write_text(self, text[:10], *a, **k)
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", broken_write_text)
    policy.meta.steps = 999
    with pytest.raises(OSError):
        save(tmp_path, policy)
    monkeypatch.undo()
    assert (tmp_path / META_FILE).read_bytes() == old_meta
    assert sorted(p.name for p in tmp_path.iterdir()) == [META_FILE, WEIGHTS_FILE]
    assert read_meta(tmp_path).steps == 123


def test_policy_files_get_normal_permissions(tmp_path):
    """Atomic writes must not make the files private (mkstemp creates 0600): a deployed policy is
    read by other users and processes, so it gets the mode of any file this process creates."""
    save(tmp_path, ncap_policy())
    reference = tmp_path / "reference"
    reference.write_text("x")
    expected = stat.S_IMODE(reference.stat().st_mode)
    for name in (WEIGHTS_FILE, META_FILE):
        mode = stat.S_IMODE(os.stat(tmp_path / name).st_mode)
        assert mode == expected, f"{name} has mode {oct(mode)}, expected {oct(expected)}"


# --- one line naming the file and the field for every defect --------------------------------


def _rewrite_meta(directory: Path, **changes) -> None:
    data = json.loads((directory / META_FILE).read_text())
    data.update(changes)
    (directory / META_FILE).write_text(json.dumps(data))


def _rewrite_weights(directory: Path, tensors: dict, rehash: bool = True) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(directory / WEIGHTS_FILE))
    if rehash:
        _rewrite_meta(directory, weights={"file": WEIGHTS_FILE,
                                          "sha256": bundle_module.file_sha256(directory / WEIGHTS_FILE)})


def one_line_error(directory: Path, *needles: str, error=PolicyError) -> str:
    with pytest.raises(error) as info:
        load_policy(directory)
    text = str(info.value)
    assert "\n" not in text and len(text) < 300, text
    for needle in needles:
        assert needle in text, (needle, text)
    return text


@pytest.fixture
def saved_ncap(tmp_path) -> Path:
    return save(tmp_path / "ncap", ncap_policy())


@pytest.fixture
def saved_mlp(tmp_path) -> Path:
    return save(tmp_path / "mlp", mlp_policy())


def test_version_mismatch(saved_ncap):
    _rewrite_meta(saved_ncap, version=7)
    one_line_error(saved_ncap, META_FILE, "version 7")


def test_format_mismatch(saved_ncap):
    _rewrite_meta(saved_ncap, format="something-else")
    one_line_error(saved_ncap, META_FILE, "something-else")


def test_json_not_an_object(saved_ncap):
    (saved_ncap / META_FILE).write_text("[1, 2, 3]")
    one_line_error(saved_ncap, META_FILE, "not a JSON object")


def test_garbled_json(saved_ncap):
    (saved_ncap / META_FILE).write_bytes(b'{"format": "embodied-policy", "ver\x00\xff')
    one_line_error(saved_ncap, META_FILE, "JSON")


def test_unknown_kind(saved_ncap):
    _rewrite_meta(saved_ncap, kind="transformer")
    one_line_error(saved_ncap, "transformer")


def test_unexpected_and_missing_fields(saved_ncap):
    _rewrite_meta(saved_ncap, colour="blue")
    one_line_error(saved_ncap, META_FILE, "unexpected", "colour")
    data = json.loads((saved_ncap / META_FILE).read_text())
    del data["colour"], data["action_low"]
    (saved_ncap / META_FILE).write_text(json.dumps(data))
    one_line_error(saved_ncap, META_FILE, "missing", "action_low")


def test_missing_files(saved_ncap):
    (saved_ncap / WEIGHTS_FILE).unlink()
    one_line_error(saved_ncap, WEIGHTS_FILE)
    (saved_ncap / META_FILE).unlink()
    one_line_error(saved_ncap, META_FILE)


@pytest.mark.parametrize("damage", ["truncate", "empty", "garble_header", "flip_a_weight"])
def test_changed_weights_fail_the_hash(saved_ncap, damage):
    path = saved_ncap / WEIGHTS_FILE
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(data[: len(data) - 10])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "garble_header":
        path.write_bytes(data[:8] + b"\xff" * 16 + data[24:])
    else:  # the sign bit of the last float32: the file stays a valid safetensors file
        data[-1] ^= 0x80
        path.write_bytes(bytes(data))
        assert torch.isfinite(bundle_module.load_file(str(path))["actor.muscle_contra"]).all()
    one_line_error(saved_ncap, WEIGHTS_FILE, "sha256")


def test_a_version_2_bundle_without_its_hash_is_refused(saved_ncap):
    """Stripping the hash must not be a way round it."""
    data = json.loads((saved_ncap / META_FILE).read_text())
    data["weights"]["sha256"] = None
    (saved_ncap / META_FILE).write_text(json.dumps(data))
    one_line_error(saved_ncap, META_FILE, "weights.sha256")
    del data["weights"]
    (saved_ncap / META_FILE).write_text(json.dumps(data))
    one_line_error(saved_ncap, META_FILE, "weights.sha256")


@pytest.mark.parametrize("change, needle", [({"constant_init": "$"}, "constant_init must be true or false"),
                                            ("drop oscillator_sharpness", "config lacks oscillator_sharpness")])
def test_config_values_are_typed_and_complete(saved_ncap, change, needle):
    data = json.loads((saved_ncap / META_FILE).read_text())
    if isinstance(change, dict):
        data["config"].update(change)
    else:
        del data["config"]["oscillator_sharpness"]
    (saved_ncap / META_FILE).write_text(json.dumps(data))
    one_line_error(saved_ncap, META_FILE, needle)


def test_nan_weights(saved_ncap):
    tensors = bundle_module.load_file(str(saved_ncap / WEIGHTS_FILE))
    tensors["actor.bneuron_osc"][0] = float("nan")
    _rewrite_weights(saved_ncap, tensors)
    one_line_error(saved_ncap, WEIGHTS_FILE, "actor.bneuron_osc", "NaN")


def test_inverted_action_bounds(saved_ncap):
    _rewrite_meta(saved_ncap, action_low=[-1, -1, 1, -1, -1], action_high=[1, 1, -1, 1, 1])
    one_line_error(saved_ncap, META_FILE, "action_low[2] > action_high[2]")


@pytest.mark.parametrize("field, value, needle", [
    ("action_high", [1, 1, float("inf"), 1, 1], "action_high[2]"),
    ("action_high", [1, 1, 1], "action_high has 3 values"),
    ("control_dt", -0.03, "control_dt"),
    ("normalization", {"clip": 0}, "normalization.clip"),
    ("action_std", [0.1, 0.1, -0.1, 0.1, 0.1], "action_std[2]"),
    ("observation", {"shape": [-24]}, "observation.shape"),
    ("env", {"name": "swimmer"}, "env.id"),
    ("steps", -5, "steps"),
])
def test_bad_values_in_policy_json(saved_ncap, field, value, needle):
    _rewrite_meta(saved_ncap, **{field: value})
    one_line_error(saved_ncap, META_FILE, needle)


def test_missing_and_bad_observation_statistics(saved_mlp):
    tensors = bundle_module.load_file(str(saved_mlp / WEIGHTS_FILE))
    _rewrite_weights(saved_mlp, {k: v for k, v in tensors.items() if k != "obs_var"})
    one_line_error(saved_mlp, WEIGHTS_FILE, "obs_var missing", "normalised")
    _rewrite_weights(saved_mlp, {**tensors, "obs_var": -tensors["obs_var"]})
    one_line_error(saved_mlp, WEIGHTS_FILE, "negative")
    _rewrite_weights(saved_mlp, {**tensors, "obs_mean": tensors["obs_mean"][:20]})
    one_line_error(saved_mlp, WEIGHTS_FILE, "obs_mean", "24")
    _rewrite_weights(saved_mlp, tensors)
    _rewrite_meta(saved_mlp, normalization=None)
    one_line_error(saved_mlp, WEIGHTS_FILE, "normalization is null")


def test_an_oversized_config_is_refused_before_allocating(saved_mlp):
    config = json.loads((saved_mlp / META_FILE).read_text())["config"]
    _rewrite_meta(saved_mlp, config={**config, "hidden": [60_000, 60_000, 60_000]})
    one_line_error(saved_mlp, META_FILE, "parameters")


def test_weights_not_matching_config(saved_ncap):
    cfg = json.loads((saved_ncap / META_FILE).read_text())["config"]
    _rewrite_meta(saved_ncap, config={**cfg, "weight_sharing": False})
    one_line_error(saved_ncap, WEIGHTS_FILE, "shape")


@pytest.mark.parametrize("config_change", [{"oscillator_period": 0}, {"task_control": "telepathy"}])
def test_bad_ncap_config_values(saved_ncap, config_change):
    cfg = json.loads((saved_ncap / META_FILE).read_text())["config"]
    _rewrite_meta(saved_ncap, config={**cfg, **config_change})
    one_line_error(saved_ncap, META_FILE, "config")


def test_kind_changed_to_another_actor(saved_mlp, saved_ncap):
    _rewrite_meta(saved_mlp, kind="ncap")
    one_line_error(saved_mlp, "ncap")
    _rewrite_meta(saved_ncap, kind="mlp")
    one_line_error(saved_ncap, "mlp")


# --- version 1 (the flat format of earlier releases) -----------------------------------------


def test_a_version_1_bundle_still_loads(tmp_path):
    """A bundle as the previous release wrote it: no hash, actor_config / obs_dim / obs_clip fields."""
    policy = mlp_policy()
    from safetensors.torch import save_file

    tmp_path.mkdir(exist_ok=True)
    save_file(policy.tensors(), str(tmp_path / WEIGHTS_FILE), metadata={"format": "embodied-policy"})
    (tmp_path / META_FILE).write_text(json.dumps({
        "format": "embodied-policy", "version": 1, "kind": "mlp", "actor_config": policy.meta.config, "obs_dim": 24,
        "action_low": [-1.0] * 5, "action_high": [1.0] * 5, "env": ENV, "obs_clip": 10.0, "steps": 2048,
        "action_std": [0.5] * 5}))
    loaded = load_policy(tmp_path, swimmer())
    assert loaded.normalizes and loaded.meta.normalization == {"clip": 10.0} and loaded.meta.action_std == [0.5] * 5
    obs = sample_obs()
    torch.testing.assert_close(loaded(obs), policy(obs))
    assert read_bundle(tmp_path).meta.kind == "mlp"
    (tmp_path / META_FILE).write_text(json.dumps({"format": "embodied-policy", "version": 1, "kind": "mlp"}))
    one_line_error(tmp_path, META_FILE, "missing", error=BundleError)
