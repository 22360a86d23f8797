"""The broad pre-training mixture: the tiny foundation model's "world".

Much broader than easy-VQA: 11 colours, 5 shapes, seven render styles, random sizes and
positions, the broad phrasings of :mod:`.questions` (none of them an easy-VQA template), and
several tasks behind PaliGemma-style prefixes: answering, captioning, counting, reading words,
simple knowledge (corners, colours of things), and "unanswerable" for unreadable images.
Example ``i`` of seed ``s`` is a pure function of (s, i), so any subset is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .questions import (
    ALL_COLORS,
    ALL_SHAPES,
    BROAD_PHRASINGS,
    COLOR_OF,
    CORNERS,
    EASYVQA_COLORS,
    EASYVQA_SHAPES,
    UNANSWERABLE,
    Intent,
    answer_for,
    phrase,
)
from .render import SIZE, Scene, ShapeSpec, degrade, draw_scene, draw_text

STYLES = ("solid", "outline", "sketch", "stripes", "checker", "dark", "noisy", "blurred")
OCR_WORDS = (
    "cat", "dog", "sun", "car", "tree", "book", "fish", "bird", "milk", "cake", "moon", "stop",
    "open", "exit", "taxi", "bus", "zoo", "map", "key", "box", "hat", "cup", "pen", "ice",
)
OCR_NUMBERS = tuple(str(n) for n in range(10, 100, 7))
OCR_QUESTIONS = ("what is written in the image?", "what word is shown?", "what does the text say?", "read the text.")
KNOWLEDGE_SHAPE_QUESTIONS = {
    "how many corners does this shape have?": lambda s: str(CORNERS[s]),
    "how many corners does the object have?": lambda s: str(CORNERS[s]),
    "is this shape round?": lambda s: "yes" if s == "circle" else "no",
    "does this shape have corners?": lambda s: "no" if s == "circle" else "yes",
}
KNOWLEDGE_COLOR_QUESTION = "is the shape the color of {thing}?"
COUNT_QUESTIONS = ("how many shapes are there?", "how many objects are in the picture?", "count the shapes.")
DEGRADATIONS = ("blur", "dark", "bright", "noise")

TASK_WEIGHTS = {  # mixture version 2: VQA-heavy, so 5 minutes of pre-training learn to look at the image
    "vqa": 0.62,
    "caption": 0.04,
    "count": 0.06,
    "ocr": 0.08,
    "knowledge": 0.10,
    "unanswerable": 0.05,
    "degraded_answerable": 0.05,
}


@dataclass(frozen=True)
class Example:
    image: Image.Image
    prompt: str  # task prefix + question, e.g. "answer en which shape is shown?"
    answer: str
    task: str


def all_words() -> set[str]:
    """Every word the embedded suite can ask or answer (the tiny tokenizer's vocabulary)."""
    from .questions import easyvqa_templates

    texts: list[str] = ["answer en caption count", UNANSWERABLE, "yes no X shape"]
    texts += list(ALL_COLORS) + list(ALL_SHAPES) + list(OCR_WORDS) + list(OCR_NUMBERS)
    texts += [str(n) for n in range(0, 13)]
    texts += [t for ts in BROAD_PHRASINGS.values() for t in ts]
    texts += easyvqa_templates() + list(OCR_QUESTIONS) + list(KNOWLEDGE_SHAPE_QUESTIONS) + list(COUNT_QUESTIONS)
    texts += [KNOWLEDGE_COLOR_QUESTION.format(thing=t) for t in COLOR_OF]
    words: set[str] = set()
    for t in texts:
        for w in t.replace("?", " ? ").replace(".", " . ").replace("{c}", " ").replace("{s}", " ").split():
            words.add(w)
    return words


def random_shape(rng: np.random.Generator, *, colors=tuple(ALL_COLORS), shapes=ALL_SHAPES, r_range=(7.0, 22.0)) -> ShapeSpec:
    r = float(rng.uniform(*r_range))
    margin = r * 0.8
    return ShapeSpec(
        shape=str(rng.choice(shapes)),
        color=str(rng.choice(colors)),
        cx=float(rng.uniform(margin, SIZE - margin)),
        cy=float(rng.uniform(margin, SIZE - margin)),
        r=r,
        angle=float(rng.uniform(-0.5, 0.5)),
    )


def pale(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(225, 256, size=3))


def styled_scene(shapes: list[ShapeSpec], style: str, rng: np.random.Generator) -> Image.Image:
    kw: dict = {"background": pale(rng)}
    if style in ("outline", "sketch"):
        kw["style"] = style
    elif style in ("stripes", "checker", "dark"):
        kw["bg_pattern"] = style
    elif style == "noisy":
        kw["post"] = ["noise"]
    elif style == "blurred":
        kw["post"] = ["blur"]
    if style == "dark":  # black shapes vanish on a dark background: keep the question answerable
        for sp in shapes:
            if sp.color == "black":
                sp.color = "gray" if rng.random() < 0.5 else "yellow"
    return draw_scene(Scene(shapes=shapes, **kw), rng)


def vqa_question(sp: ShapeSpec, rng: np.random.Generator) -> tuple[str, str]:
    """A broad phrasing about a one-shape image, and its answer."""
    kind = str(rng.choice(["color", "shape", "has_color", "has_shape"], p=[0.25, 0.25, 0.25, 0.25]))
    negated = bool(rng.random() < 0.35) if kind.startswith("has_") else False
    if kind == "color":
        intent = Intent("color", shape=sp.shape if rng.random() < 0.5 else None)
    elif kind == "shape":
        intent = Intent("shape", color=sp.color if rng.random() < 0.5 else None)
    elif kind == "has_color":
        c = sp.color if rng.random() < 0.5 else str(rng.choice(list(ALL_COLORS)))
        intent = Intent("has_color", color=c, negated=negated)
    else:
        s = sp.shape if rng.random() < 0.5 else str(rng.choice(ALL_SHAPES))
        intent = Intent("has_shape", shape=s, negated=negated)
    key = {"color": "color:shape" if intent.shape else "color", "shape": "shape:color" if intent.color else "shape"}.get(
        kind, ("not_" if negated else "") + kind
    )
    template = str(rng.choice(BROAD_PHRASINGS[key]))
    return phrase(template, intent), answer_for(intent, sp.color, sp.shape)


def make_example(seed: int, index: int) -> Example:
    rng = np.random.default_rng([seed, index])
    task = str(rng.choice(list(TASK_WEIGHTS), p=np.array(list(TASK_WEIGHTS.values())) / sum(TASK_WEIGHTS.values())))
    style = str(rng.choice(STYLES))
    if task == "count":
        n = int(rng.integers(1, 5))
        shapes = [random_shape(rng, r_range=(5.0, 10.0)) for _ in range(n)]
        return Example(styled_scene(shapes, style, rng), "answer en " + str(rng.choice(COUNT_QUESTIONS)), str(n), task)
    if task == "ocr":
        word = str(rng.choice(OCR_WORDS + OCR_NUMBERS))
        color = str(rng.choice(["black", "blue", "red", "brown", "teal", "purple"]))
        img = draw_text(word, color, pale(rng), rng)
        return Example(img, "answer en " + str(rng.choice(OCR_QUESTIONS)), word, task)
    sp = random_shape(rng)
    if task == "caption":
        img = styled_scene([sp], style, rng)
        return Example(img, "caption en", f"{sp.color} {sp.shape}", task)
    if task == "knowledge":
        img = styled_scene([sp], style, rng)
        if rng.random() < 0.6:
            q = str(rng.choice(list(KNOWLEDGE_SHAPE_QUESTIONS)))
            return Example(img, "answer en " + q, KNOWLEDGE_SHAPE_QUESTIONS[q](sp.shape), task)
        # colour facts only for colours that have one; ask about the true colour half the time
        facts = {v: k for k, v in COLOR_OF.items()}
        thing = facts[sp.color] if sp.color in facts and rng.random() < 0.5 else str(rng.choice(list(COLOR_OF)))
        ans = "yes" if COLOR_OF[thing] == sp.color else "no"
        return Example(img, "answer en " + KNOWLEDGE_COLOR_QUESTION.format(thing=thing), ans, task)
    img = styled_scene([sp], style if task == "vqa" else "solid", rng)
    q, a = vqa_question(sp, rng)
    if task == "unanswerable":
        return Example(degrade(img, str(rng.choice(DEGRADATIONS)), True, rng), "answer en " + q, UNANSWERABLE, task)
    if task == "degraded_answerable":
        return Example(degrade(img, str(rng.choice(DEGRADATIONS)), False, rng), "answer en " + q, a, task)
    return Example(img, "answer en " + q, a, task)


__all__ = ["Example", "make_example", "all_words", "EASYVQA_COLORS", "EASYVQA_SHAPES"]
