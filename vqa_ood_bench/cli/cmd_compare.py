"""``vqa-ood-bench compare``: is run B better than run A, or is the difference noise?

    vqa-ood-bench compare RUN_A RUN_B [--confidence 0.95] [--n-boot 2000] [--n-perm 10000] [--json]

Both run folders must be on the same suite (and suite version) and scoring variant, with the
same scored splits and the same questions in each (runs made with different ``--limit`` are
refused). Per-question VQA accuracy is re-derived from each run's predictions files with the
run's variant and records (``data_root`` / ``limit`` from its recorded config; ``--data-root``
overrides the data root of both). Per split and per average (ID, near-OOD, far-OOD and OOD, as
results files average them) it prints A, B, B - A, a paired bootstrap interval of B - A and
the two-sided sign-flip permutation p-value (``vqa_ood_bench.report.stats``), with ``*`` where
p < 1 - confidence. ``--json`` prints one object with the same numbers: ``splits`` and
``averages`` map names to ``{n, a, b, difference, interval, p_value, exact, significant,
a_interval, b_interval}`` (averages also list their ``splits``); accuracies are in points.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer

from ..errors import ConfigError, DataError
from .app import app
from .options import DataRootOpt, JsonOpt

RunArg = Annotated[Path, typer.Argument(help="A finished run folder (holding results.json and predictions/).")]
ConfidenceOpt = Annotated[float, typer.Option("--confidence", help="Confidence level of the intervals; '*' marks p < 1 - confidence.")]
NBootOpt = Annotated[int, typer.Option("--n-boot", help="Bootstrap replicates per interval.", min=1)]
NPermOpt = Annotated[
    int, typer.Option("--n-perm", help="Random sign flips when the exact permutation test is too large.", min=1)
]

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
    from ..report.schema import read_results
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


def align(a: RunScores, b: RunScores) -> None:
    """Put B's scores in A's question order; ConfigError when a split's questions differ."""
    for name, a_ids in a.ids.items():
        b_ids = b.ids[name]
        if a_ids == b_ids:
            continue
        a_set, b_set = set(a_ids), set(b_ids)
        if a_set != b_set:
            only_a = [q for q in a_ids if q not in b_set]
            only_b = [q for q in b_ids if q not in a_set]
            example = f"e.g. {only_a[0]!r} only in A" if only_a else f"e.g. {only_b[0]!r} only in B"
            raise ConfigError(
                f"split {name!r}: the runs scored different questions (A {len(a_ids)}, B {len(b_ids)}; {example}); "
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
    from ..report import stats

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


@app.command("compare")
def compare(
    run_a: RunArg,
    run_b: RunArg,
    confidence: ConfidenceOpt = 0.95,
    n_boot: NBootOpt = 2000,
    n_perm: NPermOpt = 10_000,
    data_root: DataRootOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Compare two runs on the same questions: B - A per split and average, paired interval, p-value."""
    out = compare_runs(run_a, run_b, confidence=confidence, n_boot=n_boot, n_perm=n_perm, data_root=data_root)
    if json_out:
        typer.echo(json.dumps(out, ensure_ascii=False))
        return
    _print_table(out)


def _num(v: float, sign: bool = False) -> str:
    v = 0.0 if abs(v) < 5e-9 else v  # no "-0.00" for a difference that is zero up to rounding
    return f"{v:+.2f}" if sign else f"{v:.2f}"


def _p(p: float) -> str:
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def _print_table(out: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape

    from ..report.table import NumberTable

    probe = Console()
    console = probe if probe.is_terminal else Console(width=max(probe.width, 200))
    level = f"{100 * out['confidence']:g}%"
    table = NumberTable(
        title=escape(f"{out['suite']} · VQA accuracy ({out['variant']}) · B − A with {level} paired bootstrap interval"),
        caption=escape(
            f"A = {out['run_a']['path']} ({out['run_a']['method']}), B = {out['run_b']['path']} ({out['run_b']['method']}); "
            f"p: two-sided sign-flip permutation test; * p < {1 - out['confidence']:.3g}"
        ),
    )
    table.add_column("split", overflow="fold")
    table.add_column("role")
    table.add_number_column("n")
    table.add_number_column("A")
    table.add_number_column("B")
    table.add_number_column("B − A")
    table.add_number_column(f"{level} interval")
    table.add_number_column("p")
    table.add_column("")

    def row(label: str, role: str, r: dict[str, Any], style: Optional[str] = None) -> None:
        lo, hi = r["interval"]
        table.add_row(
            label, role, str(r["n"]), _num(r["a"]), _num(r["b"]), _num(r["difference"], sign=True),
            escape(f"[{_num(lo, sign=True)}, {_num(hi, sign=True)}]"), _p(r["p_value"]), "*" if r["significant"] else "",
            style=style,
        )

    for name, r in out["splits"].items():
        row(escape(name), r["role"], r)
    if out["averages"]:
        table.add_section()
    for key, r in out["averages"].items():
        row(AVERAGES[key][0], ", ".join(AVERAGES[key][1]), r, style="cyan")
    console.print(table)
    for w in out["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {escape(w)}")
