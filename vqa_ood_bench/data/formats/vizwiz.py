"""VizWiz (far OOD): photos taken by blind users, often blurred, badly framed or unanswerable.

Files (each a **bare list**)::

    DIR/vizwiz/{train,val,test}.json         (or DIR/vizwiz/Annotations/{split}.json, as unzipped)
    DIR/vizwiz/{train,val,test}/VizWiz_val_00000000.jpg

Entries: ``image`` (file name), ``question``, ``answers`` = 10 × {``answer``,
``answer_confidence``} (**no answer_id**), ``answer_type`` ∈ {other, yes/no, number,
unanswerable}, ``answerable`` 0/1; test entries have only ``image`` and ``question``. There is
no question id: a question is named by its image's stem (one question per image).

Some answers are empty strings: they are dropped and counted (``report.answers_dropped``,
``meta["empty_answers_dropped"]``); a labelled question whose answers are all empty is skipped
and counted as a known quirk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from ...errors import DataError
from ..records import VQARecord
from ..registry import register_dataset, require_root
from . import hub
from ._common import LoadContext, option_dir, parse_answers
from ._vqa import read_index

NAME = "vizwiz"
SPLITS = ("train", "val", "test")


def _image_key(entry: dict[str, Any]) -> str | None:
    image = entry.get("image")
    if not isinstance(image, str) or not image.strip():
        return None
    stem = image.rsplit("/", 1)[-1]
    return stem[:-4] if stem.lower().endswith(".jpg") else stem


def _annotation_file(root: Path | None, subdir: str, split: str) -> Path:
    root = require_root(root, NAME)
    tried = []
    for d in (root / subdir, root):
        for cand in (d / f"{split}.json", d / "Annotations" / f"{split}.json"):
            if cand.is_file():
                return cand
            tried.append(str(cand))
    raise DataError(f"{NAME}: annotation file not found (looked for {', '.join(tried)})", path=tried[0])


def _drop_empty(ctx: LoadContext, answers: list[str]) -> tuple[list[str], int]:
    kept = [a for a in answers if a.strip()]
    dropped = len(answers) - len(kept)
    ctx.report.answers_dropped += dropped
    return kept, dropped


@register_dataset(
    NAME,
    role="far",
    shift_type="far",
    description="VizWiz-VQA: questions from blind users about their own photos (quality issues, unanswerable).",
    expected_files=[f"{NAME}/{s}.json" for s in SPLITS] + [f"{NAME}/{s}/" for s in SPLITS],
    licence="CC BY 4.0 (see the VizWiz site)",
    source="https://vizwiz.org/tasks-and-datasets/vqa/",
)
def load_vizwiz(
    root: Path | None,
    *,
    split: str = "val",
    subdir: str = NAME,
    images: str | None = None,
    source: str = "files",
    hub_id: str | None = None,
    hub_revision: str | None = None,
    **common: Any,
) -> Iterator[VQARecord]:
    ctx = LoadContext.for_split(NAME, split, SPLITS, common)
    if hub.wants_hub(NAME, source):

        def convert(row: dict[str, Any], i: int) -> dict[str, Any] | None:
            fields = hub.vqa_row(row, i)
            if fields is not None and fields["answers"]:
                fields["answers"], n = _drop_empty(ctx, fields["answers"])
                fields["meta"]["empty_answers_dropped"] = n
            return fields

        return hub.load_from_hub(ctx, split, hub_id, hub_revision, convert)
    path = _annotation_file(root, subdir, split)
    root = require_root(root, NAME)
    ds_dir = path.parent.parent if path.parent.name == "Annotations" else path.parent
    img_dir = option_dir(root, images) if images is not None else ds_dir / split
    index = read_index(ctx, path, None, key=_image_key, describe_key="image", compact=True)
    labelled = split != "test"

    def gen() -> Iterator[VQARecord | None]:
        for qid, e in index.items():
            meta: dict[str, Any] = {"image_name": e["image"]}
            answers: list[str] | None = []
            if labelled or "answers" in e:
                answers = parse_answers(e.get("answers"))
                if answers is None:
                    ctx.malformed(path, qid, "'answers' must be a list of {'answer': str, 'answer_confidence': str}")
                    continue
                answers, dropped = _drop_empty(ctx, answers)
                meta["empty_answers_dropped"] = dropped
                if not answers and labelled:
                    ctx.report.answers_dropped -= dropped  # counted with the skipped record instead
                    ctx.quirk(path, qid, "all answers empty (known in VizWiz)")
                    continue
            if "answerable" in e:
                meta["answerable"] = e["answerable"]
            image = ctx.image(root, img_dir, e["image"], source=path, record=qid)
            if image is None:
                continue
            yield ctx.make(
                path, qid, image=image, question=e.get("question"), answers=answers,
                answer_type=e.get("answer_type", ""), meta=meta,
            )
        index.clear()

    return ctx.stream(gen())
