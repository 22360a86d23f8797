"""VizWiz (far OOD): photos taken by blind users, often blurred, badly framed or unanswerable.

Files (each a **bare list**)::

    DIR/vizwiz/{train,val,test}.json         (or DIR/vizwiz/Annotations/{split}.json, as unzipped)
    DIR/vizwiz/{train,val,test}/VizWiz_val_00000000.jpg

Entries: ``image`` (file name), ``question``, ``answers`` = 10 × {``answer``,
``answer_confidence``} (**no answer_id**), ``answer_type`` ∈ {other, yes/no, number,
unanswerable}, ``answerable`` 0/1; test entries have only ``image`` and ``question``. There is
no question id: a question is named by its image's stem (one question per image).

Some answers are empty strings. They are **kept** (``meta["empty_answers"]`` counts them), as
the official VizWiz evaluation keeps them: its leave-one-out loop runs over all ten answers, so
an empty answer is one of the ten subsets and matches only a prediction that normalises to the
empty string (2 × yes, 5 × no, 3 × empty, prediction "yes": 0.6, not the 4/7 of dropping them;
docs/vqa-accuracy.md). A labelled question whose answers are all empty (or blank) is skipped and
counted as a known quirk; the official evaluation would score it (docs/datasets.md).
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


def _blank_count(answers: list[str]) -> int:
    """How many answers are empty (or whitespace only); they stay in the list as released."""
    return sum(1 for a in answers if not a.strip())


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
    labelled = split != "test"
    if hub.wants_hub(NAME, source):
        return _load_hub(ctx, split, hub_id, hub_revision, labelled)
    path = _annotation_file(root, subdir, split)
    root = require_root(root, NAME)
    ds_dir = path.parent.parent if path.parent.name == "Annotations" else path.parent
    img_dir = option_dir(root, images) if images is not None else ds_dir / split
    index = read_index(ctx, path, None, key=_image_key, describe_key="image", compact=True)

    def gen() -> Iterator[VQARecord | None]:
        for qid, e in index.items():
            meta: dict[str, Any] = {"image_name": e["image"]}
            answers: list[str] | None = []
            if labelled or "answers" in e:
                answers = parse_answers(e.get("answers"))
                if answers is None:
                    ctx.malformed(path, qid, "'answers' must be a list of {'answer': str, 'answer_confidence': str}")
                    continue
                blank = _blank_count(answers)
                meta["empty_answers"] = blank
                if labelled and blank == len(answers):
                    # no human answered: nothing to learn from or score against (an empty
                    # prediction would get full credit), so skipped as a quirk; see docs/datasets.md
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


def _load_hub(ctx: LoadContext, split: str, hub_id: str | None, revision: str | None, labelled: bool) -> Iterator[VQARecord]:
    """The hub copy, with the same empty-answer rule as the files (kept; all-empty skipped)."""
    hid, hsplit = hub.hub_source(NAME, split, hub_id)
    rows = hub.load_hub_rows(hid, hsplit, revision=revision)
    where = f"hf://datasets/{hid}[{hsplit}]"

    def gen() -> Iterator[VQARecord | None]:
        for i, row in enumerate(rows):
            fields = hub.vqa_row(row, i)
            if fields is None:
                ctx.malformed(where, f"#{i}", "row lacks question_id, question or image")
                continue
            qid = fields.pop("question_id")
            answers = fields["answers"]
            blank = _blank_count(answers)
            if answers:  # hub test rows carry no answers at all
                fields["meta"]["empty_answers"] = blank
            if labelled and blank == len(answers):
                ctx.quirk(where, qid, "all answers empty (known in VizWiz)")
                continue
            yield ctx.make(where, qid, **fields)

    return ctx.stream(gen())
