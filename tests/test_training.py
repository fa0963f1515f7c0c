"""Short PPO training runs (agents/train.py, agents/sb3_trainer.py) and Hydra config composition."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from agents.builders import make_env
from agents.errors import UserError
from policies.bundle import read_meta
from policies.ncap import NCAP
from policies.protocol import EnvInterface, PolicyError
from policies.registry import build_module, load_policy, make_config
from policies.run_dir import RunDir
from policies.sb3 import ActorCriticAdapter

from conftest import CONFIG_DIR, compose_train, restored_sb3_trainer

RUN_FILES = ["config.yaml", "metrics.csv", "learning_curve.png", "summary.json"]
FINAL_FILES = ["policy.json", "policy.safetensors", "trainer_state.json", "trainer_state.safetensors"]
ENVS = sorted(p.stem for p in (CONFIG_DIR / "env").glob("*.yaml"))
POLICIES = sorted(p.stem for p in (CONFIG_DIR / "policy").glob("*.yaml"))
SWIMMER_ENVS = [e for e in ENVS if e.startswith("swimmer") and e != "swimmer_find"]  # vector observations (find: a Dict)
CHUNK_POLICIES = {"mtact": "mtact", "bc_single": "mtact"}  # config -> kind; behaviour cloning (tests/test_bc.py)
# Flat actors trained by RL: pid is a scripted controller (tests/test_uav.py), the chunk policies learn from datasets.
# The spatial brain has its own supervised stages (tests/test_brain_training.py).
LEARNED_POLICIES = [p for p in POLICIES if p not in ("pid", "spatial_brain") and p not in CHUNK_POLICIES]
NCAP_WEIGHTS = {"bneuron_osc": 1, "bneuron_prop": 1, "muscle_ipsi": 1, "muscle_contra": -1}


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def actor_config(policy_cfg, env) -> dict:
    """The full actor config the trainers build for this policy config and env."""
    return make_config(policy_cfg.kind, OmegaConf.to_container(policy_cfg.actor, resolve=True), EnvInterface.of(env))


# --- run directory --------------------------------------------------------------------------


@pytest.mark.parametrize("run_fixture", ["ncap_run", "mlp_run"])
def test_run_directory_has_all_files(request, run_fixture):
    run = request.getfixturevalue(run_fixture)
    for name in RUN_FILES:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    final = run / "checkpoints" / "final"
    for name in FINAL_FILES:
        assert (final / name).is_file() and (final / name).stat().st_size > 0, name
    # periodic checkpoints (checkpoint_every=1024, after each update) and the resumable last one are complete
    # too, and nothing temporary is left
    periodic = RunDir(run).checkpoints()
    assert "step_1024" in periodic and "last" in periodic
    assert RunDir(run).resumable() is not None
    leftovers = [p for p in run.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name or p.name.endswith(".old")]
    assert not leftovers, leftovers
    assert (run / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cfg = OmegaConf.load(run / "config.yaml")
    assert cfg.env.name == "swimmer" and cfg.algo.name == "ppo"


def test_ncap_summary(ncap_run):
    summary = json.loads((ncap_run / "summary.json").read_text())
    assert summary["params"] == 4  # 4 shared weights; the std is fixed
    assert summary["policy"] == "ncap" and summary["env"] == "swimmer" and summary["algo"] == "ppo"
    assert summary["steps"] == 4096
    assert summary["eval_episodes"] == 2
    assert summary["run_dir"] == str(ncap_run)
    # NCAP starts near 800 (benchmarks/results/swimmer_ncap.md); a few thousand steps must not wreck it.
    assert summary["return_mean"] > 600
    assert 0 <= summary["return_std"] < summary["return_mean"]
    assert set(summary["steps_to_return"]) == {"800", "850", "900", "950"}


def test_mlp_summary(mlp_run):
    summary = json.loads((mlp_run / "summary.json").read_text())
    assert summary["params"] > 1000
    cfg = OmegaConf.load(mlp_run / "config.yaml")
    assert cfg.policy.learn_std is True
    widths = [24, *cfg.policy.actor.hidden, 5]
    expected = sum(a * b + b for a, b in zip(widths, widths[1:])) + 5  # linear layers + learned log-std
    assert summary["params"] == expected
    assert summary["policy"] == "mlp" and summary["steps"] == 2048
    assert np.isfinite(summary["return_mean"])


@pytest.mark.parametrize("run_fixture", ["ncap_run", "mlp_run"])
def test_metrics_rows_have_increasing_steps(request, run_fixture):
    run = request.getfixturevalue(run_fixture)
    rows = read_rows(run / "metrics.csv")
    steps = [int(r["steps"]) for r in rows]
    summary = json.loads((run / "summary.json").read_text())
    assert len(rows) >= 3
    assert steps[0] == 0 and steps[-1] == summary["steps"]
    assert all(a < b for a, b in zip(steps, steps[1:])), steps
    for r in rows:
        assert np.isfinite(float(r["eval_return_mean"]))
        assert 0.0 <= float(r["eval_return_mean"]) <= 1000.0
        assert float(r["eval_return_std"]) >= 0.0


def test_ncap_sign_constraints_after_training(ncap_run):
    policy = load_policy(RunDir(ncap_run).policy())
    actor = policy.actor
    assert isinstance(actor, NCAP)
    moved = False
    for name, sign in NCAP_WEIGHTS.items():
        eff = actor.weight(name).detach()
        assert (eff * sign >= 0).all(), name
        moved |= bool((getattr(actor, name).detach() != float(sign)).any())
    assert moved, "PPO did not change any NCAP weight"
    # the trained circuit still drives the head the right way round
    obs = torch.zeros(24)
    assert policy(obs)[0].item() >= 0.0
    obs[-1] = 0.03
    assert policy(obs)[0].item() <= 0.0


def test_ncap_std_stays_fixed(ncap_run, tmp_path):
    trainer = restored_sb3_trainer(ncap_run, tmp_path / "restored")
    assert isinstance(trainer.model.policy, ActorCriticAdapter)
    assert not trainer.model.policy.log_std.requires_grad
    log_std_init = OmegaConf.load(ncap_run / "config.yaml").policy.log_std_init
    expected = torch.full((5,), float(log_std_init))
    torch.testing.assert_close(trainer.model.policy.log_std.detach(), expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(read_meta(RunDir(ncap_run).policy()).action_std, np.exp(expected.numpy()), rtol=1e-6)


def _episode_observations(n=30):
    env = gym.make("embodied/Swimmer-v0")
    obs, _ = env.reset(seed=11)
    out = [obs]
    rng = np.random.default_rng(0)
    for _ in range(n):
        obs, *_ = env.step(rng.uniform(-1, 1, 5))
        out.append(obs)
    env.close()
    return np.array(out)


def test_sb3_model_matches_deployed_policy_ncap(ncap_run, tmp_path):
    trainer = restored_sb3_trainer(ncap_run, tmp_path / "restored")
    policy = load_policy(RunDir(ncap_run).policy(), EnvInterface.of(gym.make("embodied/Swimmer-v0")))
    assert not policy.normalizes  # NCAP reads raw joint angles and the clock
    obs = _episode_observations()
    sb3_actions, _ = trainer.model.predict(obs, deterministic=True)
    np.testing.assert_allclose(policy.act(obs), sb3_actions, atol=1e-6)
    for o, a in zip(obs[:5], sb3_actions[:5]):
        np.testing.assert_allclose(policy.act(o), a, atol=1e-6)


def test_sb3_model_matches_deployed_policy_mlp(mlp_run, tmp_path):
    """The bundle's weights and observation statistics are SB3's (restored from the safetensors state)."""
    trainer = restored_sb3_trainer(mlp_run, tmp_path / "restored")
    venv = trainer.venv
    policy = load_policy(RunDir(mlp_run).policy())
    assert policy.normalizes
    np.testing.assert_allclose(policy.obs_mean.numpy(), venv.obs_rms.mean, rtol=1e-5, atol=1e-6)
    obs = _episode_observations()
    sb3_actions, _ = trainer.model.predict(venv.normalize_obs(obs), deterministic=True)
    np.testing.assert_allclose(policy.act(obs), sb3_actions, atol=1e-5)
    venv.close()


def test_policy_json_records_the_env(ncap_run):
    meta = read_meta(RunDir(ncap_run).policy())
    assert meta.kind == "ncap" and meta.obs_dim == 24 and meta.steps == 4096
    assert meta.env["id"] == "embodied/Swimmer-v0" and meta.env["n_links"] == 6
    assert meta.config["time_index"] == 23 and meta.config["joint_slice"] == [0, 5]
    assert meta.control_dt == pytest.approx(0.03)


def test_training_is_reproducible_for_a_seed(ncap_run, tmp_path):
    """Same seed and config -> the same weights (first PPO update only, to stay cheap)."""
    from conftest import TINY, train_in_process

    overrides = ["env=swimmer", "policy=ncap", "algo.total_timesteps=1024", "seed=0", *TINY,
                 "algo.final_eval_episodes=1"]
    a = train_in_process(tmp_path / "a", overrides)
    b = train_in_process(tmp_path / "b", overrides)
    assert a["return_mean"] == b["return_mean"]
    pa = load_policy(RunDir(tmp_path / "a").policy()).actor.state_dict()
    pb = load_policy(RunDir(tmp_path / "b").policy()).actor.state_dict()
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], rtol=0, atol=0)


def test_bad_algo_values_are_user_errors(tmp_path):
    from agents.train import train

    cfg = compose_train(["algo.total_timesteps=0"])
    with pytest.raises(UserError, match="total_timesteps"):
        train(cfg, tmp_path / "r")
    cfg = compose_train(["algo.vec_env=threads", "algo.total_timesteps=256", "algo.eval_every=256"])
    with pytest.raises(UserError, match="vec_env"):
        train(cfg, tmp_path / "r2")


# --- config composition ---------------------------------------------------------------------


def test_config_groups_present():
    assert ENVS == ["kitchen", "kitchen_point", "swimmer", "swimmer_find", "swimmer_gym", "swimmer_navigate", "uav_find",
                    "uav_hover", "uav_waypoints"]
    assert POLICIES == ["bc_single", "mlp", "mtact", "ncap", "pid", "spatial_brain"]


@pytest.mark.parametrize("env_name", ENVS)
@pytest.mark.parametrize("policy_name", POLICIES)
def test_compose_every_env_policy_pair(env_name, policy_name):
    cfg = compose_train([f"env={env_name}", f"policy={policy_name}"])
    assert cfg.env.name == env_name
    assert cfg.policy.kind == CHUNK_POLICIES.get(policy_name, policy_name)
    assert cfg.algo.name == "ppo"
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    tuned = CONFIG_DIR / "experiment" / "tuned" / f"{env_name}_{policy_name}_ppo.yaml"
    base = OmegaConf.load(CONFIG_DIR / "algo" / "ppo.yaml")
    if tuned.is_file():
        expected = OmegaConf.merge(OmegaConf.create({"algo": base}), OmegaConf.load(tuned))
        assert cfg.algo.sb3 == expected.algo.sb3
        assert cfg.algo.total_timesteps == expected.algo.total_timesteps
        if "policy" in OmegaConf.load(tuned):
            for key, value in OmegaConf.load(tuned).policy.items():
                if key != "actor":
                    assert cfg.policy[key] == value
    else:
        assert cfg.algo.sb3 == base.sb3


def test_tuned_experiment_applied_for_swimmer_ncap():
    tuned = OmegaConf.load(CONFIG_DIR / "experiment" / "tuned" / "swimmer_ncap_ppo.yaml")
    base = OmegaConf.load(CONFIG_DIR / "algo" / "ppo.yaml")
    assert tuned.algo.sb3.n_steps != base.sb3.n_steps, "the tuned file should change the rollout length"
    cfg = compose_train(["env=swimmer", "policy=ncap"])
    assert cfg.algo.sb3.n_steps == tuned.algo.sb3.n_steps
    assert cfg.algo.sb3.learning_rate == cfg.algo.learning_rate == pytest.approx(tuned.algo.learning_rate)
    assert cfg.policy.log_std_init == pytest.approx(tuned.policy.log_std_init)
    assert cfg.policy.learn_std is False
    # no tuned file for navigate: the algo defaults stay
    assert not (CONFIG_DIR / "experiment" / "tuned" / "swimmer_navigate_ncap_ppo.yaml").exists()
    nav = compose_train(["env=swimmer_navigate", "policy=ncap"])
    assert nav.algo.sb3.n_steps == base.sb3.n_steps
    assert nav.policy.log_std_init == OmegaConf.load(CONFIG_DIR / "policy" / "ncap.yaml").log_std_init
    gym_tuned = OmegaConf.load(CONFIG_DIR / "experiment" / "tuned" / "swimmer_gym_ncap_ppo.yaml")
    gym_ncap = compose_train(["env=swimmer_gym", "policy=ncap"])
    assert gym_ncap.policy.actor.oscillator_period == gym_tuned.policy.actor.oscillator_period
    assert gym_ncap.algo.sb3.gamma == pytest.approx(gym_tuned.algo.sb3.gamma)


@pytest.mark.parametrize("policy_name", ["mtact", "bc_single"])
def test_tuned_experiment_sets_top_level_keys_and_the_command_line_still_wins(policy_name):
    """A tuned file's ``threads`` once lost to train.yaml's own default (``_self_`` came last)."""
    # bc_single's tuned file takes MT-ACT's whole (a Hydra defaults entry), so both compare with it.
    tuned = OmegaConf.load(CONFIG_DIR / "experiment" / "tuned" / "kitchen_mtact_bc.yaml")
    assert tuned.threads != OmegaConf.load(CONFIG_DIR / "train.yaml").threads
    cfg = compose_train(["env=kitchen", f"policy={policy_name}", "algo=bc"])
    assert cfg.threads == tuned.threads
    assert cfg.policy.actor.hidden == tuned.policy.actor.hidden
    assert cfg.algo.total_steps == tuned.algo.total_steps
    assert compose_train(["env=kitchen", f"policy={policy_name}", "algo=bc", "threads=1"]).threads == 1


def test_command_line_overrides_win_over_tuned_files():
    cfg = compose_train(["env=swimmer", "policy=ncap", "algo.sb3.n_steps=128", "policy.log_std_init=-1.0"])
    assert cfg.algo.sb3.n_steps == 128
    assert cfg.policy.log_std_init == -1.0


@pytest.mark.parametrize("env_name", SWIMMER_ENVS)
@pytest.mark.parametrize("policy_name", LEARNED_POLICIES)
def test_make_env_and_actor_config_for_every_pair(env_name, policy_name):
    cfg = compose_train([f"env={env_name}", f"policy={policy_name}"])
    env = make_env(cfg.env)
    try:
        actor_cfg = actor_config(cfg.policy, env)
        obs_dim = env.observation_space.shape[0]
        action_dim = env.action_space.shape[0]
        actor = build_module(cfg.policy.kind, actor_cfg)
        obs, _ = env.reset(seed=0)
        for _ in range(3):
            with torch.no_grad():
                action = actor(torch.as_tensor(obs, dtype=torch.float32)).numpy()
            assert action.shape == (action_dim,)
            assert np.all(np.isfinite(action))
            if policy_name == "ncap":
                assert np.all(np.abs(action) <= 1.0)
            obs, *_ = env.step(np.clip(action, -1, 1))
        if policy_name == "mlp":
            assert actor_cfg["obs_dim"] == obs_dim and actor_cfg["action_dim"] == action_dim
        else:
            assert actor_cfg["n_joints"] == action_dim
            assert actor_cfg["time_index"] == obs_dim - 1
            if env_name == "swimmer_gym":
                assert actor_cfg["joint_slice"] == [1, 3]  # obs[1:3]; obs[0] is the front body's angle
                assert actor_cfg["joint_limit"] == pytest.approx(np.radians(100))
                tuned = OmegaConf.load(CONFIG_DIR / "experiment" / "tuned" / "swimmer_gym_ncap_ppo.yaml")
                assert actor_cfg["oscillator_period"] == tuned.policy.actor.oscillator_period
            else:
                assert actor_cfg["joint_slice"] == [0, 5]
            assert actor_cfg["target_slice"] == ([5, 7] if env_name == "swimmer_navigate" else None)
    finally:
        env.close()


def test_ncap_on_swimmer_gym_reads_the_joint_angles():
    cfg = compose_train(["env=swimmer_gym", "policy=ncap", "policy.actor.oscillator_period=80"])
    env = make_env(cfg.env)
    actor = build_module("ncap", actor_config(cfg.policy, env))
    obs = np.zeros(9)
    obs[0] = 1.5  # the front body's absolute angle must be ignored
    obs[1] = np.radians(50)  # joint 1 bent dorsally by half its range
    obs[8] = 40 / 1000  # ventral half of an 80-step period
    out = actor(torch.as_tensor(obs, dtype=torch.float32))
    torch.testing.assert_close(out, torch.tensor([-1.0, 0.5]))
    env.close()


def test_env_overrides_reach_the_env():
    cfg = compose_train(["env=swimmer", "env.n_links=9", "env.fluid_density=5000"])
    env = make_env(cfg.env)
    assert env.action_space.shape == (8,)
    assert env.unwrapped.model.opt.density == 5000.0
    actor_cfg = actor_config(cfg.policy, env)
    assert actor_cfg["n_joints"] == 8 and actor_cfg["joint_limit"] == pytest.approx(2 * np.pi / 9)
    env.close()


def test_task_control_needs_navigate():
    cfg = compose_train(["env=swimmer", "policy=ncap", "policy.actor.task_control=hardcoded"])
    env = make_env(cfg.env)
    with pytest.raises(PolicyError, match="navigate"):
        actor_config(cfg.policy, env)
    env.close()
    cfg = compose_train(["env=swimmer_navigate", "policy=ncap", "policy.actor.task_control=learned"])
    env = make_env(cfg.env)
    actor = build_module("ncap", actor_config(cfg.policy, env))
    assert actor.config.target_slice == (5, 7)
    env.close()


def test_make_env_bad_config_is_user_error():
    cfg = compose_train(["env=swimmer", "env.n_links=40"])
    with pytest.raises(UserError, match="n_links"):
        make_env(cfg.env)
