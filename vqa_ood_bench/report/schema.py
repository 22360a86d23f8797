"""The results schema: one JSON per run, validated on write and on read.

Field names follow lm-evaluation-harness's results file where they overlap (``config``,
``versions``-like provenance); per-split numbers carry their role and shift type so a table
can be rebuilt from the file alone.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import DataError
from ..io import atomic_write_text, read_json

SCHEMA_VERSION = 1

Role = Literal["id", "near", "far"]
# What a run solved: VQA (answers scored with vqa_accuracy), or image classification (a backbone
# with a linear head; top-1 accuracy stored in each split's exact_match, as the leaderboard's
# classification entries store it). Files written before the field existed are VQA runs.
Task = Literal["vqa", "image-classification"]
ShiftType = Literal["none", "vision", "question", "answer", "multimodal", "adversarial", "far"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Interval(_Strict):
    """A confidence interval of an accuracy or average, in percentage points (0–100).

    ``method``: ``clopper-pearson`` (exact, every per-question score 0 or 1) or ``bootstrap``
    (percentile bootstrap over questions; see ``report.stats``).
    """

    low: float
    high: float
    confidence: float = Field(gt=0, lt=1)
    method: Literal["clopper-pearson", "bootstrap"]

    @model_validator(mode="after")
    def _ordered(self) -> "Interval":
        for v in (self.low, self.high):
            if not math.isfinite(v) or v < 0 or v > 100:
                raise ValueError(f"interval bounds must be finite percentages in [0, 100], got [{self.low}, {self.high}]")
        if self.low > self.high:
            raise ValueError(f"interval low {self.low} is above high {self.high}")
        return self

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


class SplitResult(_Strict):
    """Scores on one evaluation split. Accuracies are percentages (0–100)."""

    role: Role
    shift_type: ShiftType
    n: int = Field(ge=0)
    vqa_accuracy: Optional[float] = None
    exact_match: Optional[float] = None
    clipmatch_top1: Optional[float] = None
    clipmatch_top5: Optional[float] = None
    per_answer_type: dict[str, float] = Field(default_factory=dict)
    per_question_type: dict[str, float] = Field(default_factory=dict)
    shift: dict[str, float] = Field(default_factory=dict)  # feature kind -> mean negative Mahalanobis
    stands_in_for: str = ""
    predictions_file: Optional[str] = None
    # Interval over questions of the split's headline accuracy (vqa_accuracy in results files,
    # the entry's metric in leaderboard entries); None in files written before intervals were.
    ci: Optional[Interval] = None

    @field_validator("vqa_accuracy", "exact_match", "clipmatch_top1", "clipmatch_top5")
    @classmethod
    def _percent(cls, v: Optional[float]) -> Optional[float]:
        if v is not None and (not math.isfinite(v) or v < 0 or v > 100):
            raise ValueError(f"accuracy must be a finite percentage in [0, 100], got {v}")
        return v


class Averages(_Strict):
    """Paper Tab. 3 averages: ID, near-OOD mean, far-OOD mean, and the mean over all OOD splits."""

    id: Optional[float] = None
    near_ood: Optional[float] = None
    far_ood: Optional[float] = None
    ood: Optional[float] = None


class ModelInfo(_Strict):
    name_or_path: str
    revision: Optional[str] = None
    content_hash: Optional[str] = None
    parameters: Optional[int] = None
    trainable_parameters: Optional[int] = None
    # What `eval` ran on top of the model (absent for runs and for models without one): the
    # PEFT adapter as given, the SHA-256 of its weights file, and, when the adapter records
    # it, the run that trained it (run_id, method, method_params).
    adapter: Optional[str] = None
    adapter_sha256: Optional[str] = None
    adapter_origin: Optional[dict[str, Any]] = None


class RunResults(_Strict):
    schema_version: int = SCHEMA_VERSION
    run_id: str
    created_at: str
    task: Task = "vqa"
    method: str
    method_params: dict[str, Any] = Field(default_factory=dict)
    model: ModelInfo
    suite: str
    suite_version: str
    seed: int
    dtype: str
    batch_size: int = Field(ge=1)
    scoring_variant: str
    package_version: str
    git_commit: Optional[str] = None
    config: dict[str, Any]
    splits: dict[str, SplitResult]
    averages: Averages
    # Average name (an ``Averages`` field) -> interval of that average itself (each bootstrap
    # replicate resamples every member split's questions), not an average of split intervals.
    # Kept beside ``averages`` so that readers of ``averages`` keep getting plain numbers.
    averages_ci: dict[str, Interval] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
    peak_memory_mb: Optional[float] = None
    # What the numbers depend on beyond the config: torch build, CPU threads and instruction set.
    environment: dict[str, Any] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> "RunResults":
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(f"schema_version {self.schema_version} is not supported (expected {SCHEMA_VERSION})")
        if not self.splits:
            raise ValueError("a results file needs at least one split")
        check_averages_ci(self.averages_ci)
        return self


AVERAGE_NAMES = ("id", "near_ood", "far_ood", "ood")
# The roles of the splits each average is over (as compute_averages takes them).
AVERAGE_ROLES: dict[str, tuple[str, ...]] = {"id": ("id",), "near_ood": ("near",), "far_ood": ("far",), "ood": ("near", "far")}


def check_averages_ci(averages_ci: Mapping[str, Interval]) -> None:
    unknown = [k for k in averages_ci if k not in AVERAGE_NAMES]
    if unknown:
        raise ValueError(f"averages_ci has an unknown average {unknown[0]!r}; known: {', '.join(AVERAGE_NAMES)}")


# Places a stored accuracy keeps. Whoever writes numbers into a results file (the runner, the
# re-scorer) rounds them with round_score, so the same predictions always give the same bytes
# (100 * mean(...) can land on 55.400000000000006 or 55.4 depending on the summation path).
SCORE_DECIMALS = 4


def round_score(value: Optional[float]) -> Optional[float]:
    """A percentage as results files store it: ``round(value, SCORE_DECIMALS)``; None stays None."""
    return None if value is None else round(float(value), SCORE_DECIMALS)


def round_scores(values: Mapping[str, float]) -> dict[str, float]:
    """:func:`round_score` of every value (per answer / question type breakdowns)."""
    return {str(k): round(float(v), SCORE_DECIMALS) for k, v in values.items()}


def compute_averages(splits: dict[str, SplitResult], metric: str = "vqa_accuracy") -> Averages:
    """Means as in the paper's Tab. 3; ``ood`` is the mean over all OOD splits (not of the two means)."""

    def mean(role: tuple[str, ...]) -> Optional[float]:
        vals = [getattr(s, metric) for s in splits.values() if s.role in role and getattr(s, metric) is not None]
        return sum(vals) / len(vals) if vals else None

    return Averages(id=mean(("id",)), near_ood=mean(("near",)), far_ood=mean(("far",)), ood=mean(("near", "far")))


def write_results(results: RunResults, path: str | Path) -> Path:
    """Validate (again) and write atomically."""
    validated = RunResults.model_validate(results.model_dump())
    return atomic_write_text(path, validated.model_dump_json(indent=2) + "\n")


def read_results(path: str | Path) -> RunResults:
    """Read and validate a results file; any problem raises a DataError naming the file and field."""
    obj = read_json(path)
    try:
        return RunResults.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise DataError(f"invalid results file: {loc}: {first['msg']}{more}", path=path) from None
