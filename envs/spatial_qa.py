"""Spatial questions with answers computed from a :class:`~envs.scene.Scene`'s geometry alone.

The spatial brain's scaffold stage (ACE-Brain's Stage 1, small scale) learns spatial QA as a
classification over one closed vocabulary, :data:`ANSWERS`. Labels come from simulator geometry,
so they need no annotation: every question is a template filled with unique object
descriptions, and its answer is a word of the vocabulary.

## Contract
``questions(scene, rng, split, n)`` returns up to ``n`` :class:`QA` for one scene (fewer when the
scene supports fewer), drawn round-robin over the families in a random order so every family
gets its share, and within a family by first choosing an answer among the answers the scene can
give, then a question with that answer. The answer is drawn uniformly (per-scene balancing), or,
given a running ``answer_counts``, it is the one drawn least so far (balancing across scenes, as
balanced VQA sets do: geometry alone would make "0" most counts and "ahead" most directions).
The same ``rng`` state (and counts) gives the same questions.

## Families (``FAMILIES``; the forms of each and their wordings are in ``TEMPLATES``)
- ``camera_direction``: is an object left/right of the image centre, above/below it (camera frame).
- ``agent_direction``: is an object left/right, ahead/behind, above/below the agent (its yaw frame).
- ``nearest``: colour or shape of the object nearest to / farthest from the agent, optionally
  among the objects of one shape or colour.
- ``count``: how many objects of a colour, of a shape, or in all are in view (0-6).
- ``distance``: the agent-to-object distance (centre to centre, 3-D) as one of :data:`DISTANCE_BINS`.
- ``relation``: is one object above or below another (by their centres' heights).
- ``after_motion``: after a move (1 or 2 m forward/backward/sideways) or a turn (90 degrees left
  or right, or 180), is an object on the agent's left/right, ahead/behind; the agent pose is
  transformed and the direction recomputed.
- ``nearest_to``: colour or shape of the object nearest to a described object.

## Templates and splits
Every form of a family has :data:`SEEN_PER_FORM` seen wordings and :data:`HELD_OUT_PER_FORM`
held-out ones. A family's template list holds all seen wordings first, then all held-out ones,
so ``QA.template`` indexes ``TEMPLATES[family]`` and the last templates of every family are the
held-out ones. ``split="seen"`` draws only seen wordings, ``split="held_out"`` only held-out
ones: a model can be evaluated on phrasings it never trained on, with the same facts.

## Which objects a question may name (visibility)
Questions are asked about what the image shows. An object is *in view* when its centre lies
inside the camera's frustum shrunk by :data:`FOV_MARGIN_DEG` (and, when the scene reports pixel
counts in ``extras["visible_pixels"]``, covers at least :data:`MIN_PIXELS` pixels); *out of view*
when its centre is outside the frustum widened by that margin, beyond the camera's range, or it
covers no pixel; *at the edge* otherwise. Only objects in view are named or compared (with
``visible_only=False`` the agent-frame, distance and relation families may name any object;
camera-frame questions always need the object in view). Counting and nearest/farthest questions
range over the objects in view and are skipped when an object at the edge could change their
answer. The camera's field of view comes from ``extras["camera_fovy_deg"]`` (vertical, degrees)
and ``extras["camera_aspect"]`` (width / height), its range from ``extras["camera_max_depth"]``
(metres); missing keys default to :data:`DEFAULT_FOVY_DEG`, 1 and no limit.

## Descriptions
An object is named by one of its attribute descriptions that are unique among *all* the scene's
objects (seen or not), drawn at random: its shape word ("the cone"), its colour ("the red
object"), or both ("the red cone"). An object with no unique description is never named (the
question is skipped); an object whose shape has no vocabulary word is never an answer.

## Margins (no label within a margin of its decision boundary)
- Agent frame: the bearing (azimuth, or elevation for above/below) is at least
  :data:`ANGLE_MARGIN_DEG` from the boundary, and the centre is farther than the object's size
  from the dividing plane (the object lies wholly on one side).
- Camera frame: the same with :data:`CAMERA_MARGIN_DEG` from the optical axis.
- Distance bins: at least :data:`DISTANCE_MARGIN` (relative) from a bin edge.
- Nearest / farthest: the winner beats the runner-up by the factor :data:`RANK_RATIO`.
- Above / below between objects: the centres' heights differ by at least :data:`HEIGHT_MARGIN`
  and by at least the mean of the two sizes.
- Counts above 6 are not asked.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from envs.scene import COLOURS, SHAPES, Scene, SceneObject

GENERATOR_VERSION = 1  # raise when a label or template changes: datasets record it

DIRECTIONS = ("left", "right", "ahead", "behind", "above", "below")
YES_NO = ("yes", "no")
MAX_COUNT = 6
COUNTS = tuple(str(k) for k in range(MAX_COUNT + 1))
# Distance bins (metres, agent to object centre): [0, 1), [1, 2), [2, 4), [4, inf).
DISTANCE_BINS = ((1.0, "<1m"), (2.0, "1-2m"), (4.0, "2-4m"), (math.inf, ">4m"))
# Object words of the embodiments (the kitchen's appliances); a Scene's shape "light_switch" or
# "top_burner" maps to the word it is, or ends with, after "_" becomes " ".
OBJECT_WORDS = ("kettle", "microwave", "burner", "light switch", "slide cabinet", "hinge cabinet")
ANSWERS: tuple[str, ...] = (*DIRECTIONS, *YES_NO, *COUNTS, *(label for _, label in DISTANCE_BINS), *COLOURS,
                            *SHAPES, *OBJECT_WORDS)
ANSWER_INDEX = {a: i for i, a in enumerate(ANSWERS)}

DEFAULT_FOVY_DEG = 60.0  # vertical field of view assumed when a scene does not report its camera's
FOV_MARGIN_DEG = 3.0  # an object's centre this far inside the frustum is in view, this far outside is out
MIN_PIXELS = 3  # with pixel counts, fewer pixels than this is "at the edge" (barely visible)
ANGLE_MARGIN_DEG = 10.0  # agent-frame bearings this close to a decision boundary are not asked
CAMERA_MARGIN_DEG = 5.0  # camera-frame bearings this close to the optical axis are not asked
DISTANCE_MARGIN = 0.1  # distances within 10 % of a bin edge are not asked
RANK_RATIO = 1.15  # the nearest object must be 15 % nearer than the next (the farthest 15 % farther)
HEIGHT_MARGIN = 0.15  # metres between two centres' heights for above/below (and at least their mean size)
MOVES = ((1.0, "forward"), (2.0, "forward"), (1.0, "backward"), (2.0, "backward"), (1.0, "left"), (2.0, "left"),
         (1.0, "right"), (2.0, "right"))  # translations in the agent's frame (metres, direction)
TURNS = ((90.0, "left"), (90.0, "right"), (180.0, "around"))  # rotations (degrees, direction)

SEEN_PER_FORM = 3
HELD_OUT_PER_FORM = 1


@dataclass(frozen=True)
class QA:
    """One question, its answer (a word of :data:`ANSWERS`), its family and template index."""

    question: str
    answer: str
    family: str
    template: int


class Template(NamedTuple):
    """One wording of a family's question."""

    form: str  # which kind of fact the wording asks about (e.g. "lr" for left/right)
    text: str  # a str.format pattern over the form's slots
    held_out: bool


