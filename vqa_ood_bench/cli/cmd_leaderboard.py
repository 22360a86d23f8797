"""``vqa-ood-bench leaderboard show|add|export|html|reproduce``: the leaderboard entries (``--dir``, else ``leaderboard.default_dir``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import ConfigError
from .app import leaderboard_app
from .options import JsonOpt

DirOpt = Annotated[
    Optional[Path],
    typer.Option("--dir", help="Leaderboards folder (default: $VQA_OOD_BENCH_LEADERBOARDS, else ./leaderboards, else the entries packaged with vqa_ood_bench)."),
]


def _dir(folder: Optional[Path], *, writable: bool = False) -> Path:
    from ..report.leaderboard import default_dir

    return folder if folder is not None else default_dir(writable=writable)


def _fmt(v: Optional[float]) -> str:
    return "–" if v is None else f"{v:.2f}"


def _console() -> Console:
    probe = Console()
    return probe if probe.is_terminal else Console(width=max(probe.width, 200))


@leaderboard_app.command("show")
def show(
    suite: Annotated[Optional[str], typer.Option("--suite", help="Only this suite's entries.")] = None,
    folder: DirOpt = None,
    splits: Annotated[bool, typer.Option("--splits", help="Add one column per split.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """One table per suite, metric and scoring variant, sorted by OOD average (best first)."""
    from ..report.leaderboard import by_group, load_entries

    entries = [e for _, e in load_entries(_dir(folder), suite=suite)]
    if as_json:
        typer.echo(json.dumps([e.model_dump(mode="json") for e in sorted(entries, key=lambda e: (e.suite,))], indent=2))
        return
    from ..report.table import leaderboard_table

    console = _console()
    if not entries:
        console.print(escape(f"no entries{f' for suite {suite!r}' if suite else ''} in {_dir(folder)}"))
        return
    for (name, _, _), group in by_group(entries).items():  # the table title names the metric and variant
        console.print(leaderboard_table(name, group, with_splits=splits))


@leaderboard_app.command("add")
def add(
    run_dir: Annotated[Path, typer.Argument(help="A finished run folder (holding results.json).")],
    folder: DirOpt = None,
    tolerance: Annotated[float, typer.Option("--tolerance", help="Percentage points a re-run may differ by, per split.", min=0.0)] = 1.0,
    entry_id: Annotated[Optional[str], typer.Option("--id", help="Entry id (default: SUITE-METHOD-ADAPTER-RUNSUFFIX).")] = None,
    backbone: Annotated[Optional[str], typer.Option("--backbone", help="Backbone label (default: the model id).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing entry with the same id.")] = False,
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help="Released datasets for re-scoring (default: the run's own).")] = None,
    baseline: Annotated[Optional[Path], typer.Option(
        "--baseline", help="The run folder of an entry already on the board (e.g. vanilla's, same suite and questions): "
                           "store this run's paired comparison with it, so tables mark significant differences.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a submitted entry from a run folder: its numbers, full config, model and data identifiers.

    The run's predictions files are re-scored first (a number they do not give is refused), the
    intervals are computed from them, and their SHA-256 hashes are stored in the entry.
    """
    from ..report.leaderboard import default_entry_id, entry_from_results, load_entries, predictions_sha256, rescore_submission, write_entry
    from ..report.leaderboard_reproduce import tiny_pretraining_of
    from ..report.schema import read_results

    results_path = run_dir / "results.json"
    if not results_path.is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a finished run folder (no results.json)")
    results = read_results(results_path)
    try:
        target_dir = _dir(folder, writable=True)
    except ConfigError:  # no leaderboards folder to write to yet (the packaged one is read-only): start one here
        target_dir = Path("leaderboards")
    # The entry's intervals are computed from the re-scored predictions, not taken from the file.
    results, warnings = rescore_submission(run_dir, results, data_root=data_root)
    for warning in warnings:
        typer.echo(f"warning: {warning}", err=True)
    key, steps = tiny_pretraining_of(results)
    entry = entry_from_results(results, entry_id=entry_id or default_entry_id(results), tolerance=tolerance, backbone=backbone,
                               model_key=key, tiny_pretrain_steps=steps, predictions_sha256=predictions_sha256(run_dir))
    if results.model.name_or_path == "tiny" and key is None:
        raise ConfigError(f"cannot tell which tiny pre-training run {results.run_id} used (not in the cache {os.environ.get('VQA_OOD_BENCH_CACHE', 'default')}); "
                          "add it on the machine and cache that made the run")
    if baseline is not None:
        from ..report.leaderboard import versus_baseline

        entry = entry.model_copy(update={"versus": versus_baseline(run_dir, baseline, entry, target_dir, data_root=data_root)})
    path = target_dir / "submitted" / f"{entry.entry_id}.json"
    existing = {e.entry_id: p for p, e in load_entries(target_dir)} if target_dir.is_dir() else {}
    if entry.entry_id in existing and not force:
        raise ConfigError(f"entry {entry.entry_id!r} exists ({existing[entry.entry_id]}); pass --force to overwrite or --id to choose another")
    write_entry(entry, existing.get(entry.entry_id, path))
    if as_json:
        typer.echo(entry.model_dump_json(indent=2))
        return
    ood_ci = entry.averages_ci.get("ood")
    ood = _fmt(entry.averages.ood) + (f" [{ood_ci.low:.2f}, {ood_ci.high:.2f}]" if ood_ci else "")
    versus = ""
    if entry.versus is not None and "ood" in entry.versus.averages:
        t = entry.versus.averages["ood"]
        versus = f"; OOD vs {entry.versus.baseline} {t.difference:+.2f}, p {t.p_value:.4g}{' (significant)' if t.significant else ''}"
    typer.echo(f"added {entry.entry_id}: {existing.get(entry.entry_id, path)}  (OOD avg {ood}{versus}, tolerance ±{tolerance} pts)")


