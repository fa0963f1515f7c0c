"""Shared fixtures: tiny training runs (trained once per session) and CLI helpers.

Everything runs headless on the CPU. Training fixtures use a few thousand env steps and one
evaluation episode per checkpoint so that the whole suite stays within a few minutes on 2 cores.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

import envs  # noqa: F401  (registers the embodied/ env ids; sets MUJOCO_GL before mujoco loads)

if TYPE_CHECKING:
    from agents.dataset import Episode

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "configs"
ROS_PACKAGE_SRC = REPO / "ros_ws" / "src" / "embodied_ros"
# Tests exercise the working tree's ROS package (in-process and in the nodes they start), while
# the installed lib/embodied_ros wrappers and ament index entry stay the ones launch_ros uses.
sys.path.insert(0, str(ROS_PACKAGE_SRC))

# Overrides that make a PPO run tiny: 4 envs x 256 steps = 1024 steps per rollout, one
# deterministic evaluation episode per 1024 steps, two for the final evaluation.
TINY = [
    "algo.n_envs=4",
    "algo.sb3.n_steps=256",
    "algo.sb3.batch_size=512",
    "algo.sb3.n_epochs=4",
    "algo.eval_every=1024",
    "algo.eval_episodes=1",
    "algo.final_eval_episodes=2",
    "algo.checkpoint_every=1024",
    "threads=1",
    "progress_bar=false",
]

SUMMARY_LINE_TRAIN = re.compile(
    r"^return_mean=(?P<mean>-?[\d.e+-]+) return_std=(?P<std>[\d.e+-]+) steps=(?P<steps>\d+) "
    r"params=(?P<params>\d+) train_time_s=[\d.e+-]+ run_dir=(?P<run_dir>\S+)$"
)
SUMMARY_LINE_EVAL = re.compile(r"^return_mean=(?P<mean>-?[\d.e+-]+) return_std=(?P<std>[\d.e+-]+)$")


def compose_train(overrides: list[str]):
    """Compose configs/train.yaml with Hydra's compose API (no hydra node)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=False)


def restored_sb3_trainer(run: Path, scratch: Path):
    """An SB3 trainer built from a run's config and restored from its final state (no pickle read)."""
    from omegaconf import OmegaConf

    from agents.sb3_trainer import SB3Trainer
    from agents.trainer_state import load_state
    from policies.run_dir import RunDir

    cfg = OmegaConf.create(RunDir(run).read_config())
    trainer = SB3Trainer(cfg, RunDir(scratch), [])
    trainer.restore(load_state(RunDir(run).policy()))
    return trainer


def train_in_process(run_dir: Path, overrides: list[str]) -> dict:
    from agents.train import train

    torch.set_num_threads(1)
    cfg = compose_train(overrides)
    return train(cfg, Path(run_dir))


@pytest.fixture(autouse=True)
def _scratch_cwd(tmp_path, monkeypatch):
    """Run every test from a scratch directory: nothing (runs/, MUJOCO_LOG.TXT, videos) lands in the repo."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def ncap_run(tmp_path_factory) -> Path:
    """NCAP + PPO on the 6-link swimmer, 4096 env steps (4 PPO updates)."""
    run = tmp_path_factory.mktemp("runs") / "ncap"
    train_in_process(run, ["env=swimmer", "policy=ncap", "algo.total_timesteps=4096", "seed=0", *TINY])
    return run


@pytest.fixture(scope="session")
def mlp_run(tmp_path_factory) -> Path:
    """MLP + PPO on the 6-link swimmer, 2048 env steps."""
    run = tmp_path_factory.mktemp("runs") / "mlp"
    train_in_process(run, ["env=swimmer", "policy=mlp", "algo.total_timesteps=2048", "seed=0", *TINY])
    return run


@pytest.fixture
def copy_run(tmp_path):
    """Copy a run directory so a test can damage it without touching the session fixture."""

    def _copy(run: Path, name: str = "run") -> Path:
        dst = tmp_path / name
        shutil.copytree(run, dst)
        return dst

    return _copy


@dataclass
class CLIResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def last_line(self) -> str:
        lines = [ln for ln in self.stdout.splitlines() if ln.strip()]
        return lines[-1] if lines else ""

    @property
    def stderr_lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.strip()]


def cli_env() -> dict:
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    env.setdefault("MUJOCO_GL", "osmesa")
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
    # This checkout's packages, whichever one the venv's editable install points at.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_module(module: str, *args: str, cwd: Path, timeout: float = 300) -> CLIResult:
    """``python -m <module> <args>`` in ``cwd``, as a user would type it."""
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=cli_env(), capture_output=True,
                          text=True, timeout=timeout)
    return CLIResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def run_cli(tmp_path):
    """Run ``python -m <module> <args>`` from a scratch cwd (so nothing lands in the repo)."""

    def _run(module: str, *args: str, timeout: float = 300, cwd: Path | None = None) -> CLIResult:
        return run_module(module, *args, cwd=cwd or tmp_path, timeout=timeout)

    return _run


@pytest.fixture
def ros_env(tmp_path, monkeypatch) -> dict:
    """An isolated ROS 2 graph for this test and the processes it starts.

    Random domain id, discovery on loopback only (no multicast leaves the host), a private
    ROS_HOME for logs, the venv as the ament prefix, the working tree's ROS package first on
    PYTHONPATH. Returns the environment for child processes.
    """
    home = tmp_path / "ros_home"
    home.mkdir()
    settings = {
        "ROS_DOMAIN_ID": str(random.randint(1, 101)),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_HOME": str(home),
        "ROS_LOG_DIR": str(home / "log"),
        "AMENT_PREFIX_PATH": sys.prefix,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROS_PACKAGE_SRC), str(REPO), os.environ.get("PYTHONPATH")])),
        "TMPDIR": str(tmp_path),
    }
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("ROS_LOCALHOST_ONLY", raising=False)
    return {**cli_env(), **settings}


@pytest.fixture
def ros_context(ros_env):
    """An rclpy context on the test's isolated graph, shut down afterwards."""
    import rclpy

    context = rclpy.Context()
    rclpy.init(context=context)
    yield context
    rclpy.try_shutdown(context=context)


