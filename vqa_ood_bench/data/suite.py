"""Suites: which splits a benchmark run trains on, selects models on, and is scored on.

A suite names a training split, a validation split (model selection) and the evaluation
splits, each tagged with its role (ID / near-OOD / far-OOD) and shift type. Every split is a
registered dataset plus options, optionally sub-sampled deterministically.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import ConfigError, DataError
from ..registry import Registry
from .records import VQARecord
from .registry import get_dataset


@dataclass(frozen=True)
class SplitSpec:
    """One split of a suite: ``name`` is what tables show, ``dataset`` the registered loader."""

    name: str
    dataset: str
    role: str
    shift_type: str
    options: dict[str, Any] = field(default_factory=dict)
    max_records: int | None = None
    stands_in_for: str = ""


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    train: SplitSpec
    validation: SplitSpec
    evaluation: tuple[SplitSpec, ...]
    needs_data_root: bool = True
    version: str = "1"

    def split(self, name: str) -> SplitSpec:
        for spec in (self.train, self.validation, *self.evaluation):
            if spec.name == name:
                return spec
        known = ", ".join(s.name for s in (self.train, self.validation, *self.evaluation))
        raise ConfigError(f"suite {self.name!r} has no split {name!r}; known: {known}")

    def load(self, spec: SplitSpec, data_root: str | Path | None = None, *, limit: int | None = None) -> list[VQARecord]:
        """Read a split's records; ``limit`` (smoke runs) caps them after the split's own cap."""
        if self.needs_data_root and data_root is None:
            raise ConfigError(f"suite {self.name!r} reads released files: pass --data-root DIR")
        records = list(get_dataset(spec.dataset).load(data_root, **spec.options))
        check_unique_ids(records, source=f"{self.name}/{spec.name}")
        cap = spec.max_records
        if limit is not None:
            cap = limit if cap is None else min(cap, limit)
        if cap is not None:
            records = deterministic_sample(records, cap, salt=f"{self.name}/{spec.name}")
        return records


def check_unique_ids(records: Iterable[VQARecord], *, source: str) -> None:
    seen: set[str] = set()
    for rec in records:
        if rec.question_id in seen:
            raise DataError(f"question_id {rec.question_id!r} occurs twice", path=source, record=rec.question_id)
        seen.add(rec.question_id)


def deterministic_sample(records: list[VQARecord], n: int, *, salt: str) -> list[VQARecord]:
    """Keep ``n`` records chosen by a hash of their ids, independent of input order.

    Sorting by a salted hash gives the same subset whatever order the files list records in,
    and a larger ``n`` keeps every record a smaller one chose (nested samples).
    """
    if n >= len(records):
        return list(records)

    def key(rec: VQARecord) -> str:
        return hashlib.sha1(f"{salt}:{rec.question_id}".encode()).hexdigest()

    chosen = {r.question_id for r in sorted(records, key=key)[:n]}
    return [r for r in records if r.question_id in chosen]


SUITES: Registry[Callable[[], Suite]] = Registry("suite")


def register_suite(name: str) -> Callable[[Callable[[], Suite]], Callable[[], Suite]]:
    """Decorator for a zero-argument factory returning the :class:`Suite`."""
    return SUITES.register(name)


def get_suite(name: str) -> Suite:
    _import_builtin_suites()
    return SUITES.get(name)()


def suite_names() -> list[str]:
    _import_builtin_suites()
    return SUITES.names()


def _import_builtin_suites() -> None:
    import importlib

    for mod in ("vqa_ood_bench.data.embedded.datasets", "vqa_ood_bench.data.suites", "vqa_ood_bench.classify.suites"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:  # the paper suites module is optional until it exists
            if exc.name != mod:
                raise
