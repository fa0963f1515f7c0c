"""The find tasks' primitive shapes (box, pillar, sphere, cone) as MuJoCo geoms resized per episode.

A find env compiles its model once, so each object slot holds one geom per shape at the largest
size, and a reset shows one of them resized to dimensions drawn from the env's ranges
(:class:`ShapeSizes`). The UAV and the swimmer draw the same shapes at different scales; what a
shape's dimensions mean, how they are drawn and how a geom takes them is written here once. A
cone is a mesh, which cannot be resized: a slot holds one cone per height of ``cone_heights``, and
its dims are that height's index. (The UAV's ring, made of capsules, stays in its own module.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import mujoco
import numpy as np

PRIMITIVES = ("box", "pillar", "sphere", "cone")


@dataclass(frozen=True)
class ShapeSizes:
    """One env's dimension ranges per shape, m, drawn per episode.

    An object's ``dims``: box: half-width x, half-width y, height; pillar: radius, height;
    sphere: radius; cone: index into ``cone_heights``.
    """

    box_half_width: tuple[float, float]
    box_height: tuple[float, float]
    pillar_radius: tuple[float, float]
    pillar_height: tuple[float, float]
    sphere_radius: tuple[float, float]
    cone_radius: float
    cone_heights: tuple[float, ...]  # one mesh each

    def draw_dims(self, shape: str, rng: np.random.Generator) -> tuple[float, ...]:
        if shape == "box":
            return (float(rng.uniform(*self.box_half_width)), float(rng.uniform(*self.box_half_width)),
                    float(rng.uniform(*self.box_height)))
        if shape == "pillar":
            return (float(rng.uniform(*self.pillar_radius)), float(rng.uniform(*self.pillar_height)))
        if shape == "sphere":
            return (float(rng.uniform(*self.sphere_radius)),)
        return (float(rng.integers(len(self.cone_heights))),)

    def height(self, shape: str, dims: tuple[float, ...]) -> float:
        """m, the top of a shape standing on the ground."""
        if shape in ("box", "pillar"):
            return dims[-1]
        if shape == "sphere":
            return 2.0 * dims[0]
        return self.cone_heights[int(dims[0])]

    def half_extent(self, shape: str, dims: tuple[float, ...]) -> float:
        """m, its largest half-extent."""
        if shape == "box":
            return max(dims[0], dims[1], dims[2] / 2)
        if shape == "pillar":
            return max(dims[0], dims[1] / 2)
        if shape == "cone":
            return max(self.cone_radius, self.height(shape, dims) / 2)
        return dims[0]

    def add_meshes(self, spec: mujoco.MjSpec) -> None:
        """The cone meshes ``cone0``, ``cone1``, …, one per height."""
        for k, height in enumerate(self.cone_heights):
            spec.add_mesh(name=f"cone{k}", uservert=_cone_vertices(height, self.cone_radius))

    def add_slot_geoms(self, body, prefix: str, **attributes) -> None:
        """One geom per shape in a slot's ``body``, at the largest size, named ``<prefix>_<shape>`` (cones ``_cone<k>``)."""
        g = mujoco.mjtGeom
        hw, bh = self.box_half_width[1], self.box_height[1]
        body.add_geom(name=f"{prefix}_box", type=g.mjGEOM_BOX, size=[hw, hw, bh / 2], pos=[0, 0, bh / 2], **attributes)
        pr, ph = self.pillar_radius[1], self.pillar_height[1]
        body.add_geom(name=f"{prefix}_pillar", type=g.mjGEOM_CYLINDER, size=[pr, ph / 2, 0], pos=[0, 0, ph / 2],
                      **attributes)
        sr = self.sphere_radius[1]
        body.add_geom(name=f"{prefix}_sphere", type=g.mjGEOM_SPHERE, size=[sr, 0, 0], pos=[0, 0, sr], **attributes)
        for k in range(len(self.cone_heights)):
            body.add_geom(name=f"{prefix}_cone{k}", type=g.mjGEOM_MESH, meshname=f"cone{k}", **attributes)

    def slot_geoms(self, model: mujoco.MjModel, prefix: str) -> dict[str, list[int]]:
        """Geom ids of each shape in one slot (the cone's: one per height)."""
        return {
            "box": [model.geom(f"{prefix}_box").id],
            "pillar": [model.geom(f"{prefix}_pillar").id],
            "sphere": [model.geom(f"{prefix}_sphere").id],
            "cone": [model.geom(f"{prefix}_cone{k}").id for k in range(len(self.cone_heights))],
        }


def resize_geom(model: mujoco.MjModel, geom: int, shape: str, dims: tuple[float, ...]) -> None:
    """Size a shown box, pillar or sphere geom to ``dims``, standing on its body's origin (a cone's mesh has its size)."""
    if shape == "box":
        model.geom_size[geom] = (dims[0], dims[1], dims[2] / 2)
        model.geom_pos[geom] = (0.0, 0.0, dims[2] / 2)
    elif shape == "pillar":
        model.geom_size[geom] = (dims[0], dims[1] / 2, 0.0)
        model.geom_pos[geom] = (0.0, 0.0, dims[1] / 2)
    elif shape == "sphere":
        model.geom_size[geom] = (dims[0], 0.0, 0.0)
        model.geom_pos[geom] = (0.0, 0.0, dims[0])


def shown_geoms(slot_geoms: dict[str, list[int]], shape: str, dims: Sequence[float]) -> list[int]:
    """The geoms one slot shows for an object: all of its shape's, but a cone's one mesh (``dims[0]``: its height's index)."""
    geoms = slot_geoms[shape]
    return [geoms[int(dims[0])]] if shape == "cone" else list(geoms)


def _cone_vertices(height: float, radius: float, edges: int = 16) -> list[float]:
    verts = [0.0, 0.0, height]
    for k in range(edges):
        a = 2.0 * math.pi * k / edges
        verts += [radius * math.cos(a), radius * math.sin(a), 0.0]
    return verts
