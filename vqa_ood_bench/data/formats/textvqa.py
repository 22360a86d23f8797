"""TextVQA (far OOD, text in images): Open Images photos whose answers need reading text.

Files::

    DIR/textvqa/TextVQA_0.5.1_{train,val,test}.json
    DIR/textvqa/train_images/{image_id}.jpg    (train and val images)
    DIR/textvqa/test_images/{image_id}.jpg

Each file is ``{"dataset_type", "dataset_name", "dataset_version", "data": [...]}``; entries
hold ``question``, ``image_id`` (16-hex string), ``answers`` (10 plain strings; absent in
test), ``question_id`` (int), ``question_tokens``, ``image_classes``, ``image_width``,
``image_height``, ``flickr_original_url``, ``flickr_300k_url`` and ``set_name``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from ..records import VQARecord
from ..registry import register_dataset, require_root
from . import hub
from ._common import LoadContext, dataset_dir, option_dir, parse_answers
from ._vqa import read_index

NAME = "textvqa"
VERSION = "0.5.1"
META_KEYS = ("set_name", "image_classes", "image_width", "image_height", "flickr_original_url")


def _file(split: str) -> str:
    return f"TextVQA_{VERSION}_{split}.json"


@register_dataset(
    NAME,
    role="far",
    shift_type="far",
    description="TextVQA: questions about text in Open Images photos (answers must be read from the image).",
    expected_files=[f"{NAME}/{_file(s)}" for s in ("train", "val", "test")] + [f"{NAME}/train_images/", f"{NAME}/test_images/"],
    licence="annotations CC BY 4.0; images Open Images (CC BY 2.0 per image)",
    source="https://textvqa.org/dataset/",
)
def load_textvqa(
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
    ctx = LoadContext.for_split(NAME, split, ("train", "val", "test"), common)
    if hub.wants_hub(NAME, source):
        return hub.load_from_hub(ctx, split, hub_id, hub_revision)
    d = dataset_dir(root, NAME, subdir, _file(split))
    root = require_root(root, NAME)
    path = d / _file(split)
    img_dir = option_dir(root, images) if images is not None else d / ("test_images" if split == "test" else "train_images")
    index = read_index(ctx, path, "data")
    labelled = split != "test"

    def gen() -> Iterator[VQARecord | None]:
        for qid, e in index.items():
            image_id = e.get("image_id")
            if not isinstance(image_id, str) or not image_id:
                ctx.malformed(path, qid, f"image_id must be a non-empty string, got {image_id!r}")
                continue
            answers: list[str] | None = []
            if "answers" in e or labelled:
                answers = parse_answers(e.get("answers"))
                if answers is None:
                    ctx.malformed(path, qid, "'answers' must be a list of strings")
                    continue
            image = ctx.image(root, img_dir, f"{image_id}.jpg", source=path, record=qid)
            if image is None:
                continue
            meta = {"image_id": image_id, **{k: e[k] for k in META_KEYS if k in e}}
            yield ctx.make(path, qid, image=image, question=e.get("question"), answers=answers, meta=meta)
        index.clear()

    return ctx.stream(gen())
