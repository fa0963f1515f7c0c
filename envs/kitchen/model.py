"""The Franka kitchen scene: Gymnasium-Robotics' kitchen MJCF, edited in code for cheap headless cameras.

## Why these assets
The scene is the Franka Kitchen of relay-policy-learning / D4RL (microwave, kettle, light switch,
slide and hinge cabinets, four burner knobs, Franka Panda with gripper), as shipped in the PyPI
wheel ``gymnasium-robotics==1.4.2`` (Apache-2.0). It installs from the registry with plain pip
(RoboHive's FK1 scene git-clones ~300 MB of assets at first use and pins mujoco 3.1.3), so the
task geometry, joint goals and thresholds are the benchmark's own. We only *read* the MJCF:
Gymnasium-Robotics' ``FrankaKitchen-v1`` class fails on mujoco >= 3.12 (an enum comparison in
``get_joint_qpos``), and our action space (absolute joint targets, as RoboAgent) differs anyway.
The path is found through the distribution's metadata, so the package is never imported (its
``__init__`` registers dozens of envs and prints a notice on stdout).

## Edits (on an ``mujoco.MjSpec``, never on the wheel's files)
- Cameras: ``scene``, fixed, looking over the robot's shoulder at the counter; ``wrist``, on the
  hand (``panda0_link7``), looking along the gripper between the fingers. The wheel's
  ``left_cap`` / ``right_cap`` stay.
- Render cost (software OSMesa renders every frame on the CPU): no shadow maps
  (``visual.quality.shadowsize 0``, ``castshadow`` off on every light), no multisampling
  (``offsamples 0``), no reflections (every material's ``reflectance 0``), no skybox texture
  (an 800x4800 cube map), and an offscreen buffer only as large as the largest image asked for
  (the wheel asks for 2560x1920, which is cleared on every frame).
- Gravity compensation (``gravcomp 1``) on the arm and hand bodies, as the real Franka's joint
  controller does: without it the position servos sag under the arm's weight (0.026 rad on
  joint 3 at the home pose), so an absolute joint target would not be the pose reached. Payloads
  (a grasped kettle) and contacts are not compensated.

Everything else (physics, 2 ms Euler steps, actuators, contacts) is the wheel's model.
:func:`kitchen_spec` returns the edited spec uncompiled: scene variations (textures, lights,
object poses, distractors) are further edits on it before :func:`compile_kitchen`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import mujoco

ASSET_PACKAGE = "gymnasium-robotics"
ASSET_VERSION = "1.4.2"  # the version the scene, goals and experts were written against
MODEL_FILE = "gymnasium_robotics/envs/assets/kitchen_franka/kitchen_assets/kitchen_env_model.xml"

ARM_JOINTS = tuple(f"robot:panda0_joint{i}" for i in range(1, 8))
FINGER_JOINTS = ("robot:panda0_finger_joint1", "robot:panda0_finger_joint2")
ARM_ACTUATORS = tuple(f"panda0_joint{i}" for i in range(1, 8))
FINGER_ACTUATORS = ("r_gripper_finger_joint", "l_gripper_finger_joint")
FINGER_TRAVEL = 0.04  # m per finger (joint range 0..0.04); the gripper opens 0.08 m in all
HAND_BODY = "panda0_link7"
GRIPPER_SITE = "end_effector"  # between the finger pads, 0.21 m along the hand's axis
ROBOT_BODIES = tuple(f"panda0_link{i}" for i in range(1, 8)) + ("panda0_leftfinger", "panda0_rightfinger")

SCENE_CAMERA = "scene"
WRIST_CAMERA = "wrist"
CAMERAS = (SCENE_CAMERA, WRIST_CAMERA, "left_cap", "right_cap")


def asset_path() -> Path:
    """The wheel's kitchen MJCF, located without importing ``gymnasium_robotics``."""
    try:
        dist = distribution(ASSET_PACKAGE)
    except PackageNotFoundError:
        raise RuntimeError(f"the kitchen scene needs {ASSET_PACKAGE}=={ASSET_VERSION} (pip install it)") from None
    if dist.version != ASSET_VERSION:
        raise RuntimeError(f"the kitchen scene was written against {ASSET_PACKAGE}=={ASSET_VERSION}, found {dist.version}")
    path = Path(dist.locate_file(MODEL_FILE))
    if not path.is_file():
        raise RuntimeError(f"{ASSET_PACKAGE} {dist.version} has no {MODEL_FILE}")
    return path


def kitchen_spec(image_size: int = 96, low_poly_robot: bool = True) -> mujoco.MjSpec:
    """The edited (uncompiled) kitchen spec; ``image_size`` sizes the offscreen buffer (pixels)."""
    spec = mujoco.MjSpec.from_file(str(asset_path()))
    _cheap_rendering(spec, image_size)
    if low_poly_robot:
        _low_poly_robot(spec)
    _add_cameras(spec)
    for name in ROBOT_BODIES:
        spec.body(name).gravcomp = 1.0
    return spec


def compile_kitchen(spec: mujoco.MjSpec) -> mujoco.MjModel:
    return spec.compile()


def _cheap_rendering(spec: mujoco.MjSpec, image_size: int) -> None:
    quality = spec.visual.quality
    quality.shadowsize = 0
    quality.offsamples = 0
    spec.visual.global_.offwidth = int(image_size)
    spec.visual.global_.offheight = int(image_size)
    for material in spec.materials:
        material.reflectance = 0.0
    for light in spec.lights:
        light.castshadow = False
    for texture in list(spec.textures):
        if texture.type == mujoco.mjtTexture.mjTEXTURE_SKYBOX:
            spec.delete(texture)


def _low_poly_robot(spec: mujoco.MjSpec) -> None:
    for geom in spec.geoms:
        if geom.type == mujoco.mjtGeom.mjGEOM_MESH and geom.meshname in _LOW_POLY:
            geom.meshname = _LOW_POLY[geom.meshname]


_LOW_POLY = {f"link{i}_viz": f"link{i}_col" for i in range(8)} | {"hand_viz": "hand_col"}


def _add_cameras(spec: mujoco.MjSpec) -> None:
    # Behind and above the robot's base, looking forward and down at the counter: every appliance
    # and the whole arm in view (vertical field of view 70 degrees).
    spec.worldbody.add_camera(name=SCENE_CAMERA, pos=[-0.2, -0.85, 2.95], xyaxes=[1, 0, 0, 0, 0.6, 0.8], fovy=65)
    # On the hand: 0.05 m off the hand's axis, looking along it (MuJoCo cameras look along -z),
    # so the finger pads and what lies between them are in the picture.
    spec.body(HAND_BODY).add_camera(name=WRIST_CAMERA, pos=[0.04, -0.04, 0.16], xyaxes=[0.707, 0.707, 0, 0.685, -0.685, 0.247],
                                    fovy=80)
