"""AdVQA (near OOD, adversarial): human-adversarial questions on COCO val2017 images.

Files (VQAv2 wrapper)::

    DIR/advqa/v1_OpenEnded_mscoco_val2017_advqa_questions.json
    DIR/advqa/v1_mscoco_val2017_advqa_annotations.json
    DIR/coco/val2017/000000397133.jpg        (COCO 2017 naming: {id:012d}.jpg)

``question_type`` and ``multiple_choice_answer`` may be absent (they become "" / are left out
of ``meta``); "unanswerable" is a literal answer and is kept as one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from ..records import VQARecord
from ..registry import register_dataset, require_root
from . import hub
from ._common import LoadContext, check_choice, coco_base, coco_id, dataset_dir
from ._vqa import answers_of, base_meta, iter_pairs, read_pair

NAME = "advqa"
Q_FILE = "v1_OpenEnded_mscoco_val2017_advqa_questions.json"
A_FILE = "v1_mscoco_val2017_advqa_annotations.json"


@register_dataset(
    NAME,
    role="near",
    shift_type="adversarial",
    description="AdVQA: questions written by humans to fool VQA models, on COCO val2017 images.",
    expected_files=[f"{NAME}/{Q_FILE}", f"{NAME}/{A_FILE}", "coco/val2017/"],
    licence="see the release page (research use); images COCO terms of use",
    source="https://adversarialvqa.org/",
)
def load_advqa(
    root: Path | None,
    *,
    split: str = "val",
    subdir: str = NAME,
    coco: str | None = None,
    source: str = "files",
    hub_id: str | None = None,
    hub_revision: str | None = None,
    **common: Any,
) -> Iterator[VQARecord]:
    check_choice(NAME, "split", split, ("val",))
    ctx = LoadContext.from_options(NAME, split, common)
    if check_choice(NAME, "source", source, ("files", "hub")) == "hub":
        hid, hsplit = hub.hub_source(NAME, split, hub_id)
        return hub.hub_records(ctx, hid, hsplit, hub.vqa_row, revision=hub_revision)
    d = dataset_dir(root, NAME, subdir, Q_FILE)
    q_path, a_path = d / Q_FILE, d / A_FILE
    base = coco_base(require_root(root, NAME), coco, "val2017")
    pairs = read_pair(ctx, q_path, a_path)

    def gen() -> Iterator[VQARecord | None]:
        for qid, q, ann in iter_pairs(pairs):
            image_id = coco_id(q.get("image_id"))
            if image_id is None:
                ctx.malformed(q_path, qid, f"image_id must be a non-negative integer, got {q.get('image_id')!r}")
                continue
            answers = answers_of(ctx, ann, a_path, qid)
            if answers is None:
                continue
            meta = base_meta(q, ann)
            meta["image_id"] = image_id
            yield ctx.make(
                q_path,
                qid,
                image=f"{base}{os.sep}val2017{os.sep}{image_id:012d}.jpg",
                question=q.get("question"),
                answers=answers,
                answer_type=(ann or {}).get("answer_type", ""),
                question_type=(ann or {}).get("question_type", ""),
                meta=meta,
            )

    return ctx.stream(gen())
