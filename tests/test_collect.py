"""Demonstration datasets: ``agents.collect`` and the ``agents.dataset`` format (write, resume, validate)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from agents.dataset import (
    FORMAT_VERSION,
    MANIFEST,
    DatasetError,
    DatasetWriter,
    Episode,
    read_episodes,
    read_manifest,
)

from conftest import assert_one_line_error

LAST_LINE = re.compile(r"^episodes=(\d+) skipped=(\d+) augmented=(\d+) failed_attempts=\d+ steps=(\d+) seconds=\S+ "
                       r"dir=(.+)$")
SMALL = ["env.image_size=24", "workers=1"]  # small frames keep the collection tests quick


def last_line(result) -> re.Match:
    assert result.returncode == 0, result.stderr[-3000:]
    line = [ln for ln in result.stdout.splitlines() if ln.strip()][-1]
    m = LAST_LINE.match(line)
    assert m, line
    return m


@pytest.fixture(scope="module")
def microwave_dataset(tmp_path_factory) -> tuple[Path, str]:
    """Two expert demonstrations of the microwave with both cameras, through the CLI."""
    import subprocess
    import sys

    from conftest import cli_env

    out = tmp_path_factory.mktemp("ds") / "microwave"
    proc = subprocess.run([sys.executable, "-m", "agents.collect", "task=microwave", "episodes=2", f"out={out}", *SMALL],
                          cwd=out.parent, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


def test_collect_writes_successful_demonstrations_with_both_cameras(microwave_dataset):
    out, stdout = microwave_dataset
    m = LAST_LINE.match([ln for ln in stdout.splitlines() if ln.strip()][-1])
    assert m and int(m[1]) == 2 and int(m[2]) == 0 and Path(m[5]) == out
    manifest = read_manifest(out)
    assert manifest["cameras"] == ["scene", "wrist"] and manifest["version"] == FORMAT_VERSION
    assert "task" not in manifest["env"]  # one dataset holds every task
    episodes = list(read_episodes(out))
    assert len(episodes) == 2 and int(m[4]) == sum(e.length for e in episodes)
    for e in episodes:
        t = e.length
        assert e.task == "microwave" and e.episode_success and e.success[-1] and not e.success[0]
        assert e.actions.shape == (t, 8) and e.actions.dtype == np.float32
        assert e.obs["proprio"].shape == (t + 1, 8) and e.obs["object_state"].shape == (t + 1, 17)
        assert e.obs["scene"].shape == e.obs["wrist"].shape == (t + 1, 24, 24, 3)
        assert e.obs["scene"].dtype == np.uint8 and not np.array_equal(e.obs["scene"], e.obs["wrist"])
        assert "microwave" in e.instruction.lower() and e.rewards.sum() == 1.0
        assert e.qpos.shape[0] == t + 1 and not np.array_equal(e.qpos[0], e.qpos[-1])
    assert episodes[0].seed != episodes[1].seed


def test_collect_resumes_by_skipping_what_is_on_disk(microwave_dataset, run_cli, tmp_path):
    """Rerunning with more episodes writes only the missing ones and leaves the others untouched."""
    import shutil

    out = tmp_path / "resumed"
    shutil.copytree(microwave_dataset[0], out)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "episodes" / "microwave").iterdir()}
    m = last_line(run_cli("agents.collect", "task=microwave", "episodes=3", f"out={out}", *SMALL))
    assert (int(m[1]), int(m[2])) == (1, 2)
    after = {p.name: p.stat().st_mtime_ns for p in (out / "episodes" / "microwave").iterdir()}
    assert sorted(after) == ["00000.npz", "00001.npz", "00002.npz"]
    assert all(after[name] == t for name, t in before.items())
    assert not list(out.rglob("*.tmp"))  # atomic writes leave nothing behind


def test_collect_augments_a_dataset_in_place(microwave_dataset, run_cli, tmp_path):
    """augment=1 on a finished dataset adds one re-rendered copy of each demonstration, nothing else."""
    import shutil

    out = tmp_path / "augmented"
    shutil.copytree(microwave_dataset[0], out)
    m = last_line(run_cli("agents.collect", "task=microwave", "episodes=2", "augment=1", f"out={out}", *SMALL))
    assert (int(m[1]), int(m[2]), int(m[3])) == (0, 2, 2)
    episodes = {(e.seed, e.augmentation): e for e in read_episodes(out)}
    assert sorted(k[1] for k in episodes) == [0, 0, 1, 1]
    for (seed, k), e in episodes.items():
        if k == 1:
            original = episodes[(seed, 0)]
            assert np.array_equal(e.actions, original.actions) and np.array_equal(e.qpos, original.qpos)
            assert not np.array_equal(e.obs["scene"], original.obs["scene"])


def test_collect_refuses_a_dataset_of_other_settings(microwave_dataset, run_cli, tmp_path):
    import shutil

    out = tmp_path / "other"
    shutil.copytree(microwave_dataset[0], out)
    result = run_cli("agents.collect", "task=microwave", "episodes=1", f"out={out}", "env.image_size=32", "workers=1")
    assert_one_line_error(result, "another", "output directory")


@pytest.mark.parametrize("args,needles", [
    (["augment=2", "env.cameras=[]"], ["augment", "cameras"]),
    (["task=dishes"], ["dishes", "microwave"]),
    (["env=swimmer"], ["kitchen", "swimmer"]),
    (["episodes=0"], ["episodes"]),
    (["noise=-1"], ["noise"]),
], ids=["augment-without-cameras", "unknown-task", "other-env", "zero-episodes", "negative-noise"])
def test_collect_bad_input_is_one_line(run_cli, tmp_path, args, needles):
    assert_one_line_error(run_cli("agents.collect", *args, f"out={tmp_path / 'ds'}", "workers=1"), *needles)


# --- the format ------------------------------------------------------------------------------------
SPEC = {"actions": {"shape": [2], "dtype": "float32"}, "qpos": {"shape": [2], "dtype": "float64"},
        "obs/x": {"shape": [3], "dtype": "float64"}}


def tiny_episode(t: int = 4, seed: int = 0) -> Episode:
    return Episode(actions=np.zeros((t, 2), np.float32), obs={"x": np.arange((t + 1) * 3, dtype=np.float64).reshape(-1, 3)},
                   qpos=np.ones((t + 1, 2)), rewards=np.zeros(t, np.float32), success=np.arange(t) == t - 1, seed=seed, task="kettle",
                   instruction="move the kettle", paraphrase=1)


def test_format_round_trip(tmp_path):
    writer = DatasetWriter(tmp_path / "d", {"name": "kitchen"}, SPEC, [])
    writer.write("kettle", 0, tiny_episode(seed=5))
    (e,) = list(read_episodes(tmp_path / "d"))
    ref = tiny_episode(seed=5)
    assert np.array_equal(e.obs["x"], ref.obs["x"]) and np.array_equal(e.actions, ref.actions)
    assert (e.seed, e.task, e.instruction, e.paraphrase, e.episode_success) == (5, "kettle", "move the kettle", 1, True)


def test_writer_rejects_episodes_that_do_not_match_the_manifest(tmp_path):
    writer = DatasetWriter(tmp_path / "d", {"name": "kitchen"}, SPEC, [])
    bad = tiny_episode()
    bad.obs["x"] = bad.obs["x"][:-1]  # one observation short
    with pytest.raises(DatasetError, match="obs/x"):
        writer.write("kettle", 0, bad)
    assert not (tmp_path / "d" / "episodes").exists()


def test_reader_errors_name_the_problem(tmp_path):
    with pytest.raises(DatasetError, match="not a dataset"):
        read_manifest(tmp_path)
    DatasetWriter(tmp_path / "d", {"name": "kitchen"}, SPEC, []).write("kettle", 0, tiny_episode())
    manifest = json.loads((tmp_path / "d" / MANIFEST).read_text())
    (tmp_path / "d" / MANIFEST).write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(DatasetError, match="version 99"):
        list(read_episodes(tmp_path / "d"))
    (tmp_path / "d" / MANIFEST).write_text(json.dumps(manifest))
    (tmp_path / "d" / "episodes" / "kettle" / "00000.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="unreadable"):
        list(read_episodes(tmp_path / "d"))
