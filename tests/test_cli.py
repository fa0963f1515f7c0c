"""The real CLIs: ``python -m agents.train`` and ``python -m agents.evaluate`` as a user runs them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import SUMMARY_LINE_EVAL, SUMMARY_LINE_TRAIN, TINY, assert_one_line_error


def eval_mean(result) -> float:
    assert result.returncode == 0, result.stderr[-3000:]
    m = SUMMARY_LINE_EVAL.match(result.last_line)
    assert m, result.last_line
    return float(m["mean"])


# --- train -> evaluate ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_ncap_run(tmp_path_factory):
    """A tiny NCAP run trained through the real CLI (module scope: shared by the tests below)."""
    import subprocess
    import sys

    from conftest import cli_env

    base = tmp_path_factory.mktemp("cli")
    run = base / "ncap run"  # a space in the path must not break anything
    proc = subprocess.run(
        [sys.executable, "-m", "agents.train", "env=swimmer", "policy=ncap", "seed=3",
         "algo.total_timesteps=2048", *TINY, f"hydra.run.dir={run}"],
        cwd=base, env=cli_env(), capture_output=True, text=True, timeout=300,
    )
    return run, proc


def test_train_cli_last_line_and_run_dir(cli_ncap_run):
    run, proc = cli_ncap_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = [ln for ln in proc.stdout.splitlines() if ln.strip()][-1]
    assert last.startswith("return_mean=")
    # run_dir contains a space, so match the fixed prefix and check run_dir separately
    head, _, run_dir = last.partition(" run_dir=")
    assert Path(run_dir) == run
    m = SUMMARY_LINE_TRAIN.match(head + " run_dir=x")
    assert m, last
    summary = json.loads((run / "summary.json").read_text())
    assert int(m["steps"]) == summary["steps"] == 2048
    assert int(m["params"]) == summary["params"] == 4
    assert float(m["mean"]) == pytest.approx(summary["return_mean"], abs=0.01)
    assert "Traceback" not in proc.stderr
    for name in ("config.yaml", "metrics.csv", "learning_curve.png", "summary.json"):
        assert (run / name).is_file()
    assert (run / "checkpoints" / "final" / "policy.safetensors").is_file()


def test_evaluate_reproduces_train_summary(cli_ncap_run, run_cli):
    run, proc = cli_ncap_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    # training's final evaluation used final_eval_episodes=2 from seed 10000: evaluate seed=0 is the same
    result = run_cli("agents.evaluate", f"run={run}", "episodes=2", "seed=0")
    assert eval_mean(result) == pytest.approx(summary["return_mean"], abs=0.01)
    m = SUMMARY_LINE_EVAL.match(result.last_line)
    assert float(m["std"]) == pytest.approx(summary["return_std"], abs=0.01)
    metrics = json.loads([ln for ln in result.stdout.splitlines() if ln.startswith("{")][-1])
    assert metrics["episodes"] == 2 and metrics["policy"] == "ncap" and metrics["env"] == "swimmer"
    # other seeds are other episodes
    other = run_cli("agents.evaluate", f"run={run}", "episodes=2", "seed=5")
    assert eval_mean(other) != pytest.approx(summary["return_mean"], abs=1e-6)


def test_evaluate_in_process_run_dir(mlp_run, run_cli):
    """A run trained in-process (conftest) is evaluated by the CLI with the same return."""
    summary = json.loads((mlp_run / "summary.json").read_text())
    result = run_cli("agents.evaluate", f"run={mlp_run}", "episodes=2")
    assert eval_mean(result) == pytest.approx(summary["return_mean"], abs=0.01)


def test_evaluate_untrained_ncap_swims(run_cli):
    result = run_cli("agents.evaluate", "env=swimmer", "policy=ncap", "episodes=3")
    assert eval_mean(result) >= 750  # the untrained circuit: about 800 (benchmarks/results/swimmer_ncap.md)


def test_evaluate_ncap_zero_shot_on_ten_links(ncap_run, run_cli):
    result = run_cli("agents.evaluate", f"run={ncap_run}", "episodes=1", "env.n_links=10")
    # The 4 shared weights drive a 9-joint body (the untrained circuit swims about 900 there, benchmarks/results/swimmer_ncap.md).
    assert eval_mean(result) > 700


def test_evaluate_mlp_on_other_body_is_a_clear_error(mlp_run, run_cli):
    result = run_cli("agents.evaluate", f"run={mlp_run}", "episodes=1", "env.n_links=8")
    assert_one_line_error(result, "checkpoints/final", "[24]", "[32]")


# --- error paths: one line, exit code 2 -----------------------------------------------------


@pytest.mark.parametrize("module", ["agents.train", "agents.evaluate"])
def test_unknown_key(run_cli, module, tmp_path):
    result = run_cli(module, "policy.foo=1", f"hydra.run.dir={tmp_path / 'r'}")
    assert_one_line_error(result, "policy.foo")


def test_unknown_algo_key(run_cli, tmp_path):
    result = run_cli("agents.train", "algo.foo=1", f"hydra.run.dir={tmp_path / 'r'}")
    assert_one_line_error(result, "algo.foo")
    assert not (tmp_path / "r").exists()  # rejected before Hydra made a run directory


@pytest.mark.parametrize("module", ["agents.train", "agents.evaluate"])
def test_unknown_env(run_cli, module, tmp_path):
    result = run_cli(module, "env=nope", f"hydra.run.dir={tmp_path / 'r'}")
    line = assert_one_line_error(result, "env", "nope")
    assert "swimmer" in line  # lists the valid choices


@pytest.mark.parametrize("module", ["agents.train", "agents.evaluate"])
def test_unknown_policy(run_cli, module, tmp_path):
    result = run_cli(module, "policy=nope", f"hydra.run.dir={tmp_path / 'r'}")
    line = assert_one_line_error(result, "policy", "nope")
    assert "ncap" in line and "mlp" in line


@pytest.mark.parametrize("value", ["abc", "1.5", "-1"])
def test_bad_seed_train(run_cli, tmp_path, value):
    result = run_cli("agents.train", f"seed={value}", "algo.total_timesteps=256", f"hydra.run.dir={tmp_path / 'r'}")
    assert_one_line_error(result, "seed")


@pytest.mark.parametrize("args", [["seed=abc"], ["episodes=0"], ["episodes=two"], ["threads=0"]])
def test_bad_ints_evaluate(run_cli, args):
    result = run_cli("agents.evaluate", "env=swimmer", "policy=ncap", *args)
    assert_one_line_error(result, args[0].split("=")[0])


def test_run_trained_on_another_env(ncap_run, run_cli):
    result = run_cli("agents.evaluate", f"run={ncap_run}", "env=swimmer_gym", "episodes=1")
    assert_one_line_error(result, "swimmer_gym", "swimmer")


def test_missing_run_dir(run_cli, tmp_path):
    result = run_cli("agents.evaluate", f"run={tmp_path / 'no_such_run'}")
    assert_one_line_error(result, "no_such_run", "does not exist")


def test_not_a_run_dir(run_cli, tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_cli("agents.evaluate", f"run={tmp_path / 'empty'}")
    assert_one_line_error(result, "neither a run directory nor a policy bundle")


def test_missing_checkpoint_name(ncap_run, run_cli):
    result = run_cli("agents.evaluate", f"run={ncap_run}", "checkpoint=step_999999", "episodes=1")
    line = assert_one_line_error(result, "step_999999")
    assert "final" in line  # lists what there is


@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_corrupt_weights(ncap_run, copy_run, run_cli, damage):
    run = copy_run(ncap_run)
    path = run / "checkpoints" / "final" / "policy.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else data[:8] + b"\xff" * 40 + data[48:])
    result = run_cli("agents.evaluate", f"run={run}", "episodes=1")
    assert_one_line_error(result, "policy.safetensors", "sha256")


def test_garbled_policy_json(ncap_run, copy_run, run_cli):
    run = copy_run(ncap_run)
    path = run / "checkpoints" / "final" / "policy.json"
    path.write_text(path.read_text()[:57] + "\x00 garbage")
    result = run_cli("agents.evaluate", f"run={run}", "episodes=1")
    assert_one_line_error(result, "policy.json")


def _edit_policy_json(run: Path, **changes) -> None:
    path = run / "checkpoints" / "final" / "policy.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_mlp_checkpoint_claiming_other_obs_size(mlp_run, copy_run, run_cli):
    run = copy_run(mlp_run)
    _edit_policy_json(run, observation={"shape": [30]})
    assert_one_line_error(run_cli("agents.evaluate", f"run={run}", "episodes=1"), "30", "24")


def test_ncap_checkpoint_claiming_other_obs_size(ncap_run, copy_run, run_cli):
    """policy.json of a 6-link NCAP edited to claim 30-d observations: a shape mismatch."""
    run = copy_run(ncap_run)
    _edit_policy_json(run, observation={"shape": [30]})
    assert_one_line_error(run_cli("agents.evaluate", f"run={run}", "episodes=1"), "30")


def test_ncap_checkpoint_claiming_mlp_kind(ncap_run, copy_run, run_cli):
    run = copy_run(ncap_run)
    _edit_policy_json(run, kind="mlp")
    assert_one_line_error(run_cli("agents.evaluate", f"run={run}", "episodes=1"), "mlp")


def test_mlp_checkpoint_claiming_ncap_kind(mlp_run, copy_run, run_cli):
    run = copy_run(mlp_run)
    _edit_policy_json(run, kind="ncap")
    assert_one_line_error(run_cli("agents.evaluate", f"run={run}", "episodes=1"), "policy.json")


def test_checkpoint_with_unshared_shapes(ncap_run, copy_run, run_cli):
    run = copy_run(ncap_run)
    path = run / "checkpoints" / "final" / "policy.json"
    data = json.loads(path.read_text())
    data["config"]["weight_sharing"] = False
    path.write_text(json.dumps(data))
    assert_one_line_error(run_cli("agents.evaluate", f"run={run}", "episodes=1"), "policy.safetensors", "shape")


def test_checkpoint_of_unknown_format_version(ncap_run, copy_run, run_cli):
    run = copy_run(ncap_run)
    _edit_policy_json(run, version=99)
    assert_one_line_error(run_cli("agents.evaluate", f"run={run}", "episodes=1"), "version 99")


# --- multirun -------------------------------------------------------------------------------


def test_multirun_two_seeds(run_cli, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "agents.train", "-m", "seed=0,1", "algo.total_timesteps=512", "algo.n_envs=2", "algo.sb3.n_steps=128",
        "algo.sb3.batch_size=256", "algo.sb3.n_epochs=2", "algo.eval_every=512", "algo.eval_episodes=1",
        "algo.final_eval_episodes=1", "algo.checkpoint_every=0", "progress_bar=false", f"hydra.sweep.dir={sweep}",
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = sorted(sweep.glob("*/summary.json"))
    assert len(summaries) == 2, list(sweep.iterdir())
    seeds = sorted(json.loads(p.read_text())["seed"] for p in summaries)
    assert seeds == [0, 1]
    for p in summaries:
        run = p.parent
        assert (run / "checkpoints" / "final" / "policy.safetensors").is_file()
        assert (run / "metrics.csv").is_file()
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("return_mean=")]
    assert len(lines) == 2
    assert {Path(re.search(r"run_dir=(.*)$", ln).group(1)) for ln in lines} == {p.parent for p in summaries}


def test_a_comma_in_a_value_outside_a_multirun_is_one_line(run_cli, tmp_path):
    """``run=a,b`` reads as a list or a sweep to Hydra: without -m that is Hydra's complaint, in one line."""
    result = run_cli("agents.evaluate", f"run={tmp_path / 'runs'},x", "episodes=1")
    assert_one_line_error(result, "Ambiguous value", "quote the value")
