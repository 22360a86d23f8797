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
from ._common import LoadContext, coco_base, coco_image, dataset_files
from ._vqa import coco_records, iter_pairs, read_pair

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
    ctx = LoadContext.for_split(NAME, split, ("train", "test"), common)
    q_path, a_path = dataset_files(root, NAME, subdir, *_files(split))
    root = require_root(root, NAME)
    bases = {cs: coco_base(root, coco, cs) for cs in COCO_SPLITS}
    pairs = read_pair(ctx, q_path, a_path, wrapped=False)

    def coco_split_of(qid: str, q: dict[str, Any], ann: dict[str, Any] | None) -> dict[str, Any] | None:
        coco_split = q.get("coco_split", (ann or {}).get("coco_split"))
        if coco_split not in COCO_SPLITS:
            ctx.malformed(q_path, qid, f"coco_split must be 'train2014' or 'val2014', got {coco_split!r}")
            return None
        return {"coco_split": coco_split}

    def image(image_id: int, fields: dict[str, Any]) -> str:
        return coco_image(bases[fields["coco_split"]], fields["coco_split"], image_id)

    return ctx.stream(coco_records(ctx, iter_pairs(pairs), q_path, a_path, image, fields=coco_split_of))
