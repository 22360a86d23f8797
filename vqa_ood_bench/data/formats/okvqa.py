"""OK-VQA (far OOD, outside knowledge): COCO 2014 images, questions needing world knowledge.

Files (VQAv2 wrapper)::

    DIR/okvqa/OpenEnded_mscoco_{train,val}2014_questions.json
    DIR/okvqa/mscoco_{train,val}2014_annotations.json
    DIR/coco/{train,val}2014/COCO_*.jpg

Answers are 10 × {``answer_id``, ``raw_answer``, ``answer_confidence``, ``answer``}: records
use the processed ``answer``; the raw ones are kept in ``meta["raw_answers"]``. There is no
``multiple_choice_answer``; ``question_type`` holds OK-VQA's knowledge category codes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from ..records import VQARecord
from ..registry import register_dataset, require_root
from . import hub
from ._common import LoadContext, check_choice, coco_base, coco_id, coco_image, dataset_dir
from ._vqa import answers_of, base_meta, iter_pairs, read_pair

NAME = "ok-vqa"
SUBDIR = "okvqa"


def _files(split: str) -> tuple[str, str]:
    return f"OpenEnded_mscoco_{split}2014_questions.json", f"mscoco_{split}2014_annotations.json"


@register_dataset(
    NAME,
    role="far",
    shift_type="far",
    description="OK-VQA: questions on COCO images that need outside knowledge to answer.",
    expected_files=[f"{SUBDIR}/{f}" for s in ("train", "val") for f in _files(s)] + ["coco/train2014/", "coco/val2014/"],
    licence="see the release page (research use); images COCO terms of use",
    source="https://okvqa.allenai.org/download.html",
)
def load_okvqa(
    root: Path | None,
    *,
    split: str = "val",
    subdir: str = SUBDIR,
    coco: str | None = None,
    source: str = "files",
    hub_id: str | None = None,
    hub_revision: str | None = None,
    **common: Any,
) -> Iterator[VQARecord]:
    check_choice(NAME, "split", split, ("train", "val"))
    ctx = LoadContext.from_options(NAME, split, common)
    if check_choice(NAME, "source", source, ("files", "hub")) == "hub":
        hid, hsplit = hub.hub_source(NAME, split, hub_id)
        return hub.hub_records(ctx, hid, hsplit, hub.vqa_row, revision=hub_revision)
    q_name, a_name = _files(split)
    d = dataset_dir(root, NAME, subdir, q_name)
    q_path, a_path = d / q_name, d / a_name
    folder = f"{split}2014"
    base = coco_base(require_root(root, NAME), coco, folder)
    pairs = read_pair(ctx, q_path, a_path, compact=False)

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
            raw = [a.get("raw_answer") for a in (ann or {}).get("answers", []) if isinstance(a, dict)]
            if raw and all(isinstance(r, str) for r in raw):
                meta["raw_answers"] = raw
            yield ctx.make(
                q_path,
                qid,
                image=coco_image(base, folder, image_id),
                question=q.get("question"),
                answers=answers,
                answer_type=(ann or {}).get("answer_type", ""),
                question_type=(ann or {}).get("question_type", ""),
                meta=meta,
            )

    return ctx.stream(gen())
