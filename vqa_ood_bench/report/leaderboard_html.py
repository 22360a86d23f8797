"""A self-contained static leaderboard page: one section per (suite, metric, variant) group, a sortable table and an ID-vs-OOD scatter.

Nothing is fetched from a network: the CSS, the sorting script and the scatter plots (inline
SVG, laid out here) are all in the one file. The script also checks itself once on load (it sorts
every table by OOD average, verifies the order and restores it) and records the outcome in
``<body data-sort-check="passed|failed">``, so a headless browser can tell the sorting works.
``?sort=COLUMN&order=asc|desc`` in the page address sorts every table on load.

The page is rendered by jinja2 with auto-escaping on: entry fields come from JSON files anyone
can submit, so every value reaches the HTML escaped, and this module builds data, never markup.
Entries scored with another metric or accuracy variant land in another section (:func:`~.leaderboard.by_group`).
"""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path
from typing import Any, Optional, Sequence

from .. import __version__
from ..io import atomic_write_text
from .leaderboard import METRIC_LABELS, GroupKey, LeaderboardEntry, PairedAverage, by_group, group_title, significance_marks, split_columns
from .schema import Interval

TEMPLATE = Path(__file__).with_name("templates") / "leaderboard.html"
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")
SUITE_TITLES = {  # also the order of the sections
    "paper-vqa": "VQAv2 → near / far OOD (paper-vqa)",
    "domainnet-ovqa": "DomainNet-oVQA (domainnet-ovqa)",
    "embedded": "Embedded suite (embedded: CPU-sized, built from easy-vqa)",
    "domainnet-cls": "DomainNet image classification (domainnet-cls, not a VQA suite)",
    "boss-sentiment": "BOSS sentiment analysis (boss-sentiment, language only, not a VQA suite)",
}


def _environment():
    import jinja2

    # select_autoescape(default=True): escaping on whatever the template's name, strings included.
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE.parent), autoescape=jinja2.select_autoescape(default=True),
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _num(v: Optional[float]) -> str:
    return "–" if v is None else f"{v:.2f}"


def _cell(v: Optional[float], cls: str = "num", ci: Optional[Interval] = None, versus: Optional[tuple[str, PairedAverage]] = None) -> dict[str, Any]:
    """A number; with its interval, "±" half its width after it and the exact bounds as the tooltip;
    with a comparison against a baseline entry, "*" when significant and the test in the tooltip."""
    cell = {"cls": cls, "v": "" if v is None else f"{v:.6f}", "text": _num(v), "title": "", "pm": "", "mark": ""}
    if v is None:
        return cell
    tips = []
    if ci is not None:
        cell["pm"] = f"±{ci.half_width:.2f}"
        tips.append(f"{100 * ci.confidence:g}% interval [{ci.low:.2f}, {ci.high:.2f}] ({ci.method})")
    if versus is not None:
        baseline, t = versus
        cell["mark"] = "*" if t.significant else ""
        tips.append(f"vs {baseline}: {t.difference:+.2f} [{t.interval[0]:+.2f}, {t.interval[1]:+.2f}], p = {t.p_value:.4g}"
                    + (" (significant)" if t.significant else ""))
    cell["title"] = "; ".join(tips)
    return cell


def _text_cell(value: str, cls: str = "", *, title: str = "", text: Optional[str] = None) -> dict[str, Any]:
    return {"cls": cls, "v": value, "text": value if text is None else text, "title": title, "pm": "", "mark": ""}


def _verdict_cell(entry: LeaderboardEntry) -> dict[str, Any]:
    verdict = entry.verdict()
    title = ""
    if entry.reproductions:
        last = entry.reproductions[-1]
        off = ", ".join(f"{n} ({last.diffs[n]:+.2f})" if last.diffs[n] is not None else f"{n} (missing)" for n in last.off_splits)
        title = f"latest re-run {last.date} on {last.device}, tolerance ±{last.tolerance} pts" + (f"; off: {off}" if off else "")
    cls = {"reproduced": "ok", "OFF": "off"}.get(verdict, "")
    return _text_cell(verdict, f"verdict {cls}".strip(), title=title)


