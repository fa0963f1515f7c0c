"""Input boundaries a new (or a hostile) user hits: each is one ``error:`` line and exit code 2, never silence.

One test per trap, through the CLI as a user types it; every case here once ran on, printed a
traceback or left something behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from agents.dataset import read_manifest

from conftest import TINY, assert_names, assert_one_line_error, cli_env, compose_train, config_error, write_fake_dataset

SILENT_NONSENSE = [
    (["env.fluid_density=nan"], ("env.fluid_density", "finite")),
    (["policy.actor.oscillator_period=0"], ("oscillator_period", "positive")),
    (["policy=mlp", "policy.actor.hidden=[0]"], ("hidden", "layer widths of 1..")),
    (["+algo.learning_rat=1"], ("algo.learning_rat", "did you mean learning_rate")),
    (["+env.max_episode_steps=0"], ("env.max_episode_steps", "positive whole number")),
]
TRACEBACKS = [
    (["algo.sb3.gamma=abc"], ("algo.sb3.gamma", "must be a number")),
    (["algo=es", "algo.population=abc"], ("algo.population", "must be an integer")),
    (["algo.sb3.gamma=1.5"], ("algo.sb3.gamma", "<= 1")),
    (["algo=grpo", "algo.minibatches=9"], ("minibatches", "groups")),
]
UNBOUNDED = [
    (["algo.total_timesteps=1000000000000000"], ("algo.total_timesteps", "<= 1000000000000")),
    (["algo.n_envs=100000"], ("algo.n_envs", "<= 256")),
    (["env=kitchen", "policy=mtact", "algo=bc", "dataset=x", "algo.batch_size=100000000"],
     ("algo.batch_size", "65536")),
]


@pytest.mark.parametrize("args, needles", [*SILENT_NONSENSE, *TRACEBACKS, *UNBOUNDED],
                         ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_train_refuses_bad_values_before_anything_runs(args, needles):
    assert_names(config_error(args), *needles)


def test_a_bad_value_on_the_command_line_is_one_line_and_writes_nothing(run_cli, tmp_path):
    assert_one_line_error(run_cli("agents.train", "algo.sb3.gamma=1.5"), "algo.sb3.gamma", "<= 1")
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("config.yaml"))


def test_unknown_keys_suggest_the_close_one_and_the_plus_only_where_it_reaches_a_library(run_cli):
    line = assert_one_line_error(run_cli("agents.train", "algo.learning_rat=1"), "did you mean algo.learning_rate")
    assert "+" not in line  # adding it would do nothing: no '+' hint
    line = assert_one_line_error(run_cli("agents.train", "algo.sb3.gama=0.9"), "did you mean algo.sb3.gamma")
    assert "+algo.sb3.gama" in line  # algo.sb3 passes keywords on to SB3: there a '+' key has an effect


def test_one_name_for_the_learning_rate():
    """``algo.learning_rate`` is the optimiser's step size for PPO and SAC too (SB3's key reads it)."""
    assert compose_train(["algo.learning_rate=1e-3"]).algo.sb3.learning_rate == pytest.approx(1e-3)
    cfg = compose_train(["env=uav_hover", "policy=mlp", "algo=sac", "algo.learning_rate=2e-4"])
    assert cfg.algo.sb3.learning_rate == pytest.approx(2e-4)
    assert compose_train([]).algo.sb3.learning_rate == pytest.approx(3e-2)  # the tuned NCAP value still applies


@pytest.mark.parametrize("args, needle", [
    (["noise=abc"], "noise"), (["env.image_size=0"], "image_size"), (["env.image_size=100000"], "image_size"),
    (["env.level=L9"], "level"), (["episodes=0"], "episodes"), (["out=/proc/nope"], "/proc/nope"),
])
def test_collect_refuses_bad_input_in_one_line(run_cli, args, needle):
    assert_one_line_error(run_cli("agents.collect", "task=microwave", "episodes=1", *args), needle)


def test_a_video_path_in_a_missing_directory_is_refused_before_any_episode(run_cli, tmp_path):
    t0 = time.time()
    result = run_cli("agents.evaluate", "env=swimmer", "policy=ncap", "video=true",
                     f"video_path={tmp_path / 'no' / 'such' / 'dir' / 'x.mp4'}")
    assert_one_line_error(result, "video_path", "does not exist")
    assert time.time() - t0 < 60  # not after rendering an episode


def test_a_runs_directory_that_cannot_be_written_is_one_line(run_cli):
    """/proc refuses new directories, as a read-only or full file system does: one line, nothing half made."""
    assert_one_line_error(run_cli("agents.train", *TINY, cwd=Path("/proc")), "cannot create the run directory")


# --- datasets ---------------------------------------------------------------------------------------


@pytest.fixture
def dataset(tmp_path) -> Path:
    return write_fake_dataset(tmp_path / "data", {"light_switch": 2, "microwave": 2})


def bc(run_cli, data: Path):
    return run_cli("agents.train", "env=kitchen", "policy=mtact", "algo=bc", f"dataset={data}", "algo.total_steps=1",
                   "algo.demos_per_task=2", "algo.val_fraction=0.5", "algo.eval_episodes=0",
                   "algo.final_eval_episodes=0", "algo.batch_size=2", "policy.actor.hidden=16", "policy.actor.ffn=16",
                   "policy.actor.heads=2", "policy.actor.enc_layers=1", "policy.actor.dec_layers=1",
                   "policy.actor.cvae_layers=1", "policy.actor.backbone_width=4")


@pytest.mark.parametrize("damage", ["truncate", "empty"])
def test_a_damaged_demonstration_is_named(run_cli, dataset, damage):
    demo = dataset / "episodes" / "microwave" / "00001.npz"
    demo.write_bytes(demo.read_bytes()[:100] if damage == "truncate" else b"")
    assert_one_line_error(bc(run_cli, dataset), "00001.npz", "unreadable")


def test_nan_actions_in_a_demonstration_are_named_with_the_step(run_cli, dataset):
    demo = dataset / "episodes" / "light_switch" / "00000.npz"
    with np.load(demo) as z:
        data = {k: z[k] for k in z.files}
    data["actions"][3, 2] = np.nan
    with open(demo, "wb") as f:
        np.savez_compressed(f, **data)
    assert_one_line_error(bc(run_cli, dataset), "00000.npz", "actions", "NaN", "step 3")


def test_a_collection_rerun_collects_a_damaged_demonstration_again(dataset):
    from agents.dataset import DatasetWriter

    manifest = read_manifest(dataset)
    writer = DatasetWriter(dataset, manifest["env"], manifest["spec"], manifest["cameras"])
    demo = writer.path("microwave", 1)
    demo.write_bytes(demo.read_bytes()[:200])  # a write cut short
    assert writer.has("microwave", 0) and not writer.has("microwave", 1)  # counted as missing, not as done
    assert not demo.exists()  # and removed, so the rerun writes it again


def test_a_manifest_without_its_spec_is_named(run_cli, dataset):
    import json

    manifest = dataset / "manifest.json"
    data = json.loads(manifest.read_text())
    del data["spec"]
    manifest.write_text(json.dumps(data))
    assert_one_line_error(bc(run_cli, dataset), "manifest.json", "spec")
    with pytest.raises(Exception, match="spec"):
        read_manifest(dataset)


# --- worker processes end with their parent --------------------------------------------------------


def _children(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_collection_workers_die_with_their_parent(tmp_path, sig):
    import psutil

    proc = subprocess.Popen([sys.executable, "-m", "agents.collect", "task=all", "episodes=50", "workers=2",
                             "env.cameras=[]", f"out={tmp_path / 'data'}"], cwd=tmp_path, env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(_children(proc.pid)) < 2 and time.time() < deadline:
        time.sleep(0.2)
    workers = _children(proc.pid)
    assert len(workers) >= 2, "the collection did not start its workers"
    os.kill(proc.pid, sig)
    proc.wait(timeout=30)
    gone, alive = psutil.wait_procs(workers, timeout=20)
    for p in alive:
        p.kill()
    assert not alive, f"{len(alive)} worker(s) outlived their parent ({signal.Signals(sig).name})"


# --- memory, estimated before it is asked for ---------------------------------------------------------


@pytest.mark.parametrize("args, knob", [
    (["algo.n_envs=256", "algo.vec_env=subproc"], "lower algo.n_envs"),
    (["algo=grpo", "algo.groups=512", "algo.group_size=8"], "lower algo.groups x algo.group_size"),
])
def test_a_run_that_would_not_fit_in_memory_says_so_before_allocating(run_cli, args, knob):
    t0 = time.time()
    assert_one_line_error(run_cli("agents.train", *args), "would need about", knob)
    assert time.time() - t0 < 60  # before building hundreds of envs


def test_memory_estimates_name_the_biggest_part():
    from agents.errors import UserError
    from agents.resources import require

    require({"a": 10, "b": 20}, available=100)
    with pytest.raises(UserError, match=r"about 1\.0 GB .* lower b$"):
        require({"a": 1 << 20, "b": (1 << 30) - (1 << 20)}, available=1 << 20)


def test_ppo_says_when_it_trains_past_total_timesteps(run_cli):
    """4 envs x 256 steps per rollout: 1500 steps take two rollouts, 2048 steps, and the log says so."""
    result = run_cli("agents.train", *TINY, "algo.total_timesteps=1500", "algo.eval_every=100000")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "trained 2048 env steps, 548 past algo.total_timesteps=1500" in result.stdout + result.stderr


def test_a_checkpoint_that_cannot_be_written_leaves_no_hidden_directory(tmp_path, monkeypatch):
    """A full disk mid-checkpoint: the write fails with its OSError and no .step_N.tmp/ stays behind."""
    import errno

    from policies.run_dir import RunDir

    run = RunDir(tmp_path)

    def fill(directory: Path) -> None:
        (directory / "policy.json").write_text("{}")
        raise OSError(errno.ENOSPC, "No space left on device", str(directory / "policy.safetensors"))

    with pytest.raises(OSError, match="No space"):
        run.write_checkpoint("step_10", fill)
    assert not [p.name for p in (tmp_path / "checkpoints").iterdir()]


# --- what a newcomer reads and runs first ------------------------------------------------------------


def test_the_readme_says_how_to_run_python_in_the_venv_before_its_first_example():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    first_example = readme.index("python -m agents.train env=swimmer policy=ncap")
    assert readme.index("source .venv/bin/activate") < first_example
    assert "success_rate=... ci95_low=..." in readme  # the kitchen evaluation's last line, as it prints it


def test_ros_tests_skip_with_a_reason_without_the_ros_extra(tmp_path):
    """Without rclpy the ROS test modules are skipped, each with the reason, instead of failing collection."""
    probe = tmp_path / "probe.py"
    probe.write_text("import sys\nsys.modules['rclpy'] = None  # as if the ros extra were not installed\n"
                     "import pytest\nsys.exit(pytest.main(['-q', '-rs', '-p', 'no:cacheprovider', '-n', '0', *sys.argv[1:]]))\n")
    tests = Path(__file__).resolve().parent
    result = subprocess.run([sys.executable, str(probe), str(tests / "test_ros_uav.py"), str(tests / "test_recorder.py")],
                            cwd=tests.parent, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 5, result.stdout[-3000:]  # pytest's "no tests ran": every module skipped, none failed
    assert "2 skipped" in result.stdout and "the ROS 2 tests need the ros extra" in result.stdout
