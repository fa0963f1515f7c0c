"""Deployable policy files (policies/checkpoint.py): policy.safetensors + policy.json."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

import policies.checkpoint as ckpt
from envs.swimmer.env import swimmer_layout
from policies.checkpoint import (
    META_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    InferencePolicy,
    PolicyMeta,
    load_policy,
    read_meta,
    save_policy,
)
from policies.mlp import MLPActor, MLPConfig
from policies.ncap import NCAP, NCAPConfig

ENV = {"name": "swimmer", "id": "embodied/Swimmer-v0", "task": "swim", "n_links": 6,
       "fluid_density": 3000.0, "fluid_viscosity": 0.0}


def ncap_policy(**kw) -> tuple[NCAP, PolicyMeta]:
    cfg = NCAPConfig(joint_slice=(0, 5), time_index=23, **kw)
    actor = NCAP(cfg)
    with torch.no_grad():
        for name, v in zip(("bneuron_osc", "bneuron_prop", "muscle_ipsi", "muscle_contra"), (0.8, 1.4, 0.9, -0.3)):
            p = getattr(actor, name)
            p.copy_(v + 0.05 * torch.arange(p.numel(), dtype=torch.float32).reshape(p.shape))
    meta = PolicyMeta(kind="ncap", actor_config=cfg.to_dict(), obs_dim=24, action_low=[-1.0] * 5,
                      action_high=[1.0] * 5, env=dict(ENV), steps=123)
    return actor, meta


def mlp_policy() -> tuple[MLPActor, PolicyMeta, np.ndarray, np.ndarray]:
    torch.manual_seed(0)
    cfg = MLPConfig(obs_dim=24, action_dim=5, hidden=[16, 16])
    actor = MLPActor(cfg)
    with torch.no_grad():  # a last layer large enough that clipping to the bounds matters
        actor.net[-1].weight.normal_(0, 2.0)
    meta = PolicyMeta(kind="mlp", actor_config=cfg.to_dict(), obs_dim=24, action_low=[-1.0] * 5,
                      action_high=[1.0] * 5, env=dict(ENV), obs_clip=10.0, steps=2048)
    rng = np.random.default_rng(0)
    return actor, meta, rng.normal(size=24), rng.uniform(0.5, 2.0, size=24)


def sample_obs(n=64, seed=0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, 24)) * 0.8
    obs[:, -1] = rng.integers(0, 1000, size=n) / 1000
    return torch.tensor(obs, dtype=torch.float32)


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [{}, {"weight_sharing": False}, {"learn_period": True}])
def test_ncap_round_trip_identical_outputs(tmp_path, kw):
    actor, meta = ncap_policy(**kw)
    save_policy(tmp_path, actor, meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == [META_FILE, WEIGHTS_FILE]
    loaded = load_policy(tmp_path, obs_dim=24, action_dim=5)
    assert isinstance(loaded, InferencePolicy) and not loaded.normalizes
    assert isinstance(loaded.actor, NCAP)
    obs = sample_obs()
    torch.testing.assert_close(loaded(obs), actor(obs), rtol=0, atol=0)
    for name, p in actor.state_dict().items():
        torch.testing.assert_close(loaded.actor.state_dict()[name], p, rtol=0, atol=0)
    assert loaded.meta == read_meta(tmp_path)
    assert loaded.meta.steps == 123 and loaded.meta.env == ENV
    assert not loaded.actor.training


def test_mlp_round_trip_with_observation_normalisation(tmp_path):
    actor, meta, mean, var = mlp_policy()
    save_policy(tmp_path, actor, meta, mean, var)
    loaded = load_policy(tmp_path, obs_dim=24, action_dim=5)
    assert loaded.normalizes
    np.testing.assert_allclose(loaded.obs_mean.numpy(), mean, rtol=1e-6)
    np.testing.assert_allclose(loaded.obs_var.numpy(), var, rtol=1e-6)
    obs = sample_obs() * 20  # some entries normalise beyond the clip
    mean_t, var_t = torch.tensor(mean, dtype=torch.float32), torch.tensor(var, dtype=torch.float32)
    expected = actor(((obs - mean_t) / torch.sqrt(var_t + 1e-8)).clamp(-10, 10)).clamp(-1, 1)
    torch.testing.assert_close(loaded(obs), expected.detach())
    assert loaded(obs).abs().max() <= 1.0
    assert (actor(obs).abs() > 1).any(), "the test should exercise the action clip"
    act = loaded.act(obs[0].numpy().astype(np.float64))
    assert isinstance(act, np.ndarray) and act.shape == (5,)
    np.testing.assert_allclose(act, expected[0].detach().numpy(), rtol=1e-6, atol=1e-6)


def test_saved_weights_are_plain_safetensors(tmp_path):
    from safetensors.torch import load_file

    actor, meta, mean, var = mlp_policy()
    save_policy(tmp_path, actor, meta, mean, var)
    tensors = load_file(str(tmp_path / WEIGHTS_FILE))
    assert {"obs_mean", "obs_var"} <= set(tensors)
    assert all(k.startswith("actor.") for k in set(tensors) - {"obs_mean", "obs_var"})
    data = json.loads((tmp_path / META_FILE).read_text())
    assert data["format"] == "embodied-policy" and data["version"] == 1 and data["kind"] == "mlp"


# --- NCAP retargeting -----------------------------------------------------------------------


@pytest.mark.parametrize("n_links", [3, 10, 15])
def test_ncap_retargets_to_other_body_lengths(tmp_path, n_links):
    actor, meta = ncap_policy()
    save_policy(tmp_path, actor, meta)
    layout = swimmer_layout(n_links, "swim").to_dict()
    loaded = load_policy(tmp_path, obs_dim=layout["time"] + 1, action_dim=n_links - 1, layout=layout)
    n_joints = n_links - 1
    assert loaded.actor.config.n_joints == n_joints
    assert loaded.actor.config.joint_limit == pytest.approx(2 * math.pi / n_links)
    assert loaded.actor.config.time_index == layout["time"]
    assert loaded.low.shape == (n_joints,)
    for name, p in actor.state_dict().items():
        torch.testing.assert_close(loaded.actor.state_dict()[name], p)
    obs = torch.zeros(layout["time"] + 1)
    obs[0] = 0.5 * 2 * math.pi / n_links
    out = loaded(obs)
    assert out.shape == (n_joints,)
    ref = actor(torch.cat([torch.tensor([0.5 * 2 * math.pi / 6]), torch.zeros(23)]))
    torch.testing.assert_close(out[:2], ref[:2])  # same circuit, same weights, same normalised bend


def test_unshared_ncap_refuses_other_lengths(tmp_path):
    actor, meta = ncap_policy(weight_sharing=False)
    save_policy(tmp_path, actor, meta)
    layout = swimmer_layout(10, "swim").to_dict()
    with pytest.raises(CheckpointError, match="unshared"):
        load_policy(tmp_path, obs_dim=layout["time"] + 1, action_dim=9, layout=layout)


def test_mlp_refuses_other_sizes(tmp_path):
    actor, meta, mean, var = mlp_policy()
    save_policy(tmp_path, actor, meta, mean, var)
    layout = swimmer_layout(8, "swim").to_dict()
    with pytest.raises(CheckpointError, match="24-d observations"):
        load_policy(tmp_path, obs_dim=32, action_dim=7, layout=layout)
    with pytest.raises(CheckpointError, match="actions"):
        load_policy(tmp_path, obs_dim=24, action_dim=7)


def test_ncap_meta_claiming_another_obs_size_is_rejected(tmp_path):
    """policy.json says 30-d observations but the env it names (and the one asked for) is 24-d.

    The same body (5 joints) is requested, so there is nothing to retarget: the file is
    inconsistent and must be refused like any other shape mismatch.
    """
    actor, meta = ncap_policy()
    save_policy(tmp_path, actor, meta)
    data = json.loads((tmp_path / META_FILE).read_text())
    data["obs_dim"] = 30
    (tmp_path / META_FILE).write_text(json.dumps(data))
    layout = swimmer_layout(6, "swim").to_dict()
    with pytest.raises(CheckpointError, match="30"):
        load_policy(tmp_path, obs_dim=24, action_dim=5, layout=layout)


# --- atomic writes --------------------------------------------------------------------------


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def test_no_temporary_files_left(tmp_path):
    actor, meta = ncap_policy()
    for _ in range(3):
        save_policy(tmp_path, actor, meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == [META_FILE, WEIGHTS_FILE]


def test_failing_weights_write_keeps_previous_file(tmp_path, monkeypatch):
    actor, meta = ncap_policy()
    save_policy(tmp_path, actor, meta)
    before = _snapshot(tmp_path)

    def broken_save_file(tensors, path, metadata=None):
        Path(path).write_bytes(b"half a file")  # a crash mid-write
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", broken_save_file)
    with torch.no_grad():
        actor.bneuron_osc.fill_(0.1)
    with pytest.raises(OSError, match="disk full"):
        save_policy(tmp_path, actor, meta)
    assert _snapshot(tmp_path) == before  # unchanged, and no *.tmp left behind
    monkeypatch.undo()
    loaded = load_policy(tmp_path)
    assert loaded.actor.bneuron_osc.item() == pytest.approx(0.8)


def test_failing_meta_write_keeps_previous_file(tmp_path, monkeypatch):
    actor, meta = ncap_policy()
    save_policy(tmp_path, actor, meta)
    old_meta = (tmp_path / META_FILE).read_bytes()
    real_write_text = Path.write_text

    def broken_write_text(self, text, *a, **k):
        real_write_text(self, text[:10], *a, **k)
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", broken_write_text)
    meta.steps = 999
    with pytest.raises(OSError):
        save_policy(tmp_path, actor, meta)
    monkeypatch.undo()
    assert (tmp_path / META_FILE).read_bytes() == old_meta
    assert sorted(p.name for p in tmp_path.iterdir()) == [META_FILE, WEIGHTS_FILE]
    assert read_meta(tmp_path).steps == 123


def test_policy_files_get_normal_permissions(tmp_path):
    """Atomic writes must not make the files private (mkstemp creates 0600).

    A deployed policy is read by other users/processes (the ROS node, a CI artefact): the
    files should get the same mode as any file this process creates (0666 & ~umask), like
    model.zip does.
    """
    actor, meta = ncap_policy()
    save_policy(tmp_path, actor, meta)
    reference = tmp_path / "reference"
    reference.write_text("x")
    expected = stat.S_IMODE(reference.stat().st_mode)
    for name in (WEIGHTS_FILE, META_FILE):
        mode = stat.S_IMODE(os.stat(tmp_path / name).st_mode)
        assert mode == expected, f"{name} has mode {oct(mode)}, expected {oct(expected)}"


# --- format, version and corruption errors --------------------------------------------------


def _rewrite_meta(directory: Path, **changes) -> None:
    data = json.loads((directory / META_FILE).read_text())
    data.update(changes)
    (directory / META_FILE).write_text(json.dumps(data))


@pytest.fixture
def saved_ncap(tmp_path) -> Path:
    actor, meta = ncap_policy()
    save_policy(tmp_path, actor, meta)
    return tmp_path


def test_version_mismatch(saved_ncap):
    _rewrite_meta(saved_ncap, version=2)
    with pytest.raises(CheckpointError, match="version 2"):
        load_policy(saved_ncap)


def test_format_mismatch(saved_ncap):
    _rewrite_meta(saved_ncap, format="something-else")
    with pytest.raises(CheckpointError, match="not an embodied-policy"):
        read_meta(saved_ncap)


def test_json_not_an_object(saved_ncap):
    (saved_ncap / META_FILE).write_text("[1, 2, 3]")
    with pytest.raises(CheckpointError):
        load_policy(saved_ncap)


def test_garbled_json(saved_ncap):
    (saved_ncap / META_FILE).write_bytes(b'{"format": "embodied-policy", "ver\x00\xff')
    with pytest.raises(CheckpointError, match="JSON"):
        load_policy(saved_ncap)


def test_unknown_kind(saved_ncap):
    _rewrite_meta(saved_ncap, kind="transformer")
    with pytest.raises(CheckpointError, match="transformer"):
        load_policy(saved_ncap)


def test_unexpected_fields(saved_ncap):
    _rewrite_meta(saved_ncap, colour="blue")
    with pytest.raises(CheckpointError, match="unexpected"):
        load_policy(saved_ncap)


def test_missing_fields(saved_ncap):
    data = json.loads((saved_ncap / META_FILE).read_text())
    del data["action_low"]
    (saved_ncap / META_FILE).write_text(json.dumps(data))
    with pytest.raises(CheckpointError):
        load_policy(saved_ncap)


def test_missing_files(saved_ncap):
    (saved_ncap / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match=WEIGHTS_FILE):
        load_policy(saved_ncap)
    (saved_ncap / META_FILE).unlink()
    with pytest.raises(CheckpointError, match=META_FILE):
        load_policy(saved_ncap)


@pytest.mark.parametrize("damage", ["truncate", "empty", "garble_header"])
def test_corrupt_weights(saved_ncap, damage):
    path = saved_ncap / WEIGHTS_FILE
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) - 10])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(data[:8] + b"\xff" * 16 + data[24:])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_policy(saved_ncap)


def test_weights_not_matching_config(saved_ncap):
    cfg = json.loads((saved_ncap / META_FILE).read_text())["actor_config"]
    _rewrite_meta(saved_ncap, actor_config={**cfg, "weight_sharing": False})
    with pytest.raises(CheckpointError, match="do not match"):
        load_policy(saved_ncap)


def test_kind_changed_to_another_actor_is_a_checkpoint_error(tmp_path):
    """An MLP policy.json whose kind is edited to ncap must be a CheckpointError, not a KeyError."""
    actor, meta, mean, var = mlp_policy()
    save_policy(tmp_path, actor, meta, mean, var)
    _rewrite_meta(tmp_path, kind="ncap")
    with pytest.raises(CheckpointError):
        load_policy(tmp_path, obs_dim=24, action_dim=5)


def test_ncap_kind_changed_to_mlp_is_a_checkpoint_error(saved_ncap):
    _rewrite_meta(saved_ncap, kind="mlp")
    with pytest.raises(CheckpointError, match="mlp"):
        load_policy(saved_ncap, obs_dim=24, action_dim=5)
