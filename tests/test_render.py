"""Offscreen rendering: an rgb_array frame and an MP4 from ``agents.evaluate video=true``.

Gated on a GL probe run in a subprocess (MUJOCO_GL=osmesa unless already set). Without a
working GL backend the test is skipped on a developer machine but FAILS when ``CI`` is set:
CI must never silently skip rendering.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import SUMMARY_LINE_EVAL, cli_env

PROBE = "import mujoco; m = mujoco.MjModel.from_xml_string('<mujoco/>'); r = mujoco.Renderer(m, 32, 32); r.close()"


def _gl_env() -> dict:
    env = cli_env()
    env.setdefault("MUJOCO_GL", "osmesa")
    if env["MUJOCO_GL"] == "osmesa":
        env.setdefault("PYOPENGL_PLATFORM", "osmesa")
    return env


@pytest.fixture(scope="module")
def gl_available() -> None:
    env = _gl_env()
    try:
        proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60)
        ok, why = proc.returncode == 0, proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
    except subprocess.TimeoutExpired:
        ok, why = False, ["GL probe timed out"]
    if not ok:
        msg = f"no working GL backend (MUJOCO_GL={env['MUJOCO_GL']}): {why[0]}"
        if os.environ.get("CI"):
            pytest.fail(f"{msg}; CI must render (install libosmesa6)")
        pytest.skip(msg)


def test_rgb_frame_and_video(gl_available, run_cli, tmp_path):
    script = textwrap.dedent(
        """
        import numpy as np, gymnasium as gym, envs
        env = gym.make("embodied/Swimmer-v0", render_mode="rgb_array", width=80, height=64)
        env.reset(seed=0)
        frames = [env.render()]
        for k in range(20):
            env.step(np.sign(np.sin(2 * np.pi * k / 60 - np.arange(5))))
        frames.append(env.render())
        np.save("frames.npy", np.stack(frames))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=_gl_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    frames = np.load(tmp_path / "frames.npy")
    assert frames.shape == (2, 64, 80, 3) and frames.dtype == np.uint8
    assert frames[0].std() > 5, "blank frame"
    assert np.abs(frames[0].astype(int) - frames[1].astype(int)).mean() > 0.1, "the body did not move on screen"

    video = tmp_path / "clip.mp4"
    result = run_cli(
        "agents.evaluate", "env=swimmer", "policy=ncap", "episodes=1", "video=true", f"video_path={video}",
        "+env.max_episode_steps=45", "+env.width=96", "+env.height=96",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert SUMMARY_LINE_EVAL.match(result.last_line), result.last_line
    assert video.is_file() and video.stat().st_size > 1000
    assert not list(tmp_path.glob(".*tmp*")), "temporary video file left behind"
    import imageio.v3 as iio

    clip = iio.imread(video)
    assert clip.shape == (45, 96, 96, 3)
    assert clip.std() > 5
    assert np.abs(clip[0].astype(int) - clip[-1].astype(int)).mean() > 0.1