def check_quietly(fn, *args, allowed: tuple[str, ...] = ("infinity",), **kwargs) -> None:
    """Run a gymnasium checker and fail on any warning but those containing an ``allowed`` text
    (by default the unbounded-Box notice)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn(*args, **kwargs)
    unexpected = [str(w.message) for w in caught if not any(k in str(w.message) for k in allowed)]
    assert not unexpected, unexpected


# --- synthetic kitchen demonstrations and a tiny MT-ACT (tests/test_bc.py, tests/test_ros_mtact.py) -----------

SIZE = 32  # pixels: the synthetic datasets' images (the smallest the backbone takes)
# Overrides that make an MT-ACT run tiny: a few thousand parameters, chunks of 5, two demonstrations per task.
TINY_MTACT = ["policy.actor.hidden=32", "policy.actor.ffn=64", "policy.actor.heads=2", "policy.actor.enc_layers=1",
              "policy.actor.dec_layers=2", "policy.actor.cvae_layers=1", "policy.actor.backbone_width=8",
              "policy.actor.chunk=5", "algo.batch_size=8", "algo.warmup_steps=2", "algo.log_every=0",
              "algo.eval_workers=1", "algo.demos_per_task=2", "algo.val_fraction=0.5"]


def fake_episode(task: str, t: int, seed: int, success: bool = True, cameras=("scene", "wrist"), aug: int = 0) -> Episode:
    """A kitchen-shaped demonstration whose action at step i is (i, seed, ...) so windows are checkable."""
    import numpy as np

    from agents.dataset import Episode

    rng = np.random.default_rng(seed)
    actions = np.zeros((t, 8), np.float32)
    actions[:, 0] = np.arange(t)
    actions[:, 1] = seed
    obs = {"proprio": rng.normal(size=(t + 1, 8)).astype(np.float32),
           "object_state": rng.normal(size=(t + 1, 17)).astype(np.float32)}
    for c in cameras:
        obs[c] = rng.integers(0, 255, (t + 1, SIZE, SIZE, 3), dtype=np.uint8)
    return Episode(actions=actions, obs=obs, qpos=np.zeros((t + 1, 3)), rewards=np.zeros(t, np.float32),
                   success=np.arange(t) == t - 1 if success else np.zeros(t, bool), seed=seed, task=task,
                   instruction=f"do the {task.replace('_', ' ')}", paraphrase=0, augmentation=aug)


def fake_spec(cameras=("scene", "wrist")) -> dict:
    import numpy as np
    from gymnasium import spaces

    from agents.dataset import episode_spec

    obs = {"proprio": spaces.Box(-np.inf, np.inf, (8,), np.float32),
           "object_state": spaces.Box(-np.inf, np.inf, (17,), np.float32),
           **{c: spaces.Box(0, 255, (SIZE, SIZE, 3), np.uint8) for c in cameras}}
    return episode_spec(spaces.Dict(obs), 8, 3)


def write_fake_dataset(root: Path, tasks: dict[str, int], augment: int = 0, failures: dict | None = None) -> Path:
    from agents.dataset import DatasetWriter

    env = {"name": "kitchen", "id": "embodied/Kitchen-v0", "cameras": ["scene", "wrist"], "image_size": SIZE,
           "level": "L0", "paraphrase": None, "reset_noise": 0.02, "steps_per_task": 8, "terminate_on_success": True}
    writer = DatasetWriter(root, env, fake_spec(), ["scene", "wrist"])
    for task, n in tasks.items():
        for k in range(n):
            ok = k not in (failures or {}).get(task, ())
            writer.write(task, k, fake_episode(task, 5 + k, seed=100 * len(task) + k, success=ok))
            for j in range(1, augment + 1):
                writer.write(task, f"{k:05d}-a{j}", fake_episode(task, 5 + k, seed=100 * len(task) + k, success=ok, aug=j))
    return root


GL_PROBE = "import mujoco; m = mujoco.MjModel.from_xml_string('<mujoco/>'); r = mujoco.Renderer(m, 32, 32); r.close()"


@pytest.fixture(scope="session")
def gl_available() -> None:
    """Rendering works (probed in a child, so a broken GL cannot crash the test process): skipped without GL on a
    developer machine, failing when ``CI`` is set (CI must render: install libosmesa6)."""
    env = cli_env()
    try:
        proc = subprocess.run([sys.executable, "-c", GL_PROBE], env=env, capture_output=True, text=True, timeout=60)
        ok, why = proc.returncode == 0, (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    except subprocess.TimeoutExpired:
        ok, why = False, "GL probe timed out"
    if not ok:
        msg = f"no working GL backend (MUJOCO_GL={env['MUJOCO_GL']}): {why}"
        if os.environ.get("CI"):
            pytest.fail(f"{msg}; CI must render (install libosmesa6)")
        pytest.skip(msg)


def capturing_policy_node(ros_context, run, **params):
    """A PolicyNode in this process whose published commands land in a list instead of on DDS."""
    import numpy as np
    import rclpy.parameter

    from embodied_ros.policy_node import PolicyNode

    overrides = [rclpy.parameter.Parameter("run_dir", value=str(run))]
    overrides += [rclpy.parameter.Parameter(k, value=v) for k, v in params.items()]
    node = PolicyNode(context=ros_context, parameter_overrides=overrides)
    published = []
    node.pub.publish = lambda msg: published.append(np.asarray(msg.data))
    return node, published


def assert_one_line_error(result, *needles: str) -> str:
    """Exit code 2, exactly one non-empty stderr line starting with 'error:', naming the problem."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = result.stderr_lines
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("error: "), line
    for needle in needles:
        assert needle.lower() in line.lower(), (needle, line)
    return line


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small matrices: a second torch thread only adds contention on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config_error(overrides: list[str]) -> str:
    """The one-line message ``agents.train`` refuses these overrides with, checked in this process.

    What ``python -m agents.train`` prints for it (``error: <message>``, exit 2) is tested once
    through the CLI; the many bad values are checked here, without a process start each.
    """
    from agents.errors import UserError
    from agents.train import validate

    with pytest.raises(UserError) as caught:
        validate(compose_train(overrides))
    message = str(caught.value)
    assert message and "\n" not in message, message
    return message