# family -> form -> wordings (SEEN_PER_FORM seen, then HELD_OUT_PER_FORM held out). Slots: {a}, {b} object
# descriptions; {rank} "nearest to" / "farthest from"; {colour}, {shape}, {shapes}; {rel} above/below;
# {side} left/right; {where} "ahead of"/"behind"; {move} a motion clause ("you turn left by 90 degrees").
_WORDINGS: dict[str, dict[str, tuple[str, ...]]] = {
    "camera_direction": {
        "lr": ("In the image, is the {a} on the left or on the right?",
               "Does the {a} appear left or right of the centre of the view?",
               "Looking at the picture, which side is the {a} on, left or right?",
               "From the camera's point of view, is the {a} to the left or to the right?"),
        "ud": ("In the image, is the {a} above or below the centre?",
               "Does the {a} appear above or below the middle of the view?",
               "Looking at the picture, is the {a} above or below the centre line?",
               "From the camera's point of view, is the {a} above or below its line of sight?"),
    },
    "agent_direction": {
        "lr": ("Is the {a} on your left or on your right?",
               "Relative to your heading, is the {a} to the left or to the right?",
               "Which side of you is the {a} on, left or right?",
               "Would you turn left or right to face the {a}?"),
        "fb": ("Is the {a} ahead of you or behind you?",
               "Is the {a} in front of you or behind you?",
               "Relative to the way you face, is the {a} ahead or behind?",
               "Does the {a} lie ahead of you or behind your back?"),
        "ud": ("Is the {a} above you or below you?",
               "Is the {a} higher or lower than you, above or below?",
               "Relative to your height, is the {a} above or below?",
               "Would you look up or down to see the {a}, above or below?"),
    },
    "nearest": {
        "colour": ("What colour is the object {rank} you?",
                   "Which colour has the object {rank} you?",
                   "Name the colour of the object in view {rank} you.",
                   "Of the objects you can see, take the one {rank} you: what colour is it?"),
        "shape": ("What shape is the object {rank} you?",
                  "What kind of object is {rank} you?",
                  "Name the shape of the object in view {rank} you.",
                  "Of the objects you can see, take the one {rank} you: what shape is it?"),
        "colour_of_shape": ("What colour is the {shape} {rank} you?",
                            "Which colour has the {shape} {rank} you?",
                            "Among the {shapes} in view, what colour is the one {rank} you?",
                            "Of the {shapes} you can see, take the one {rank} you: what colour is it?"),
        "shape_of_colour": ("What shape is the {colour} object {rank} you?",
                            "What kind of object is the {colour} one {rank} you?",
                            "Among the {colour} objects in view, what shape is the one {rank} you?",
                            "Of the {colour} objects you can see, take the one {rank} you: what shape is it?"),
    },
    "count": {
        "colour": ("How many {colour} objects can you see?",
                   "Count the {colour} objects in view.",
                   "What is the number of {colour} objects in the picture?",
                   "How many of the objects in view are {colour}?"),
        "shape": ("How many {shapes} can you see?",
                  "Count the {shapes} in view.",
                  "What is the number of {shapes} in the picture?",
                  "How many of the objects in view are {shapes}?"),
        "total": ("How many objects can you see?",
                  "Count the objects in view.",
                  "What is the number of objects in the picture?",
                  "In total, how many objects are in view?"),
    },
    "distance": {
        "bin": ("How far is the {a} from you?",
                "About how far away is the {a}?",
                "What is the distance between you and the {a}?",
                "Roughly how many metres separate you from the {a}?"),
    },
    "relation": {
        "which": ("Is the {a} above or below the {b}?",
                  "Compared with the {b}, is the {a} above or below?",
                  "Where is the {a} relative to the {b}, above or below?",
                  "Taking the {b} as reference, does the {a} sit above or below it?"),
        "yesno": ("Is the {a} {rel} the {b}?",
                  "Would you say the {a} is {rel} the {b}?",
                  "Yes or no: the {a} is {rel} the {b}.",
                  "Is it true that the {a} lies {rel} the {b}?"),
    },
    "after_motion": {
        "side_yesno": ("If {move}, is the {a} on your {side}?",
                       "Suppose {move}. Is the {a} then on your {side}?",
                       "Imagine {move}: would the {a} be on your {side}?",
                       "Once {move}, will the {a} be to your {side}?"),
        "front_yesno": ("If {move}, is the {a} {where} you?",
                        "Suppose {move}. Is the {a} then {where} you?",
                        "Imagine {move}: would the {a} be {where} you?",
                        "Once {move}, will the {a} be {where} you?"),
        "side": ("If {move}, is the {a} on your left or on your right?",
                 "Suppose {move}. Is the {a} then on your left or your right?",
                 "Imagine {move}: would the {a} be on your left or your right?",
                 "Once {move}, which side will the {a} be on, left or right?"),
    },
    "nearest_to": {
        "colour": ("What colour is the object closest to the {b}?",
                   "Which colour has the object nearest to the {b}?",
                   "Name the colour of the object next to the {b}.",
                   "Of all the other objects, which is nearest the {b}? Give its colour."),
        "shape": ("What shape is the object closest to the {b}?",
                  "What kind of object is nearest to the {b}?",
                  "Name the shape of the object next to the {b}.",
                  "Of all the other objects, which is nearest the {b}? Give its shape."),
    },
}


