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
from ._common import LoadContext, coco_base, dataset_files
from ._vqa import coco_records, in_coco_folder, iter_pairs, read_pair

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
    ctx = LoadContext.for_split(NAME, split, ("train", "val"), common)
    if hub.wants_hub(NAME, source):
        return hub.load_from_hub(ctx, split, hub_id, hub_revision)
    q_path, a_path = dataset_files(root, NAME, subdir, *_files(split))
    folder = f"{split}2014"
    base = coco_base(require_root(root, NAME), coco, folder)
    pairs = read_pair(ctx, q_path, a_path, compact=False)  # keep the answer dicts: raw_answer
    image = in_coco_folder(base, folder)
    return ctx.stream(coco_records(ctx, iter_pairs(pairs), q_path, a_path, image, more_meta=_raw_answers))


def _raw_answers(ann: dict[str, Any] | None) -> dict[str, Any]:
    """``{"raw_answers": [...]}`` when every answer entry carries a string ``raw_answer``."""
    raw = [a.get("raw_answer") for a in (ann or {}).get("answers", []) if isinstance(a, dict)]
    return {"raw_answers": raw} if raw and all(isinstance(r, str) for r in raw) else {}
