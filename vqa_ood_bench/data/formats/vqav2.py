"""VQAv2 (ID): ``v2_OpenEnded_mscoco_{split}_questions.json`` + ``v2_mscoco_{split}_annotations.json``.

Layout (``--data-root DIR``)::

    DIR/vqav2/v2_OpenEnded_mscoco_val2014_questions.json   (or directly in DIR)
    DIR/vqav2/v2_mscoco_val2014_annotations.json
    DIR/coco/val2014/COCO_val2014_000000393225.jpg          (or DIR/coco/images/val2014, LAVIS)

Splits: ``train``, ``val`` (annotated), ``test``, ``test-dev`` (questions only, images in
``test2015``). ``question_id`` is unique in the release and kept as is (as a string).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from ..records import VQARecord
from ..registry import register_dataset, require_root
from . import hub
from ._common import LoadContext, coco_base, dataset_dir
from ._vqa import coco_records, in_coco_folder, iter_pairs, read_pair

NAME = "vqav2"
SUBDIR = "vqav2"

# split -> (question file subtype, annotation file subtype or None, COCO image folder)
SPLITS: dict[str, tuple[str, str | None, str]] = {
    "train": ("train2014", "train2014", "train2014"),
    "val": ("val2014", "val2014", "val2014"),
    "test": ("test2015", None, "test2015"),
    "test-dev": ("test-dev2015", None, "test2015"),
}


def question_file(split: str) -> str:
    return f"v2_OpenEnded_mscoco_{SPLITS[split][0]}_questions.json"


def annotation_file(split: str) -> str | None:
    sub = SPLITS[split][1]
    return None if sub is None else f"v2_mscoco_{sub}_annotations.json"


def vqav2_files(root: Path | None, split: str, subdir: str = SUBDIR, dataset: str = NAME) -> tuple[Path, Path | None]:
    """Question and annotation paths of a VQAv2 split (also used by VQA-CE)."""
    d = dataset_dir(root, dataset, subdir, question_file(split))
    ann = annotation_file(split)
    return d / question_file(split), (None if ann is None else d / ann)


@register_dataset(
    NAME,
    role="id",
    shift_type="none",
    description="VQAv2: COCO images, 10 answers per question (ID training and validation set).",
    expected_files=[f"{SUBDIR}/{question_file(s)}" for s in SPLITS]
    + [f"{SUBDIR}/{annotation_file(s)}" for s in ("train", "val")]
    + ["coco/train2014/", "coco/val2014/", "coco/test2015/"],
    licence="annotations CC BY 4.0 (VQA Consortium); images COCO terms of use (Flickr)",
    source="https://visualqa.org/download.html (images: https://cocodataset.org)",
)
def load_vqav2(
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
    """VQAv2 ``split`` as released; ``coco`` overrides the folder holding ``train2014/`` etc."""
    ctx = LoadContext.for_split(NAME, split, SPLITS, common)
    if hub.wants_hub(NAME, source):
        return hub.load_from_hub(ctx, split, hub_id, hub_revision)
    q_path, a_path = vqav2_files(root, split, subdir)
    folder = SPLITS[split][2]
    base = coco_base(require_root(root, NAME), coco, folder)
    pairs = read_pair(ctx, q_path, a_path)
    return ctx.stream(coco_records(ctx, iter_pairs(pairs), q_path, a_path, in_coco_folder(base, folder)))