def _flatten(forms: dict[str, tuple[str, ...]]) -> tuple[Template, ...]:
    for form, wordings in forms.items():
        if len(wordings) != SEEN_PER_FORM + HELD_OUT_PER_FORM:
            raise ValueError(f"form {form!r} has {len(wordings)} wordings, not {SEEN_PER_FORM + HELD_OUT_PER_FORM}")
    seen = [Template(f, w, False) for f, ws in forms.items() for w in ws[:SEEN_PER_FORM]]
    held = [Template(f, w, True) for f, ws in forms.items() for w in ws[SEEN_PER_FORM:]]
    return tuple(seen + held)


TEMPLATES: dict[str, tuple[Template, ...]] = {family: _flatten(forms) for family, forms in _WORDINGS.items()}
FAMILIES = tuple(TEMPLATES)
SPLITS = ("seen", "held_out")


def template_ids(family: str, form: str, split: str) -> list[int]:
    """Indices into ``TEMPLATES[family]`` of the form's wordings in a split."""
    held = split == "held_out"
    return [i for i, t in enumerate(TEMPLATES[family]) if t.form == form and t.held_out == held]


# --------------------------------------------------------------------------------------------- words


def answer_word(obj: SceneObject) -> str | None:
    """The vocabulary word for an object's shape (a SHAPES word, or an object word it is or ends with)."""
    word = shape_phrase(obj)
    if word in SHAPES or word in OBJECT_WORDS:
        return word
    for w in OBJECT_WORDS:
        if word.endswith(" " + w):
            return w
    return None


