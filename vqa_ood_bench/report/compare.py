"""Paired comparisons of finished runs and seed groups on the same questions.

The library side of ``vqa-ood-bench compare`` (and of the significance marks of ``run --method
all`` and ``leaderboard add --baseline``): per-question scores re-derived from each run's
predictions files, aligned question by question, and compared with the paired tests of
:mod:`.stats`. Two single runs: :func:`compare_runs`; two seed groups: :func:`compare_groups`;
several runs against one baseline: :func:`paired_vs_baseline`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import ConfigError, DataError

# Averages as report.schema.compute_averages defines them: label -> roles of the splits averaged.
AVERAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "id": ("ID avg", ("id",)),
    "near_ood": ("near-OOD avg", ("near",)),
    "far_ood": ("far-OOD avg", ("far",)),
    "ood": ("OOD avg", ("near", "far")),
}
SEED = 0


@dataclass
class RunScores:
    """A run's results.json and, per scored split, its question ids and per-question scores."""

    path: Path
    results: Any  # report.schema.RunResults
    ids: dict[str, list[str]]
    scores: dict[str, np.ndarray]


def _read_run(path: Path, label: str) -> Any:
    from .schema import read_results
    from ..score.rescore import RESULTS_FILE, is_run_dir

    if not path.exists():
        raise DataError("run folder not found", path=path)
    if not is_run_dir(path):
        raise ConfigError(f"run {label} {str(path)!r} is not a run folder (no {RESULTS_FILE})")
    return read_results(path / RESULTS_FILE)


def _scored_splits(results: Any) -> list[str]:
    """The splits that have an accuracy (the ones results files average)."""
    return [name for name, s in results.splits.items() if s.vqa_accuracy is not None]


def check_comparable(a: Any, b: Any) -> list[str]:
    """The splits both runs are scored on; ConfigError (one line) when the runs cannot be paired."""
    if a.suite != b.suite:
        raise ConfigError(f"the runs are on different suites: A {a.suite!r}, B {b.suite!r}")
    if str(a.suite_version) != str(b.suite_version):
        raise ConfigError(f"the runs are on different versions of suite {a.suite!r}: A {a.suite_version}, B {b.suite_version}")
    if a.scoring_variant != b.scoring_variant:
        raise ConfigError(
            f"the runs are scored with different VQA accuracy variants: A {a.scoring_variant!r}, B {b.scoring_variant!r} "
            f"(re-score one with `vqa-ood-bench score --predictions RUN --variant {a.scoring_variant}`)"
        )
    sa, sb = _scored_splits(a), _scored_splits(b)
    if set(sa) != set(sb):
        only_a, only_b = sorted(set(sa) - set(sb)), sorted(set(sb) - set(sa))
        parts = ([f"only A has {', '.join(only_a)}"] if only_a else []) + ([f"only B has {', '.join(only_b)}"] if only_b else [])
        raise ConfigError(f"the runs are scored on different splits: {'; '.join(parts)}")
    return sa


def load_run_scores(path: Path, results: Any, splits: list[str], *, data_root: Optional[Path]) -> RunScores:
    """Re-derive per-question scores of ``splits`` from the run's predictions (its own variant)."""
    from ..score.rescore import RESULTS_FILE, rescore_run

    rr = rescore_run(path, data_root=data_root, splits=splits, write=False)
    missing = [name for name in splits if name not in rr.scores]
    if missing:
        raise DataError(
            f"split {missing[0]!r} has a VQA accuracy but no predictions file; compare needs per-question predictions",
            path=path / RESULTS_FILE,
        )
    return RunScores(path=path, results=results, ids={n: rr.scores[n].question_ids for n in splits},
                     scores={n: rr.scores[n].vqa.scores for n in splits})


