"""``vqa-ood-bench datasets list`` and ``vqa-ood-bench datasets verify``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..errors import BenchError
from .app import datasets_app
from .options import JsonOpt, parse_key_values


def _dataset_rows() -> list[dict[str, Any]]:
    from ..data.registry import dataset_names, get_dataset

    rows = []
    for name in dataset_names():
        spec = get_dataset(name)
        rows.append(
            {
                "name": spec.name,
                "role": spec.role,
                "shift_type": spec.shift_type,
                "description": spec.description,
                "expected_files": list(spec.expected_files),
                "licence": spec.licence,
                "source": spec.source,
                "stands_in_for": spec.stands_in_for,
                "default_options": spec.default_options,
            }
        )
    return rows


def _suite_rows() -> list[dict[str, Any]]:
    from ..data.suite import get_suite, suite_names

    rows = []
    for name in suite_names():
        try:
            s = get_suite(name)
        except BenchError as exc:
            rows.append({"name": name, "error": str(exc)})
            continue
        rows.append(
            {
                "name": s.name,
                "description": s.description,
                "needs_data_root": s.needs_data_root,
                "version": s.version,
                "train": _split_json(s.train),
                "validation": _split_json(s.validation),
                "evaluation": [_split_json(e) for e in s.evaluation],
            }
        )
    return rows


def _split_json(spec: Any) -> dict[str, Any]:
    return {
        "name": spec.name,
        "dataset": spec.dataset,
        "role": spec.role,
        "shift_type": spec.shift_type,
        "options": dict(spec.options),
        "max_records": spec.max_records,
    }


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def _console():
    """A console that does not fold names when the output is piped (or captured)."""
    import os

    from rich.console import Console

    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
    return Console(soft_wrap=True, width=width)


@datasets_app.command("list")
def list_command(json_out: JsonOpt = False) -> None:
    """List every registered dataset (role, shift type, expected files, licence, source) and suite."""
    datasets, suites = _dataset_rows(), _suite_rows()
    if json_out:
        _print_json({"datasets": datasets, "suites": suites})
        return
    from rich.table import Table

    table = Table(title="Datasets", show_lines=True)
    for col in ("name", "role", "shift", "expected files", "licence", "where to get it"):
        table.add_column(col, overflow="fold")
    for d in datasets:
        source = d["source"]
        if d["stands_in_for"]:
            source = f"{source}\n(stands in for {d['stands_in_for']})".strip()
        table.add_row(d["name"], d["role"], d["shift_type"], "\n".join(d["expected_files"]), d["licence"], source)
    console = _console()
    console.print(table)
    st = Table(title="Suites", show_lines=True)
    for col in ("suite", "train", "validation", "evaluation (role/shift)", "needs --data-root"):
        st.add_column(col, overflow="fold")
    for s in suites:
        if "error" in s:
            st.add_row(s["name"], "", "", f"[red]{s['error']}[/red]", "")
            continue
        ev = "\n".join(f"{e['name']} ({e['role']}/{e['shift_type']})" for e in s["evaluation"])
        st.add_row(s["name"], s["train"]["name"], s["validation"]["name"], ev, "yes" if s["needs_data_root"] else "no")
    console.print(st)


@datasets_app.command("verify")
def verify_command(
    name: Annotated[str, typer.Argument(help="Registered dataset name (see `datasets list`).")],
    root: Annotated[Optional[Path], typer.Option("--root", help="Data root (or the dataset's own folder).")] = None,
    split: Annotated[Optional[str], typer.Option("--split", help="Split to check (default: the loader's).")] = None,
    option: Annotated[
        Optional[list[str]], typer.Option("--option", "-o", help="Loader option KEY=VALUE (repeatable; VALUE parsed as JSON if it can be).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Check files, count records and images, list missing images and malformed records (no image is opened)."""
    from ..data.verify import verify_dataset

    opts = parse_key_values(option or [], "--option")
    if split is not None:
        opts["split"] = split
    result = verify_dataset(name, root, **opts)
    if json_out:
        _print_json(result.to_json())
    else:
        _print_verify(result)
    if not result.ok:
        raise typer.Exit(1)


def _print_verify(result: Any) -> None:
    from rich.table import Table

    console = _console()
    files = Table(title=f"{result.dataset}: files under {result.root}")
    files.add_column("expected")
    files.add_column("present")
    files.add_column("path", overflow="fold")
    for f in result.files:
        mark = "?" if f["present"] is None else ("[green]yes[/green]" if f["present"] else "[red]no[/red]")
        files.add_row(f["file"], mark, f["path"] or "")
    console.print(files)
    rep = result.report
    counts = Table(title="counts")
    counts.add_column("what")
    counts.add_column("n", justify="right")
    for label, n in (
        ("records read", result.records),
        ("distinct image files", result.images),
        ("images present", result.images_present),
        ("images missing", len(result.images_missing)),
        ("records skipped (malformed)", len(rep.malformed)),
        ("records skipped (known quirks)", len(rep.quirks)),
        ("left out by sub-sampling", rep.filtered),
    ):
        counts.add_row(label, str(n))
    console.print(counts)
    limit = 20
    if result.images_missing:
        console.print(f"[red]missing images ({len(result.images_missing)}):[/red]")
        for m in result.images_missing[:limit]:
            console.print(f"  {m['image']}  (record {m['record']})", markup=False, highlight=False)
        if len(result.images_missing) > limit:
            console.print(f"  … {len(result.images_missing) - limit} more (use --json for all)")
    if rep.skipped:
        console.print(f"skipped records ({len(rep.skipped)}):")
        for s in rep.skipped[:limit]:
            kind = "known quirk" if s.known else "malformed"
            console.print(f"  [{kind}] {s.path} [record {s.record}]: {s.reason}", markup=False, highlight=False)
        if len(rep.skipped) > limit:
            console.print(f"  … {len(rep.skipped) - limit} more (use --json for all)")
    for err in result.errors:
        console.print(f"error: {err}", style="red", markup=False, highlight=False)
    console.print("[green]OK[/green]" if result.ok else "[red]problems found[/red]")