def _head(key: str, kind: str, label: str, *, cls: str = "", title: str = "", sub: str = "", shift: str = "") -> dict[str, str]:
    return {"key": key, "type": kind, "label": label, "cls": cls, "title": title, "sub": sub, "shift": shift}


def _table(key: GroupKey, entries: Sequence[LeaderboardEntry]) -> dict[str, Any]:
    """Header cells and rows of one group's table (the template turns them into HTML)."""
    splits = split_columns(entries)
    first = {n: next(e.splits[n] for e in entries if n in e.splits) for n in splits}
    # With a single ID split the ID average equals it: that split's column doubles as the "id" column.
    single_id = all(sum(s.role == "id" for s in e.splits.values()) == 1 for e in entries) and sum(first[n].role == "id" for n in splits) == 1
    head = [_head("method", "text", "method"), _head("backbone", "text", "backbone"), _head("adapter", "text", "adapter")]
    for n in splits:
        s = first[n]
        head.append(_head("id" if single_id and s.role == "id" else f"split:{n}", "num", s.label or n, title=n,
                          sub="ID" if s.role == "id" else s.role, shift="" if s.shift_type in ("none", "far") else s.shift_type))
    if not single_id:
        head.append(_head("id", "num", "ID", cls="avg"))
    head += [_head("near", "num", "near avg", cls="avg"), _head("far", "num", "far avg", cls="avg"), _head("ood", "num", "OOD avg", cls="avg"),
             _head("status", "text", "status"), _head("source", "text", "source")]
    rows = []
    marks = significance_marks(entries)

    def vs(e: LeaderboardEntry, key: str) -> Optional[tuple[str, PairedAverage]]:
        if e.entry_id not in marks or key not in marks[e.entry_id][1]:
            return None
        return marks[e.entry_id][0], marks[e.entry_id][1][key]

    for e in entries:
        cells = [_text_cell(e.method, "method"), _text_cell(e.backbone, "backbone"), _text_cell(e.adapter)]
        cells += [_cell(e.value(n), ci=e.splits[n].ci if n in e.splits else None) for n in splits]
        ci = e.averages_ci
        if not single_id:
            cells.append(_cell(e.averages.id, "num avg", ci.get("id"), vs(e, "id")))
        cells += [_cell(e.averages.near_ood, "num avg", ci.get("near_ood"), vs(e, "near_ood")),
                  _cell(e.averages.far_ood, "num avg", ci.get("far_ood"), vs(e, "far_ood")),
                  _cell(e.averages.ood, "num avg ood", ci.get("ood"), vs(e, "ood"))]
        cells.append(_verdict_cell(e))
        cells.append(_text_cell(e.source, "source", title=e.source, text=_short_source(e.source)))
        rows.append({"entry": e.entry_id, "cells": cells})
    suite, metric, variant = key
    return {"suite": suite, "metric": metric, "variant": variant, "group": group_title(key), "head": head, "rows": rows}


