"""Results as a table in the form of the paper's Tab. 3: ID | near-OOD … avg | far-OOD … avg | OOD avg.

With ``delta_baseline`` (e.g. ``"vanilla"``) two more columns give, as in the paper's Tab. 1/2,
each method's ID and OOD-average change relative to that method's run in percent:
Δ = (x − x_baseline) / x_baseline × 100 (the paper's numbers check out this way, e.g. Tab. 1
linear probing: (73.01 − 81.99) / 81.99 = −10.96 %). Zero-shot gets "–", as in the paper.
"""

from __future__ import annotations

from typing import Optional, Sequence

from rich.table import Table

from .schema import RunResults


# Methods whose result does not depend on the adapter setting: no "(lora)" / "(full)" in their label.
NO_ADAPTER_LABEL = ("zeroshot", "linear-probe")


def _fmt(v: Optional[float]) -> str:
    return "–" if v is None else f"{v:.1f}"


def _fmt_delta(v: Optional[float]) -> str:
    return "–" if v is None else f"{v:+.2f}"


def relative_change(value: Optional[float], baseline: Optional[float]) -> Optional[float]:
    """(value − baseline) / baseline × 100; None when either is missing or the baseline is 0."""
    if value is None or baseline is None or baseline == 0:
        return None
    return (value - baseline) / baseline * 100.0


def find_baseline(results: Sequence[RunResults], method: str, adapter: Optional[str] = None) -> Optional[RunResults]:
    """The run of ``method`` (with ``adapter`` when one of them matches it), or None."""
    runs = [r for r in results if r.method == method]
    same = [r for r in runs if adapter is not None and r.method_params.get("adapter") == adapter]
    return (same or runs or [None])[0]


def deltas(result: RunResults, baseline: Optional[RunResults]) -> tuple[Optional[float], Optional[float]]:
    """(ΔID %, ΔOOD %) of ``result`` against ``baseline`` (both None for zero-shot, as in the paper)."""
    if baseline is None or result.method == "zeroshot":
        return None, None
    return (relative_change(result.averages.id, baseline.averages.id),
            relative_change(result.averages.ood, baseline.averages.ood))


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


def results_table(results: Sequence[RunResults], *, title: str | None = None, metric: str = "vqa_accuracy",
                  delta_baseline: Optional[str] = None) -> Table:
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
    if delta_baseline is not None:
        table.add_column(f"ID Δ %\n[dim]vs {delta_baseline}[/dim]", justify="right")
        table.add_column(f"OOD Δ %\n[dim]vs {delta_baseline}[/dim]", justify="right")
    for r in results:
        label = r.method + (f" ({r.method_params.get('adapter')})" if r.method_params.get("adapter") and r.method not in NO_ADAPTER_LABEL else "")
        near_cells = [_fmt(getattr(r.splits[n], metric)) if n in r.splits else "–" for n in near]
        far_cells = [_fmt(getattr(r.splits[n], metric)) if n in r.splits else "–" for n in far]
        id_cells = [_fmt(getattr(r.splits[n], metric)) if n in r.splits else "–" for n in ids]
        extra = []
        if delta_baseline is not None:
            d_id, d_ood = deltas(r, find_baseline(results, delta_baseline, r.method_params.get("adapter")))
            extra = [_fmt_delta(d_id), _fmt_delta(d_ood)]
        table.add_row(label, *id_cells, *near_cells, _fmt(r.averages.near_ood), *far_cells, _fmt(r.averages.far_ood), _fmt(r.averages.ood), *extra)
    return table