def assert_names(message: str, *needles: str) -> None:
    for needle in needles:
        assert needle.lower() in message.lower(), (needle, message)


def launch_nodes(**overrides) -> list[dict]:
    """The node specs ``launch/robot.py`` builds for these launch arguments (the rest at their defaults)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_robot_launch", REPO / "launch" / "robot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = {name: default for name, (default, _) in module.ARGUMENTS.items()} | overrides
    return module.nodes(args)


class Launch:
    """``robot-launch launch/robot.py ARGS`` in its own session, its output in ``cwd/launch.log``."""

    def __init__(self, ros_env: dict, cwd: Path, *args: str):
        self.log = cwd / "launch.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "embodied_ros.launcher", str(REPO / "launch" / "robot.py"), *args],
            cwd=cwd, env=ros_env, stdin=subprocess.DEVNULL, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text()

    def died(self) -> str | None:
        if self.proc.poll() is None:
            return None
        return f"the launcher exited with {self.proc.returncode}:\n{self.output()[-3000:]}"

    def node_pids(self) -> dict[str, int]:
        import psutil

        out = {}
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                cmd = " ".join(child.cmdline())
            except psutil.NoSuchProcess:
                continue
            for module in ("sim_node", "policy_node", "recorder"):
                if f"embodied_ros.{module}" in cmd:
                    out[module] = child.pid
        return out

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise AssertionError(f"launcher did not stop on SIGINT:\n{self.output()[-3000:]}") from None
