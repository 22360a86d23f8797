r"""Results as a table in the form of the paper's Tab. 3: ID | near-OOD … avg | far-OOD … avg | OOD avg.

With ``delta_baseline`` (e.g. ``"vanilla"``) two more columns give, as in the paper's Tab. 1/2,
each method's ID and OOD-average change relative to that method's run in percent:
Δ = (x − x_baseline) / x_baseline × 100 (the paper's numbers check out this way, e.g. Tab. 1
linear probing: (73.01 − 81.99) / 81.99 = −10.96 %). Zero-shot gets "–", as in the paper.

Tables of numbers are :class:`NumberTable`\ s: in a console too narrow for them, numbers are
never shortened ("55…"); the columns are split over several tables instead.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

from rich.console import Console, ConsoleOptions, RenderResult
from rich.markup import escape
from rich.measure import Measurement
from rich.segment import Segment
from rich.table import Table

from .schema import Interval, RunResults

if TYPE_CHECKING:
    from .leaderboard import LeaderboardEntry


# Methods whose result does not depend on the adapter setting: no "(lora)" / "(full)" in their label.
NO_ADAPTER_LABEL = ("zeroshot", "linear-probe")


# A text column is folded to no less than this many characters before the table is split
# (key columns, which every part repeats, get more room: they name the row).
TEXT_FLOOR = 12
KEY_FLOOR = 30
# A number column is made wide enough for a header word of up to this many characters, so short
# headers ("vanilla", "question") are not folded mid-word.
HEADER_WORD = 8


class NumberTable(Table):
    """A rich :class:`~rich.table.Table` that never cuts a number short.

    Rich fits a table wider than the console by shrinking every column, which turns numbers
    into "55…". Here, when the table does not fit at its natural width, number columns (those
    added with :meth:`add_number_column`) keep the width of their widest cell, headers and
    text columns fold, and if that is still too wide the columns after the first
    ``key_columns`` are spread over several tables, each repeating the key columns so every
    row stays identifiable. Works under a plain ``console.print(table)``.
    """

    def __init__(self, *args: Any, key_columns: int = 1, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.key_columns = key_columns
        self.number_columns: set[int] = set()

    def add_number_column(self, header: str = "", **kwargs: Any) -> None:
        kwargs.setdefault("justify", "right")
        self.number_columns.add(len(self.columns))
        self.add_column(header, **kwargs)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        max_width = options.max_width if self.width is None else self.width
        wide = options.update_width(max(max_width, 10_000))
        natural = [self._measure_column(console, wide, c).maximum for c in self.columns]
        if not self.columns or sum(natural) + self._extra_width <= max_width:
            yield from super().__rich_console__(console, options)
            return
        pads = [self._get_padding_width(i) for i in range(len(self.columns))]
        need = []
        for i, column in enumerate(self.columns):
            if i in self.number_columns:
                cells = [Measurement.get(console, wide, cell).maximum for cell in column.cells]
                header_word = Measurement.get(console, wide, column.header).minimum
                need.append(max(max(cells, default=1), min(header_word, HEADER_WORD)) + pads[i])
            else:
                need.append(min(natural[i], pads[i] + (KEY_FLOOR if i < self.key_columns else TEXT_FLOOR)))
        keys = list(range(min(self.key_columns, len(self.columns))))
        groups: list[list[int]] = [[]]
        for i in range(len(keys), len(self.columns)):
            trial = keys + groups[-1] + [i]
            if groups[-1] and sum(need[j] for j in trial) + self._extra_for(len(trial)) > max_width:
                groups.append([i])
            else:
                groups[-1].append(i)
        for part, group in enumerate(groups):
            cols = keys + group
            widths = [need[j] for j in cols]
            spare = max_width - self._extra_for(len(cols)) - sum(widths)
            while spare > 0:  # hand out the room left, a character at a time, up to natural widths
                grew = False
                for k, j in enumerate(cols):
                    if spare > 0 and widths[k] < natural[j]:
                        widths[k] += 1
                        spare -= 1
                        grew = True
                if not grew:
                    break
            sub = copy.copy(self)
            sub.columns = [replace(self.columns[j], _index=k, width=max(1, w - pads[j]), overflow="fold", no_wrap=False)
                           for k, (j, w) in enumerate(zip(cols, widths))]
            if part:
                yield Segment.line()
                sub.title = f"{self.title} (continued)" if isinstance(self.title, str) else None
            if part < len(groups) - 1:
                sub.caption = None
            yield from Table.__rich_console__(sub, console, options)

    def _extra_for(self, n_columns: int) -> int:
        """Border characters of a table of ``n_columns`` (rich's ``_extra_width``)."""
        return (2 if self.box and self.show_edge else 0) + (n_columns - 1 if self.box else 0)


def _fmt(v: Optional[float], ci: Optional[Interval] = None) -> str:
    if v is None:
        return "–"
    return f"{v:.1f}" if ci is None else f"{v:.1f} ±{ci.half_width:.1f}"


def _fmt_delta(v: Optional[float], significant: Optional[bool] = None) -> str:
    return "–" if v is None else f"{v:+.2f}" + ("*" if significant else "")


# results_table's significance marks: run_id -> (ID average, OOD average) significantly
# different from the Δ baseline's (None: not tested).
Significance = Mapping[str, tuple[Optional[bool], Optional[bool]]]


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
                  delta_baseline: Optional[str] = None, significance: Optional[Significance] = None,
                  alpha: float = 0.05, intervals: bool = True) -> NumberTable:
    """One row per run. Names from the results files are escaped: they are data, not rich markup.

    With ``intervals`` (and ``metric`` the one results files give intervals for), a number whose
    results file stores its interval reads "45.2 ±1.0": ± half the interval's width (the exact,
    possibly asymmetric bounds are in results.json). ``significance`` marks Δ cells with "*"
    (a paired test on the same questions, p < ``alpha``); a caption line says what the marks mean.
    """
    ids, near, far = columns(results)
    first = results[0]
    show_ci = intervals and metric == "vqa_accuracy"

    def split_cell(r: RunResults, n: str) -> str:
        if n not in r.splits:
            return "–"
        s = r.splits[n]
        return _fmt(getattr(s, metric), s.ci if show_ci else None)

    def average_cell(r: RunResults, key: str) -> str:
        return _fmt(getattr(r.averages, key), r.averages_ci.get(key) if show_ci else None)

    legend = []
    confidences = {s.ci.confidence for r in results for s in r.splits.values() if s.ci is not None}
    confidences |= {c.confidence for r in results for c in r.averages_ci.values()}
    if show_ci and confidences:
        level = "/".join(f"{100 * c:g}%" for c in sorted(confidences))
        legend.append(f"±: half the width of the {level} interval over questions (bounds in results.json)")
    if delta_baseline is not None and significance:
        legend.append(f"*: Δ differs significantly from {delta_baseline} (paired sign-flip test on the same questions, p < {alpha:g})")
    table = NumberTable(title=title or escape(f"{first.suite} suite · VQA accuracy ({first.scoring_variant})"), show_lines=False,
                        caption=escape("; ".join(legend)) if legend else None)
    table.add_column("method", style="bold")
    for n in ids:
        table.add_number_column(f"{escape(n)}\n[dim]ID[/dim]")
    for n in near:
        table.add_number_column(f"{escape(n)}\n[dim]{first.splits[n].shift_type if n in first.splits else ''}[/dim]")
    table.add_number_column("near\navg", style="cyan")
    for n in far:
        table.add_number_column(f"{escape(n)}\n[dim]far[/dim]")
    table.add_number_column("far\navg", style="cyan")
    table.add_number_column("OOD\navg", style="bold cyan")
    if delta_baseline is not None:
        table.add_number_column(f"ID Δ %\n[dim]vs {escape(delta_baseline)}[/dim]")
        table.add_number_column(f"OOD Δ %\n[dim]vs {escape(delta_baseline)}[/dim]")
    for r in results:
        label = r.method + (f" ({r.method_params.get('adapter')})" if r.method_params.get("adapter") and r.method not in NO_ADAPTER_LABEL else "")
        label = escape(label)
        near_cells = [split_cell(r, n) for n in near]
        far_cells = [split_cell(r, n) for n in far]
        id_cells = [split_cell(r, n) for n in ids]
        extra = []
        if delta_baseline is not None:
            d_id, d_ood = deltas(r, find_baseline(results, delta_baseline, r.method_params.get("adapter")))
            sig_id, sig_ood = (significance or {}).get(r.run_id, (None, None))
            extra = [_fmt_delta(d_id, sig_id), _fmt_delta(d_ood, sig_ood)]
        table.add_row(label, *id_cells, *near_cells, average_cell(r, "near_ood"), *far_cells, average_cell(r, "far_ood"),
                      average_cell(r, "ood"), *extra)
    return table


