"""Shared pieces of the released-format loaders.

Every loader in this package is ``loader(root, **options) -> Iterable[VQARecord]`` and accepts,
besides its own options, the common ones parsed by :meth:`LoadContext.from_options`:

``report``
    a :class:`LoadReport` the loader fills: records yielded, records skipped (with the file,
    the record and the reason), records left out by sub-sampling.
``strict`` (default ``True``)
    a malformed record raises one :class:`DataError` naming the file and the record; with
    ``strict=False`` (what ``datasets verify`` uses) it is skipped and listed in the report.
    Records a dataset is *known* to contain (VQA-Rephrasings' empty questions, VizWiz's empty
    answers) are always skipped and counted, never raised.
``fraction`` / ``fraction_start`` (defaults ``1.0`` / ``0.0``)
    deterministic sub-sampling: a record is kept when a hash of ``dataset/split:question_id``,
    read as a number in [0, 1), falls in ``[fraction_start, fraction_start + fraction)``. The
    choice does not depend on file order, nested fractions keep each other's records, and two
    disjoint ranges give disjoint samples (the paper's train split is ``fraction=0.1``).

Loaders read their files and check ids eagerly (a missing or malformed file fails at the call)
and then return a generator that builds records one by one; images stay paths (lazy).
Nothing is dropped silently: when no report is passed, skipped records are logged as a warning
with their count at the end of the stream.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import posixpath
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ...errors import ConfigError, DataError
from ...io import safe_join
from ..records import VQARecord
from ..registry import require_root

log = logging.getLogger("vqa_ood_bench.data")

COMMON_OPTIONS = ("report", "strict", "fraction", "fraction_start")


# --------------------------------------------------------------------------- report


@dataclass
class Skipped:
    """One record that was not yielded, and why."""

    record: str | None
    reason: str
    path: str | None = None
    known: bool = False  # True: a quirk the release is known to have; False: malformed input

    def to_json(self) -> dict[str, Any]:
        return {"record": self.record, "reason": self.reason, "file": self.path, "known_quirk": self.known}


@dataclass
class LoadReport:
    """What one load did: filled by the loader while its records are consumed."""

    dataset: str = ""
    split: str = ""
    records: int = 0
    filtered: int = 0  # left out by fraction sub-sampling (not an error)
    files: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    finished: bool = False

    @property
    def malformed(self) -> list[Skipped]:
        return [s for s in self.skipped if not s.known]

    @property
    def quirks(self) -> list[Skipped]:
        return [s for s in self.skipped if s.known]

    def reason_counts(self) -> dict[str, int]:
        return dict(Counter(s.reason for s in self.skipped))

    def summary(self) -> str:
        parts = [f"{self.records} records"]
        if self.skipped:
            reasons = "; ".join(f"{n} × {r}" for r, n in sorted(self.reason_counts().items()))
            parts.append(f"{len(self.skipped)} skipped ({reasons})")
        if self.filtered:
            parts.append(f"{self.filtered} left out by sub-sampling")
        name = self.dataset + (f"/{self.split}" if self.split else "")
        return f"{name}: " + ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "split": self.split,
            "records": self.records,
            "filtered": self.filtered,
            "files": list(self.files),
            "skipped": [s.to_json() for s in self.skipped],
        }


# --------------------------------------------------------------------------- context


def unit_hash(text: str) -> float:
    """A stable number in [0, 1) for ``text`` (the same on every machine and Python)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


