"""Score saved predictions without the model: one predictions file, or every split of a run folder.

A run folder holds ``results.json`` (``report.schema.RunResults``) whose splits name their
predictions files relative to the folder. :func:`rescore_run` reloads each split's records
through the run's suite (with the run's ``data_root`` and ``limit`` from its recorded config
unless overridden), scores the predictions again (any variant), updates the split's
``n`` / ``vqa_accuracy`` / per-type numbers (and ClipMatch / exact match when asked), the
``scoring_variant``, the averages and the intervals (``report.intervals``), and rewrites
``results.json`` atomically — unless the numbers come out as they are in the file, which is
then left byte for byte as it was (a file without intervals does not get rewritten just to add
them; a file that has them has them kept current). Scores
are rounded as the runner rounds them (:func:`~vqa_ood_bench.report.schema.round_score`), so
re-scoring a run's own predictions reproduces its numbers exactly.

Every record of a split needs a prediction: a missing one is an error naming the question
(a partly predicted split is never scored as if it were complete). A prediction for a question
the split does not have is an error too (predictions made for another split, or with another
``limit``), and so is an empty predictions file.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..data.records import VQARecord
from ..errors import ConfigError, DataError
from ..io import safe_join
from ..predict.jsonl import read_predictions
from ..report.intervals import fill_intervals
from ..report.schema import (
    AVERAGE_NAMES,
    AVERAGE_ROLES,
    RunResults,
    SplitResult,
    compute_averages,
    read_results,
    round_score,
    round_scores,
    write_results,
)
from .text import TextMatch, contains_match, exact_match
from .vqa_accuracy import DEFAULT_VARIANT, VQAAccuracy, check_variant, group_means, score_records

RESULTS_FILE = "results.json"

# (records) -> a ClipMatcher-like object with .score(predictions, targets); built per split
# because the class list is the split's own.
MatcherFactory = Callable[[Sequence[str]], Any]


@dataclass
class SplitScore:
    """Everything scored on one split."""

    name: str
    vqa: VQAAccuracy
    question_ids: list[str] = field(default_factory=list)  # the order of ``vqa.scores``
    answer_types: list[str] = field(default_factory=list)
    question_types: list[str] = field(default_factory=list)
    clipmatch_top1: Optional[float] = None
    clipmatch_top5: Optional[float] = None
    text: Optional[TextMatch] = None

    def to_json(self) -> dict[str, Any]:
        """The split's numbers as results.json holds them (rounded alike), plus ``contains``."""
        out: dict[str, Any] = {"n": self.vqa.n, "variant": self.vqa.variant, **self._numbers()}
        if self.text is not None:
            out["contains"] = round_score(self.text.contains)
        return out

    def _numbers(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "vqa_accuracy": round_score(self.vqa.accuracy),
            "per_answer_type": round_scores(self.vqa.per_answer_type),
            "per_question_type": round_scores(self.vqa.per_question_type),
        }
        if self.clipmatch_top1 is not None:
            out["clipmatch_top1"] = round_score(self.clipmatch_top1)
            out["clipmatch_top5"] = round_score(self.clipmatch_top5)
        if self.text is not None:
            out["exact_match"] = round_score(self.text.exact_match)
        return out

    def apply_to(self, split: SplitResult) -> SplitResult:
        # The interval is the caller's to recompute (report.intervals): an old one no longer applies.
        return SplitResult.model_validate({**split.model_dump(), "n": self.vqa.n, **self._numbers(), "ci": None})


def load_prediction_map(
    path: str | Path, records: Optional[Sequence[VQARecord]] = None, *, split: Optional[str] = None, limit: Optional[int] = None
) -> dict[str, str]:
    """question_id -> prediction string from a predictions JSONL file, for scoring.

    Refused, naming the file: an empty file, a last line cut off mid-write (scoring such a file
    would blame a missing prediction rather than the cut), and, when ``records`` are given, any
    question id that is not one of theirs. ``split`` / ``limit`` only word that last error.
    """
    preds = {qid: obj["prediction"] for qid, obj in read_predictions(path, allow_torn_tail=False).items()}
    if not preds:
        raise DataError("predictions file is empty (no prediction lines)", path=path)
    if records is not None:
        check_known_ids(preds, records, path=path, split=split, limit=limit)
    return preds


