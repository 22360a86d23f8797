"""VQA-CE (near OOD, multimodal shortcuts): subsets of VQAv2 val chosen against shortcuts.

The release is two **bare lists of integer VQAv2-val question ids**; questions, answers and
images come from VQAv2 val::

    DIR/vqa-ce/counterexamples.json   DIR/vqa-ce/hard.json
    DIR/vqav2/v2_OpenEnded_mscoco_val2014_questions.json, v2_mscoco_val2014_annotations.json
    DIR/coco/val2014/

``split`` picks the subset: ``counterexamples`` (default, the paper's VQA-CE), ``hard``, or
``easy`` = val − counterexamples − hard. An id that VQAv2 val does not have is an id mismatch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from ..records import VQARecord
from ..registry import register_dataset, require_root
from ._common import LoadContext, bare_list, coco_base, dataset_dir, load_json, report_missing
from ._vqa import Pair, coco_records, in_coco_folder, read_pair
from .vqav2 import vqav2_files

NAME = "vqa-ce"
FILES = {"counterexamples": "counterexamples.json", "hard": "hard.json"}


def _read_ids(ctx: LoadContext, path: Path) -> list[str]:
    ids: list[str] = []
    seen: set[str] = set()
    for pos, value in enumerate(bare_list(load_json(ctx.add_file(path)), path)):
        if isinstance(value, bool) or not isinstance(value, int):
            ctx.malformed(path, f"#{pos}", f"entries must be integer VQAv2 question ids, got {value!r}")
            continue
        key = str(value)
        if key in seen:
            ctx.malformed(path, key, "question id listed twice")
            continue
        seen.add(key)
        ids.append(key)
    return ids


@register_dataset(
    NAME,
    role="near",
    shift_type="multimodal",
    description="VQA-CE: VQAv2 val questions that are counterexamples to mined multimodal shortcuts.",
    expected_files=[f"{NAME}/{f}" for f in FILES.values()]
    + ["vqav2/v2_OpenEnded_mscoco_val2014_questions.json", "vqav2/v2_mscoco_val2014_annotations.json", "coco/val2014/"],
    licence="see the release (research use); questions/answers VQAv2 CC BY 4.0",
    source="https://github.com/cdancette/detect-shortcuts",
)
def load_vqace(
    root: Path | None,
    *,
    split: str = "counterexamples",
    subdir: str = NAME,
    vqav2_subdir: str = "vqav2",
    coco: str | None = None,
    **common: Any,
) -> Iterator[VQARecord]:
    ctx = LoadContext.for_split(NAME, split, ("counterexamples", "hard", "easy"), common)
    d = dataset_dir(root, NAME, subdir, FILES["counterexamples"])
    root = require_root(root, NAME)
    lists = {name: _read_ids(ctx, d / fname) for name, fname in FILES.items()}
    q_path, a_path = vqav2_files(root, "val", vqav2_subdir, dataset=NAME)
    pairs = {k: (q, a) for k, q, a in read_pair(ctx, q_path, a_path)}
    for name, ids in lists.items():
        missing = [k for k in ids if k not in pairs]
        report_missing(ctx, missing, d / FILES[name], f"question id is not in VQAv2 val ({q_path.name})")
    if split == "easy":
        excluded = set(lists["counterexamples"]) | set(lists["hard"])
        chosen = [k for k in pairs if k not in excluded]
    else:
        chosen = [k for k in lists[split] if k in pairs]
    base = coco_base(root, coco, "val2014")

    def chosen_pairs() -> Iterator[Pair]:
        for qid in chosen:
            q, ann = pairs.pop(qid)
            yield qid, q, ann
        pairs.clear()

    subset = {"vqa_ce_subset": split}
    records = coco_records(
        ctx, chosen_pairs(), q_path, a_path, in_coco_folder(base, "val2014"), fields=lambda _qid, _q, _ann: subset
    )
    return ctx.stream(records)
