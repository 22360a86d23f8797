"""Check a dataset on disk without loading its images: ``vqa-ood-bench datasets verify``.

:func:`verify_dataset` reads the dataset's annotation files with ``strict=False`` (so every
malformed record is listed rather than the first one raised), checks which of its expected
files are present, counts records and distinct image files, and checks that each image file
*exists* (no image is opened). A fatal problem (a missing or malformed annotation file) is
reported in ``errors`` instead of raised.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BenchError
from .formats._common import LoadReport, Skipped
from .registry import get_dataset

__all__ = ["LoadReport", "Skipped", "VerifyResult", "verify_dataset", "expected_file_status"]


@dataclass
class VerifyResult:
    dataset: str
    root: str | None
    role: str
    shift_type: str
    options: dict[str, Any] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)
    records: int = 0
    images: int = 0
    images_present: int = 0
    images_in_memory: int = 0
    images_missing: list[dict[str, str]] = field(default_factory=list)
    report: LoadReport = field(default_factory=LoadReport)
    errors: list[str] = field(default_factory=list)

    @property
    def malformed(self) -> list[Skipped]:
        return self.report.malformed

    @property
    def ok(self) -> bool:
        """No fatal error, no missing image, no malformed record (known quirks are fine)."""
        return not self.errors and not self.images_missing and not self.report.malformed

    def to_json(self) -> dict[str, Any]:
        skipped = [s.to_json() for s in self.report.skipped]
        return {
            "dataset": self.dataset,
            "root": self.root,
            "role": self.role,
            "shift_type": self.shift_type,
            "options": self.options,
            "ok": self.ok,
            "files": self.files,
            "records": self.records,
            "images": self.images,
            "images_present": self.images_present,
            "images_in_memory": self.images_in_memory,
            "images_missing": self.images_missing,
            "images_missing_count": len(self.images_missing),
            "skipped": skipped,
            "skipped_count": len(skipped),
            "malformed_count": len(self.report.malformed),
            "known_quirk_count": len(self.report.quirks),
            "skipped_reasons": self.report.reason_counts(),
            "filtered": self.report.filtered,
            "files_read": list(self.report.files),
            "errors": self.errors,
        }


def expected_file_status(root: Path | None, expected: tuple[str, ...] | list[str]) -> list[dict[str, Any]]:
    """Presence of each expected file (``name/`` entries are folders) under ``root``.

    A file is found at ``root/ENTRY`` or, when the user pointed ``root`` at the dataset's own
    folder, at ``root/ENTRY-without-its-first-folder``; COCO folders also in ``coco/images/``
    (the LAVIS layout). Entries with ``<placeholders>`` are shown but not checked.
    """
    out: list[dict[str, Any]] = []
    for entry in expected:
        is_dir = entry.endswith("/")
        rel = entry.rstrip("/")
        if root is None or "<" in entry:
            out.append({"file": entry, "path": None, "present": None})
            continue
        cands = [root / rel]
        head, _, rest = rel.partition("/")
        if rest:
            cands.append(root / rest)
            if head == "coco":
                cands.insert(1, root / "coco" / "images" / rest)
        found = next((c for c in cands if (c.is_dir() if is_dir else c.is_file())), None)
        out.append({"file": entry, "path": str(found or cands[0]), "present": found is not None})
    return out


def _accepts(loader: Any, name: str) -> bool:
    """Whether ``loader`` takes keyword ``name`` (loaders outside formats/ may not)."""
    try:
        params = inspect.signature(loader).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is p.VAR_KEYWORD or (p.name == name and p.kind is not p.POSITIONAL_ONLY) for p in params)


def verify_dataset(name: str, root: str | Path | None, **options: Any) -> VerifyResult:
    """Read ``name`` under ``root`` (options as for its loader) and check its files and images."""
    spec = get_dataset(name)
    root_p = Path(root).expanduser() if root is not None else None
    result = VerifyResult(
        dataset=name,
        root=None if root_p is None else str(root_p),
        role=spec.role,
        shift_type=spec.shift_type,
        options={k: v for k, v in options.items()},
    )
    result.files = expected_file_status(root_p, spec.expected_files)
    report = LoadReport()
    result.report = report
    first_record: dict[str, str] = {}
    extra: dict[str, Any] = {}
    if _accepts(spec.loader, "report"):
        extra["report"] = report
    if _accepts(spec.loader, "strict"):
        extra["strict"] = False
    try:
        for rec in spec.load(root_p, **extra, **options):
            result.records += 1
            path = rec.image_path
            if path is None:
                result.images_in_memory += 1
                continue
            key = str(path)
            if key not in first_record:
                first_record[key] = rec.question_id
    except BenchError as exc:
        result.errors.append(str(exc))
    except TypeError as exc:  # an option the loader does not take
        result.errors.append(f"dataset {name!r} could not be read with options {options!r}: {exc}")
    if "report" not in extra:
        report.records = result.records
    result.images = len(first_record)
    for path, qid in first_record.items():
        if os.path.isfile(path):
            result.images_present += 1
        else:
            result.images_missing.append({"image": path, "record": qid})
    return result
