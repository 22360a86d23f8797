"""Leaderboard entries: one small JSON per (method, backbone, suite) result, validated on read and write.

RobustBench style: an entry keeps the number its source reported (a paper table, or a run
submitted with ``leaderboard add``) and, for entries that carry their full run config, every
re-measurement made by ``leaderboard reproduce`` beside it, with the per-split differences.

Per-split numbers reuse the results schema (:class:`~.schema.SplitResult`, with ``n`` optional
because papers do not print split sizes) and :class:`~.schema.Averages`; ``metric`` names the
``SplitResult`` field that holds the entry's headline number (``vqa_accuracy`` for the VQA
tables, ``clipmatch_top1`` for DomainNet-oVQA, ``exact_match`` for top-1 classification
accuracy).

Where entries live (``default_dir``): ``$VQA_OOD_BENCH_LEADERBOARDS`` if set, else
``./leaderboards`` if that folder exists, else the entries packaged with vqa_ood_bench
(``vqa_ood_bench/leaderboards/``: the paper's and the submitted ones). Entries are found recursively (``**/*.json``); the
file name (without ``.json``) must equal the entry's ``entry_id``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Literal, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import ConfigError, DataError
from ..io import atomic_write_text, read_json
from .schema import Averages, Interval, RunResults, SplitResult, check_averages_ci, compute_averages

ENTRY_SCHEMA_VERSION = 1
ENV_DIR = "VQA_OOD_BENCH_LEADERBOARDS"

Metric = Literal["vqa_accuracy", "exact_match", "clipmatch_top1", "clipmatch_top5"]
Task = Literal["vqa", "image-classification", "text-classification"]
Status = Literal["reported", "reproduced"]
ENTRY_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
METRIC_LABELS = {
    "vqa_accuracy": "VQA accuracy",
    "exact_match": "top-1 accuracy",
    "clipmatch_top1": "ClipMatch top-1",
    "clipmatch_top5": "ClipMatch top-5",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EntrySplit(SplitResult):
    """A results-schema split; ``n`` is optional (paper tables do not give split sizes)."""

    n: Optional[int] = Field(None, ge=0)
    label: str = ""  # the column header the source used, e.g. "VQA-Rep."


class Reproduction(_Strict):
    """One re-run of an entry's config and how its numbers compare with the submitted ones."""

    date: str
    package_version: str
    git_commit: Optional[str] = None
    device: str
    run_dir: Optional[str] = None
    run_id: Optional[str] = None
    model_key: Optional[str] = None
    tolerance: float = Field(ge=0)
    measured: dict[str, Optional[float]]
    diffs: dict[str, Optional[float]]  # measured − submitted, percentage points
    within_tolerance: dict[str, bool]
    measured_averages: Averages = Field(default_factory=Averages)
    notes: list[str] = Field(default_factory=list)

    @property
    def all_within(self) -> bool:
        return bool(self.within_tolerance) and all(self.within_tolerance.values())

    @property
    def off_splits(self) -> list[str]:
        return [name for name, ok in self.within_tolerance.items() if not ok]


class PairedAverage(_Strict):
    """One average of an entry against its baseline entry's (points; paired on the same questions)."""

    difference: float  # entry - baseline
    interval: tuple[float, float]  # paired bootstrap interval of the difference
    p_value: float = Field(ge=0, le=1)  # two-sided sign-flip permutation test
    significant: bool  # p < 1 - confidence


class Versus(_Strict):
    """The entry's run against a baseline entry's run on the same questions (``leaderboard add
    --baseline RUN``), computed from both runs' predictions files; the baseline is named by
    entry id and by the hashes of the predictions that were compared, so a mark is only shown
    while that very entry is on the board."""

    baseline: str  # entry_id
    baseline_predictions_sha256: dict[str, str]
    confidence: float = Field(gt=0, lt=1)
    averages: dict[str, PairedAverage]  # id / near_ood / far_ood / ood


