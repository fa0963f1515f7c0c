"""Scene variation levels for the kitchen, after RoboAgent's generalisation levels, and the
appearance randomisation that semantic augmentation re-renders demonstrations with.

| level | what changes per episode (on top of the level below) |
|---|---|
| ``L0`` | nothing: the training distribution (only the robot's start noise) |
| ``L1`` | object poses (the whole kitchen ±``KITCHEN_SHIFT`` in x/y, each wall cabinet and the microwave a further ±``APPLIANCE_SHIFT``, the kettle's start ±``KETTLE_SHIFT``) and lighting (light positions, directions, brightness and colour) |
| ``L2`` | surface appearance (every scene material re-textured from the scene's own textures and tinted) and ``N_DISTRACTORS`` distractor objects on the counter |
| ``L3`` | the L1 scene with held-out language: instruction paraphrases and task sequences never seen in training (chosen by the env, not here) |

Distractors are visual clutter (primitive shapes in random colours, no collisions): they change
what the cameras see, never the physics the experts and the success thresholds rely on. They
exist in every model (hidden below the floor) so that one compiled model serves every level and
a snapshot restores them. The robot is never recoloured or moved.

Everything is applied to an ``MjModel`` in place and undone from recorded nominal values at the
next :meth:`SceneVariation.apply`, so a level is a pure function of the episode's RNG.
"""

from __future__ import annotations

import mujoco
import numpy as np

LEVELS = ("L0", "L1", "L2", "L3")
KITCHEN_SHIFT = 0.02  # m, the whole kitchen (counter, oven, knobs, wall cabinets, microwave)
APPLIANCE_SHIFT = 0.02  # m, each movable appliance on top of that
KETTLE_SHIFT = 0.03  # m, the kettle's start on its burner
N_DISTRACTORS = 4
DISTRACTOR_PREFIX = "distractor"
KITCHEN_BODY = "desk"
APPLIANCES = ("microwave", "slidecabinet", "hingecabinet")
PARKED_Z = -2.0  # hidden distractors wait below the floor
# Free-counter region for distractors, world frame (x, y ranges at counter height z).
DISTRACTOR_REGION = ((-0.1, 0.45), (0.35, 0.6), 1.64)


def check_level(level: str) -> str:
    if level not in LEVELS:
        raise ValueError(f"unknown kitchen level {level!r}; choose one of {LEVELS}")
    return level


def add_distractors(spec: mujoco.MjSpec, n: int = N_DISTRACTORS) -> None:
    """Add ``n`` mocap bodies with one visual-only primitive each, parked out of sight."""
    shapes = (mujoco.mjtGeom.mjGEOM_BOX, mujoco.mjtGeom.mjGEOM_CYLINDER, mujoco.mjtGeom.mjGEOM_SPHERE)
    for i in range(n):
        body = spec.worldbody.add_body(name=f"{DISTRACTOR_PREFIX}{i}", mocap=True, pos=[0.0, 0.0, PARKED_Z])
        body.add_geom(name=f"{DISTRACTOR_PREFIX}{i}_geom", type=shapes[i % len(shapes)], size=[0.03, 0.03, 0.04],
                      contype=0, conaffinity=0, group=1, rgba=[0.8, 0.2, 0.2, 1.0])