class LoadContext:
    """Per-load state: where skipped records go, strictness, sub-sampling, counting."""

    def __init__(
        self,
        dataset: str,
        split: str = "",
        *,
        report: LoadReport | None = None,
        strict: bool = True,
        fraction: float = 1.0,
        fraction_start: float = 0.0,
    ) -> None:
        try:
            fraction = float(fraction)
            fraction_start = float(fraction_start)
        except (TypeError, ValueError):
            raise ConfigError(f"dataset {dataset!r}: fraction and fraction_start must be numbers") from None
        if not (0.0 < fraction <= 1.0) or not (0.0 <= fraction_start < 1.0) or fraction_start + fraction > 1.0 + 1e-9:
            raise ConfigError(
                f"dataset {dataset!r}: need 0 < fraction <= 1 and 0 <= fraction_start, with "
                f"fraction_start + fraction <= 1 (got fraction={fraction}, fraction_start={fraction_start})"
            )
        if report is not None and not isinstance(report, LoadReport):
            raise ConfigError(f"dataset {dataset!r}: report must be a LoadReport")
        self.dataset = dataset
        self.split = split
        self.own_report = report is None
        self.report = report if report is not None else LoadReport()
        self.report.dataset = dataset
        self.report.split = split
        self.strict = bool(strict)
        self.fraction = fraction
        self.fraction_start = fraction_start
        self._sampling = fraction < 1.0
        self._salt = f"{dataset}/{split}:"

    @classmethod
    def from_options(cls, dataset: str, split: str, options: dict[str, Any]) -> "LoadContext":
        unknown = sorted(set(options) - set(COMMON_OPTIONS))
        if unknown:
            raise ConfigError(f"dataset {dataset!r}: unknown option(s) {', '.join(map(repr, unknown))}")
        return cls(dataset, split, **options)

    @classmethod
    def for_split(cls, dataset: str, split: str, splits: Iterable[str], options: dict[str, Any]) -> "LoadContext":
        """Check ``split`` against the dataset's ``splits``, then :meth:`from_options`."""
        check_choice(dataset, "split", split, splits)
        return cls.from_options(dataset, split, options)

    # -- bad input -------------------------------------------------------------
    def malformed(self, path: str | Path | None, record: object, reason: str) -> None:
        """A record that breaks the released format: raise (strict) or skip and list it."""
        if self.strict:
            raise DataError(reason, path=path, record=record)
        self.report.skipped.append(Skipped(_rec(record), reason, _str(path), known=False))

    def quirk(self, path: str | Path | None, record: object, reason: str) -> None:
        """A record the release is known to contain and that cannot be used: skip and count."""
        self.report.skipped.append(Skipped(_rec(record), reason, _str(path), known=True))

    def add_file(self, path: Path) -> Path:
        self.report.files.append(str(path))
        return path

    # -- records ---------------------------------------------------------------
    def keep(self, question_id: str) -> bool:
        if not self._sampling:
            return True
        u = unit_hash(self._salt + question_id)
        if self.fraction_start <= u < self.fraction_start + self.fraction:
            return True
        self.report.filtered += 1
        return False

    def make(
        self,
        path: str | Path | None,
        question_id: str,
        *,
        image: Any,
        question: Any,
        answers: list[str],
        answer_type: Any = "",
        question_type: Any = "",
        meta: dict[str, Any] | None = None,
    ) -> VQARecord | None:
        """Build one record (or ``None`` when it is sampled out or skipped)."""
        if not self.keep(question_id):
            return None
        if not isinstance(question, str):
            self.malformed(path, question_id, f"question must be a string, got {_type(question)}")
            return None
        if is_empty_question(question):
            self.malformed(path, question_id, f"empty question {question!r}")
            return None
        try:
            rec = VQARecord(
                question_id=question_id,
                image=image,
                question=question,
                answers=answers,
                answer_type=answer_type if isinstance(answer_type, str) else str(answer_type),
                question_type=question_type if isinstance(question_type, str) else str(question_type),
                dataset=self.dataset,
                split=self.split,
                meta=meta or {},
            )
        except DataError as exc:
            self.malformed(path, question_id, bare_message(exc))
            return None
        self.report.records += 1
        return rec

    def image(self, root: Path, base: Path, rel: Any, *, source: Path, record: object) -> str | None:
        """:func:`relative_image`, with a refused path reported as malformed (``None``)."""
        try:
            return relative_image(root, base, rel, source=source, record=record)
        except DataError as exc:
            self.malformed(source, record, bare_message(exc))
            return None

    def stream(self, records: Iterable[VQARecord | None]) -> Iterator[VQARecord]:
        """Yield the non-``None`` records; at the end, log what was skipped if nobody asked."""
        for rec in records:
            if rec is not None:
                yield rec
        self.report.finished = True
        if self.own_report and self.report.skipped:
            log.warning("%s (run `vqa-ood-bench datasets verify` for the list)", self.report.summary())


def bare_message(exc: DataError) -> str:
    """A DataError's message without its ``path [record r]: `` prefix."""
    text = str(exc)
    prefix = ""
    if exc.path is not None:
        prefix = exc.path + (f" [record {exc.record}]" if exc.record is not None else "") + ": "
    elif exc.record is not None:
        prefix = f"[record {exc.record}]: "
    return text[len(prefix):] if prefix and text.startswith(prefix) else text


def _rec(record: object) -> str | None:
    return None if record is None else str(record)


def _str(path: str | Path | None) -> str | None:
    return None if path is None else str(path)


def _type(value: object) -> str:
    return "null" if value is None else type(value).__name__


def is_empty_question(question: str) -> bool:
    """True for "", whitespace, or punctuation only (VQA-Rephrasings has "?" questions)."""
    return not any(ch.isalnum() for ch in question)


