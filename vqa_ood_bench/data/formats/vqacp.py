"""VQA-CP v2 (near OOD, answer shift): VQAv2 train+val re-split so answer priors flip.

Files are **bare JSON lists** (no wrapper)::

    DIR/vqa-cp-v2/vqacp_v2_{train,test}_questions.json
    DIR/vqa-cp-v2/vqacp_v2_{train,test}_annotations.json
    DIR/coco/{train2014,val2014}/COCO_*.jpg

Each entry carries ``coco_split`` ("train2014" / "val2014"), which picks the COCO image folder;
it is kept in ``meta["coco_split"]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from ..records import VQARecord
from ..registry import register_dataset, require_root
from ._common import LoadContext, check_choice, coco_base, coco_id, coco_image, dataset_dir
from ._vqa import answers_of, base_meta, iter_pairs, read_pair

NAME = "vqa-cp-v2"
COCO_SPLITS = ("train2014", "val2014")


def _files(split: str) -> tuple[str, str]:
    return f"vqacp_v2_{split}_questions.json", f"vqacp_v2_{split}_annotations.json"


@register_dataset(
    NAME,
    role="near",
    shift_type="answer",
    description="VQA-CP v2: VQAv2 re-split so that per-question-type answer priors differ between train and test.",
    expected_files=[f"{NAME}/{f}" for s in ("train", "test") for f in _files(s)] + ["coco/train2014/", "coco/val2014/"],
    licence="see the release page (research use); images COCO terms of use",
    source="https://www.cc.gatech.edu/grads/a/aagrawal307/vqa-cp/",
)
def load_vqacp(
    root: Path | None, *, split: str = "test", subdir: str = NAME, coco: str | None = None, **common: Any
) -> Iterator[VQARecord]:
    check_choice(NAME, "split", split, ("train", "test"))
    ctx = LoadContext.from_options(NAME, split, common)
    q_name, a_name = _files(split)
    d = dataset_dir(root, NAME, subdir, q_name)
    root = require_root(root, NAME)
    q_path, a_path = d / q_name, d / a_name
    bases = {cs: coco_base(root, coco, cs) for cs in COCO_SPLITS}
    pairs = read_pair(ctx, q_path, a_path, wrapped=False)

    def gen() -> Iterator[VQARecord | None]:
        for qid, q, ann in iter_pairs(pairs):
            coco_split = q.get("coco_split", (ann or {}).get("coco_split"))
            if coco_split not in COCO_SPLITS:
                ctx.malformed(q_path, qid, f"coco_split must be 'train2014' or 'val2014', got {coco_split!r}")
                continue
            image_id = coco_id(q.get("image_id"))
            if image_id is None:
                ctx.malformed(q_path, qid, f"image_id must be a non-negative integer, got {q.get('image_id')!r}")
                continue
            answers = answers_of(ctx, ann, a_path, qid)
            if answers is None:
                continue
            meta = base_meta(q, ann)
            meta.update({"image_id": image_id, "coco_split": coco_split})
            yield ctx.make(
                q_path,
                qid,
                image=coco_image(bases[coco_split], coco_split, image_id),
                question=q.get("question"),
                answers=answers,
                answer_type=(ann or {}).get("answer_type", ""),
                question_type=(ann or {}).get("question_type", ""),
                meta=meta,
            )

    return ctx.stream(gen())