def align(a: RunScores, b: RunScores, a_label: str = "A", b_label: str = "B") -> None:
    """Put B's scores in A's question order; ConfigError when a split's questions differ."""
    for name, a_ids in a.ids.items():
        b_ids = b.ids[name]
        if a_ids == b_ids:
            continue
        a_set, b_set = set(a_ids), set(b_ids)
        if a_set != b_set:
            only_a = [q for q in a_ids if q not in b_set]
            only_b = [q for q in b_ids if q not in a_set]
            example = f"e.g. {only_a[0]!r} only in {a_label}" if only_a else f"e.g. {only_b[0]!r} only in {b_label}"
            raise ConfigError(
                f"split {name!r}: the runs scored different questions ({a_label} {len(a_ids)}, {b_label} {len(b_ids)}; {example}); "
                "were they made with different --limit or data?"
            )
        position = {q: i for i, q in enumerate(b_ids)}
        order = np.array([position[q] for q in a_ids])
        b.scores[name] = b.scores[name][order]
        b.ids[name] = list(a_ids)


def _drift_warnings(label: str, run: RunScores) -> list[str]:
    out = []
    for name, scores in run.scores.items():
        stored = run.results.splits[name].vqa_accuracy
        derived = float(100.0 * scores.mean())
        if stored is not None and abs(stored - derived) > 1e-3:
            out.append(
                f"run {label}: results.json gives split {name!r} {stored:.4f}, its predictions give {derived:.4f} "
                "(compare uses the predictions)"
            )
    return out


def compare_runs(
    run_a: Path,
    run_b: Path,
    *,
    confidence: float = 0.95,
    n_boot: int = 2000,
    n_perm: int = 10_000,
    data_root: Optional[Path] = None,
) -> dict[str, Any]:
    """Everything ``compare`` prints, as the JSON object ``--json`` gives."""
    from ..data.suite import get_suite
    from . import stats

    if not (0.0 < confidence < 1.0):
        raise ConfigError(f"--confidence must be between 0 and 1 (exclusive), got {confidence}")
    ra, rb = _read_run(run_a, "A"), _read_run(run_b, "B")
    splits = check_comparable(ra, rb)
    a = load_run_scores(run_a, ra, splits, data_root=data_root)
    b = load_run_scores(run_b, rb, splits, data_root=data_root)
    align(a, b)

    warnings = _drift_warnings("A", a) + _drift_warnings("B", b)
    current = get_suite(ra.suite).version
    if str(current) != str(ra.suite_version):
        warnings.append(f"the runs were made with suite {ra.suite!r} version {ra.suite_version}, now {current}")

    kw = dict(confidence=confidence, n_boot=n_boot, seed=SEED)
    split_rows: dict[str, Any] = {}
    for name in splits:
        res = stats.paired_difference(a.scores[name], b.scores[name], n_perm=n_perm, **kw)
        s = ra.splits[name]
        split_rows[name] = {
            "role": s.role, "shift_type": s.shift_type, **res.to_json(),
            "a_interval": list(stats.split_interval(a.scores[name], **kw)),
            "b_interval": list(stats.split_interval(b.scores[name], **kw)),
        }
    average_rows: dict[str, Any] = {}
    for key, (_, roles) in AVERAGES.items():
        members = [n for n in splits if ra.splits[n].role in roles]
        if not members:
            continue
        res = stats.paired_average_difference(a.scores, b.scores, members, n_perm=n_perm, **kw)
        average_rows[key] = {
            "splits": members, **res.to_json(),
            "a_interval": list(stats.average_interval(a.scores, members, **kw)),
            "b_interval": list(stats.average_interval(b.scores, members, **kw)),
        }

    def who(path: Path, r: Any) -> dict[str, Any]:
        return {"path": str(path), "run_id": r.run_id, "method": r.method, "seed": r.seed}

    return {
        "run_a": who(run_a, ra), "run_b": who(run_b, rb), "suite": ra.suite, "suite_version": ra.suite_version,
        "variant": ra.scoring_variant, "confidence": confidence, "n_boot": n_boot, "n_perm": n_perm, "seed": SEED,
        "splits": split_rows, "averages": average_rows, "warnings": warnings,
    }


