"""The find task's rules that do not depend on the body: what is laid out, how it is worded, what is reported.

``uav_find`` and ``swimmer_find`` pose one task on two bodies: walk, fly or swim to the object an
instruction names among distractors. They must pose it the same way for a policy (or the spatial
brain) to carry what it learns from one to the other, so the rules live here once: the config
checks both share, the colours the shapes are drawn in, the distractors a layout always holds
(:func:`draw_kinds`), the redraw-until-describable loop (:func:`draw_layout`), the choice of the
episode's wording and its ``reset`` option, and the core of ``info`` (:class:`FindEpisode`). Each
env keeps its body, its placement of objects, its camera, rewards and termination.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import TypeVar

import numpy as np

from envs.find_instructions import Description, ViewFrame, check_paraphrase, describe, draw_paraphrase
from envs.scene import COLOURS, SceneObject

COLOUR_RGBA = {  # the geom colour of each word of COLOURS: what the camera must see for the word to fit
    "red": (0.85, 0.1, 0.1, 1.0), "green": (0.1, 0.7, 0.15, 1.0), "blue": (0.1, 0.25, 0.9, 1.0),
    "yellow": (0.95, 0.85, 0.1, 1.0), "purple": (0.55, 0.15, 0.75, 1.0), "orange": (1.0, 0.5, 0.05, 1.0),
    "white": (0.95, 0.95, 0.95, 1.0), "black": (0.08, 0.08, 0.08, 1.0),
}

Item = TypeVar("Item")  # an env's placed object (a landmark, a target)


# --- config checks --------------------------------------------------------------------------------
def range_pair(config, name: str) -> tuple:
    """``config.<name>`` as a (low, high) pair of numbers; a config file may give a list, or junk."""
    value = getattr(config, name)
    if (not isinstance(value, list | tuple) or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, int | float) for v in value)):
        raise ValueError(f"{name} must be a range [low, high] of two numbers, got {value!r}")
    return tuple(value)


def check_number_fields(config) -> None:
    """Every ``float`` or ``int`` field holds a number (not a bool): the other checks compare them."""
    for f in fields(config):
        value = getattr(config, f.name)
        if f.type in ("float", "int") and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"{f.name} must be a number, got {value!r}")


def check_camera_and_wording(config) -> None:
    """The fields every find config has: the camera's image and angles, the layout's twin share, the wording."""
    if not isinstance(config.held_out, bool):
        raise ValueError(f"held_out must be true or false, got {config.held_out!r}")
    for name in ("image_width", "image_height", "max_depth"):
        if not getattr(config, name) > 0:
            raise ValueError(f"{name} must be positive, got {getattr(config, name)}")
    for name in ("image_width", "image_height"):
        if not isinstance(getattr(config, name), int) or getattr(config, name) > 1024:
            raise ValueError(f"{name} must be a whole number of pixels up to 1024, got {getattr(config, name)}")
    if not 0 <= config.relation_prob <= 1:
        raise ValueError(f"relation_prob must be a probability in [0, 1], got {config.relation_prob}")
    if not 0 < config.fovy_deg < 180:
        raise ValueError(f"fovy_deg must be in (0, 180) degrees, got {config.fovy_deg}")
    if not -90 <= config.camera_tilt_deg <= 90:
        raise ValueError(f"camera_tilt_deg must be in [-90, 90] degrees, got {config.camera_tilt_deg}")
    if config.paraphrase is not None:
        check_paraphrase(config.paraphrase)


# --- layout ---------------------------------------------------------------------------------------
def draw_kinds(n: int, shapes: Sequence[str], relation_prob: float, rng: np.random.Generator) -> list[tuple[str, str]]:
    """(shape, colour) of ``n`` objects, the target's first, always with distractors.

    With probability ``relation_prob`` a twin of the target (only a relation tells them apart),
    otherwise one of its shape in another colour and one of its colour in another shape (both
    words are needed); the rest are drawn freely, but never the target's kind unless it has a twin.
    """
    shape, colour = shapes[rng.integers(len(shapes))], COLOURS[rng.integers(len(COLOURS))]
    twin = rng.random() < relation_prob
    kinds = [(shape, colour)]
    if twin:
        kinds.append((shape, colour))
    else:
        kinds.append((shape, str(rng.choice([c for c in COLOURS if c != colour]))))
        kinds.append((str(rng.choice([s for s in shapes if s != shape])), colour))
    while len(kinds) < n:
        kind = (shapes[rng.integers(len(shapes))], COLOURS[rng.integers(len(COLOURS))])
        if twin or kind != (shape, colour):
            kinds.append(kind)
    return kinds


def draw_layout(count: tuple[int, int], shapes: Sequence[str], relation_prob: float,
                draw_positions: Callable[[int], list[np.ndarray]], place: Callable[[str, str, np.ndarray], Item],
                objects: Callable[[list[Item]], list[SceneObject]], frame: ViewFrame,
                rng: np.random.Generator) -> tuple[list[Item], int, Description]:
    """(objects in slot order, the target's slot, its description): redrawn until the target has a unique one.

    ``count``: range of the object count (inclusive); ``draw_positions(n)``: ``n`` world xy;
    ``place(shape, colour, xy)``: the env's object there (sizes drawn from ``rng``);
    ``objects(items)``: them as scene objects, which :func:`envs.find_instructions.describe` reads.
    The kinds are shuffled over the slots, so the target is not always slot 0.
    """
    lo, hi = (int(v) for v in count)
    while True:
        n = int(rng.integers(lo, hi + 1))
        kinds = draw_kinds(n, shapes, relation_prob, rng)
        order = rng.permutation(n)  # slot of each kind
        positions = draw_positions(n)
        items: list = [None] * n
        for k, slot in enumerate(order):
            shape, colour = kinds[k]
            items[slot] = place(shape, colour, positions[slot])
        target = int(order[0])
        description = describe(objects(items), target, frame, rng)
        if description is not None:
            return items, target, description


# --- the episode's wording and info -----------------------------------------------------------------
class FindEpisode:
    """Mixin (before the body's env class) for the wording of a find episode and the core of its ``info``.

    The env sets ``paraphrase`` (fixed index or None) and ``find_config.held_out``, keeps
    ``_description`` and ``_episode_paraphrase``, calls :meth:`_choose_paraphrase` in
    ``reset_model`` after drawing the layout, and has ``goal``, ``instruction`` and ``_success``.
    """

    task_name = "find"  # in error messages, e.g. "uav_find"
    _pending_paraphrase: int | None = None  # the wording ``reset(options=...)`` asked for, during that reset

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Gymnasium's reset; ``options={"paraphrase": k}`` words this episode's instruction with wording k."""
        options = dict(options or {})
        paraphrase = options.pop("paraphrase", None)
        if options:
            raise ValueError(f"unknown {self.task_name} reset options {sorted(options)}; the only one is 'paraphrase'")
        self._pending_paraphrase = None if paraphrase is None else check_paraphrase(paraphrase)
        try:
            return super().reset(seed=seed)
        finally:
            self._pending_paraphrase = None

    def _choose_paraphrase(self, rng: np.random.Generator) -> int:
        """This episode's wording: the reset option's, else the fixed one, else drawn (held out or not)."""
        if self._pending_paraphrase is not None:
            return self._pending_paraphrase
        if self.paraphrase is None:
            return draw_paraphrase(rng, self.find_config.held_out)
        return self.paraphrase

    @property
    def description(self) -> Description:
        """This episode's referring expression (indices into :meth:`scene`'s objects)."""
        return self._description

    @property
    def episode_paraphrase(self) -> int:
        return self._episode_paraphrase

    def _episode_info(self, target_name: str, distance: float) -> dict:
        """``info``'s fields every find env reports (``distance``: m to the goal, as the env measures it)."""
        return {"goal": self.goal.copy(), "target": target_name, "instruction": self.instruction,
                "paraphrase": self._episode_paraphrase, "is_success": bool(self._success),
                "distance_to_goal": distance}

