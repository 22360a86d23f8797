"""Question grammar of the embedded suite: intents, phrasings, and answers from image attributes.

easy-VQA asks three kinds of question about one shape: its colour, its shape, and yes/no
presence of a colour or a shape (some negated). :func:`parse_easyvqa_question` maps each of
easy-VQA's 24 released templates to an :class:`Intent`; :func:`answer_for` computes the answer
from the image's attributes. The tests check this against every released answer, which is
what lets derived splits (recoloured images, rephrased questions) be labelled exactly.

The *broad* phrasings below are used by pre-training and by the rephrasing split; none of them
is an easy-VQA template (checked by a test), so fine-tuning on easy-VQA teaches new phrasings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

# easy-VQA's own palette (CSS colour values, read off the released images) and shapes.
EASYVQA_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "teal": (0, 128, 128),
    "brown": (165, 42, 42),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
}
EASYVQA_SHAPES = ("circle", "rectangle", "triangle")
# Extra colours and shapes seen only in pre-training: the "broad world" beyond the ID task.
EXTRA_COLORS: dict[str, tuple[int, int, int]] = {
    "orange": (255, 140, 0),
    "purple": (128, 0, 128),
    "pink": (255, 105, 180),
}
EXTRA_SHAPES = ("star", "cross")
ALL_COLORS = {**EASYVQA_COLORS, **EXTRA_COLORS}
ALL_SHAPES = EASYVQA_SHAPES + EXTRA_SHAPES

UNANSWERABLE = "unanswerable"

# Number of corners / sides: the "knowledge" facts (circle: none).
CORNERS = {"circle": 0, "rectangle": 4, "triangle": 3, "star": 10, "cross": 12}
# Colour facts: "is the shape the colour of X?"
COLOR_OF = {
    "the sky": "blue",
    "grass": "green",
    "blood": "red",
    "a banana": "yellow",
    "coal": "black",
    "chocolate": "brown",
    "an elephant": "gray",
    "a peacock feather": "teal",
}


@dataclass(frozen=True)
class Intent:
    """What a question asks: ``kind`` ∈ color | shape | has_color | has_shape (+ negation)."""

    kind: str
    color: Optional[str] = None  # the colour slot of a has_color question, or the shape's colour given
    shape: Optional[str] = None  # the shape slot of a has_shape question, or the shape named
    negated: bool = False


def answer_for(intent: Intent, color: str, shape: str) -> str:
    """The answer to ``intent`` about an image holding one ``color`` ``shape``."""
    if intent.kind == "color":
        return color
    if intent.kind == "shape":
        return shape
    if intent.kind == "has_color":
        present = intent.color == color
    elif intent.kind == "has_shape":
        present = intent.shape == shape
    else:
        raise ValueError(f"unknown intent kind {intent.kind!r}")
    return "yes" if present != intent.negated else "no"


_C = "|".join(EASYVQA_COLORS)
_S = "|".join(EASYVQA_SHAPES)
# (regex, builder) for easy-VQA's 24 templates. The colour-presence templates end in "shape".
_EASYVQA_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(rf"^what color is the ({_S})\?$"), "color:shape"),
    (re.compile(r"^what color is the shape\?$"), "color"),
    (re.compile(rf"^what is the color of the ({_S})\?$"), "color:shape"),
    (re.compile(r"^what is the color of the shape\?$"), "color"),
    (re.compile(r"^what shape is in the image\?$"), "shape"),
    (re.compile(r"^what shape does the image contain\?$"), "shape"),
    (re.compile(r"^what shape is present\?$"), "shape"),
    (re.compile(rf"^what is the ({_C}) shape\?$"), "shape:color"),
    (re.compile(rf"^is there a ({_C}) shape\?$"), "has_color"),
    (re.compile(rf"^is there a ({_C}) shape in the image\?$"), "has_color"),
    (re.compile(rf"^is a ({_C}) shape present\?$"), "has_color"),
    (re.compile(rf"^does the image contain a ({_C}) shape\?$"), "has_color"),
    (re.compile(rf"^is there not a ({_C}) shape\?$"), "not_has_color"),
    (re.compile(rf"^is there not a ({_C}) shape in the image\?$"), "not_has_color"),
    (re.compile(rf"^is no ({_C}) shape present\?$"), "not_has_color"),
    (re.compile(rf"^does the image not contain a ({_C}) shape\?$"), "not_has_color"),
    (re.compile(rf"^is there a ({_S})\?$"), "has_shape"),
    (re.compile(rf"^is there a ({_S}) in the image\?$"), "has_shape"),
    (re.compile(rf"^is a ({_S}) present\?$"), "has_shape"),
    (re.compile(rf"^does the image contain a ({_S})\?$"), "has_shape"),
    (re.compile(rf"^is there not a ({_S})\?$"), "not_has_shape"),
    (re.compile(rf"^is there not a ({_S}) in the image\?$"), "not_has_shape"),
    (re.compile(rf"^is no ({_S}) present\?$"), "not_has_shape"),
    (re.compile(rf"^does the image not contain a ({_S})\?$"), "not_has_shape"),
]
_SLOT_WORDS = re.compile(rf"\b({_C}|{_S})\b")


def easyvqa_template(question: str) -> str:
    """The question with its colour/shape slot replaced by ``X``: easy-VQA's question type."""
    return _SLOT_WORDS.sub("X", question)


