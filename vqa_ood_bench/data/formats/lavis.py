"""The LAVIS layout the paper's authors keep, read without a conversion step.

LAVIS keeps COCO images under ``coco/images/{train2014,val2014,...}`` and one folder of
annotation JSONs per dataset; each annotation file is a bare list of records::

    {"question_id": 262148000, "question": "...", "answer": ["down", "down", ...],
     "image": "val2014/COCO_val2014_000000262148.jpg", "dataset": "vqa"}

``file`` (required) names the annotation JSON, relative to the data root (or absolute);
``images`` the folder the ``image`` paths are relative to (default ``coco/images``). ``answer``
may be a list (all annotators) or one string; test files may leave it out. The role of such a
split comes from the suite that uses it (``SplitSpec.role``); ``dataset_name`` sets the records'
``dataset`` field (default ``lavis``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from ...errors import ConfigError
from ..records import VQARecord
from ..registry import register_dataset, require_root
from ._common import LoadContext, option_dir
from ._vqa import read_index

NAME = "lavis"


@register_dataset(
    NAME,
    role="id",
    shift_type="none",
    description="Any VQA split in the LAVIS layout (options: file=ANNOTATION.json, images=coco/images); "
    "the suite split gives its real role.",
    expected_files=["coco/images/", "<dataset>/<annotation>.json (option file=...)"],
    licence="that of the dataset the file holds",
    source="https://github.com/salesforce/LAVIS (dataset builders download the annotation JSONs)",
)
def load_lavis(
    root: Path | None,
    *,
    file: str | None = None,
    images: str = "coco/images",
    dataset_name: str = NAME,
    split: str = "",
    **common: Any,
) -> Iterator[VQARecord]:
    if not file:
        raise ConfigError("dataset 'lavis' needs the option file=PATH (the LAVIS annotation JSON, relative to the data root)")
    ctx = LoadContext.from_options(dataset_name, split, common)
    root = require_root(root, dataset_name)
    path = option_dir(root, file)
    img_dir = option_dir(root, images)
    index = read_index(ctx, path, None, what="record")

    def gen() -> Iterator[VQARecord | None]:
        for qid, e in index.items():
            raw = e.get("answer", [])
            if isinstance(raw, str):
                answers = [raw]
            elif isinstance(raw, list) and all(isinstance(a, str) for a in raw):
                answers = list(raw)
            else:
                ctx.malformed(path, qid, "'answer' must be a string or a list of strings")
                continue
            image = ctx.image(root, img_dir, e.get("image"), source=path, record=qid)
            if image is None:
                continue
            meta = {k: e[k] for k in ("dataset", "image_id", "question_type", "answer_type") if k in e}
            yield ctx.make(
                path, qid, image=image, question=e.get("question"), answers=answers,
                answer_type=e.get("answer_type", ""), question_type=e.get("question_type", ""), meta=meta,
            )
        index.clear()

    return ctx.stream(gen())
