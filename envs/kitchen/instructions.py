"""Natural-language instructions for the kitchen tasks, several paraphrases each.

Index 0 is the canonical phrasing (Gymnasium-Robotics' task description in words); the others
say the same thing differently, so that a language-conditioned policy can be trained on some
paraphrases and evaluated on held-out ones (RoboAgent's L3 level holds out instructions). The
lists only grow at the end: an index, once published in a dataset, keeps meaning the same words.
"""

from __future__ import annotations

MAX_CHARS = 1000  # the longest instruction an observation carries (a robot's instruction topic is held to it)

INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "microwave": (
        "open the microwave",
        "pull the microwave door open",
        "swing the microwave's door open",
        "open the door of the microwave oven",
        "grab the microwave handle and open it",
    ),
    "kettle": (
        "move the kettle to the top left burner",
        "put the kettle on the back left burner",
        "pick up the kettle and place it on the rear left stove",
        "carry the kettle to the far left burner",
        "set the kettle down on the top left hob",
    ),
    "light_switch": (
        "turn on the light",
        "flip the light switch on",
        "switch on the light above the stove",
        "push the light switch to turn the lamp on",
        "turn the overhead light on",
    ),
    "slide_cabinet": (
        "open the slide cabinet",
        "slide the cabinet door open",
        "push the sliding cabinet door to the right",
        "open the sliding door of the upper right cabinet",
        "slide open the right wall cabinet",
    ),
    "hinge_cabinet": (
        "open the hinge cabinet",
        "swing the cabinet door open",
        "open the hinged door of the wall cabinet",
        "pull the upper left cabinet door open",
        "open the cabinet door on its hinges",
    ),
    "bottom_burner": (
        "turn on the bottom burner",
        "turn the knob of the front left burner",
        "switch on the bottom left stove burner",
        "twist the lower left knob to light the burner",
        "turn the bottom burner's knob on",
    ),
    "top_burner": (
        "turn on the top burner",
        "turn the knob of the back left burner",
        "switch on the top left stove burner",
        "twist the upper left knob to light the burner",
        "turn the top burner's knob on",
    ),
}


def instruction(task: str, paraphrase: int = 0) -> str:
    """The ``paraphrase``-th wording of ``task``'s instruction."""
    if task not in INSTRUCTIONS:
        raise ValueError(f"unknown kitchen task {task!r}; choose from {tuple(INSTRUCTIONS)}")
    options = INSTRUCTIONS[task]
    if not 0 <= paraphrase < len(options):
        raise ValueError(f"paraphrase must be in 0..{len(options) - 1} for {task!r}, got {paraphrase}")
    return options[paraphrase]


def n_paraphrases(task: str) -> int:
    return len(INSTRUCTIONS[task])


HELD_OUT = 2  # the last two wordings of every task: never drawn for training (level L3 evaluates on them)


def paraphrase_pool(task: str, held_out: bool) -> range:
    """The paraphrase indices of ``task`` for training (``held_out=False``) or for L3's evaluation."""
    n = n_paraphrases(task)
    return range(n - HELD_OUT, n) if held_out else range(0, n - HELD_OUT)


def draw_paraphrase(tasks, held_out: bool, rng) -> int:
    """One paraphrase index valid for every task of a sequence, from the training or the held-out pool."""
    pools = [set(paraphrase_pool(t, held_out)) for t in tasks]
    common = sorted(set.intersection(*pools))
    return int(rng.choice(common))



def _words(text: str) -> str:
    return " ".join(text.lower().split())


_TASK_OF = {_words(text): task for task, options in INSTRUCTIONS.items() for text in options}


def task_of(text: str) -> str | None:
    """The task whose wording ``text`` is (case and spacing ignored); None for words not in the lists.

    Lets a deployed policy that needs a task id (the one-hot baseline) follow the instruction topic.
    """
    return _TASK_OF.get(_words(text))
