"""Reading easy-VQA as released in the ``easy-vqa`` package, with per-image attributes.

The package ships ``data/{train,test}/questions.json`` (lists of [question, answer, image_id])
and ``images/{id}.png``. Attributes (colour, shape) come from the released answers: every
question about an image constrains them, and the constraints are intersected. Where the
questions leave a choice open, the pixels decide: the colour is the palette colour of the solid
fill, the shape follows from how much of its bounding box the fill covers (rectangle ≈ 1,
circle ≈ π/4, triangle ≈ ½; clipped or rotated triangles fool this, hence answers first).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import DataError
from ..records import open_image
from .questions import EASYVQA_COLORS, EASYVQA_SHAPES, answer_for, parse_easyvqa_question


@dataclass(frozen=True)
class SourceQuestion:
    question: str
    answer: str
    image_id: int


@dataclass(frozen=True)
class SourceImage:
    image_id: int
    path: Path
    color: str
    shape: str


def package_root() -> Path:
    try:
        import easy_vqa
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise DataError("the easy-vqa package is not installed (pip install easy-vqa)") from exc
    return Path(easy_vqa.__file__).parent / "data"


def read_questions(split: str) -> list[SourceQuestion]:
    path = package_root() / split / "questions.json"
    try:
        rows = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read easy-VQA questions ({exc})", path=path) from None
    out = []
    for k, row in enumerate(rows):
        if not (isinstance(row, list) and len(row) == 3):
            raise DataError("expected [question, answer, image_id]", path=path, record=k)
        out.append(SourceQuestion(str(row[0]), str(row[1]), int(row[2])))
    return out


_PALETTE = np.array(list(EASYVQA_COLORS.values()), dtype=np.int16)
_PALETTE_NAMES = list(EASYVQA_COLORS)


def attributes_from_pixels(arr: np.ndarray) -> tuple[str, str]:
    """(colour, shape) of the one shape in an easy-VQA image."""
    flat = arr.reshape(-1, 3).astype(np.int16)
    exact = (flat[:, None, :] == _PALETTE[None, :, :]).all(-1)  # pixels equal to a palette colour
    counts = exact.sum(0)
    if counts.max() == 0:
        raise ValueError("no pixel of the easy-VQA palette")
    k = int(counts.argmax())
    mask = exact[:, k].reshape(arr.shape[:2])
    ys, xs = np.nonzero(mask)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    fill = mask.sum() / box
    shape = "rectangle" if fill > 0.9 else ("circle" if fill > 0.65 else "triangle")
    return _PALETTE_NAMES[k], shape


def read_images(split: str, questions: list[SourceQuestion] | None = None) -> dict[int, SourceImage]:
    """Every image of a split with its attributes (answers first, pixels where they are silent)."""
    folder = package_root() / split / "images"
    questions = read_questions(split) if questions is None else questions
    options: dict[int, set[tuple[str, str]]] = {}
    everything = {(c, s) for c in EASYVQA_COLORS for s in EASYVQA_SHAPES}
    for q in questions:
        intent = parse_easyvqa_question(q.question)
        cands = options.setdefault(q.image_id, set(everything))
        cands.intersection_update({(c, s) for c, s in cands if answer_for(intent, c, s) == q.answer})
    out: dict[int, SourceImage] = {}
    for path in sorted(folder.glob("*.png"), key=lambda p: int(p.stem)):
        image_id = int(path.stem)
        cands = options.get(image_id, everything)
        if not cands:
            raise DataError("the released answers about this image contradict each other", path=path)
        if len(cands) == 1:
            color, shape = next(iter(cands))
        else:
            arr = np.asarray(open_image(path))
            try:
                pc, ps = attributes_from_pixels(arr)
            except ValueError as exc:
                raise DataError(str(exc), path=path) from None
            colors = {c for c, _ in cands}
            shapes = {s for _, s in cands}
            color = pc if pc in colors else sorted(colors)[0]
            shape = ps if ps in shapes else sorted(shapes)[0]
        out[image_id] = SourceImage(image_id, path, color, shape)
    return out
