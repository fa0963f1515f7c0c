"""A pinhole camera drawn by casting one MuJoCo ray per pixel: no OpenGL, no display, no ``MUJOCO_GL``.

The find envs give a policy small onboard images (32×32 by default) at every control step, on
headless training machines where a GL context may be missing or slow to create. MuJoCo's
``mj_multiRay`` intersects a fan of rays from one point with every visible geom (primitives,
meshes, height fields) on the CPU, which at these sizes costs well under a millisecond and
returns exactly which geom each pixel sees, a segmentation map for free.

Conventions (those of :mod:`envs.scene` and of MuJoCo's cameras): ``rotation`` maps camera-frame
vectors to world; the camera looks along its own -z, +y is up and +x is right in the image;
row 0 of every image is its top row. ``fovy_deg`` is the vertical field of view; pixels are
square, so the horizontal one follows from the aspect ratio.

What a :class:`CameraFrame` holds:

- ``depth`` (float32, metres): planar depth, the distance along the optical axis, as MuJoCo's
  GL depth buffer gives it once linearised; ``max_depth`` where no geom is hit within ``max_depth``;
- ``geom`` (int32): the id of the geom each pixel sees, -1 for none;
- ``rgb`` (uint8): each hit geom's colour (its ``geom_rgba``, or its material's ``mat_rgba`` when
  it has a material, times the mean colour of the material's texture when it has one), shaded
  by a headlight, ``ambient + (1 - ambient)·|cos θ|`` with θ the angle between the ray and the
  surface normal, so faces of a shape differ and round shapes look round; a fixed ``sky`` colour
  where nothing is hit.

Rays only see geoms MuJoCo calls visible (alpha > 0), in the enabled ``geomgroup`` (None: all
groups), and never the geoms of ``bodyexclude`` (the agent's own body, so the camera can sit
inside it). The geoms' world poses are read from ``data`` as they are: call ``mj_kinematics``
(or ``mj_forward``, ``mj_step``) after moving anything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import mujoco
import numpy as np

SKY = (0.62, 0.76, 0.90)  # rgb in [0, 1], the colour of pixels that hit nothing
AMBIENT = 0.35  # share of a colour a surface keeps when lit edge-on


@dataclass(frozen=True)
class CameraFrame:
    """One rendered frame; every array is H×W (rgb H×W×3) and owned by the caller."""

    rgb: np.ndarray  # uint8 (H, W, 3)
    depth: np.ndarray  # float32 (H, W), metres along the optical axis; max_depth where nothing is hit
    geom: np.ndarray  # int32 (H, W), the geom id seen, -1 where nothing is hit


def camera_rays(width: int, height: int, fovy_deg: float) -> np.ndarray:
    """Unit ray directions in the camera frame, (H·W, 3), row-major from the top-left pixel.

    Each ray passes through its pixel's centre on the image plane z = -1.
    """
    focal = (height / 2.0) / math.tan(math.radians(fovy_deg) / 2.0)  # px
    cols = (np.arange(width) + 0.5 - width / 2.0) / focal
    rows = -(np.arange(height) + 0.5 - height / 2.0) / focal  # +y is up, row 0 is the top
    x, y = np.meshgrid(cols, rows)
    rays = np.stack([x, y, -np.ones_like(x)], axis=-1).reshape(-1, 3)
    return rays / np.linalg.norm(rays, axis=1, keepdims=True)


def camera_mount(tilt_deg: float, forward) -> np.ndarray:
    """Camera -> body rotation of a camera looking along the body axis ``forward`` (a unit vector
    perpendicular to the body's +z, its up), pitched ``tilt_deg`` down: image right is forward x up."""
    t = math.radians(tilt_deg)
    forward, up = np.asarray(forward, dtype=np.float64), np.array([0.0, 0.0, 1.0])
    right, camera_up = np.cross(forward, up), math.sin(t) * forward + math.cos(t) * up
    return np.column_stack([right, camera_up, np.cross(right, camera_up)])


def _texture_means(model: mujoco.MjModel) -> np.ndarray:
    """(ntex, 3) mean rgb in [0, 1] of each texture (a ray hit has no texture coordinates)."""
    means = np.ones((model.ntex, 3))
    for t in range(model.ntex):
        n_channels = int(model.tex_nchannel[t])
        size = int(model.tex_width[t] * model.tex_height[t] * n_channels)
        texels = model.tex_data[model.tex_adr[t]: model.tex_adr[t] + size].reshape(-1, n_channels)
        means[t] = texels[:, :3].mean(axis=0) / 255.0 if n_channels >= 3 else texels[:, 0].mean() / 255.0
    return means


class RaycastCamera:
    """A ``width``×``height`` pinhole camera on ``model`` (see the module docstring)."""

    def __init__(self, model: mujoco.MjModel, width: int, height: int, fovy_deg: float, max_depth: float,
                 bodyexclude: int = -1, geomgroup: Sequence[int] | None = None, sky: Sequence[float] = SKY,
                 ambient: float = AMBIENT):
        if int(width) < 1 or int(height) < 1:
            raise ValueError(f"camera width and height must be >= 1 px, got {width}x{height}")
        if not 0.0 < fovy_deg < 180.0:
            raise ValueError(f"fovy_deg must be in (0, 180) degrees, got {fovy_deg}")
        if not max_depth > 0.0:
            raise ValueError(f"max_depth must be a positive distance in m, got {max_depth}")
        if geomgroup is not None and len(geomgroup) != mujoco.mjNGROUP:
            raise ValueError(f"geomgroup must have {mujoco.mjNGROUP} flags, got {list(geomgroup)}")
        self.model = model
        self.width, self.height = int(width), int(height)
        self.fovy_deg = float(fovy_deg)
        self.max_depth = float(max_depth)
        self.bodyexclude = int(bodyexclude)
        self.geomgroup = None if geomgroup is None else np.asarray(geomgroup, dtype=np.uint8)
        self.sky = np.asarray(sky, dtype=np.float64)
        self.ambient = float(ambient)
        self.rays = camera_rays(self.width, self.height, self.fovy_deg)  # camera frame, computed once
        self._forward = -self.rays[:, 2]  # cos of each ray's angle to the optical axis: planar depth factor
        # Materials do not change at run time; geom colours may (envs recolour objects per episode).
        mat_colour = model.mat_rgba[:, :3].astype(np.float64)
        textured = model.mat_texid[:, mujoco.mjtTextureRole.mjTEXROLE_RGB] if model.nmat else np.zeros(0, int)
        if model.ntex:
            means = _texture_means(model)
            for m, t in enumerate(textured):
                if t >= 0:
                    mat_colour[m] *= means[t]
        self._has_material = (model.geom_matid >= 0)[:, None]
        self._geom_mat_colour = mat_colour[np.maximum(model.geom_matid, 0)] if model.nmat else np.ones((model.ngeom, 3))
        self._table = np.empty((model.ngeom + 1, 3))  # rgb in [0, 1]: the sky, then every geom
        self._table[0] = np.clip(self.sky, 0.0, 1.0)
        n = self.width * self.height
        self._dist = np.empty(n)
        self._geom = np.empty(n, dtype=np.int32)
        self._normal = np.empty(3 * n)

    def colours(self) -> np.ndarray:
        """(ngeom, 3) base colour of every geom in [0, 1], as the module docstring defines it."""
        return np.where(self._has_material, self._geom_mat_colour, self.model.geom_rgba[:, :3])

    def render(self, data: mujoco.MjData, position: np.ndarray, rotation: np.ndarray) -> CameraFrame:
        """The frame seen from ``position`` (world, m) with ``rotation`` (3×3, camera → world)."""
        rotation = np.asarray(rotation, dtype=np.float64).reshape(3, 3)
        origin = np.asarray(position, dtype=np.float64).reshape(3)
        rays = self.rays @ rotation.T
        n = len(rays)
        mujoco.mj_multiRay(self.model, data, origin, rays.reshape(-1), self.geomgroup, True, self.bodyexclude,
                           self._geom, self._dist, self._normal, n, mujoco.mjMAXVAL)
        depth = self._dist * self._forward  # misses have distance -1, so negative depth
        geom = self._geom.copy()
        geom[depth >= self.max_depth] = -1
        miss = geom < 0
        depth[miss] = self.max_depth
        # Headlight shading; the colour table's row 0 is the sky, row g + 1 geom g (np.take: fast gathers).
        shade = np.abs(np.einsum("ij,ij->i", self._normal.reshape(n, 3), rays))
        shade *= 255.0 * (1.0 - self.ambient)
        shade += 255.0 * self.ambient
        shade[miss] = 255.0
        np.clip(self.colours(), 0.0, 1.0, out=self._table[1:])
        rgb = np.take(self._table, geom + 1, axis=0)
        rgb *= shade[:, None]
        rgb += 0.5
        h, w = self.height, self.width
        return CameraFrame(rgb=rgb.astype(np.uint8).reshape(h, w, 3), depth=depth.astype(np.float32).reshape(h, w),
                           geom=geom.reshape(h, w))
