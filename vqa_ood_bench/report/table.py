"""Results as a table in the form of the paper's Tab. 3: ID | near-OOD … avg | far-OOD … avg | OOD avg."""

from __future__ import annotations

from typing import Optional, Sequence

from rich.table import Table

from .schema import RunResults


def _fmt(v: Optional[float]) -> str:
    return "–" if v is None else f"{v:.1f}"


def columns(results: Sequence[RunResults]) -> tuple[list[str], list[str], list[str]]:
    """ID, near and far split names in the order of the first result that has them."""
    ids: list[str] = []
    near: list[str] = []
    far: list[str] = []
    for r in results:
        for name, s in r.splits.items():
            bucket = {"id": ids, "near": near, "far": far}[s.role]
            if name not in bucket:
                bucket.append(name)
    return ids, near, far


def results_table(results: Sequence[RunResults], *, title: str | None = None, metric: str = "vqa_accuracy") -> Table:
    ids, near, far = columns(results)
    first = results[0]
    table = Table(title=title or f"{first.suite} suite · VQA accuracy ({first.scoring_variant})", show_lines=False)
    table.add_column("method", style="bold")
    for n in ids:
        table.add_column(f"{n}\n[dim]ID[/dim]", justify="right")
    for n in near:
        table.add_column(f"{n}\n[dim]{first.splits[n].shift_type if n in first.splits else ''}[/dim]", justify="right")
    table.add_column("near\navg", justify="right", style="cyan")
    for n in far:
        table.add_column(f"{n}\n[dim]far[/dim]", justify="right")
    table.add_column("far\navg", justify="right", style="cyan")
    table.add_column("OOD\navg", justify="right", style="bold cyan")
    for r in results:
        label = r.method + (f" ({r.method_params.get('adapter')})" if r.method_params.get("adapter") and r.method != "zeroshot" else "")
        near_cells = [_fmt(getattr(r.splits[n], metric)) if n in r.splits else "–" for n in near]
        far_cells = [_fmt(getattr(r.splits[n], metric)) if n in r.splits else "–" for n in far]
        id_cells = [_fmt(getattr(r.splits[n], metric)) if n in r.splits else "–" for n in ids]
        table.add_row(label, *id_cells, *near_cells, _fmt(r.averages.near_ood), *far_cells, _fmt(r.averages.far_ood), _fmt(r.averages.ood))
    return table