@leaderboard_app.command("export")
def export(
    out: Annotated[Path, typer.Option("--out", help="File to write.")],
    fmt: Annotated[str, typer.Option("--format", help="json or csv.")] = "json",
    suite: Annotated[Optional[str], typer.Option("--suite", help="Only this suite's entries.")] = None,
    folder: DirOpt = None,
) -> None:
    """All entries as one JSON file (full entries) or a CSV table (one row per entry, one column per split).

    Entries come group by group (suite, metric, variant), each sorted by OOD average; the CSV's
    ``group`` and ``rank`` columns say which group and the rank within it.
    """
    from ..report.leaderboard import by_group, export_csv, export_json, load_entries

    if fmt not in ("json", "csv"):
        raise ConfigError(f"unknown export format {fmt!r}; known: json, csv")
    entries = [e for group in by_group(e for _, e in load_entries(_dir(folder), suite=suite)).values() for e in group]
    (export_json if fmt == "json" else export_csv)(entries, out)
    typer.echo(f"wrote {len(entries)} entries to {out}")


@leaderboard_app.command("html")
def html_page(
    out: Annotated[Path, typer.Option("--out", help="HTML file to write.")] = Path("leaderboard.html"),
    suite: Annotated[Optional[str], typer.Option("--suite", help="Only this suite's entries.")] = None,
    folder: DirOpt = None,
) -> None:
    """A self-contained static page: one section per suite, metric and variant, sortable table, ID-vs-OOD scatter."""
    from ..report.leaderboard import load_entries
    from ..report.leaderboard_html import write_html

    entries = [e for _, e in load_entries(_dir(folder), suite=suite)]
    if not entries:
        raise ConfigError(f"no entries to render in {_dir(folder)}")
    write_html(entries, out)
    typer.echo(f"wrote {out} ({len(entries)} entries)")


@leaderboard_app.command("reproduce")
def reproduce(
    entry_ref: Annotated[str, typer.Argument(metavar="ENTRY", help="Entry id or path to its JSON file.")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Run folder for the re-run (default: a new folder under ./runs).")] = None,
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help="Released datasets (paper suites), overriding the entry's.")] = None,
    folder: DirOpt = None,
    save: Annotated[bool, typer.Option("--save/--no-save", help="Record the reproduction in the entry file.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Re-run ENTRY's config end to end, compare per split with the submitted numbers, record the result.

    Exits 1 when any split differs by more than the entry's tolerance.
    """
    from ..report.leaderboard import find_entry, read_entry, write_entry
    from ..report.leaderboard_reproduce import record, reproduce_entry
    from ..report.table import NumberTable
    from ..runner import new_run_dir

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if Path(entry_ref).is_file():
        path, entry = Path(entry_ref), read_entry(entry_ref)
    else:
        path, entry = find_entry(entry_ref, _dir(folder))
    run_dir = out or new_run_dir(method=f"reproduce-{entry.method}")
    err = Console(stderr=True)
    log = (lambda s: None) if as_json else (lambda s: err.print(f"[dim]{escape(s)}[/dim]"))
    log(f"reproducing {entry.entry_id} ({entry.source}) into {run_dir}")
    rep = reproduce_entry(entry, run_dir, data_root=str(data_root) if data_root else None, log=log, show_progress=not as_json)
    if save:
        write_entry(record(entry, rep), path)
    if as_json:
        typer.echo(rep.model_dump_json(indent=2))
    else:
        table = NumberTable(title=escape(f"{entry.entry_id}: submitted vs re-measured ({entry.metric}, tolerance ±{entry.tolerance} pts)"),
                            title_justify="left")
        table.add_column("split", overflow="fold")
        for col in ("submitted", "measured", "diff"):
            table.add_number_column(col)
        table.add_column("")
        for name in entry.splits:
            ok = rep.within_tolerance[name]
            diff = rep.diffs[name]
            table.add_row(escape(name), _fmt(entry.value(name)), _fmt(rep.measured[name]), "–" if diff is None else f"{diff:+.2f}",
                          "[green]ok[/green]" if ok else "[bold red]OFF[/bold red]")
        _console().print(table)
        for note in rep.notes:
            err.print(f"note: {escape(note)}")
    if not rep.all_within:
        off = ", ".join(
            f"{n} (submitted {_fmt(entry.value(n))}, measured {_fmt(rep.measured[n])}"
            + (f", diff {rep.diffs[n]:+.2f})" if rep.diffs[n] is not None else ")")
            for n in rep.off_splits
        )
        err.print("[bold red]NOT REPRODUCED[/bold red]: " + escape(f"{len(rep.off_splits)} of {len(entry.splits)} splits of {entry.entry_id} "
                  f"differ by more than ±{entry.tolerance} pts: {off}"))
        raise typer.Exit(code=1)
    err.print(escape(f"reproduced: all {len(entry.splits)} splits of {entry.entry_id} within ±{entry.tolerance} pts"
                     + (f"; recorded in {path}" if save else "")))