def _fmt2(v: Optional[float], ci: Optional[Interval] = None, mark: bool = False) -> str:
    if v is None:
        return "–"
    return (f"{v:.2f}" if ci is None else f"{v:.2f} ±{ci.half_width:.2f}") + ("*" if mark else "")


def leaderboard_table(suite: str, entries: Sequence["LeaderboardEntry"], *, with_splits: bool = False) -> NumberTable:
    """``leaderboard show``'s table of one suite's entries (in the given order), with per-split columns if asked.

    Entry fields are text from JSON files anyone can submit: escaped, never read as rich markup.
    """
    from .leaderboard import METRIC_LABELS, significance_marks, split_columns

    metrics = ", ".join(sorted({f"{METRIC_LABELS[e.metric]} ({e.variant})" for e in entries}))
    confidences = {s.ci.confidence for e in entries for s in e.splits.values() if s.ci is not None}
    confidences |= {c.confidence for e in entries for c in e.averages_ci.values()}
    marks = significance_marks(entries)
    legend = []
    if confidences:
        level = "/".join(f"{100 * c:g}%" for c in sorted(confidences))
        legend.append(f"±: half the width of the {level} interval over questions (submitted runs; bounds in the entry files)")
    if marks:
        legend.append("*: differs significantly from the entry's baseline (" + ", ".join(sorted({f"{b}" for b, _ in marks.values()}))
                      + "), paired test on the same questions")
    caption = escape("; ".join(legend)) if legend else None
    table = NumberTable(title=escape(f"{suite} · {metrics}"), title_justify="left", key_columns=2, caption=caption,
                        caption_justify="left")
    for col in ("#", "entry", "method", "backbone", "adapter"):
        table.add_column(col, style="bold" if col == "method" else None, overflow="fold")
    cols = split_columns(entries) if with_splits else []
    for c in cols:
        table.add_number_column(escape(c))
    for col in ("ID", "near", "far", "OOD"):
        table.add_number_column(col, style="bold cyan" if col == "OOD" else "cyan")
    table.add_column("status")
    table.add_column("source", overflow="fold")
    for rank, e in enumerate(entries, 1):
        verdict = e.verdict()
        style = {"reproduced": "green", "OFF": "bold red"}.get(verdict, "dim")
        source = e.source if "," not in e.source else f"{e.source.split(', ')[0]}, {e.source.split(', ')[-1]}"
        table.add_row(str(rank), escape(e.entry_id), escape(e.method), escape(e.backbone), escape(e.adapter),
                      *[_fmt2(e.value(c), e.splits[c].ci if c in e.splits else None) for c in cols],
                      *[_fmt2(getattr(e.averages, k), e.averages_ci.get(k),
                              e.entry_id in marks and k in marks[e.entry_id][1] and marks[e.entry_id][1][k].significant)
                        for k in ("id", "near_ood", "far_ood", "ood")],
                      f"[{style}]{escape(verdict)}[/{style}]", escape(source))
    return table