def check_known_ids(
    predictions: Mapping[str, Any], records: Sequence[VQARecord], *, path: str | Path, split: Optional[str] = None,
    limit: Optional[int] = None,
) -> None:
    """Every predicted question must be one of ``records``'.

    A stray id means the file was made for other questions (another split, dataset or
    ``limit``); scoring just the overlap would give a number for a set nobody asked about.
    """
    known = {r.question_id for r in records}
    unknown = [qid for qid in predictions if qid not in known]
    if not unknown:
        return
    shown = ", ".join(repr(q) for q in unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
    where = f"split {split!r}" if split else "the records being scored"
    hint = f" (scored with limit {limit}: pass the limit the predictions were made with)" if limit is not None else ""
    raise DataError(f"{len(unknown)} predicted question id(s) not in {where}: {shown}{hint}", path=path, record=unknown[0])


def class_target(record: VQARecord) -> str:
    """The class a classification-style record asks for: ``meta['class_name']``, else its first answer."""
    name = record.meta.get("class_name")
    if isinstance(name, str) and name:
        return name
    if not record.answers:
        raise DataError("record has no answer to use as its class", record=record.question_id)
    return record.answers[0]


def score_split(
    name: str,
    records: Sequence[VQARecord],
    predictions: Mapping[str, str],
    *,
    variant: str = DEFAULT_VARIANT,
    clipmatch: Optional[MatcherFactory] = None,
    class_names: Optional[Sequence[str]] = None,
    text_metrics: bool = False,
) -> SplitScore:
    """Score one split. ClipMatch's class list is ``class_names`` or the split's sorted targets."""
    vqa = score_records(records, predictions, variant)
    out = SplitScore(
        name=name,
        vqa=vqa,
        question_ids=[r.question_id for r in records],
        answer_types=[r.answer_type for r in records],
        question_types=[r.question_type for r in records],
    )
    if clipmatch is not None or text_metrics:
        preds = [predictions[r.question_id] for r in records]
        targets = [class_target(r) for r in records]
        if clipmatch is not None:
            classes = list(class_names) if class_names is not None else sorted(set(targets))
            res = clipmatch(classes).score(preds, targets)
            out.clipmatch_top1, out.clipmatch_top5 = res.top1, res.top5
        if text_metrics:
            # Any annotator's answer counts as an acceptable target for exact match / contains.
            acceptable = [[t, *r.answers] for t, r in zip(targets, records)]
            n = len(preds)
            em = exact_match(preds, acceptable)
            co = contains_match(preds, acceptable)
            out.text = TextMatch(n=n, exact_match=float(100 * em.mean()) if n else 0.0, contains=float(100 * co.mean()) if n else 0.0)
    return out


def pooled(scores: Sequence[SplitScore]) -> dict[str, Any]:
    """Accuracy and per-type breakdowns over all questions of ``scores`` together (micro average)."""
    if not scores:
        return {"n": 0, "vqa_accuracy": None, "per_answer_type": {}, "per_question_type": {}}
    all_scores = np.concatenate([s.vqa.scores for s in scores])
    at = [t for s in scores for t in s.answer_types]
    qt = [t for s in scores for t in s.question_types]
    n = int(all_scores.size)
    return {
        "n": n,
        "vqa_accuracy": float(100 * all_scores.mean()) if n else None,
        "per_answer_type": group_means(at, all_scores),
        "per_question_type": group_means(qt, all_scores),
    }


# --- run folders ----------------------------------------------------------------------------

def is_run_dir(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / RESULTS_FILE).is_file()


def find_run_split(predictions_file: str | Path) -> Optional[tuple[Path, str]]:
    """(run folder, split name) when ``predictions_file`` is one a run's results.json names."""
    target = Path(predictions_file).resolve()
    for folder in (target.parent, target.parent.parent):
        if not (folder / RESULTS_FILE).is_file():
            continue
        results = read_results(folder / RESULTS_FILE)
        for name, split in results.splits.items():
            if split.predictions_file and (folder / split.predictions_file).resolve() == target:
                return folder, name
    return None


@dataclass
class RunRescore:
    results: RunResults
    scores: dict[str, SplitScore]
    results_file: Path
    written: bool
    warnings: list[str] = field(default_factory=list)
    changed: bool = True  # False: the numbers equal the file's, which was left as it was


def rescore_run(
    run_dir: str | Path,
    *,
    variant: Optional[str] = None,
    data_root: Optional[str | Path] = None,
    limit: Optional[int] = None,
    splits: Optional[Sequence[str]] = None,
    clipmatch: Optional[MatcherFactory] = None,
    class_names: Optional[Sequence[str]] = None,
    text_metrics: bool = False,
    write: bool = True,
) -> RunRescore:
    """Re-score a run folder's predictions and (by default) rewrite its results.json.

    results.json is not touched when the re-scored numbers (and variant) equal its own.
    ``variant`` defaults to the run's own. ``splits`` limits the work to those splits, unless
    the variant changes: then every split with predictions is re-scored so the file stays
    under one variant. A split that has numbers but no predictions file cannot follow a
    variant change and is an error.
    """
    from ..data.suite import get_suite

    run_dir = Path(run_dir)
    results_file = run_dir / RESULTS_FILE
    results = read_results(results_file)
    variant = check_variant(variant or results.scoring_variant)
    config = dict(results.config)
    if data_root is None:
        data_root = config.get("data_root")
    if limit is None:
        limit = config.get("limit")
    suite = get_suite(results.suite)
    warnings: list[str] = []
    if str(suite.version) != str(results.suite_version):
        warnings.append(f"run was made with suite {results.suite!r} version {results.suite_version}, now {suite.version}")

    changed_variant = variant != results.scoring_variant
    if splits is not None:
        unknown = [s for s in splits if s not in results.splits]
        if unknown:
            raise ConfigError(f"run {str(run_dir)!r} has no split {unknown[0]!r}; known: {', '.join(results.splits)}")
    wanted = set(results.splits) if (splits is None or changed_variant) else set(splits)

    t0 = time.perf_counter()
    new_splits: dict[str, SplitResult] = {}
    scores: dict[str, SplitScore] = {}
    for name, split in results.splits.items():
        if name not in wanted:
            new_splits[name] = split
            continue
        if not split.predictions_file:
            if changed_variant and split.vqa_accuracy is not None:
                raise DataError(
                    f"split {name!r} has a VQA accuracy but no predictions file, so it cannot be re-scored "
                    f"with variant {variant!r}",
                    path=results_file,
                )
            new_splits[name] = split
            continue
        pred_path = safe_join(run_dir, split.predictions_file, record=name)
        records = suite.load(suite.split(name), data_root, limit=limit)
        predictions = load_prediction_map(pred_path, records, split=name, limit=limit)
        try:
            sc = score_split(
                name, records, predictions, variant=variant, clipmatch=clipmatch, class_names=class_names, text_metrics=text_metrics
            )
        except DataError as exc:
            raise DataError(f"split {name!r}: {exc}", path=pred_path) from None
        scores[name] = sc
        new_splits[name] = sc.apply_to(split)

    if "scoring_variant" in config:
        config["scoring_variant"] = variant
    averages = compute_averages(new_splits)
    new_splits, averages_ci = fill_intervals(new_splits, {name: sc.vqa.scores for name, sc in scores.items()})
    # An average not every member of which was re-scored keeps its stored interval while none of
    # its members' numbers moved; otherwise that interval no longer applies and is dropped.
    for key, interval in results.averages_ci.items():
        members = [n for n, sp in new_splits.items() if sp.role in AVERAGE_ROLES[key]]
        if key not in averages_ci and all(_numbers_of(new_splits[n]) == _numbers_of(results.splits[n]) for n in members):
            averages_ci[key] = interval
    averages_ci = {k: averages_ci[k] for k in AVERAGE_NAMES if k in averages_ci}
    had_intervals = bool(results.averages_ci) or any(sp.ci is not None for sp in results.splits.values())
    changed = (
        variant != results.scoring_variant
        or config != results.config
        or averages.model_dump() != results.averages.model_dump()
        or {k: _numbers_of(v) for k, v in new_splits.items()} != {k: _numbers_of(v) for k, v in results.splits.items()}
        # A file written before intervals existed is not rewritten just to add them (same
        # numbers: same bytes); one that has them gets them kept current.
        or (had_intervals and (
            {k: v.ci for k, v in new_splits.items()} != {k: v.ci for k, v in results.splits.items()}
            or averages_ci != results.averages_ci
        ))
    )
    if not changed:
        # A note and a timing alone would make the file differ from one run to the next.
        return RunRescore(results=results, scores=scores, results_file=results_file, written=False, warnings=warnings, changed=False)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    notes = list(results.notes)
    if scores:
        notes.append(f"re-scored {', '.join(scores)} with VQA accuracy variant {variant!r} at {stamp}")
    timings = {**results.timings, "rescore_s": round(time.perf_counter() - t0, 3)}
    updated = RunResults.model_validate(
        {
            **results.model_dump(),
            "splits": {k: v.model_dump() for k, v in new_splits.items()},
            "averages": averages.model_dump(),
            "averages_ci": {k: v.model_dump() for k, v in averages_ci.items()},
            "scoring_variant": variant,
            "config": config,
            "notes": notes,
            "timings": timings,
        }
    )
    if write:
        write_results(updated, results_file)
    return RunRescore(results=updated, scores=scores, results_file=results_file, written=write, warnings=warnings)


def _numbers_of(split: SplitResult) -> dict[str, Any]:
    """A split's fields without its interval."""
    return split.model_dump(exclude={"ci"})


def load_records_for(
    *,
    suite: Optional[str] = None,
    split: Optional[str] = None,
    dataset: Optional[str] = None,
    data_root: Optional[str | Path] = None,
    limit: Optional[int] = None,
    predictions_file: Optional[str | Path] = None,
) -> tuple[str, list[VQARecord]]:
    """(split name, records) for a suite split or a registered dataset.

    With a suite and no split, the predictions file's stem names the split (runs write
    ``predictions/<split>.jsonl``).
    """
    if (suite is None) == (dataset is None):
        raise ConfigError("give exactly one of --suite (with --split) or --dataset")
    if dataset is not None:
        from ..data.registry import get_dataset
        from ..data.suite import check_unique_ids, deterministic_sample

        records = list(get_dataset(dataset).load(data_root))
        check_unique_ids(records, source=dataset)
        if limit is not None:
            records = deterministic_sample(records, limit, salt=dataset)
        return dataset, records
    from ..data.suite import get_suite

    s = get_suite(suite)
    if split is None:
        if predictions_file is None:
            raise ConfigError("--split is needed with --suite")
        stem = Path(predictions_file).stem
        try:
            spec = s.split(stem)
        except ConfigError:
            raise ConfigError(f"pass --split: the file name {stem!r} is not a split of suite {suite!r}") from None
    else:
        spec = s.split(split)
    return spec.name, s.load(spec, data_root, limit=limit)
