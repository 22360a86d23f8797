"""A self-contained static leaderboard page: one section per suite, a sortable table and an ID-vs-OOD scatter.

Nothing is fetched from a network: the CSS, the sorting script and the scatter plots (inline
SVG, drawn here) are all in the one file. The script also checks itself once on load (it sorts
every table by OOD average, verifies the order and restores it) and records the outcome in
``<body data-sort-check="passed|failed">``, so a headless browser can tell the sorting works.
``?sort=COLUMN&order=asc|desc`` in the page address sorts every table on load.
"""

from __future__ import annotations

import datetime as _dt
import html
from pathlib import Path
from typing import Optional, Sequence

from .. import __version__
from ..io import atomic_write_text
from .leaderboard import METRIC_LABELS, LeaderboardEntry, by_suite, split_columns

TEMPLATE = Path(__file__).with_name("templates") / "leaderboard.html"
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")
SUITE_TITLES = {  # also the order of the sections
    "paper-vqa": "VQAv2 → near / far OOD (paper-vqa)",
    "domainnet-ovqa": "DomainNet-oVQA (domainnet-ovqa)",
    "embedded": "Embedded suite (embedded: CPU-sized, built from easy-vqa)",
    "domainnet-cls": "DomainNet image classification (domainnet-cls, not a VQA suite)",
    "boss-sentiment": "BOSS sentiment analysis (boss-sentiment, language only, not a VQA suite)",
}


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _num(v: Optional[float]) -> str:
    return "–" if v is None else f"{v:.2f}"


def _cell(v: Optional[float], cls: str = "num") -> str:
    key = "" if v is None else f"{v:.6f}"
    return f'<td class="{cls}" data-v="{key}">{_num(v)}</td>'


def _verdict_cell(entry: LeaderboardEntry) -> str:
    verdict = entry.verdict()
    title = ""
    if entry.reproductions:
        last = entry.reproductions[-1]
        off = ", ".join(f"{n} ({last.diffs[n]:+.2f})" if last.diffs[n] is not None else f"{n} (missing)" for n in last.off_splits)
        title = f"latest re-run {last.date} on {last.device}, tolerance ±{last.tolerance} pts" + (f"; off: {off}" if off else "")
    cls = {"reproduced": "ok", "OFF": "off"}.get(verdict, "")
    return f'<td class="verdict {cls}" data-v="{_e(verdict)}" title="{_e(title)}">{_e(verdict)}</td>'


