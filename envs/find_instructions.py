"""Referring instructions for the find tasks: name one object among others, as briefly as is unique.

Shared by every find env (``uav_find``, ``swimmer_find``): an env lays out objects
(:class:`envs.scene.SceneObject`, each a shape of ``SHAPES`` in a colour of ``COLOURS``), picks a
target, and asks :func:`describe` for the shortest :class:`Description` that fits the target and
no other object; :func:`instruction` words it. Everything here is a pure function of its
arguments (and of the ``rng`` passed in), so a layout's instruction is reproducible.

## Descriptions, shortest first
1. ``the <shape>``: the only object of that shape;
2. ``the <colour> <shape>``: the only one of that colour and shape;
3. ``the <shape> <relation> the <anchor>``, then 4. ``the <colour> <shape> <relation> the <anchor>``,
   where the anchor is another object named by 1 or 2 (itself unique by its attributes alone).
The first level with a unique description wins; among several at one level (different relations
or anchors) ``rng`` picks. The shape is always said: it is the noun.

## Relations, in the viewer frame
Relations are computed in one fixed frame, the :class:`ViewFrame`: the agent's start pose seen
from above (origin ``xy``, heading ``yaw``). "Forward" is the heading, "left" is 90° counter-clockwise
from it (world +y for yaw 0). Relations ignore height. For an object ``a`` and the anchor ``b``,
with ``lateral`` and ``forward`` their coordinates in that frame:

- ``left_of``: ``lateral(a) - lateral(b)``; ``right_of``: ``lateral(b) - lateral(a)``;
- ``behind`` (farther from the viewer than the anchor): ``forward(a) - forward(b)``;
- ``in_front_of`` (nearer to the viewer): ``forward(b) - forward(a)``;
- ``nearest_to``: of the objects with the described attributes (the anchor excluded), the one
  closest to the anchor in the plane.

A directional relation clearly holds when its value is at least ``margin`` (``RELATION_MARGIN``
by default) and clearly fails when it is at most 0; in between it is ambiguous. ``nearest_to``
is ambiguous for every object less than ``margin`` farther from the anchor than the nearest one.
A description is unique when the target is the only object it *may* name (clearly or
ambiguously) and its anchor is unique by attributes: what a careful listener could not misread.
:func:`referents` applies these rules and is what a test checks an instruction against.

## Wordings
Every template (``attribute`` and one per relation) has ``N_WORDINGS`` wordings, all in
embodiment-neutral verbs. The last ``HELD_OUT`` of each are never drawn for training
(:func:`paraphrase_pool`, :func:`draw_paraphrase`): a language-conditioned policy is evaluated
on them as unseen instructions, as the kitchen's level L3 does. An index means the same wording
in every template, and the lists only grow at the end (an index, once in a dataset, keeps its words).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from envs.scene import COLOURS, SHAPES, SceneObject

RELATIONS = ("left_of", "right_of", "in_front_of", "behind", "nearest_to")
RELATION_MARGIN = 0.3  # m: how clearly a relation must hold (see the module docstring)
MAX_CHARS = 100  # the longest instruction any wording can produce (checked by the tests over every word)
HELD_OUT = 2  # the last wordings of every template, never drawn for training

WORDINGS: dict[str, tuple[str, ...]] = {
    "attribute": (
        "go to the {target}",
        "find the {target}",
        "head for the {target}",
        "move to the {target}",
        "make your way over to the {target}",
        "your goal is the {target}",
    ),
    "left_of": (
        "go to the {target} left of the {anchor}",
        "find the {target} to the left of the {anchor}",
        "head for the {target} on the left of the {anchor}",
        "move to the {target} that is left of the {anchor}",
        "make your way over to the {target} on the {anchor}'s left",
        "your goal is the {target} to the left of the {anchor}",
    ),
    "right_of": (
        "go to the {target} right of the {anchor}",
        "find the {target} to the right of the {anchor}",
        "head for the {target} on the right of the {anchor}",
        "move to the {target} that is right of the {anchor}",
        "make your way over to the {target} on the {anchor}'s right",
        "your goal is the {target} to the right of the {anchor}",
    ),
    "in_front_of": (
        "go to the {target} in front of the {anchor}",
        "find the {target} before the {anchor}",
        "head for the {target} this side of the {anchor}",
        "move to the {target} that is in front of the {anchor}",
        "make your way over to the {target} nearer than the {anchor}",
        "your goal is the {target} in front of the {anchor}",
    ),
    "behind": (
        "go to the {target} behind the {anchor}",
        "find the {target} beyond the {anchor}",
        "head for the {target} past the {anchor}",
        "move to the {target} that is behind the {anchor}",
        "make your way over to the {target} farther than the {anchor}",
        "your goal is the {target} behind the {anchor}",
    ),
    "nearest_to": (
        "go to the {target} nearest to the {anchor}",
        "find the {target} closest to the {anchor}",
        "head for the {target} nearest the {anchor}",
        "move to the {target} that is closest to the {anchor}",
        "make your way over to the {target} next to the {anchor}",
        "your goal is the {target} nearest to the {anchor}",
    ),
}
N_WORDINGS = 6  # wordings per template (every template has this many)


@dataclass(frozen=True)
class ViewFrame:
    """The frame relations are judged in: a viewer at ``origin`` (world xy, m) facing ``yaw`` (rad)."""

    origin: tuple[float, float] = (0.0, 0.0)
    yaw: float = 0.0

    def coordinates(self, position: np.ndarray) -> tuple[float, float]:
        """(forward, lateral) of a world point: metres ahead of the viewer and to its left."""
        dx = float(position[0]) - self.origin[0]
        dy = float(position[1]) - self.origin[1]
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        return c * dx + s * dy, -s * dx + c * dy


@dataclass(frozen=True)
class Description:
    """A referring expression: the target's attributes, optionally a relation to an anchor object."""

    shape: str
    colour: str = ""  # "" when the colour is not said
    relation: str | None = None  # one of RELATIONS, or None
    anchor: int | None = None  # index of the anchor object (relations only)
    anchor_colour: str = ""  # the anchor's colour when said ("" when its shape alone names it)

    @property
    def template(self) -> str:
        return self.relation or "attribute"