def _nice_range(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    pad = max((hi - lo) * 0.08, 1.0)
    lo, hi = max(0.0, lo - pad), min(100.0, hi + pad)
    step = 5.0 if hi - lo <= 40 else 10.0
    return step * (lo // step), min(100.0, step * -(-hi // step))


def scatter(entries: Sequence[LeaderboardEntry], *, width: int = 640, height: int = 400) -> Optional[dict[str, Any]]:
    """Layout of the ID average (x) against OOD average (y) plot, one dot per entry, coloured by backbone.

    Coordinates come formatted; the template draws the SVG. None: no entry has both averages.
    """
    pts = [(e, e.averages.id, e.averages.ood) for e in entries if e.averages.id is not None and e.averages.ood is not None]
    if not pts:
        return None
    left, right, top, bottom = 48, 12, 12, 40
    x0, x1 = _nice_range([p[1] for p in pts])
    y0, y1 = _nice_range([p[2] for p in pts])
    pw, ph = width - left - right, height - top - bottom

    def sx(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * pw

    def sy(v: float) -> float:
        return top + (1 - (v - y0) / (y1 - y0)) * ph

    def ticks(lo: float, hi: float) -> list[float]:
        step, out, v = (5.0 if hi - lo <= 40 else 10.0), [], lo
        while v <= hi + 1e-9:
            out.append(v)
            v += step
        return out

    backbones = list(dict.fromkeys(e.backbone for e, _, _ in pts))
    colour = {b: PALETTE[i % len(PALETTE)] for i, b in enumerate(backbones)}
    placed: list[tuple[float, float, float, float]] = [(sx(x) - 5, sy(y) - 5, sx(x) + 5, sy(y) + 5) for _, x, y in pts]
    dots, labels = [], []
    for e, xv, yv in pts:
        cx, cy = sx(xv), sy(yv)
        dots.append({"entry": e.entry_id, "cx": f"{cx:.1f}", "cy": f"{cy:.1f}", "fill": colour[e.backbone],
                     "tip": f"{e.method} · {e.backbone} · ID {xv:.2f} · OOD {yv:.2f} · {e.source}"})
        text = _short(e.method)
        box = _label_box(text, cx, cy, placed, (left, top, left + pw, top + ph))
        if box is not None:
            placed.append(box)
            labels.append({"x": f"{box[0]:.1f}", "y": f"{box[3] - 2:.1f}", "text": text})
    return {
        "width": width, "height": height, "left": left, "top": top, "pw": pw, "ph": ph,
        "xticks": [{"at": f"{sx(v):.1f}", "label": f"{v:g}"} for v in ticks(x0, x1)],
        "yticks": [{"at": f"{sy(v):.1f}", "text_y": f"{sy(v) + 4:.1f}", "label": f"{v:g}"} for v in ticks(y0, y1)],
        "x_label": {"x": f"{left + pw / 2:.1f}", "y": height - 6}, "y_label_at": f"{top + ph / 2:.1f}",
        "dots": dots, "labels": labels, "legend": [{"colour": colour[b], "name": b} for b in backbones],
    }


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


def _group_id(key: GroupKey) -> str:
    return "group-" + re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(key))


def _section(key: GroupKey, entries: Sequence[LeaderboardEntry]) -> dict[str, Any]:
    suite, metric, variant = key
    sources = sorted({e.source.rsplit(", ", 1)[-1] if e.source.startswith("Huang") else "runs submitted here" for e in entries})
    return {
        "id": _group_id(key), "name": group_title(key), "count": len(entries),
        "title": f"{SUITE_TITLES.get(suite, suite)} · {METRIC_LABELS.get(metric, metric)} ({variant})",
        "metric": f"{METRIC_LABELS.get(metric, metric)} ({variant} variant)", "tasks": ", ".join(sorted({e.task for e in entries})),
        "sources": ", ".join(sources), "table": _table(key, entries), "scatter": scatter(entries),
    }


def _group_order(key: GroupKey) -> tuple[int, str, str, str]:
    """The VQA suites first (paper, then the CPU suite), the paper's non-VQA tables last; then metric and variant."""
    order = list(SUITE_TITLES)
    suite = key[0]
    return (order.index(suite) if suite in order else len(order) - 2, *key)


def render_html(entries: Sequence[LeaderboardEntry], *, title: str = "vqa-ood-bench leaderboard") -> str:
    grouped = by_group(entries)
    sections = [_section(k, grouped[k]) for k in sorted(grouped, key=_group_order)]
    n_rep = sum(e.status == "reproduced" for e in entries)
    summary = (f"{len(entries)} entries ({sum(e.config is None for e in entries)} reported from papers, "
               f"{sum(e.config is not None for e in entries)} submitted runs, {n_rep} reproduced here)")
    generated = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return _environment().get_template(TEMPLATE.name).render(
        title=title, summary=summary, sections=sections, footer=f"generated {generated} by vqa-ood-bench {__version__}")


def write_html(entries: Sequence[LeaderboardEntry], path: str | Path) -> Path:
    return atomic_write_text(path, render_html(entries))
