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
from typing import Annotated, Any, Optional

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


def _print_group_table(out: dict[str, Any]) -> None:
    from rich.markup import escape

    from ..report.table import NumberTable

    console = _console()
    level = f"{100 * out['confidence']:g}%"
    ga, gb = out["group_a"], out["group_b"]
    table = NumberTable(
        title=escape(f"{out['suite']} · VQA accuracy ({out['variant']}) · B − A over seeds {seeds_text(out['seeds'])} "
                     f"with {level} interval (seeds and questions)"),
        caption=escape(
            f"A = {ga['method']} ({len(ga['paths'])} runs), B = {gb['method']} ({len(gb['paths'])} runs), paired by seed; "
            f"A, B: mean over seeds (sd: standard deviation over seeds); interval and p: t with Satterthwaite df "
            f"(see README, Comparing runs); * p < {1 - out['confidence']:.3g}"
        ),
    )
    table.add_column("split", overflow="fold")
    table.add_column("role")
    table.add_number_column("n")
    for col in ("A", "A sd", "B", "B sd", "B − A", f"{level} interval", "p"):
        table.add_number_column(col)
    table.add_column("")

    def sd(summary: dict[str, Any]) -> str:
        return "–" if summary["std"] is None else _num(summary["std"])

    def row(label: str, role: str, r: dict[str, Any], style: Optional[str] = None) -> None:
        lo, hi = r["interval"]
        table.add_row(
            label, role, str(r["n"]), _num(r["a"]), sd(r["a_seeds"]), _num(r["b"]), sd(r["b_seeds"]), _num(r["difference"], sign=True),
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


def _console() -> Any:
    from rich.console import Console

    probe = Console()
    return probe if probe.is_terminal else Console(width=max(probe.width, 200))
