"""VQA-Rephrasings (near OOD, question shift): human rephrasings of VQAv2 val questions.

Files (VQAv2 wrapper)::

    DIR/vqa-rephrasings/v2_OpenEnded_mscoco_valrep2014_humans_og_questions.json
    DIR/vqa-rephrasings/v2_mscoco_valrep2014_humans_og_annotations.json
    DIR/coco/val2014/COCO_val2014_*.jpg

Rephrased questions carry ``rephrasing_of`` (the original VQAv2 question_id), kept in
``meta["rephrasing_of"]``; the originals are in the files too (``only_rephrasings=True``
leaves them out, counted as filtered). The release contains some empty questions and some that
are just "?": they are skipped and counted as a known quirk, never raised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from ..records import VQARecord
from ..registry import register_dataset, require_root
from ._common import LoadContext, coco_base, coco_image, dataset_files, is_empty_question, norm_id
from ._vqa import answers_of, base_meta, coco_image_id, iter_pairs, read_pair, vqa_record

NAME = "vqa-rephrasings"
Q_FILE = "v2_OpenEnded_mscoco_valrep2014_humans_og_questions.json"
A_FILE = "v2_mscoco_valrep2014_humans_og_annotations.json"


@register_dataset(
    NAME,
    role="near",
    shift_type="question",
    description="VQA-Rephrasings: three human rephrasings of 40k VQAv2 val questions (same images, answers).",
    expected_files=[f"{NAME}/{Q_FILE}", f"{NAME}/{A_FILE}", "coco/val2014/"],
    licence="see the release page (research use); images COCO terms of use",
    source="https://facebookresearch.github.io/VQA-Rephrasings/",
)
def load_rephrasings(
    root: Path | None,
    *,
    split: str = "val",
    subdir: str = NAME,
    coco: str | None = None,
    only_rephrasings: bool = False,
    **common: Any,
) -> Iterator[VQARecord]:
    ctx = LoadContext.for_split(NAME, split, ("val",), common)
    q_path, a_path = dataset_files(root, NAME, subdir, Q_FILE, A_FILE)
    base = coco_base(require_root(root, NAME), coco, "val2014")
    pairs = read_pair(ctx, q_path, a_path)

    # not coco_records: the known quirk comes first and rephrasing_of is checked before the answers
    def gen() -> Iterator[VQARecord | None]:
        for qid, q, ann in iter_pairs(pairs):
            question = q.get("question")
            if isinstance(question, str) and is_empty_question(question):
                ctx.quirk(q_path, qid, "empty question (known in VQA-Rephrasings)")
                continue
            image_id = coco_image_id(ctx, q_path, qid, q)
            if image_id is None:
                continue
            meta = base_meta(q, ann)
            meta["image_id"] = image_id
            if "rephrasing_of" in q:
                orig = norm_id(q["rephrasing_of"])
                if orig is None:
                    ctx.malformed(q_path, qid, f"rephrasing_of must be a question id, got {q['rephrasing_of']!r}")
                    continue
                meta["rephrasing_of"] = orig
            elif only_rephrasings:
                ctx.report.filtered += 1
                continue
            answers = answers_of(ctx, ann, a_path, qid)
            if answers is None:
                continue
            yield vqa_record(ctx, q_path, qid, q, ann, image=coco_image(base, "val2014", image_id), answers=answers, meta=meta)

    return ctx.stream(gen())