def parse_easyvqa_question(question: str) -> Intent:
    """Map an easy-VQA question to its intent; raises ValueError for an unknown template."""
    for pattern, kind in _EASYVQA_PATTERNS:
        m = pattern.match(question)
        if not m:
            continue
        slot = m.group(1) if m.groups() else None
        if kind == "color":
            return Intent("color")
        if kind == "color:shape":
            return Intent("color", shape=slot)
        if kind == "shape":
            return Intent("shape")
        if kind == "shape:color":
            return Intent("shape", color=slot)
        negated = kind.startswith("not_")
        base = kind.removeprefix("not_")
        if base == "has_color":
            return Intent("has_color", color=slot, negated=negated)
        return Intent("has_shape", shape=slot, negated=negated)
    raise ValueError(f"not an easy-VQA question template: {question!r}")


def easyvqa_templates() -> list[str]:
    """easy-VQA's 24 question types, slots as X."""
    out = []
    for pattern, _ in _EASYVQA_PATTERNS:
        src = pattern.pattern.strip("^$").replace("\\?", "?")
        src = re.sub(r"\([^)]*\)", "X", src)
        out.append(src)
    return out


# Broad phrasings: {c} colour word, {s} shape word. None is an easy-VQA template.
BROAD_PHRASINGS: dict[str, list[str]] = {
    "color": [
        "which color is the shape?",
        "what colour is the object?",
        "tell me the color of the shape.",
        "which colour does the object have?",
        "what color is the object in the picture?",
        "name the color of the shape.",
    ],
    "color:shape": [
        "which color is the {s}?",
        "what colour is the {s}?",
        "the {s} is what color?",
        "which colour does the {s} have?",
    ],
    "shape": [
        "which shape is shown?",
        "what kind of shape is this?",
        "what is the object in the picture?",
        "name the shape.",
        "which shape is drawn?",
    ],
    "shape:color": [
        "what kind of shape is the {c} object?",
        "which shape is {c}?",
        "the {c} object is which shape?",
    ],
    "has_color": [
        "can you see a {c} shape?",
        "is the shape {c}?",
        "is the object {c}?",
        "do you see anything {c}?",
    ],
    "not_has_color": [
        "is the shape not {c}?",
        "is the object not {c}?",
        "is nothing {c} shown?",
    ],
    "has_shape": [
        "is this a {s}?",
        "do you see a {s}?",
        "is the object a {s}?",
        "can you find a {s} here?",
    ],
    "not_has_shape": [
        "is this not a {s}?",
        "is the object not a {s}?",
        "is no {s} shown?",
    ],
}


def intent_key(intent: Intent) -> str:
    """The BROAD_PHRASINGS key for an intent."""
    if intent.kind == "color":
        return "color:shape" if intent.shape else "color"
    if intent.kind == "shape":
        return "shape:color" if intent.color else "shape"
    return ("not_" if intent.negated else "") + intent.kind


def phrase(template: str, intent: Intent) -> str:
    return template.format(c=intent.color or "", s=intent.shape or "")