class SceneVariation:
    """Per-episode scene edits of one kitchen model (see the module docstring for the levels)."""

    def __init__(self, model: mujoco.MjModel, kettle_qpos_adr: int):
        self.model = model
        self.kettle_adr = int(kettle_qpos_adr)
        self.kitchen = model.body(KITCHEN_BODY).id
        self.appliances = [model.body(name).id for name in APPLIANCES]
        self.distractors = [model.body(f"{DISTRACTOR_PREFIX}{i}").id for i in range(N_DISTRACTORS)
                            if mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, f"{DISTRACTOR_PREFIX}{i}") >= 0]
        self.distractor_geoms = [model.geom(f"{DISTRACTOR_PREFIX}{i}_geom").id for i in range(len(self.distractors))]
        robot_geoms = _robot_geoms(model)
        self.scene_materials = sorted({int(model.geom_matid[g]) for g in range(model.ngeom)
                                       if model.geom_matid[g] >= 0 and g not in robot_geoms})
        self.textures_2d = [t for t in range(model.ntex) if model.tex_type[t] == mujoco.mjtTexture.mjTEXTURE_2D]
        self.nominal = {
            "body_pos": model.body_pos.copy(), "light_pos": model.light_pos.copy(), "light_dir": model.light_dir.copy(),
            "light_diffuse": model.light_diffuse.copy(), "light_ambient": model.light_ambient.copy(),
            "mat_rgba": model.mat_rgba.copy(), "mat_texid": model.mat_texid.copy(), "geom_rgba": model.geom_rgba.copy(),
            "mocap_pos": np.zeros((model.nmocap, 3)),
        }
        self.kettle_offset = np.zeros(2)

    # --- the levels ------------------------------------------------------------------------
    def apply(self, level: str, rng: np.random.Generator, data: mujoco.MjData | None = None) -> None:
        """Restore the nominal scene, then draw this episode's variation (before the state is set)."""
        check_level(level)
        self.restore_nominal(data)
        if level in ("L1", "L2", "L3"):
            self.vary_poses(rng)
            self.vary_lighting(rng)
        if level == "L2":
            self.vary_appearance(rng)
            if data is not None:
                self.place_distractors(rng, data)

    def restore_nominal(self, data: mujoco.MjData | None = None) -> None:
        m, nom = self.model, self.nominal
        m.body_pos[:] = nom["body_pos"]
        m.light_pos[:], m.light_dir[:] = nom["light_pos"], nom["light_dir"]
        m.light_diffuse[:], m.light_ambient[:] = nom["light_diffuse"], nom["light_ambient"]
        m.mat_rgba[:], m.mat_texid[:] = nom["mat_rgba"], nom["mat_texid"]
        m.geom_rgba[:] = nom["geom_rgba"]
        self.kettle_offset = np.zeros(2)
        if data is not None and self.distractors:
            for body in self.distractors:
                data.mocap_pos[m.body_mocapid[body]] = [0.0, 0.0, PARKED_Z]

    def vary_poses(self, rng: np.random.Generator) -> None:
        m = self.model
        kitchen = rng.uniform(-KITCHEN_SHIFT, KITCHEN_SHIFT, 2)
        m.body_pos[self.kitchen, :2] += kitchen
        for body in self.appliances:
            m.body_pos[body, :2] += rng.uniform(-APPLIANCE_SHIFT, APPLIANCE_SHIFT, 2)
        # The kettle is a free body, not part of the kitchen's tree: it moves with its burner, and then some.
        self.kettle_offset = kitchen + rng.uniform(-KETTLE_SHIFT, KETTLE_SHIFT, 2)

    def kettle_start(self, qpos: np.ndarray) -> None:
        """Move the kettle's start (called on the reset qpos, after :meth:`apply`)."""
        qpos[self.kettle_adr : self.kettle_adr + 2] += self.kettle_offset

    def vary_lighting(self, rng: np.random.Generator) -> None:
        m = self.model
        n = m.nlight
        m.light_pos[:] += rng.uniform(-0.5, 0.5, (n, 3))
        direction = m.light_dir + rng.uniform(-0.3, 0.3, (n, 3))
        m.light_dir[:] = direction / np.linalg.norm(direction, axis=1, keepdims=True)
        m.light_diffuse[:] = np.clip(m.light_diffuse * rng.uniform(0.5, 1.3, (n, 1)) * rng.uniform(0.85, 1.15, (n, 3)), 0, 1)
        m.light_ambient[:] = np.clip(m.light_ambient + rng.uniform(-0.05, 0.15, (n, 3)), 0, 1)

    def vary_appearance(self, rng: np.random.Generator) -> None:
        m = self.model
        for mat in self.scene_materials:
            if self.textures_2d and m.mat_texid[mat, mujoco.mjtTextureRole.mjTEXROLE_RGB] >= 0:
                m.mat_texid[mat, mujoco.mjtTextureRole.mjTEXROLE_RGB] = rng.choice(self.textures_2d)
            m.mat_rgba[mat, :3] = rng.uniform(0.2, 1.0, 3)

    def place_distractors(self, rng: np.random.Generator, data: mujoco.MjData) -> None:
        (x0, x1), (y0, y1), z = DISTRACTOR_REGION
        m = self.model
        for body, geom in zip(self.distractors, self.distractor_geoms):
            data.mocap_pos[m.body_mocapid[body]] = [rng.uniform(x0, x1), rng.uniform(y0, y1), z]
            m.geom_rgba[geom, :3] = rng.uniform(0.0, 1.0, 3)

    # --- snapshots -----------------------------------------------------------------------------
    def state(self) -> dict:
        m = self.model
        return {"body_pos": m.body_pos.copy(), "light_pos": m.light_pos.copy(), "light_dir": m.light_dir.copy(),
                "light_diffuse": m.light_diffuse.copy(), "light_ambient": m.light_ambient.copy(),
                "mat_rgba": m.mat_rgba.copy(), "mat_texid": m.mat_texid.copy(), "geom_rgba": m.geom_rgba.copy(),
                "kettle_offset": self.kettle_offset.copy()}

    def set_state(self, state: dict) -> None:
        m = self.model
        for key in ("body_pos", "light_pos", "light_dir", "light_diffuse", "light_ambient", "mat_rgba", "mat_texid",
                    "geom_rgba"):
            getattr(m, key)[:] = state[key]
        self.kettle_offset = np.array(state["kettle_offset"], dtype=np.float64)


def _robot_geoms(model: mujoco.MjModel) -> set[int]:
    robot_bodies = {b for b in range(model.nbody) if model.body(b).name.startswith("panda0")}
    return {g for g in range(model.ngeom) if model.geom_bodyid[g] in robot_bodies}