def shape_phrase(obj: SceneObject) -> str:
    """How an object's shape is said in a description ("box", "top burner")."""
    return obj.shape.replace("_", " ").strip()


def plural(word: str) -> str:
    return word + ("es" if word.endswith(("s", "x", "ch", "sh")) else "s")


def descriptions(scene: Scene, obj: SceneObject) -> list[str]:
    """Every attribute description that picks ``obj`` out of all the scene's objects (possibly none)."""
    others = [o for o in scene.objects if o.name != obj.name]
    shape = shape_phrase(obj)
    found = []
    if not any(shape_phrase(o) == shape for o in others):
        found.append(shape)
    if obj.colour and not any(o.colour == obj.colour for o in others):
        found.append(f"{obj.colour} object")
    if obj.colour and not any(o.colour == obj.colour and shape_phrase(o) == shape for o in others):
        found.append(f"{obj.colour} {shape}")
    return found


def distance_bin(d: float) -> str | None:
    """The bin label of a distance, or None within ``DISTANCE_MARGIN`` of an edge."""
    for edge, _ in DISTANCE_BINS[:-1]:
        if abs(d - edge) < DISTANCE_MARGIN * edge:
            return None
    return next(label for edge, label in DISTANCE_BINS if d < edge)


# ------------------------------------------------------------------------------------------ geometry


def view_status(scene: Scene, obj: SceneObject) -> str:
    """``"in"``, ``"out"`` or ``"edge"``: whether the camera shows the object (see the module docstring)."""
    fovy = math.radians(float(scene.extras.get("camera_fovy_deg", DEFAULT_FOVY_DEG)))
    aspect = float(scene.extras.get("camera_aspect", 1.0))
    max_depth = float(scene.extras.get("camera_max_depth", math.inf))
    pixels = scene.extras.get("visible_pixels")
    half_y = fovy / 2
    half_x = math.atan(aspect * math.tan(half_y))
    margin = math.radians(FOV_MARGIN_DEG)
    c = scene.in_camera_frame(obj.position)
    depth = -c[2]
    count = None if pixels is None else int(pixels.get(obj.name, 0))
    if count == 0:
        return "out"
    if depth <= 0:
        return "edge" if count else "out"
    ax, ay = math.atan2(abs(c[0]), depth), math.atan2(abs(c[1]), depth)
    if ax > half_x + margin or ay > half_y + margin or depth > max_depth:
        return "edge" if count else "out"
    if ax < half_x - margin and ay < half_y - margin and depth < max_depth and (count is None or count >= MIN_PIXELS):
        return "in"
    return "edge"


def _side(lateral: float, along: float, size: float, margin_deg: float) -> int:
    """+1 or -1: the sign of ``lateral``, or 0 when the object is within the margin of the dividing plane.

    The bearing ``atan2(|lateral|, |along|)`` must be at least ``margin_deg`` from the plane, and the
    centre farther than the object's size from it.
    """
    if abs(lateral) <= size or math.degrees(math.atan2(abs(lateral), abs(along))) < margin_deg:
        return 0
    return 1 if lateral > 0 else -1


