"""``vqa-ood-bench compare``: is run B better than run A, or is the difference noise?

    vqa-ood-bench compare RUN_OR_GROUP_A RUN_OR_GROUP_B [--confidence 0.95] [--n-boot 2000] [--n-perm 10000] [--json]

Each side is a run folder, or a seed group: a folder whose subfolders are run folders, or
several run folders separated by commas. Two single runs are compared as described next; two
groups as in :func:`compare_groups` (runs paired by seed; ``--n-boot`` / ``--n-perm`` do not apply).

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
from pathlib import Path
from typing import Annotated, Any

import typer

from ..report.compare import AVERAGES, seeds_text, compare_groups, compare_runs, resolve_side
from .app import app
from .options import DataRootOpt, JsonOpt

RunArg = Annotated[Path, typer.Argument(
    help="A finished run folder (holding results.json and predictions/), or a seed group: a folder of run folders, "
         "or run folders separated by commas.")]
ConfidenceOpt = Annotated[float, typer.Option("--confidence", help="Confidence level of the intervals; '*' marks p < 1 - confidence.")]
NBootOpt = Annotated[int, typer.Option("--n-boot", help="Bootstrap replicates per interval.", min=1)]
NPermOpt = Annotated[
    int, typer.Option("--n-perm", help="Random sign flips when the exact permutation test is too large.", min=1)
]

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
    """Compare two runs (or two seed groups) on the same questions: B - A per split and average, paired interval, p-value."""
    side_a, side_b = resolve_side(run_a, "A"), resolve_side(run_b, "B")
    if len(side_a) == 1 and len(side_b) == 1:
        out = compare_runs(side_a[0], side_b[0], confidence=confidence, n_boot=n_boot, n_perm=n_perm, data_root=data_root)
        show = _print_table
    else:
        out = compare_groups(side_a, side_b, confidence=confidence, data_root=data_root)
        show = _print_group_table
    if json_out:
        typer.echo(json.dumps(out, ensure_ascii=False))
        return
    show(out)


def _num(v: float, sign: bool = False) -> str:
    v = 0.0 if abs(v) < 5e-9 else v  # no "-0.00" for a difference that is zero up to rounding
    return f"{v:+.2f}" if sign else f"{v:.2f}"


def _p(p: float) -> str:
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def _level(out: dict[str, Any]) -> str:
    """The intervals' confidence level as the table says it ("95%")."""
    return f"{100 * out['confidence']:g}%"


def _print_table(out: dict[str, Any]) -> None:
    _print_comparison(
        out,
        title=f"{out['suite']} · VQA accuracy ({out['variant']}) · B − A with {_level(out)} paired bootstrap interval",
        caption=(
            f"A = {out['run_a']['path']} ({out['run_a']['method']}), B = {out['run_b']['path']} ({out['run_b']['method']}); "
            f"p: two-sided sign-flip permutation test; * p < {1 - out['confidence']:.3g}"
        ),
        seed_sd=False,
    )


def _print_group_table(out: dict[str, Any]) -> None:
    ga, gb = out["group_a"], out["group_b"]
    _print_comparison(
        out,
        title=(f"{out['suite']} · VQA accuracy ({out['variant']}) · B − A over seeds {seeds_text(out['seeds'])} "
               f"with {_level(out)} interval (seeds and questions)"),
        caption=(
            f"A = {ga['method']} ({len(ga['paths'])} runs), B = {gb['method']} ({len(gb['paths'])} runs), paired by seed; "
            f"A, B: mean over seeds (sd: standard deviation over seeds); interval and p: t with Satterthwaite df "
            f"(see README, Comparing runs); * p < {1 - out['confidence']:.3g}"
        ),
        seed_sd=True,
    )


def _print_comparison(out: dict[str, Any], *, title: str, caption: str, seed_sd: bool) -> None:
    """The table of a comparison (a row per split, then one per average) and its warnings.
    ``seed_sd``: seed groups, with the standard deviation over seeds beside A and B."""
    from rich.markup import escape

    from ..report.table import NumberTable

    console = _console()
    table = NumberTable(title=escape(title), caption=escape(caption))
    table.add_column("split", overflow="fold")
    table.add_column("role")
    table.add_number_column("n")
    sides = ("A", "A sd", "B", "B sd") if seed_sd else ("A", "B")
    for col in (*sides, "B − A", f"{_level(out)} interval", "p"):
        table.add_number_column(col)
    table.add_column("")
    for name, r in out["splits"].items():
        table.add_row(escape(name), r["role"], *_cells(r, seed_sd))
    if out["averages"]:
        table.add_section()
    for key, r in out["averages"].items():
        table.add_row(AVERAGES[key][0], ", ".join(AVERAGES[key][1]), *_cells(r, seed_sd), style="cyan")
    console.print(table)
    for w in out["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {escape(w)}")


def _cells(r: dict[str, Any], seed_sd: bool) -> list[str]:
    """One split's or average's numbers, from column n on."""
    from rich.markup import escape

    lo, hi = r["interval"]
    sides = [_num(r["a"]), _sd(r["a_seeds"]), _num(r["b"]), _sd(r["b_seeds"])] if seed_sd else [_num(r["a"]), _num(r["b"])]
    return [str(r["n"]), *sides, _num(r["difference"], sign=True), escape(f"[{_num(lo, sign=True)}, {_num(hi, sign=True)}]"),
            _p(r["p_value"]), "*" if r["significant"] else ""]


def _sd(summary: dict[str, Any]) -> str:
    """A side's standard deviation over seeds; "–" where it has none."""
    return "–" if summary["std"] is None else _num(summary["std"])


def _console() -> Any:
    from rich.console import Console

    probe = Console()
    return probe if probe.is_terminal else Console(width=max(probe.width, 200))
