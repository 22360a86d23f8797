"""IV-VQA and CV-VQA (near OOD, vision): COCO val2014 images with one object edited out.

Both releases reuse VQAv2's file names but keep only ``{"questions": [...]}`` /
``{"annotations": [...]}``. ``image_id`` is a **string** ``"{coco_id:012d}_{removed:012d}"``
(removed category for IV-VQA, removed instance for CV-VQA) and ``question_id`` **repeats**
across the edits of one image, so records are keyed ``f"{question_id}_{image_id}"``; the
original id is kept in ``meta["original_question_id"]``. Images are named
``COCO_val2014_{image_id}.jpg``.

CV-VQA removes one instance of the counted object: ``answers[].answer`` is already decremented
but ``multiple_choice_answer`` is not, so records score against ``answers`` and the
release's ``multiple_choice_answer`` is kept in ``meta`` only.

Layout::

    DIR/iv-vqa/v2_OpenEnded_mscoco_val2014_questions.json
    DIR/iv-vqa/v2_mscoco_val2014_annotations.json
    DIR/iv-vqa/images/COCO_val2014_000000393225_000000000001.jpg   (or val2014/, or the folder itself)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Iterator

from ..records import VQARecord
from ..registry import register_dataset
from ._common import LoadContext, dataset_files, first_existing_dir, norm_id, option_dir
from ._vqa import answers_of, base_meta, iter_pairs, read_pair, vqa_record

Q_FILE = "v2_OpenEnded_mscoco_val2014_questions.json"
A_FILE = "v2_mscoco_val2014_annotations.json"
_EDIT_ID = re.compile(r"^(\d+)_(\d+)$")


def _edit_key(entry: dict[str, Any]) -> str | None:
    qid = norm_id(entry.get("question_id"))
    image_id = entry.get("image_id")
    if qid is None or not isinstance(image_id, str) or not _EDIT_ID.match(image_id):
        return None
    return f"{qid}_{image_id}"


def _load_edits(
    name: str, removed_key: str, root: Path | None, split: str, subdir: str, images: str | None, common: dict[str, Any]
) -> Iterator[VQARecord]:
    ctx = LoadContext.for_split(name, split, ("val",), common)
    q_path, a_path = dataset_files(root, name, subdir, Q_FILE, A_FILE)
    assert root is not None
    d = q_path.parent
    if images is not None:
        img_dir = option_dir(root, images)
    else:
        img_dir = first_existing_dir([d / "images", d / "val2014", d])
    pairs = read_pair(
        ctx, q_path, a_path, key=_edit_key, describe_key="question_id / string image_id '{coco:012d}_{removed:012d}'"
    )

    def gen() -> Iterator[VQARecord | None]:
        for key, q, ann in iter_pairs(pairs):
            image_id = q["image_id"]
            coco, removed = _EDIT_ID.match(image_id).groups()  # type: ignore[union-attr]
            answers = answers_of(ctx, ann, a_path, key)
            if answers is None:
                continue
            image = ctx.image(root, img_dir, f"COCO_val2014_{image_id}.jpg", source=q_path, record=key)
            if image is None:
                continue
            meta = base_meta(q, ann)
            meta.update(
                {
                    "original_question_id": str(q["question_id"]),
                    "image_id": image_id,
                    "coco_image_id": int(coco),
                    removed_key: int(removed),
                }
            )
            yield vqa_record(ctx, q_path, key, q, ann, image=image, answers=answers, meta=meta)

    return ctx.stream(gen())


def _register(name: str, removed_key: str, description: str) -> Callable[..., Iterator[VQARecord]]:
    """Register the loader of one of the two releases (same layout, different removed id)."""

    def loader(
        root: Path | None, *, split: str = "val", subdir: str = name, images: str | None = None, **common: Any
    ) -> Iterator[VQARecord]:
        return _load_edits(name, removed_key, root, split, subdir, images, common)

    loader.__name__ = loader.__qualname__ = f"load_{name.replace('-', '_')}"
    return register_dataset(
        name,
        role="near",
        shift_type="vision",
        description=description,
        expected_files=[f"{name}/{Q_FILE}", f"{name}/{A_FILE}", f"{name}/images/"],
        licence="research use; see the CausalVQA release (COCO images: COCO terms of use)",
        source="https://github.com/AgarwalVedika/CausalVQA",
    )(loader)


load_iv_vqa = _register(
    "iv-vqa",
    "removed_category_id",
    "IV-VQA: VQAv2 val images with an object irrelevant to the question removed (answer unchanged).",
)
load_cv_vqa = _register(
    "cv-vqa",
    "removed_instance_id",
    "CV-VQA: counting questions on VQAv2 val images with one instance removed (answers decremented).",
)