# --- seed groups ----------------------------------------------------------------------------

def resolve_side(arg: Path, label: str) -> list[Path]:
    """The run folders one side of ``compare`` names: a run folder, a folder of run folders
    (its direct subfolders holding results.json, in name order), or comma-separated run folders."""
    from ..score.rescore import RESULTS_FILE, is_run_dir

    if is_run_dir(arg):
        return [arg]
    if arg.is_dir():
        runs = sorted(p for p in arg.iterdir() if is_run_dir(p))
        if not runs:
            raise ConfigError(f"{label} {str(arg)!r} is neither a run folder nor a folder of run folders (no {RESULTS_FILE} in it or its subfolders)")
        return runs
    text = str(arg)
    if "," in text:
        parts = [Path(p.strip()) for p in text.split(",") if p.strip()]
        for p in parts:
            _read_run(p, label)  # not found / not a run folder: one line naming it
        return parts
    _read_run(arg, label)
    return [arg]


def seeds_text(seeds: list[int]) -> str:
    return ", ".join(str(s) for s in seeds)


def _check_group(label: str, paths: list[Path], runs: list[Any]) -> None:
    methods = list(dict.fromkeys(r.method for r in runs))
    if len(methods) > 1:
        which = "; ".join(f"{r.method} in {p}" for p, r in zip(paths, runs))
        raise ConfigError(f"group {label} mixes methods ({which}); a seed group is runs of one method that differ in their seed")
    seen: dict[int, Path] = {}
    for p, r in zip(paths, runs):
        if r.seed in seen:
            raise ConfigError(f"group {label} has seed {r.seed} twice ({seen[r.seed]} and {p}); runs are paired by seed")
        seen[r.seed] = p


