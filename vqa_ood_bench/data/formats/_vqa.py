"""The VQAv2 file pair (questions file + annotations file), shared by the VQAv2-derived sets.

VQAv2, VQA-Rephrasings, AdVQA and OK-VQA wrap their lists in a dict (``{"info", "license",
"data_subtype", "questions": [...]}``), IV-VQA / CV-VQA keep only ``{"questions": [...]}``,
and VQA-CP v2 ships bare lists. :func:`read_pair` reads either shape, indexes both files by
the record key, checks that they name the same ids, and returns the pairs in question-file
order, ready for a loader to turn into records: :func:`coco_records` does that for the sets
whose images are COCO images named by ``image_id``; :func:`vqa_record` builds one record.
Single-file releases (TextVQA, VizWiz, LAVIS) are read with :func:`read_index`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..records import VQARecord
from ._common import (
    LoadContext,
    bare_list,
    coco_id,
    coco_image,
    gc_paused,
    index_entries,
    load_json,
    pair_ids,
    parse_answers,
    qid_key,
    wrapped_list,
)

Pair = tuple[str, dict[str, Any], "dict[str, Any] | None"]


def read_entries(ctx: LoadContext, path: Path, key: str | None, *, compact: bool) -> list[Any]:
    """Read one file: ``key`` names the wrapper's list; ``None`` means a bare list."""
    obj = load_json(ctx.add_file(path), compact_answers=compact)
    return bare_list(obj, path) if key is None else wrapped_list(obj, key, path)


def read_index(
    ctx: LoadContext,
    path: Path,
    wrapper_key: str | None,
    *,
    key: Callable[[dict[str, Any]], str | None] = qid_key,
    what: str = "question",
    describe_key: str = "question_id",
    compact: bool = False,
) -> dict[str, dict[str, Any]]:
    """A single-file release's entries indexed by ``key`` (see :func:`read_entries`)."""
    entries = read_entries(ctx, path, wrapper_key, compact=compact)
    return index_entries(ctx, entries, path, key=key, what=what, describe_key=describe_key)


def read_pair(
    ctx: LoadContext,
    q_path: Path,
    a_path: Path | None,
    *,
    wrapped: bool = True,
    key: Callable[[dict[str, Any]], str | None] = qid_key,
    describe_key: str = "question_id",
    compact: bool = True,
) -> list[Pair]:
    """Questions (and annotations, unless ``a_path`` is None: test splits) paired by key."""
    with gc_paused():
        return _read_pair(ctx, q_path, a_path, wrapped=wrapped, key=key, describe_key=describe_key, compact=compact)


def _read_pair(
    ctx: LoadContext,
    q_path: Path,
    a_path: Path | None,
    *,
    wrapped: bool,
    key: Callable[[dict[str, Any]], str | None],
    describe_key: str,
    compact: bool,
) -> list[Pair]:
    q_entries = read_entries(ctx, q_path, "questions" if wrapped else None, compact=False)
    a_entries = None
    if a_path is not None:
        a_entries = read_entries(ctx, a_path, "annotations" if wrapped else None, compact=compact)
    questions = index_entries(ctx, q_entries, q_path, key=key, what="question", describe_key=describe_key)
    del q_entries
    if a_entries is None:
        return [(k, q, None) for k, q in questions.items()]
    annotations = index_entries(ctx, a_entries, a_path, key=key, what="annotation", describe_key=describe_key)
    del a_entries
    pair_ids(ctx, questions, annotations, q_path, a_path)  # type: ignore[arg-type]
    return [(k, q, annotations[k]) for k, q in questions.items()]


def answers_of(ctx: LoadContext, ann: dict[str, Any] | None, path: Path | None, record: str) -> list[str] | None:
    """The annotators' answers (order kept); ``None`` (after reporting) when malformed."""
    if ann is None:
        return []
    if "answers" not in ann:
        ctx.malformed(path, record, "annotation has no 'answers' list")
        return None
    answers = parse_answers(ann["answers"])
    if answers is None:
        ctx.malformed(path, record, "'answers' must be a list of {'answer': str, ...} objects or strings")
    return answers


def base_meta(q: dict[str, Any], ann: dict[str, Any] | None) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if ann is not None:
        mca = ann.get("multiple_choice_answer")
        if isinstance(mca, str):
            meta["multiple_choice_answer"] = mca
    return meta


def iter_pairs(pairs: list[Pair]) -> Iterator[Pair]:
    """Yield the pairs while releasing them, so a consumed stream frees its source dicts."""
    pairs.reverse()
    while pairs:
        yield pairs.pop()


def coco_image_id(ctx: LoadContext, q_path: Path, qid: str, q: dict[str, Any]) -> int | None:
    """The question's COCO ``image_id``; ``None`` (after reporting) when it is not one."""
    image_id = coco_id(q.get("image_id"))
    if image_id is None:
        ctx.malformed(q_path, qid, f"image_id must be a non-negative integer, got {q.get('image_id')!r}")
    return image_id


def vqa_record(
    ctx: LoadContext,
    q_path: Path,
    qid: str,
    q: dict[str, Any],
    ann: dict[str, Any] | None,
    *,
    image: Any,
    answers: list[str],
    meta: dict[str, Any],
) -> VQARecord | None:
    """One record of a question and its annotation (``None``: sampled out or skipped)."""
    return ctx.make(
        q_path,
        qid,
        image=image,
        question=q.get("question"),
        answers=answers,
        answer_type=(ann or {}).get("answer_type", ""),
        question_type=(ann or {}).get("question_type", ""),
        meta=meta,
    )


def in_coco_folder(base: Path, folder: str) -> Callable[[int, dict[str, Any]], str]:
    """``image`` for :func:`coco_records`: COCO-named files in ``base/folder``."""
    return lambda image_id, _fields: coco_image(base, folder, image_id)


def coco_records(
    ctx: LoadContext,
    pairs: Iterable[Pair],
    q_path: Path,
    a_path: Path | None,
    image: Callable[[int, dict[str, Any]], str],
    *,
    fields: Callable[[str, dict[str, Any], dict[str, Any] | None], dict[str, Any] | None] | None = None,
    more_meta: Callable[[dict[str, Any] | None], dict[str, Any]] | None = None,
) -> Iterator[VQARecord | None]:
    """Records of question/annotation pairs whose images are COCO images named by ``image_id``.

    Each pair is checked in this order, and the first problem is the one reported:
    ``fields(qid, q, ann)``, the set's own meta fields (``None``: malformed, already
    reported); the COCO ``image_id``; the answers. ``meta`` is the multiple-choice answer,
    ``image_id``, the fields, then ``more_meta(ann)``; ``image(image_id, fields)`` is the
    image path.
    """
    for qid, q, ann in pairs:
        extra = fields(qid, q, ann) if fields is not None else {}
        if extra is None:
            continue
        image_id = coco_image_id(ctx, q_path, qid, q)
        if image_id is None:
            continue
        answers = answers_of(ctx, ann, a_path, qid)
        if answers is None:
            continue
        meta = base_meta(q, ann)
        meta["image_id"] = image_id
        meta.update(extra)
        if more_meta is not None:
            meta.update(more_meta(ann))
        yield vqa_record(ctx, q_path, qid, q, ann, image=image(image_id, extra), answers=answers, meta=meta)
