"""MJCF for the N-link swimmer, generated for any body length without dm_control.

The head comes from ``envs/assets/swimmer_head.xml``; each further 0.1 m capsule link is a child
of the previous one with a hinge of range ±360°/n_links, a motor, a velocimeter and a gyro,
exactly as dm_control's ``swimmer._make_model`` builds its bodies.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

HEAD_XML = Path(__file__).parent.parent / "assets" / "swimmer_head.xml"
MIN_LINKS, MAX_LINKS = 3, 15


def joint_limit(n_links: int) -> float:
    """Joint range half-width in radians (dm_control: 360° / n_links)."""
    return 2.0 * math.pi / n_links


def swimmer_mjcf(
    n_links: int = 6,
    fluid_density: float = 3000.0,
    fluid_viscosity: float = 0.0,
    timestep: float = 0.002,
) -> str:
    """Return the MJCF string of an ``n_links`` swimmer in a fluid."""
    if not isinstance(n_links, int) or not MIN_LINKS <= n_links <= MAX_LINKS:
        raise ValueError(f"n_links must be an integer in [{MIN_LINKS}, {MAX_LINKS}], got {n_links!r}")
    if fluid_density < 0 or fluid_viscosity < 0:
        raise ValueError(f"fluid density and viscosity must be >= 0, got {fluid_density}, {fluid_viscosity}")
    root = ET.parse(HEAD_XML).getroot()
    option = root.find("option")
    option.set("timestep", repr(float(timestep)))
    option.set("density", repr(float(fluid_density)))
    option.set("viscosity", repr(float(fluid_viscosity)))

    actuator = root.find("actuator")
    sensor = root.find("sensor")
    limit_deg = 360.0 / n_links
    parent = root.find("./worldbody/body[@name='head']")
    for i in range(n_links - 1):
        body = ET.SubElement(parent, "body", name=f"segment_{i}", pos="0 .1 0")
        ET.SubElement(body, "geom", {"class": "visual", "name": f"visual_{i}"})
        ET.SubElement(body, "geom", {"class": "inertial", "name": f"inertial_{i}"})
        ET.SubElement(body, "site", name=f"site_{i}")
        ET.SubElement(body, "joint", name=f"joint_{i}", range=f"{-limit_deg} {limit_deg}")
        ET.SubElement(actuator, "motor", name=f"motor_{i}", joint=f"joint_{i}")
        ET.SubElement(sensor, "velocimeter", name=f"velocimeter_{i}", site=f"site_{i}")
        ET.SubElement(sensor, "gyro", name=f"gyro_{i}", site=f"site_{i}")
        parent = body

    # Pull the tracking camera back for long bodies so the whole swimmer stays in view.
    camera = root.find(".//camera[@name='tracking']")
    scale = max(1.0, n_links / 6.0)
    camera.set("pos", f"0 {-0.2 * scale:.3f} {0.5 * scale:.3f}")
    return ET.tostring(root, encoding="unicode")
