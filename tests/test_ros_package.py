"""The ROS 2 package as ROS tooling sees it: the pip install's layout and a real ``colcon build``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROS_PACKAGE_SRC

pytest.importorskip("rclpy", reason="the ROS 2 tests need the ros extra and the ROS package (README, command B)")

PACKAGE = "embodied_ros"
NODES = ("policy_node", "sim_robot", "recorder")


def test_pip_install_puts_executables_where_launch_ros_looks():
    prefix = Path(sys.prefix)
    for node in NODES:
        exe = prefix / "lib" / PACKAGE / node
        assert exe.is_file() and os.access(exe, os.X_OK), f"{exe} missing or not executable"
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE).is_file()
    assert (prefix / "share" / PACKAGE / "package.xml").is_file()
    assert (prefix / "bin" / "robot-launch").is_file()


def test_colcon_build_accepts_the_package_and_its_nodes_run(tmp_path, ros_env):
    """colcon (ament_python) builds it in a workspace; the built node runs with the venv's python."""
    workspace = tmp_path / "ws"
    shutil.copytree(ROS_PACKAGE_SRC, workspace / "src" / PACKAGE,
                    ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    colcon = Path(sys.prefix) / "bin" / "colcon"
    build = subprocess.run([str(colcon), "build"], cwd=workspace, env=ros_env, capture_output=True, text=True,
                           timeout=300)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    install = workspace / "install" / PACKAGE
    for node in NODES:
        assert os.access(install / "lib" / PACKAGE / node, os.X_OK)
    assert (install / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE).is_file()
    assert (install / "share" / PACKAGE / "package.xml").is_file()

    site = next((install / "lib").glob("python3*/site-packages"))
    env = {**ros_env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{ros_env['PATH']}",
           "PYTHONPATH": os.pathsep.join([str(site), ros_env["PYTHONPATH"].split(os.pathsep, 1)[1]])}
    run = subprocess.run([str(install / "lib" / PACKAGE / "policy_node"), "--ros-args", "-p",
                          f"run_dir:={tmp_path / 'missing'}"], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in run.stderr