def _table(suite: str, entries: Sequence[LeaderboardEntry]) -> str:
    splits = split_columns(entries)
    first = {n: next(e.splits[n] for e in entries if n in e.splits) for n in splits}
    # With a single ID split the ID average equals it: that split's column doubles as the "id" column.
    single_id = all(sum(s.role == "id" for s in e.splits.values()) == 1 for e in entries) and sum(first[n].role == "id" for n in splits) == 1
    head = ['<th data-key="method" data-type="text">method</th>', '<th data-key="backbone" data-type="text">backbone</th>',
            '<th data-key="adapter" data-type="text">adapter</th>']
    for n in splits:
        s = first[n]
        key = "id" if single_id and s.role == "id" else f"split:{n}"
        shift = "" if s.shift_type in ("none", "far") else f"<br>{_e(s.shift_type)}"
        head.append(f'<th data-key="{_e(key)}" data-type="num" title="{_e(n)}">{_e(s.label or n)}'
                    f'<span class="sub">{"ID" if s.role == "id" else _e(s.role)}{shift}</span></th>')
    if not single_id:
        head.append('<th data-key="id" data-type="num" class="avg">ID</th>')
    head += ['<th data-key="near" data-type="num" class="avg">near avg</th>',
             '<th data-key="far" data-type="num" class="avg">far avg</th>', '<th data-key="ood" data-type="num" class="avg">OOD avg</th>',
             '<th data-key="status" data-type="text">status</th>', '<th data-key="source" data-type="text">source</th>']
    rows = []
    for e in entries:
        cells = [f'<td class="method" data-v="{_e(e.method)}">{_e(e.method)}</td>',
                 f'<td class="backbone" data-v="{_e(e.backbone)}">{_e(e.backbone)}</td>', f'<td data-v="{_e(e.adapter)}">{_e(e.adapter)}</td>']
        cells += [_cell(e.value(n)) for n in splits]
        if not single_id:
            cells.append(_cell(e.averages.id, "num avg"))
        cells += [_cell(e.averages.near_ood, "num avg"), _cell(e.averages.far_ood, "num avg"),
                  _cell(e.averages.ood, "num avg ood")]
        cells.append(_verdict_cell(e))
        cells.append(f'<td class="source" data-v="{_e(e.source)}" title="{_e(e.source)}">{_e(_short_source(e.source))}</td>')
        rows.append(f'<tr data-entry="{_e(e.entry_id)}" title="{_e(e.entry_id)}">{"".join(cells)}</tr>')
    return (f'<table class="board" data-suite="{_e(suite)}"><thead><tr>{"".join(head)}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _nice_range(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    pad = max((hi - lo) * 0.08, 1.0)
    lo, hi = max(0.0, lo - pad), min(100.0, hi + pad)
    step = 5.0 if hi - lo <= 40 else 10.0
    return step * (lo // step), min(100.0, step * -(-hi // step))


def scatter_svg(entries: Sequence[LeaderboardEntry], *, width: int = 640, height: int = 400) -> str:
    """ID average (x) against OOD average (y), one dot per entry, coloured by backbone."""
    pts = [(e, e.averages.id, e.averages.ood) for e in entries if e.averages.id is not None and e.averages.ood is not None]
    if not pts:
        return '<p class="muted">no entry has both an ID and an OOD average</p>'
    left, right, top, bottom = 48, 12, 12, 40
    x0, x1 = _nice_range([p[1] for p in pts])
    y0, y1 = _nice_range([p[2] for p in pts])
    pw, ph = width - left - right, height - top - bottom

    def sx(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * pw

    def sy(v: float) -> float:
        return top + (1 - (v - y0) / (y1 - y0)) * ph

    backbones = list(dict.fromkeys(e.backbone for e, _, _ in pts))
    colour = {b: PALETTE[i % len(PALETTE)] for i, b in enumerate(backbones)}
    parts = [f'<svg class="scatter" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">']
    step_x = 5.0 if x1 - x0 <= 40 else 10.0
    step_y = 5.0 if y1 - y0 <= 40 else 10.0
    v = x0
    while v <= x1 + 1e-9:
        parts.append(f'<line class="grid" x1="{sx(v):.1f}" y1="{top}" x2="{sx(v):.1f}" y2="{top + ph}"/>'
                     f'<text class="tick" x="{sx(v):.1f}" y="{top + ph + 14}" text-anchor="middle">{v:g}</text>')
        v += step_x
    v = y0
    while v <= y1 + 1e-9:
        parts.append(f'<line class="grid" x1="{left}" y1="{sy(v):.1f}" x2="{left + pw}" y2="{sy(v):.1f}"/>'
                     f'<text class="tick" x="{left - 5}" y="{sy(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
        v += step_y
    parts.append(f'<rect class="frame" x="{left}" y="{top}" width="{pw}" height="{ph}"/>')
    parts.append(f'<text class="axis" x="{left + pw / 2:.1f}" y="{height - 6}" text-anchor="middle">ID accuracy</text>')
    parts.append(f'<text class="axis" transform="translate(13 {top + ph / 2:.1f}) rotate(-90)" text-anchor="middle">OOD average</text>')
    placed: list[tuple[float, float, float, float]] = [(sx(x) - 5, sy(y) - 5, sx(x) + 5, sy(y) + 5) for _, x, y in pts]
    for e, xv, yv in pts:
        label = f"{e.method} · {e.backbone} · ID {xv:.2f} · OOD {yv:.2f} · {e.source}"
        cx, cy = sx(xv), sy(yv)
        parts.append(f'<circle data-entry="{_e(e.entry_id)}" cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{colour[e.backbone]}">'
                     f'<title>{_e(label)}</title></circle>')
        text = _short(e.method)
        box = _label_box(text, cx, cy, placed, (left, top, left + pw, top + ph))
        if box is not None:
            placed.append(box)
            parts.append(f'<text class="pt" x="{box[0]:.1f}" y="{box[3] - 2:.1f}">{_e(text)}</text>')
    parts.append("</svg>")
    legend = "".join(f'<span class="key"><i style="background:{colour[b]}"></i>{_e(b)}</span>' for b in backbones)
    return "".join(parts) + f'<div class="legend">{legend}</div>'


def _label_box(text: str, cx: float, cy: float, placed: list, frame: tuple) -> Optional[tuple[float, float, float, float]]:
    """A free spot for a dot's label (right, left, above, below, then further out); None: leave it to the tooltip."""
    w, h = 5.4 * len(text) + 2, 11.0

    def overlaps(b: tuple) -> bool:
        return any(b[0] < p[2] and p[0] < b[2] and b[1] < p[3] and p[1] < b[3] for p in placed)

    for dy in (0.0, -9.0, 9.0, -18.0, 18.0):
        for x in (cx + 7, cx - 7 - w):
            b = (x, cy - h / 2 + dy, x + w, cy + h / 2 + dy)
            inside = b[0] >= frame[0] and b[2] <= frame[2] and b[1] >= frame[1] and b[3] <= frame[3]
            if inside and not overlaps(b):
                return b
    return None


def _short_source(source: str) -> str:
    """'Huang et al., <title>, ICLR 2025, Table 3' → 'Huang et al., Table 3' (the full text is the cell's title)."""
    parts = source.split(", ")
    return f"{parts[0]}, {parts[-1]}" if len(parts) > 2 else source


def _short(method: str) -> str:
    return method.split(" (")[0] if len(method) > 14 else method


def _section(suite: str, entries: Sequence[LeaderboardEntry]) -> str:
    metrics = sorted({f"{METRIC_LABELS[e.metric]} ({e.variant})" for e in entries})
    sources = sorted({e.source.rsplit(", ", 1)[-1] if e.source.startswith("Huang") else "runs submitted here" for e in entries})
    tasks = sorted({e.task for e in entries})
    title = SUITE_TITLES.get(suite, suite)
    meta = (f'<p class="meta">{len(entries)} entries · metric: {_e("; ".join(metrics))} · task: {_e(", ".join(tasks))} · '
            f'from: {_e(", ".join(sources))}</p>')
    return (f'<section id="suite-{_e(suite)}"><h2>{_e(title)}</h2>{meta}'
            f'<div class="tablewrap">{_table(suite, entries)}</div>'
            f'<figure>{scatter_svg(entries)}<figcaption>ID vs OOD average ({_e(suite)}); hover a dot for the entry</figcaption></figure></section>')


def _suite_order(suite: str) -> tuple[int, str]:
    """The VQA suites first (paper, then the CPU suite), the paper's non-VQA tables last."""
    order = list(SUITE_TITLES)
    return (order.index(suite) if suite in order else len(order) - 2, suite)


def render_html(entries: Sequence[LeaderboardEntry], *, title: str = "vqa-ood-bench leaderboard") -> str:
    grouped = by_suite(entries)
    groups = {s: grouped[s] for s in sorted(grouped, key=_suite_order)}
    nav = " · ".join(f'<a href="#suite-{_e(s)}">{_e(s)}</a> ({len(es)})' for s, es in groups.items())
    sections = "".join(_section(s, es) for s, es in groups.items())
    n_rep = sum(e.status == "reproduced" for e in entries)
    summary = (f"{len(entries)} entries ({sum(e.config is None for e in entries)} reported from papers, "
               f"{sum(e.config is not None for e in entries)} submitted runs, {n_rep} reproduced here)")
    generated = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = TEMPLATE.read_text(encoding="utf-8")
    for key, value in {"TITLE": _e(title), "SUMMARY": _e(summary), "NAV": nav, "SECTIONS": sections,
                       "FOOTER": _e(f"generated {generated} by vqa-ood-bench {__version__}")}.items():
        page = page.replace("{{" + key + "}}", value)
    return page


def write_html(entries: Sequence[LeaderboardEntry], path: str | Path) -> Path:
    return atomic_write_text(path, render_html(entries))