def agent_directions(p: np.ndarray, size: float) -> dict[str, str]:
    """The agent-frame directions of a point ``p`` (agent frame: x ahead, y left, z up) clear of the margins."""
    out = {}
    horizontal = math.hypot(p[0], p[1])
    lr = _side(p[1], p[0], size, ANGLE_MARGIN_DEG)
    fb = _side(p[0], p[1], size, ANGLE_MARGIN_DEG)
    ud = _side(p[2], horizontal, size, ANGLE_MARGIN_DEG)
    if lr:
        out["lr"] = "left" if lr > 0 else "right"
    if fb:
        out["fb"] = "ahead" if fb > 0 else "behind"
    if ud:
        out["ud"] = "above" if ud > 0 else "below"
    return out


def move_agent(scene: Scene, forward: float, left: float, turn_deg: float) -> Scene:
    """The scene with the agent translated by (forward, left) metres in its frame, then turned by ``turn_deg``
    (positive: to the left, counter-clockwise seen from above)."""
    c, s = math.cos(scene.agent_yaw), math.sin(scene.agent_yaw)
    offset = np.array([c * forward - s * left, s * forward + c * left, 0.0])
    return Scene(embodiment=scene.embodiment, objects=scene.objects, agent_position=scene.agent_position + offset,
                 agent_yaw=scene.agent_yaw + math.radians(turn_deg), camera_position=scene.camera_position,
                 camera_rotation=scene.camera_rotation, extras=scene.extras)


# ------------------------------------------------------------------------------------------ families


class _Fact(NamedTuple):
    form: str
    slots: dict
    answer: str


def _named(scene: Scene, objects, rng) -> list[tuple[SceneObject, str]]:
    """(object, a random unique description) for each object that has one."""
    out = []
    for obj in objects:
        names = descriptions(scene, obj)
        if names:
            out.append((obj, names[int(rng.integers(len(names)))]))
    return out


def _camera_direction(scene, ctx, rng) -> list[_Fact]:
    facts = []
    for obj, name in _named(scene, ctx.in_view, rng):
        c = scene.in_camera_frame(obj.position)
        depth = -c[2]
        lr = _side(c[0], depth, obj.size, CAMERA_MARGIN_DEG)
        ud = _side(c[1], depth, obj.size, CAMERA_MARGIN_DEG)
        if lr:
            facts.append(_Fact("lr", {"a": name}, "right" if lr > 0 else "left"))
        if ud:
            facts.append(_Fact("ud", {"a": name}, "above" if ud > 0 else "below"))
    return facts


def _agent_direction(scene, ctx, rng) -> list[_Fact]:
    facts = []
    for obj, name in _named(scene, ctx.nameable, rng):
        for form, answer in agent_directions(scene.in_agent_frame(obj.position), obj.size).items():
            facts.append(_Fact(form, {"a": name}, answer))
    return facts


def _ranked(members: list[SceneObject], competitors: list[SceneObject], key) -> tuple:
    """(nearest, farthest) of ``members`` by ``key``, each None unless it beats every other member and every
    competitor (an object at the edge of view that could belong) by RANK_RATIO; (None, None) for < 2 members."""
    if len(members) < 2:
        return None, None
    order = sorted(members, key=key)
    near, far = order[0], order[-1]
    others = [key(o) for o in competitors]
    near_ok = all(d >= RANK_RATIO * key(near) for d in [key(order[1]), *others])
    far_ok = all(key(far) >= RANK_RATIO * d for d in [key(order[-2]), *others])
    return (near if near_ok else None), (far if far_ok else None)


def _nearest(scene, ctx, rng) -> list[_Fact]:
    facts = []

    def dist(o):
        return float(np.linalg.norm(o.position - scene.agent_position))

    groups = [("", "", lambda o: True)]
    groups += [("shape", s, lambda o, s=s: shape_phrase(o) == s) for s in sorted({shape_phrase(o) for o in ctx.in_view})]
    groups += [("colour", c, lambda o, c=c: o.colour == c) for c in sorted({o.colour for o in ctx.in_view if o.colour})]
    for kind, value, belongs in groups:
        members = [o for o in ctx.in_view if belongs(o)]
        near, far = _ranked(members, [o for o in ctx.edge if belongs(o)], dist)
        for winner, rank in ((near, "nearest to"), (far, "farthest from")):
            if winner is None:
                continue
            word = answer_word(winner)
            if kind == "":
                if winner.colour:
                    facts.append(_Fact("colour", {"rank": rank}, winner.colour))
                if word:
                    facts.append(_Fact("shape", {"rank": rank}, word))
            elif kind == "shape" and winner.colour:
                facts.append(_Fact("colour_of_shape", {"rank": rank, "shape": value, "shapes": plural(value)},
                                   winner.colour))
            elif kind == "colour" and word:
                facts.append(_Fact("shape_of_colour", {"rank": rank, "colour": value}, word))
    return facts