class LeaderboardEntry(_Strict):
    schema_version: int = ENTRY_SCHEMA_VERSION
    entry_id: str
    method: str  # as the source labels it, e.g. "DiGraP (0.5)" or "vanilla"
    method_params: dict[str, Any] = Field(default_factory=dict)
    backbone: str
    adapter: str  # lora | full | none | not stated
    task: Task = "vqa"
    suite: str
    suite_version: str
    metric: Metric
    variant: str  # scoring variant: official / lavis / lenient for VQA accuracy, or the metric's own
    splits: dict[str, EntrySplit]
    averages: Averages
    # Intervals over questions of the averages (splits carry theirs in ``ci``), as results files
    # store them; submitted runs only (``leaderboard add`` computes them from the predictions).
    averages_ci: dict[str, Interval] = Field(default_factory=dict)
    status: Status
    source: str
    config: Optional[dict[str, Any]] = None  # full RunConfig for reproducible entries
    package_version: Optional[str] = None
    git_commit: Optional[str] = None
    model_id: str
    model_revision: Optional[str] = None
    model_key: Optional[str] = None  # tiny model: the cache key of its pre-training
    tiny_pretrain_steps: Optional[int] = Field(None, ge=1)
    data: dict[str, Any] = Field(default_factory=dict)
    tolerance: float = Field(1.0, ge=0)  # percentage points a re-run may differ by, per split
    reproductions: list[Reproduction] = Field(default_factory=list)
    reported_extras: dict[str, float] = Field(default_factory=dict)  # other numbers the source printed
    # Submitted runs: SHA-256 of each predictions file (path relative to the run folder) that
    # ``leaderboard add`` re-scored, so the numbers can be traced to the exact files. None: not a run.
    predictions_sha256: Optional[dict[str, str]] = None
    versus: Optional[Versus] = None
    notes: list[str] = Field(default_factory=list)

    @field_validator("entry_id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not ENTRY_ID.match(v):
            raise ValueError(f"entry_id {v!r} must be lower-case letters, digits, '.', '_' or '-'")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "LeaderboardEntry":
        if self.schema_version != ENTRY_SCHEMA_VERSION:
            raise ValueError(f"schema_version {self.schema_version} is not supported (expected {ENTRY_SCHEMA_VERSION})")
        if not self.splits:
            raise ValueError("an entry needs at least one split")
        missing = [n for n, s in self.splits.items() if getattr(s, self.metric) is None]
        if missing:
            raise ValueError(f"splits {missing} have no {self.metric} (the entry's metric)")
        for name, value in self.averages.model_dump().items():
            if value is not None and (not math.isfinite(value) or not 0 <= value <= 100):
                raise ValueError(f"averages.{name} must be a percentage in [0, 100], got {value}")
        check_averages_ci(self.averages_ci)
        if self.versus is not None:
            unknown = [k for k in self.versus.averages if k not in Averages.model_fields]
            if unknown:
                raise ValueError(f"versus.averages has an unknown average {unknown[0]!r}")
            if self.versus.baseline == self.entry_id:
                raise ValueError("versus.baseline names the entry itself")
        if self.config is not None:
            from ..config import RunConfig

            try:
                cfg = RunConfig.model_validate(self.config)
            except ValidationError as exc:
                err = exc.errors()[0]
                raise ValueError(f"config.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from None
            if cfg.suite != self.suite:
                raise ValueError(f"config.suite {cfg.suite!r} differs from the entry's suite {self.suite!r}")
        if self.status == "reproduced":
            if self.config is None:
                raise ValueError("status 'reproduced' needs the run config that was re-run")
            if not self.reproductions or not self.reproductions[-1].all_within:
                raise ValueError("status 'reproduced' needs a latest reproduction within tolerance")
        return self

    @property
    def reproducible(self) -> bool:
        return self.config is not None

    def value(self, split: str) -> Optional[float]:
        s = self.splits.get(split)
        return None if s is None else getattr(s, self.metric)

    def verdict(self) -> str:
        """One word for tables: never re-run, reproduced, or off (the latest re-run differs)."""
        if not self.reproductions:
            return "not re-run" if self.reproducible else "paper"
        return "reproduced" if self.reproductions[-1].all_within else "OFF"


# ---------------------------------------------------------------- reading and writing


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{loc}: {first['msg']}{more}"


def read_entry(path: str | Path) -> LeaderboardEntry:
    """Read and validate one entry; any problem raises a DataError naming the file and field."""
    path = Path(path)
    obj = read_json(path)
    try:
        entry = LeaderboardEntry.model_validate(obj)
    except ValidationError as exc:
        raise DataError(f"invalid leaderboard entry: {_first_error(exc)}", path=path) from None
    if entry.entry_id != path.stem:
        raise DataError(f"entry_id {entry.entry_id!r} does not match the file name {path.name!r}", path=path)
    return entry


def write_entry(entry: LeaderboardEntry, path: str | Path) -> Path:
    """Validate again (catches edits made after construction) and write atomically."""
    path = Path(path)
    try:
        validated = LeaderboardEntry.model_validate(entry.model_dump())
    except ValidationError as exc:
        raise DataError(f"invalid leaderboard entry: {_first_error(exc)}", path=path) from None
    if validated.entry_id != path.stem:
        raise DataError(f"entry_id {validated.entry_id!r} does not match the file name {path.name!r}", path=path)
    return atomic_write_text(path, entry_json(validated) + "\n")


def entry_json(entry: LeaderboardEntry) -> str:
    """The entry as JSON, splits without their empty fields (so a file stays small and readable)."""
    data = entry.model_dump(mode="json")
    if data["predictions_sha256"] is None:  # entries made before add hashed predictions keep their bytes
        del data["predictions_sha256"]
    for key in ("averages_ci", "versus"):  # likewise entries without intervals (papers, older submissions)
        if not data[key]:
            del data[key]
    data["splits"] = {name: {k: v for k, v in s.items() if v not in (None, {}, "")} for name, s in data["splits"].items()}
    return json.dumps(data, indent=2, ensure_ascii=False)


def default_dir(*, writable: bool = False) -> Path:
    """``$VQA_OOD_BENCH_LEADERBOARDS``, else ``./leaderboards`` if present, else the packaged entries
    (``vqa_ood_bench/leaderboards``, read-only use: with ``writable`` there is no such fallback and
    a ConfigError says so, so that a new entry is not written into the installed package)."""
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env)
    here = Path("leaderboards")
    if here.is_dir():
        return here
    packaged = Path(__file__).resolve().parents[1] / "leaderboards"
    if packaged.is_dir() and not writable:
        return packaged
    raise ConfigError(f"no leaderboards folder{' to write to' if writable else ''}: pass --dir DIR, set ${ENV_DIR}, or create ./leaderboards")


def entry_paths(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"leaderboards folder {str(folder)!r} does not exist")
    return sorted(p for p in folder.rglob("*.json") if not any(part.startswith(".") for part in p.relative_to(folder).parts))


def load_entries(folder: str | Path, *, suite: Optional[str] = None) -> list[tuple[Path, LeaderboardEntry]]:
    """Every entry under ``folder`` (validated), optionally of one suite; duplicate ids are an error."""
    out: list[tuple[Path, LeaderboardEntry]] = []
    seen: dict[str, Path] = {}
    for path in entry_paths(folder):
        entry = read_entry(path)
        if entry.entry_id in seen:
            raise DataError(f"entry_id {entry.entry_id!r} is also used by {seen[entry.entry_id]}", path=path)
        seen[entry.entry_id] = path
        if suite is None or entry.suite == suite:
            out.append((path, entry))
    return out


def find_entry(ref: str, folder: str | Path) -> tuple[Path, LeaderboardEntry]:
    """An entry by file path or by id."""
    as_path = Path(ref)
    if as_path.suffix == ".json" and as_path.is_file():
        return as_path, read_entry(as_path)
    for path, entry in load_entries(folder):
        if entry.entry_id == ref:
            return path, entry
    raise ConfigError(f"no leaderboard entry {ref!r} in {folder} (give an entry id or a path to its JSON file)")


def sort_key(entry: LeaderboardEntry) -> tuple:
    """OOD average, best first; entries without one last, then by ID average."""
    ood, idv = entry.averages.ood, entry.averages.id
    return (ood is None, -(ood or 0.0), -(idv or 0.0), entry.entry_id)


GroupKey = tuple[str, str, str]  # (suite, metric, variant)


def group_key(entry: LeaderboardEntry) -> GroupKey:
    return (entry.suite, entry.metric, entry.variant)


def group_title(key: GroupKey) -> str:
    """``paper-vqa · VQA accuracy (lavis)``: what a table's numbers are, in its title."""
    suite, metric, variant = key
    return f"{suite} · {METRIC_LABELS.get(metric, metric)} ({variant})"


def by_group(entries: Iterable[LeaderboardEntry]) -> dict[GroupKey, list[LeaderboardEntry]]:
    """Entries grouped by (suite, metric, variant) in that order, each group sorted by OOD average.

    Every view ranks within one group only: the same predictions score differently under the
    official, LAVIS and lenient VQA accuracy (or another metric), so such numbers never share
    a column.
    """
    groups: dict[GroupKey, list[LeaderboardEntry]] = {}
    for e in entries:
        groups.setdefault(group_key(e), []).append(e)
    return {k: sorted(groups[k], key=sort_key) for k in sorted(groups)}


def split_columns(entries: Sequence[LeaderboardEntry]) -> list[str]:
    """Split names ordered ID, near, far, each in first-seen order."""
    order = {"id": 0, "near": 1, "far": 2}
    seen: dict[str, tuple[int, int]] = {}
    for e in entries:
        for name, s in e.splits.items():
            seen.setdefault(name, (order[s.role], len(seen)))
    return sorted(seen, key=lambda n: seen[n])


# ---------------------------------------------------------------- from a run


def _backbone_name(results: RunResults, tiny_pretrain_steps: Optional[int]) -> str:
    if results.model.name_or_path != "tiny":
        return results.model.name_or_path
    if tiny_pretrain_steps:
        return f"tiny PaliGemma ({tiny_pretrain_steps}-step pre-training)"
    return f"tiny PaliGemma ({results.model.content_hash}, shipped)"


def predictions_sha256(run_dir: str | Path) -> dict[str, str]:
    """SHA-256 of every ``predictions/*.jsonl`` of a run folder, keyed by its path relative to the folder."""
    run_dir = Path(run_dir)
    return {p.relative_to(run_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((run_dir / "predictions").glob("*.jsonl"))}


RESCORE_TOLERANCE = 1e-6  # percentage points; results files store rounded scores, re-scoring rounds alike


def check_rescored(run_dir: str | Path, results: RunResults, *, data_root: Optional[str | Path] = None) -> list[str]:
    """Re-score the run's predictions files with its own variant; refuse numbers they do not give.

    A submitted results.json is a claim: its splits with predictions must come out the same
    (within :data:`RESCORE_TOLERANCE`) from the package's scorer, or a hand-edited number
    would enter the leaderboard. Splits without a predictions file cannot be checked and are
    taken as they are. Returns the re-scorer's warnings (e.g. a changed suite version).
    """
    return rescore_submission(run_dir, results, data_root=data_root)[1]


def rescore_submission(run_dir: str | Path, results: RunResults, *, data_root: Optional[str | Path] = None) -> tuple[RunResults, list[str]]:
    """:func:`check_rescored`, returning also ``results`` with the intervals computed here from
    the re-scored predictions (``report.intervals``), not the ones the file claims; splits (and
    averages over splits) without predictions keep the file's, as they keep its numbers."""
    from ..score.rescore import rescore_run
    from .intervals import fill_intervals

    rr = rescore_run(run_dir, data_root=data_root, write=False)
    for name in rr.scores:
        claimed, measured = results.splits[name].vqa_accuracy, rr.results.splits[name].vqa_accuracy
        if claimed is None or measured is None or abs(claimed - measured) > RESCORE_TOLERANCE:
            raise ConfigError(f"run {str(run_dir)!r}: split {name!r} has vqa_accuracy {claimed} in results.json, but its predictions "
                              f"re-score to {measured} ({results.scoring_variant} variant); not adding it")
    splits, averages_ci = fill_intervals(results.splits, {name: sc.vqa.scores for name, sc in rr.scores.items()})
    averages_ci = {**results.averages_ci, **averages_ci}
    return results.model_copy(update={"splits": splits, "averages_ci": averages_ci}), rr.warnings


def entry_from_results(results: RunResults, *, entry_id: str, tolerance: float = 1.0, backbone: Optional[str] = None,
                       model_key: Optional[str] = None, tiny_pretrain_steps: Optional[int] = None,
                       predictions_sha256: Optional[dict[str, str]] = None) -> LeaderboardEntry:
    """A submitted (not yet re-measured) entry from a run's results, carrying its full config."""
    splits = {
        name: EntrySplit(**s.model_dump(exclude={"predictions_file"}), label=name)
        for name, s in results.splits.items()
    }
    adapter = str(results.config.get("adapter", results.method_params.get("adapter", "not stated")))
    if results.method == "zeroshot":
        adapter = "none"
    data = {
        "suite": results.suite,
        "suite_version": results.suite_version,
        "data_root": results.config.get("data_root"),
        "limit": results.config.get("limit"),
        "n": {name: s.n for name, s in results.splits.items()},
    }
    return LeaderboardEntry(
        entry_id=entry_id,
        method=results.method,
        method_params={k: v for k, v in results.method_params.items() if k not in ("fit", "adapter")},
        backbone=backbone or _backbone_name(results, tiny_pretrain_steps),
        adapter=adapter,
        task="vqa",
        suite=results.suite,
        suite_version=results.suite_version,
        metric="vqa_accuracy",
        variant=results.scoring_variant,
        splits=splits,
        averages=compute_averages(results.splits),
        averages_ci=dict(results.averages_ci),
        status="reported",
        source=f"vqa-ood-bench {results.package_version} run {results.run_id}",
        config=results.config,
        package_version=results.package_version,
        git_commit=results.git_commit,
        model_id=results.model.name_or_path,
        model_revision=results.model.revision,
        model_key=model_key or results.model.content_hash,
        tiny_pretrain_steps=tiny_pretrain_steps,
        data=data,
        tolerance=tolerance,
        predictions_sha256=predictions_sha256,
    )


def significance_marks(entries: Sequence[LeaderboardEntry]) -> dict[str, tuple[str, dict[str, PairedAverage]]]:
    """entry_id -> (baseline entry id, average -> its comparison) for the entries among ``entries``
    (one group) whose stored comparison's baseline is also among them, with the predictions that
    were compared (same hashes); only those comparisons are shown."""
    by_id = {e.entry_id: e for e in entries}
    out: dict[str, tuple[str, dict[str, PairedAverage]]] = {}
    for e in entries:
        v = e.versus
        if v is None:
            continue
        base = by_id.get(v.baseline)
        if base is not None and group_key(base) == group_key(e) and base.predictions_sha256 == v.baseline_predictions_sha256:
            out[e.entry_id] = (v.baseline, dict(v.averages))
    return out


def versus_baseline(run_dir: str | Path, baseline_dir: str | Path, entry: LeaderboardEntry, folder: str | Path, *,
                    data_root: Optional[str | Path] = None, confidence: float = 0.95) -> Versus:
    """``entry``'s run against a baseline run that is on the board in ``folder`` (found by its
    predictions files' hashes, in ``entry``'s group): every average, paired on the same questions
    (``vqa-ood-bench compare``'s test)."""
    from .compare import paired_vs_baseline

    hashes = predictions_sha256(baseline_dir)
    found = [e for _, e in load_entries(folder) if hashes and e.predictions_sha256 == hashes] if Path(folder).is_dir() else []
    if not found:
        raise ConfigError(f"--baseline {str(baseline_dir)!r} is not on the leaderboard in {folder} (no entry has its predictions "
                          "files' hashes); add the baseline run first")
    same = [e for e in found if group_key(e) == group_key(entry)]
    if not same:
        raise ConfigError(f"--baseline {str(baseline_dir)!r} is entry {found[0].entry_id!r}, scored as {group_title(group_key(found[0]))}, "
                          f"not as {group_title(group_key(entry))}")
    base = same[0]
    if base.entry_id == entry.entry_id:
        raise ConfigError("--baseline names the run being added")
    tests = paired_vs_baseline(Path(baseline_dir), [Path(run_dir)], keys=("id", "near_ood", "far_ood", "ood"),
                               confidence=confidence, data_root=Path(data_root) if data_root else None)[Path(run_dir)]
    return Versus(baseline=base.entry_id, baseline_predictions_sha256=hashes, confidence=confidence,
                  averages={k: PairedAverage(difference=round(t.difference, 4), interval=(round(t.interval[0], 4), round(t.interval[1], 4)),
                                             p_value=t.p_value, significant=t.significant) for k, t in tests.items()})


def default_entry_id(results: RunResults) -> str:
    """``{suite}-{method}-{adapter}-{run suffix}``, lower-cased and made file-name safe."""
    adapter = results.config.get("adapter", "lora") if results.method != "zeroshot" else "none"
    suffix = results.run_id.rsplit("-", 1)[-1]
    raw = f"{results.suite}-{results.method}-{adapter}-{suffix}".lower()
    return re.sub(r"[^a-z0-9._-]+", "-", raw).strip("-")[:128]


# ---------------------------------------------------------------- export


def entries_frame(entries: Sequence[LeaderboardEntry]):
    """One row per entry: group and rank in it, identity, averages, then one ``split:NAME`` column per split.

    Rows come group by group (:func:`by_group`); ``rank`` counts within the group only.
    """
    import pandas as pd

    rows = []
    for key, group in by_group(entries).items():
        rows += [_frame_row(e, group_title(key), rank) for rank, e in enumerate(group, 1)]
    columns = list(rows[0]) if rows else []
    for r in rows:  # union of split columns, in first-seen order
        columns += [c for c in r if c not in columns]
    return pd.DataFrame(rows, columns=columns)


def _frame_row(e: LeaderboardEntry, group: str, rank: int) -> dict[str, Any]:
    row: dict[str, Any] = {
        "group": group, "rank": rank,
        "entry_id": e.entry_id, "method": e.method, "backbone": e.backbone, "adapter": e.adapter, "task": e.task,
        "suite": e.suite, "suite_version": e.suite_version, "metric": e.metric, "variant": e.variant,
        "status": e.status, "verdict": e.verdict(), "source": e.source, "package_version": e.package_version,
        "model_id": e.model_id, "tolerance": e.tolerance,
        "avg_id": e.averages.id, "avg_near_ood": e.averages.near_ood, "avg_far_ood": e.averages.far_ood, "avg_ood": e.averages.ood,
    }
    for name in e.splits:
        row[f"split:{name}"] = e.value(name)
    return row


def export_json(entries: Sequence[LeaderboardEntry], path: str | Path) -> Path:
    payload = {"schema_version": ENTRY_SCHEMA_VERSION, "entries": [e.model_dump(mode="json") for e in entries]}
    return atomic_write_text(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


def export_csv(entries: Sequence[LeaderboardEntry], path: str | Path) -> Path:
    return atomic_write_text(path, entries_frame(entries).to_csv(index=False))
