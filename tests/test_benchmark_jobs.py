"""The benchmarks' training pool: an interrupted run restarts, or continues where its trainer can resume."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

STATE = "checkpoints/last/trainer_state.pt"


@pytest.fixture
def interrupted(tmp_path, monkeypatch):
    """A work dir with a half-trained run (its resume state and an old log); training is faked."""
    run = tmp_path / "r_s0"
    (run / "checkpoints" / "last").mkdir(parents=True)
    (run / STATE).write_text("state")
    (tmp_path / "r_s0.log").write_text("first attempt\n")
    seen = []

    def fake_run(cmd, cwd, stdout, stderr):
        seen.append((run / STATE).is_file())
        stdout.write("second attempt\n")
        return type("Done", (), {"returncode": 0})()

    monkeypatch.setattr(common.subprocess, "run", fake_run)
    return tmp_path, seen


@pytest.mark.parametrize("resume_file, kept", [(None, False), (STATE, True)])
def test_interrupted_run_restarts_or_resumes(interrupted, resume_file, kept):
    work, seen = interrupted
    jobs = common.Jobs(work, 1, resume_file=resume_file)
    jobs.submit("r_s0", ["env=kitchen"])
    jobs.wait()
    assert seen == [kept]
    log = (work / "r_s0.log").read_text()
    assert log == ("first attempt\nsecond attempt\n" if kept else "second attempt\n")