def compare_groups(
    a_paths: list[Path],
    b_paths: list[Path],
    *,
    confidence: float = 0.95,
    data_root: Optional[Path] = None,
) -> dict[str, Any]:
    """Two seed groups on the same questions: per split and per average, B - A as the mean over
    seeds of the per-seed paired differences, with the interval and p-value of
    :func:`~vqa_ood_bench.report.stats.group_difference` (seeds and questions both random), and
    each side's mean, standard deviation and t interval over seeds (:func:`~vqa_ood_bench.report.stats.seed_summary`).

    Refused with one line: runs of different suites, suite versions, variants or splits, a
    group mixing methods or naming a seed twice, groups with different seeds, runs that scored
    different questions.
    """
    from ..data.suite import get_suite
    from . import stats

    if not (0.0 < confidence < 1.0):
        raise ConfigError(f"--confidence must be between 0 and 1 (exclusive), got {confidence}")
    ra = [_read_run(p, "A") for p in a_paths]
    rb = [_read_run(p, "B") for p in b_paths]
    _check_group("A", a_paths, ra)
    _check_group("B", b_paths, rb)
    seeds_a, seeds_b = sorted(r.seed for r in ra), sorted(r.seed for r in rb)
    if seeds_a != seeds_b:
        raise ConfigError(f"the groups' seeds differ: A {seeds_text(seeds_a)}; B {seeds_text(seeds_b)} (runs are paired by seed)")
    splits = check_comparable(ra[0], rb[0])
    for label, paths, runs in (("A", a_paths, ra), ("B", b_paths, rb)):
        for p, r in zip(paths, runs):
            try:
                check_comparable(ra[0], r)
            except ConfigError as exc:
                raise ConfigError(f"group {label} run {p} against group A run {a_paths[0]}: {exc}") from None
    # Pair by seed: both sides in seed order.
    a_order = sorted(range(len(ra)), key=lambda i: ra[i].seed)
    b_order = sorted(range(len(rb)), key=lambda i: rb[i].seed)
    a_paths, ra = [a_paths[i] for i in a_order], [ra[i] for i in a_order]
    b_paths, rb = [b_paths[i] for i in b_order], [rb[i] for i in b_order]
    a = [load_run_scores(p, r, splits, data_root=data_root) for p, r in zip(a_paths, ra)]
    b = [load_run_scores(p, r, splits, data_root=data_root) for p, r in zip(b_paths, rb)]
    ref = a[0]
    for label, runs in (("A", a[1:]), ("B", b)):
        for run in runs:
            align(ref, run, f"A (seed {ra[0].seed})", f"{label} (seed {run.results.seed})")

    warnings = [w for run in a for w in _drift_warnings(f"A (seed {run.results.seed})", run)]
    warnings += [w for run in b for w in _drift_warnings(f"B (seed {run.results.seed})", run)]
    current = get_suite(ra[0].suite).version
    if str(current) != str(ra[0].suite_version):
        warnings.append(f"the runs were made with suite {ra[0].suite!r} version {ra[0].suite_version}, now {current}")

    a_scores = [run.scores for run in a]
    b_scores = [run.scores for run in b]

    def row(members: list[str]) -> dict[str, Any]:
        res = stats.group_difference(a_scores, b_scores, members, confidence=confidence)
        return {
            **res.to_json(),
            "a_seeds": stats.seed_summary([stats.average_accuracy(s, members) for s in a_scores], confidence=confidence).to_json(),
            "b_seeds": stats.seed_summary([stats.average_accuracy(s, members) for s in b_scores], confidence=confidence).to_json(),
        }

    split_rows = {name: {"role": ra[0].splits[name].role, "shift_type": ra[0].splits[name].shift_type, **row([name])} for name in splits}
    average_rows: dict[str, Any] = {}
    for key, (_, roles) in AVERAGES.items():
        members = [n for n in splits if ra[0].splits[n].role in roles]
        if members:
            average_rows[key] = {"splits": members, **row(members)}

    def who(paths: list[Path], runs: list[Any]) -> dict[str, Any]:
        return {"paths": [str(p) for p in paths], "run_ids": [r.run_id for r in runs], "method": runs[0].method,
                "seeds": [r.seed for r in runs]}

    return {
        "group_a": who(a_paths, ra), "group_b": who(b_paths, rb), "seeds": seeds_a, "suite": ra[0].suite,
        "suite_version": ra[0].suite_version, "variant": ra[0].scoring_variant, "confidence": confidence,
        "interval": "t, seeds and questions (crossed random effects, Satterthwaite df)",
        "splits": split_rows, "averages": average_rows, "warnings": warnings,
    }


# --- against a baseline (run --method all) ---------------------------------------------------

def paired_vs_baseline(
    baseline: Path,
    runs: list[Path],
    *,
    keys: tuple[str, ...] = ("id", "ood"),
    confidence: float = 0.95,
    data_root: Optional[Path] = None,
) -> dict[Path, dict[str, Any]]:
    """Run -> average name -> :class:`~vqa_ood_bench.report.stats.PairedDifference` of the run
    against ``baseline`` (B = the run, A = the baseline), for the averages in ``keys`` that the
    runs have; the baseline's predictions are scored once."""
    from . import stats

    rb = _read_run(baseline, "baseline")
    base: Optional[RunScores] = None
    out: dict[Path, dict[str, Any]] = {}
    for path in runs:
        r = _read_run(path, "B")
        splits = check_comparable(rb, r)
        if base is None or set(base.scores) != set(splits):
            base = load_run_scores(baseline, rb, splits, data_root=data_root)
        scores = load_run_scores(path, r, splits, data_root=data_root)
        align(base, scores, "the baseline", "the run")
        out[path] = {}
        for key in keys:
            members = [n for n in splits if rb.splits[n].role in AVERAGES[key][1]]
            if members:
                out[path][key] = stats.paired_average_difference(base.scores, scores.scores, members, confidence=confidence, seed=SEED)
    return out