def _count(scene, ctx, rng) -> list[_Fact]:
    facts = []
    # The attributes of the scene's kind: every colour and shape in a scene of coloured shapes (absent ones count
    # 0), only the object words present in a scene of appliances.
    colours = COLOURS if any(o.colour for o in scene.objects) else ()
    shapes = {shape_phrase(o) for o in scene.objects}
    if shapes & set(SHAPES):
        shapes |= set(SHAPES)
    for colour in colours:
        members = [o for o in ctx.in_view if o.colour == colour]
        if len(members) <= MAX_COUNT and not any(o.colour == colour for o in ctx.edge):
            facts.append(_Fact("colour", {"colour": colour}, str(len(members))))
    for shape in sorted(shapes):
        members = [o for o in ctx.in_view if shape_phrase(o) == shape]
        if len(members) <= MAX_COUNT and not any(shape_phrase(o) == shape for o in ctx.edge):
            facts.append(_Fact("shape", {"shapes": plural(shape)}, str(len(members))))
    if len(ctx.in_view) <= MAX_COUNT and not ctx.edge:
        facts.append(_Fact("total", {}, str(len(ctx.in_view))))
    return facts


def _distance(scene, ctx, rng) -> list[_Fact]:
    facts = []
    for obj, name in _named(scene, ctx.nameable, rng):
        label = distance_bin(float(np.linalg.norm(obj.position - scene.agent_position)))
        if label:
            facts.append(_Fact("bin", {"a": name}, label))
    return facts


def _above(a: SceneObject, b: SceneObject) -> int:
    """+1 when ``a`` is clearly above ``b``, -1 clearly below, 0 within the margin."""
    dz = float(a.position[2] - b.position[2])
    if abs(dz) < max(HEIGHT_MARGIN, 0.5 * (a.size + b.size)):
        return 0
    return 1 if dz > 0 else -1


def _relation(scene, ctx, rng) -> list[_Fact]:
    facts = []
    named = _named(scene, ctx.nameable, rng)
    for a, name_a in named:
        for b, name_b in named:
            if a is b:
                continue
            rel = _above(a, b)
            if not rel:
                continue
            facts.append(_Fact("which", {"a": name_a, "b": name_b}, "above" if rel > 0 else "below"))
            asked = ("above", "below")[int(rng.integers(2))]
            truth = "above" if rel > 0 else "below"
            facts.append(_Fact("yesno", {"a": name_a, "b": name_b, "rel": asked}, "yes" if asked == truth else "no"))
    return facts


def _motion_clause(kind: str, amount: float, direction: str) -> tuple[str, float, float, float]:
    """(words, forward m, left m, turn degrees) of one motion."""
    if kind == "move":
        metres = f"{amount:g} m"
        words = {"forward": f"you move {metres} forward", "backward": f"you move {metres} backward",
                 "left": f"you step {metres} to your left", "right": f"you step {metres} to your right"}[direction]
        fwd = {"forward": amount, "backward": -amount}.get(direction, 0.0)
        left = {"left": amount, "right": -amount}.get(direction, 0.0)
        return words, fwd, left, 0.0
    if direction == "around":
        return "you turn around", 0.0, 0.0, 180.0
    return f"you turn {direction} by {amount:g} degrees", 0.0, 0.0, amount if direction == "left" else -amount


