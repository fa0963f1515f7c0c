"""ament_python package; also pip-installable into the project's venv.

The nodes are installed as small ``lib/embodied_ros/<node>`` wrappers (data files), where
``ros2 run`` and launch_ros look for executables: a pip install ignores setup.cfg's script
directory, so console scripts alone would land in ``bin/`` and launch_ros would not find them.
Under ``colcon build`` the same data files land in the workspace's ``lib/embodied_ros``.

The nodes import the project's ``envs`` (observation assembly, the sim) and ``policies`` (bundles,
inference), so the package depends on the project's distribution with its ROS extra.
"""

from pathlib import Path

from setuptools import setup

PACKAGE = "embodied_ros"
NODES = ("policy_node", "sim_robot", "recorder")  # scripts/<name> runs embodied_ros.<module>

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=[PACKAGE],
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"lib/{PACKAGE}", [str(Path("scripts") / name) for name in NODES]),
    ],
    install_requires=["setuptools", "embodied-stack[ros]"],
    zip_safe=True,
    description="ROS 2 deployment of embodied-stack policies",
    license="Apache-2.0",
    entry_points={
        "console_scripts": ["robot-launch=embodied_ros.launcher:main"],
    },
)