def _noun(shape: str, colour: str) -> str:
    return f"{colour} {shape}" if colour else shape


def phrase(description: Description, objects: Sequence[SceneObject]) -> tuple[str, str]:
    """The target's and the anchor's noun phrases ("red box", "blue pillar"); the anchor's is "" without one."""
    anchor = ""
    if description.anchor is not None:
        anchor = _noun(objects[description.anchor].shape, description.anchor_colour)
    return _noun(description.shape, description.colour), anchor


def instruction(description: Description, objects: Sequence[SceneObject], paraphrase: int) -> str:
    """The ``paraphrase``-th wording of ``description``."""
    paraphrase = check_paraphrase(paraphrase)
    target, anchor = phrase(description, objects)
    return WORDINGS[description.template][paraphrase].format(target=target, anchor=anchor)


def check_paraphrase(index) -> int:
    """``index`` as a wording index; ValueError naming ``paraphrase`` unless it is one."""
    if isinstance(index, bool) or not isinstance(index, int | np.integer) or not 0 <= index < N_WORDINGS:
        raise ValueError(f"paraphrase must be an index in 0..{N_WORDINGS - 1} or null, got {index!r}")
    return int(index)


def paraphrase_pool(held_out: bool) -> range:
    """The wording indices for training (``held_out=False``) or for evaluation on unseen wordings."""
    return range(N_WORDINGS - HELD_OUT, N_WORDINGS) if held_out else range(0, N_WORDINGS - HELD_OUT)


def draw_paraphrase(rng: np.random.Generator, held_out: bool = False) -> int:
    pool = paraphrase_pool(held_out)
    return int(pool[int(rng.integers(len(pool)))])