def _after_motion(scene, ctx, rng) -> list[_Fact]:
    facts = []
    motions = [("move", a, d) for a, d in MOVES] + [("turn", a, d) for a, d in TURNS]
    for obj, name in _named(scene, ctx.nameable, rng):
        kind, amount, direction = motions[int(rng.integers(len(motions)))]
        words, fwd, left, turn = _motion_clause(kind, amount, direction)
        moved = move_agent(scene, fwd, left, turn)
        dirs = agent_directions(moved.in_agent_frame(obj.position), obj.size)
        if "lr" in dirs:
            side = ("left", "right")[int(rng.integers(2))]
            facts.append(_Fact("side_yesno", {"a": name, "move": words, "side": side},
                               "yes" if dirs["lr"] == side else "no"))
            facts.append(_Fact("side", {"a": name, "move": words}, dirs["lr"]))
        if "fb" in dirs:
            where = ("ahead", "behind")[int(rng.integers(2))]
            facts.append(_Fact("front_yesno", {"a": name, "move": words, "where": "ahead of" if where == "ahead"
                                               else "behind"}, "yes" if dirs["fb"] == where else "no"))
    return facts


def _nearest_to(scene, ctx, rng) -> list[_Fact]:
    facts = []
    for ref, name in _named(scene, ctx.in_view, rng):
        others = [o for o in ctx.in_view if o is not ref]

        def dist(o, ref=ref):
            return float(np.linalg.norm(o.position - ref.position))

        if len(others) == 1:  # the only other object: nearest without a runner-up, if no edge object competes
            near = others[0] if all(dist(o) >= RANK_RATIO * dist(others[0]) for o in ctx.edge) else None
        else:
            near, _ = _ranked(others, ctx.edge, dist)
        if near is None:
            continue
        if near.colour:
            facts.append(_Fact("colour", {"b": name}, near.colour))
        word = answer_word(near)
        if word:
            facts.append(_Fact("shape", {"b": name}, word))
    return facts


_FAMILY_FACTS = {"camera_direction": _camera_direction, "agent_direction": _agent_direction, "nearest": _nearest,
                 "count": _count, "distance": _distance, "relation": _relation, "after_motion": _after_motion,
                 "nearest_to": _nearest_to}
assert tuple(_FAMILY_FACTS) == FAMILIES


class _View:
    """The scene's objects sorted by visibility: in view, at the edge, and the ones questions may name."""

    def __init__(self, scene: Scene, visible_only: bool):
        status = {o.name: view_status(scene, o) for o in scene.objects}
        self.in_view = [o for o in scene.objects if status[o.name] == "in"]
        self.edge = [o for o in scene.objects if status[o.name] == "edge"]
        self.nameable = self.in_view if visible_only else list(scene.objects)


def questions(scene: Scene, rng: np.random.Generator, split: str = "seen", n: int = 8,
              families: tuple[str, ...] | None = None, visible_only: bool = True,
              answer_counts: Counter | None = None) -> list[QA]:
    """Up to ``n`` distinct questions about ``scene`` with their answers (see the module docstring).

    ``answer_counts`` balances answers across scenes: a Counter of ``(family, answer)`` over the questions
    drawn so far (updated here). With it, each draw takes the scene's least-drawn answer of the family
    (ties at random) instead of a uniformly random one; a dataset writer keeps one per shard.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    chosen = FAMILIES if families is None else tuple(families)
    unknown = [f for f in chosen if f not in TEMPLATES]
    if unknown:
        raise ValueError(f"unknown families {unknown}; choose from {FAMILIES}")
    view = _View(scene, visible_only)
    pool = {f: _FAMILY_FACTS[f](scene, view, rng) for f in chosen}
    out: list[QA] = []
    while len(out) < n:
        live = [f for f in chosen if pool[f]]
        if not live:
            break
        for i in rng.permutation(len(live)):
            if len(out) >= n:
                break
            family = live[int(i)]
            cands = pool[family]
            answers = sorted({c.answer for c in cands})
            if answer_counts is not None:
                fewest = min(answer_counts[(family, a)] for a in answers)
                answers = [a for a in answers if answer_counts[(family, a)] == fewest]
            answer = answers[int(rng.integers(len(answers)))]
            if answer_counts is not None:
                answer_counts[(family, answer)] += 1
            matching = [k for k, c in enumerate(cands) if c.answer == answer]
            fact = cands.pop(matching[int(rng.integers(len(matching)))])
            ids = template_ids(family, fact.form, split)
            template = ids[int(rng.integers(len(ids)))]
            text = TEMPLATES[family][template].text.format(**fact.slots)
            out.append(QA(text[0].upper() + text[1:], fact.answer, family, template))
    return out
