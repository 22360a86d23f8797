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
from ._common import LoadContext, coco_base, dataset_files
from ._vqa import coco_records, iter_pairs, read_pair

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
    ctx = LoadContext.for_split(NAME, split, ("val",), common)
    if hub.wants_hub(NAME, source):
        return hub.load_from_hub(ctx, split, hub_id, hub_revision)
    q_path, a_path = dataset_files(root, NAME, subdir, Q_FILE, A_FILE)
    base = coco_base(require_root(root, NAME), coco, "val2017")
    pairs = read_pair(ctx, q_path, a_path)

    def coco2017_image(image_id: int, _fields: dict[str, Any]) -> str:
        return f"{base}{os.sep}val2017{os.sep}{image_id:012d}.jpg"

    return ctx.stream(coco_records(ctx, iter_pairs(pairs), q_path, a_path, coco2017_image))
