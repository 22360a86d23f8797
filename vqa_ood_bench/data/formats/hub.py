"""Optional: read the sets that have Hugging Face Hub copies (``source="hub"``).

Never needed by the benchmark or its tests: the released files are the reference. With network
(or a populated HF cache) a user can pass ``source="hub"`` to ``vqav2``, ``textvqa``,
``vizwiz``, ``ok-vqa``, ``advqa`` and ``domainnet-*``; rows are converted to the same
:class:`VQARecord` fields as the file loaders give (images are in-memory PIL images decoded
row by row). ``datasets`` is imported only here, only when asked; any failure to load (offline,
unknown id, no such split) becomes one :class:`DataError` naming the hub id.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from ...errors import ConfigError, DataError
from ..records import VQARecord
from ._common import LoadContext, check_choice, norm_id, parse_answers

# Hub ids and split names (file split -> hub split) known to hold these sets.
HUB_IDS: dict[str, tuple[str, dict[str, str]]] = {
    "vqav2": ("lmms-lab/VQAv2", {"val": "validation", "test-dev": "testdev", "test": "test"}),
    "textvqa": ("lmms-lab/textvqa", {"train": "train", "val": "validation", "test": "test"}),
    "vizwiz": ("lmms-lab/VizWiz-VQA", {"val": "val", "test": "test"}),
    "ok-vqa": ("lmms-lab/OK-VQA", {"val": "val2014"}),
    "advqa": ("HuggingFaceM4/AdVQA", {"val": "validation"}),
    "domainnet": ("wltjr1007/DomainNet", {"train": "train", "test": "test"}),
}

Row = dict[str, Any]
SOURCES = ("files", "hub")


def hub_source(dataset: str, split: str, hub_id: str | None) -> tuple[str, str]:
    """The hub id and hub split name for ``dataset``/``split`` (``hub_id`` overrides the id)."""
    default_id, splits = HUB_IDS[dataset]
    return (hub_id or default_id), splits.get(split, split)


def wants_hub(dataset: str, source: str) -> bool:
    """Whether a loader's ``source`` option (``"files"`` or ``"hub"``, checked) asks for the hub."""
    return check_choice(dataset, "source", source, SOURCES) == "hub"


def load_from_hub(
    ctx: LoadContext,
    split: str,
    hub_id: str | None,
    revision: str | None,
    convert: Callable[[Row, int], dict[str, Any] | None] | None = None,
) -> Iterator[VQARecord]:
    """The records of ``ctx.dataset``/``split`` from its hub copy (``convert``: :func:`vqa_row`)."""
    hid, hsplit = hub_source(ctx.dataset, split, hub_id)
    return hub_records(ctx, hid, hsplit, convert or vqa_row, revision=revision)


def load_hub_rows(hub_id: str, hub_split: str, *, revision: str | None = None, streaming: bool = False) -> Any:
    try:
        import datasets  # noqa: PLC0415 - optional, heavy
    except ImportError:
        raise ConfigError("source='hub' needs the 'datasets' package: pip install 'vqa-ood-bench[hub]'") from None
    try:
        return datasets.load_dataset(hub_id, split=hub_split, revision=revision, streaming=streaming)
    except Exception as exc:  # offline, unknown id, missing split, auth: all one clear message
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DataError(
            f"could not load split {hub_split!r} from the Hugging Face hub ({type(exc).__name__}: {msg}); "
            "without network or a cached copy, download the released files and pass --data-root instead",
            path=f"hf://datasets/{hub_id}",
        ) from None


def hub_records(
    ctx: LoadContext,
    hub_id: str,
    hub_split: str,
    convert: Callable[[Row, int], dict[str, Any] | None],
    *,
    revision: str | None = None,
    streaming: bool = False,
    rows: Any = None,
) -> Iterator[VQARecord]:
    """Records from a hub dataset; ``convert(row, index)`` gives :meth:`LoadContext.make` fields."""
    data = rows if rows is not None else load_hub_rows(hub_id, hub_split, revision=revision, streaming=streaming)
    where = f"hf://datasets/{hub_id}[{hub_split}]"

    def gen() -> Iterator[VQARecord | None]:
        for i, row in enumerate(data):
            fields = convert(row, i)
            if fields is None:
                ctx.malformed(where, f"#{i}", "row lacks question_id, question or image")
                continue
            qid = fields.pop("question_id")
            yield ctx.make(where, qid, **fields)

    return ctx.stream(gen())


def vqa_row(row: Row, index: int) -> dict[str, Any] | None:
    """VQAv2-like hub rows (lmms-lab/VQAv2, OK-VQA, AdVQA, textvqa, VizWiz-VQA)."""
    qid = norm_id(row.get("question_id"))
    image = row.get("image")
    if qid is None or image is None or "question" not in row:
        return None
    answers = parse_answers(row.get("answers") or [])
    meta: dict[str, Any] = {}
    for key in ("image_id", "multiple_choice_answer", "answerable"):
        if row.get(key) is not None:
            meta[key] = row[key]
    return {
        "question_id": qid,
        "image": image,
        "question": row["question"],
        "answers": answers if answers is not None else [],
        "answer_type": row.get("answer_type") or "",
        "question_type": row.get("question_type") or "",
        "meta": meta,
    }