# --- what a description names ----------------------------------------------------------------
def _matches(obj: SceneObject, shape: str, colour: str) -> bool:
    return obj.shape == shape and (not colour or obj.colour == colour)


def _directional(relation: str, obj: SceneObject, anchor: SceneObject, frame: ViewFrame) -> float:
    """How far (m) ``obj`` is in ``relation`` to ``anchor``: clearly so from the margin up, not at all at <= 0."""
    fa, la = frame.coordinates(obj.position)
    fb, lb = frame.coordinates(anchor.position)
    return {"left_of": la - lb, "right_of": lb - la, "behind": fa - fb, "in_front_of": fb - fa}[relation]


def _planar_distance(a: SceneObject, b: SceneObject) -> float:
    return float(np.hypot(*(np.asarray(a.position[:2], dtype=float) - np.asarray(b.position[:2], dtype=float))))


def referents(description: Description, objects: Sequence[SceneObject], frame: ViewFrame = ViewFrame(),
              margin: float = RELATION_MARGIN) -> list[int]:
    """Indices of every object ``description`` may name under the module's rules (clearly or ambiguously).

    An anchor that is not unique by its own attributes makes every candidate a possible referent.
    """
    candidates = [i for i, o in enumerate(objects) if _matches(o, description.shape, description.colour)]
    if description.relation is None:
        return candidates
    anchor = description.anchor
    if anchor is None or len(referents(Description(objects[anchor].shape, description.anchor_colour), objects)) != 1:
        return candidates
    candidates = [i for i in candidates if i != anchor]
    if description.relation == "nearest_to":
        if not candidates:
            return []
        dist = {i: _planar_distance(objects[i], objects[anchor]) for i in candidates}
        nearest = min(dist.values())
        return [i for i in candidates if dist[i] < nearest + margin]
    values = {i: _directional(description.relation, objects[i], objects[anchor], frame) for i in candidates}
    return [i for i in candidates if values[i] > 0.0]


def _attribute_descriptions(objects: Sequence[SceneObject], index: int) -> list[Description]:
    """The attribute-only descriptions of object ``index``, shortest first."""
    obj = objects[index]
    return [Description(obj.shape), Description(obj.shape, obj.colour)]


def describe(objects: Sequence[SceneObject], target: int, frame: ViewFrame = ViewFrame(),
             rng: np.random.Generator | None = None, margin: float = RELATION_MARGIN) -> Description | None:
    """The shortest description naming ``objects[target]`` alone (see the module docstring), or None.

    ``rng`` picks among equally short relational descriptions (the first one without it).
    """
    for description in _attribute_descriptions(objects, target):
        if referents(description, objects, frame, margin) == [target]:
            return description
    obj = objects[target]
    anchors = []  # (index, colour said): every other object unique by its attributes, by its shortest name
    for i in range(len(objects)):
        if i == target:
            continue
        for d in _attribute_descriptions(objects, i):
            if referents(d, objects, frame, margin) == [i]:
                anchors.append((i, d.colour))
                break
    for colour in ("", obj.colour):
        options = []
        for relation in RELATIONS:
            for anchor, anchor_colour in anchors:
                d = Description(obj.shape, colour, relation, anchor, anchor_colour)
                if referents(d, objects, frame, margin) != [target]:
                    continue
                if relation != "nearest_to" and _directional(relation, obj, objects[anchor], frame) < margin:
                    continue  # the target itself must clearly be where the words put it
                options.append(d)
        if options:
            return options[int(rng.integers(len(options)))] if rng is not None else options[0]
    return None


def longest_instruction() -> int:
    """Characters of the longest instruction any wording can produce with these colours and shapes."""
    colour = max(COLOURS, key=len)
    shape = max(SHAPES, key=len)
    noun = f"{colour} {shape}"
    return max(len(w.format(target=noun, anchor=noun)) for words in WORDINGS.values() for w in words)