# --------------------------------------------------------------------------- JSON


def _compact_answer_hook(obj: dict[str, Any]) -> Any:
    # VQAv2-style answer entries ({answer, answer_confidence, answer_id}) become the interned
    # answer string while the file is parsed: a VQAv2 val annotation file then takes ~40% of
    # the memory it takes as dicts. Anything else (malformed entries included) is kept as is.
    if len(obj) <= 4 and "answer" in obj and ("answer_confidence" in obj or "answer_id" in obj):
        ans = obj["answer"]
        if type(ans) is str:
            return sys.intern(ans)
    return obj


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while millions of acyclic JSON objects are built.

    Each collection walks every live container; during a VQAv2-sized parse that is most of
    the time spent. Reference counting still frees everything; the collector's previous state
    is restored.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_json(path: Path, *, compact_answers: bool = False) -> Any:
    """Read a JSON file; a missing or malformed file raises :class:`DataError` naming it."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise DataError("file not found", path=path) from None
    except IsADirectoryError:
        raise DataError("expected a file, found a folder", path=path) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text ({exc.reason})", path=path) from None
    try:
        with gc_paused():
            return json.loads(text, object_hook=_compact_answer_hook if compact_answers else None)
    except json.JSONDecodeError as exc:
        raise DataError(f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", path=path) from None
    except RecursionError:
        raise DataError("malformed JSON: nested too deeply", path=path) from None


def wrapped_list(obj: Any, key: str, path: Path) -> list[Any]:
    """The list under ``key`` of a release's wrapper object (VQAv2 style ``{"questions": [...]}``)."""
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object with a {key!r} list (as released), found a {_json_type(obj)}", path=path)
    if key not in obj:
        keys = ", ".join(sorted(map(str, obj))) or "none"
        raise DataError(f"expected a {key!r} list in the top-level object; keys found: {keys}", path=path)
    value = obj[key]
    if not isinstance(value, list):
        raise DataError(f"{key!r} must be a list, found a {_json_type(value)}", path=path)
    return value


def bare_list(obj: Any, path: Path) -> list[Any]:
    """A release that is a bare JSON list (VQA-CP v2, VizWiz, VQA-CE)."""
    if not isinstance(obj, list):
        extra = ""
        if isinstance(obj, dict):
            extra = " with keys " + ", ".join(sorted(map(str, obj))[:8])
        raise DataError(f"expected a bare JSON list (as released), found a {_json_type(obj)}{extra}", path=path)
    return obj


def _json_type(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if isinstance(value, (int, float)) else type(value).__name__
    )


# --------------------------------------------------------------------------- ids and answers


def norm_id(value: Any) -> str | None:
    """A question id as a string: ints and non-empty strings; anything else is malformed."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value
    return None


def coco_id(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def parse_answers(raw: Any) -> list[str] | None:
    """Answers as strings: VQAv2 dicts (``answer`` key; ``answer_id`` optional) or plain strings."""
    if not isinstance(raw, list):
        return None
    out: list[str] = []
    for item in raw:
        if type(item) is str:
            out.append(item)
        elif isinstance(item, dict) and isinstance(item.get("answer"), str):
            out.append(item["answer"])
        else:
            return None
    return out


def index_entries(
    ctx: LoadContext,
    entries: list[Any],
    path: Path,
    *,
    key: Callable[[dict[str, Any]], str | None],
    what: str,
    describe_key: str = "question_id",
) -> dict[str, dict[str, Any]]:
    """Index a list of JSON objects by ``key``; non-objects, bad ids and duplicates are malformed."""
    index: dict[str, dict[str, Any]] = {}
    for pos, entry in enumerate(entries):
        if not isinstance(entry, dict):
            ctx.malformed(path, f"#{pos}", f"{what} entry must be a JSON object, found a {_json_type(entry)}")
            continue
        k = key(entry)
        if k is None:
            ctx.malformed(path, f"#{pos}", f"{what} has a missing or invalid {describe_key}")
            continue
        if k in index:
            ctx.malformed(path, k, f"{describe_key} occurs twice in the {what}s")
            continue
        index[k] = entry
    return index


def pair_ids(
    ctx: LoadContext,
    questions: dict[str, dict[str, Any]],
    annotations: dict[str, dict[str, Any]],
    q_path: Path,
    a_path: Path,
) -> None:
    """Check that questions and annotations name the same ids; mismatches are malformed."""
    no_ann = [k for k in questions if k not in annotations]
    no_q = [k for k in annotations if k not in questions]
    report_missing(ctx, no_ann, q_path, f"question has no annotation in {a_path.name}")
    for k in no_ann:
        del questions[k]
    report_missing(ctx, no_q, a_path, f"annotation has no question in {q_path.name}")


def report_missing(ctx: LoadContext, ids: list[str], path: Path, reason: str) -> None:
    """Ids named in ``path`` that the file they refer to lacks. Strict: one error for them all
    (the first id, and how many more); otherwise each is skipped as malformed."""
    if ids and ctx.strict:
        more = f" ({len(ids) - 1} more)" if len(ids) > 1 else ""
        raise DataError(f"{reason}{more}", path=path, record=ids[0])
    for k in ids:
        ctx.malformed(path, k, reason)


def qid_key(entry: dict[str, Any]) -> str | None:
    return norm_id(entry.get("question_id"))


# --------------------------------------------------------------------------- paths


def check_choice(dataset: str, name: str, value: Any, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"dataset {dataset!r}: {name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def dataset_dir(root: Path | None, dataset: str, subdir: str, probe: str) -> Path:
    """The folder holding a dataset's files: ``root/subdir`` or, if the user pointed at it, ``root``.

    ``probe`` is a file (relative to the dataset folder) that decides; when it is in neither
    place the error names both paths.
    """
    root = require_root(root, dataset)
    first = root / subdir if subdir else root
    for cand in (first, root):
        if (cand / probe).exists():
            return cand
    where = f"{first / probe}" + (f" or {root / probe}" if first != root else "")
    raise DataError(f"{dataset}: annotation file not found (looked for {where})", path=first / probe)


def dataset_files(root: Path | None, dataset: str, subdir: str, first: str, *others: str) -> list[Path]:
    """Paths of a dataset's files in its :func:`dataset_dir` (``first`` is the probe)."""
    d = dataset_dir(root, dataset, subdir, first)
    return [d / first, *(d / name for name in others)]


def first_existing_dir(candidates: Iterable[Path]) -> Path:
    cands = list(candidates)
    for cand in cands:
        if cand.is_dir():
            return cand
    return cands[0]


def option_dir(root: Path, value: str | os.PathLike[str]) -> Path:
    """A folder named by the user in an option: absolute, or relative to the data root."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else root / p


def coco_base(root: Path, coco: str | os.PathLike[str] | None, folder: str) -> Path:
    """The folder that holds COCO's ``train2014/``, ``val2014/``, ... for this data root.

    ``coco`` (an option) wins; otherwise the first of ``root/coco``, ``root/coco/images``
    (the LAVIS layout), ``root`` and, when ``root`` is a dataset's own folder, its siblings
    ``../coco`` and ``../coco/images`` that has ``folder``; otherwise ``root/coco``.
    """
    if coco is not None:
        return option_dir(root, coco)
    cands = [root / "coco", root / "coco" / "images", root, root.parent / "coco", root.parent / "coco" / "images"]
    for cand in cands:
        if (cand / folder).is_dir():
            return cand
    return cands[0]


def coco_image(base: Path, folder: str, image_id: int) -> str:
    """COCO naming: ``{folder}/COCO_{folder}_{id:012d}.jpg`` (2014/2015 sets).

    Image references are plain path strings (``VQARecord.image`` takes str or Path): building
    a ``Path`` per record costs more time and memory than the rest of a record together.
    """
    return f"{base}{os.sep}{folder}{os.sep}COCO_{folder}_{image_id:012d}.jpg"


def relative_image(root: Path, base: Path, rel: Any, *, source: Path, record: object) -> str:
    """``base/rel`` for an image path read from a file, refusing paths outside the data root.

    A plain relative path without ``..`` is joined directly (fast, and symlinked image folders
    inside the root keep working); anything that could leave the folder (``..``, absolute,
    drive letters) goes through :func:`safe_join`, which resolves it against the data root;
    a path outside it raises a :class:`DataError` naming the annotation file and the record.
    """
    if not isinstance(rel, str) or not rel.strip() or "\x00" in rel:
        raise DataError(f"image path must be a non-empty string, got {rel!r}", path=source, record=record)
    norm = rel.replace("\\", "/")
    parts = norm.split("/")
    if not norm.startswith("/") and ".." not in parts and not (len(norm) > 1 and norm[1] == ":"):
        return os.path.join(base, posixpath.normpath(norm))
    try:
        full = base / norm
        rel_to_root = os.path.relpath(full, root) if not norm.startswith("/") else norm
        return str(safe_join(root, rel_to_root, record=record))
    except (DataError, ValueError):
        raise DataError(f"image path {rel!r} escapes the data root {str(root)!r}", path=source, record=record) from None
