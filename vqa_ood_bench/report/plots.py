"""Shift figures: per-split score histograms, shift vs accuracy, uni-modal/joint correlation heatmaps.

* :func:`figure_shift_histograms` — per feature kind, the distribution of per-sample scores of
  every split (paper App. 7.3.2).
* :func:`figure_shift_vs_accuracy` — per kind, each split's mean shift against its VQA accuracy,
  with the Pearson correlation (paper Sec. 4.3: image and joint shifts correlate with accuracy).
* :func:`figure_correlation_heatmaps` — per method (row) and dataset (column), the correlation
  over samples between a uni-modal score and the joint score: (a) question–joint,
  (b) vision–joint (paper Fig. 6).

Figures are built on :class:`matplotlib.figure.Figure` (no pyplot state, no display needed) and
written as PNG and SVG by :func:`save_figure`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

KIND_LABELS = {"vision": "vision", "question": "question", "joint": "joint (V+Q)"}
ROLE_MARKERS = {"id": "o", "near": "s", "far": "^"}
ROLE_COLORS = {"id": "#1b9e77", "near": "#d95f02", "far": "#7570b3"}
CORRELATION_PAIRS = (("question", "joint"), ("vision", "joint"))

__all__ = [
    "CORRELATION_PAIRS",
    "figure_correlation_heatmaps",
    "figure_shift_histograms",
    "figure_shift_vs_accuracy",
    "pearson",
    "save_figure",
    "shift_correlations",
]


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation of two equal-length samples (NaN when undefined: < 2 points or no spread)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"pearson: shapes differ {x.shape} vs {y.shape}")
    if x.size < 2:
        return float("nan")
    xc = x - x.mean()
    yc = y - y.mean()
    denom = math.sqrt(float(xc @ xc) * float(yc @ yc))
    if denom == 0.0:
        return float("nan")
    return float(np.clip((xc @ yc) / denom, -1.0, 1.0))


def shift_correlations(
    per_split: Mapping[str, Mapping[str, np.ndarray]], pairs: Iterable[tuple[str, str]] = CORRELATION_PAIRS
) -> dict[str, dict[str, float]]:
    """``{split: {"question-joint": r, "vision-joint": r}}``: correlation over a split's samples."""
    out: dict[str, dict[str, float]] = {}
    for split, scores in per_split.items():
        row = {}
        for a, b in pairs:
            if a in scores and b in scores:
                row[f"{a}-{b}"] = pearson(scores[a], scores[b])
        out[split] = row
    return out


def _new_figure(ncols: int, *, width: float = 4.6, height: float = 3.6, nrows: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _split_colors(names: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def _reference_split(names: Sequence[str], roles: Mapping[str, str]) -> str:
    """The split the others are drawn against: the first ID split, else the first split."""
    return next((n for n in names if roles.get(n) == "id"), names[0])


def _panel_range(arrays: Sequence[np.ndarray]) -> tuple[float, float]:
    """A histogram range covering every array's central 99% (so one far tail cannot flatten the rest)."""
    lows, highs = [], []
    for v in arrays:
        v = v[np.isfinite(v)]
        if v.size:
            lo, hi = np.percentile(v, [0.5, 99.5]) if v.size > 20 else (v.min(), v.max())
            lows.append(lo)
            highs.append(hi)
    if not lows:
        return -1.0, 0.0
    lo, hi = float(min(lows)), float(max(highs))
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.03 * (hi - lo)
    return lo - pad, hi + pad


def figure_shift_histograms(
    per_split: Mapping[str, Mapping[str, np.ndarray]],
    *,
    kinds: Sequence[str] = ("vision", "question", "joint"),
    roles: Optional[Mapping[str, str]] = None,
    title: str = "",
    bins: int = 40,
):
    """Small multiples: a row per split, a column per kind.

    Each panel shows one split's per-sample scores (coloured) over the ID reference split's
    (grey, filled; the first split whose role is ``id``), each with its mean as a vertical line,
    on a range fitted to those two, so a near-OOD split is not flattened by a far one's tail.
    """
    kinds = [k for k in kinds if any(k in s for s in per_split.values())]
    if not kinds:
        raise ValueError("no scores to plot")
    roles = dict(roles or {})
    names = list(per_split)
    ref = _reference_split(names, roles)
    colors = {"id": ROLE_COLORS["id"], "near": ROLE_COLORS["near"], "far": ROLE_COLORS["far"]}
    fig, axes = _new_figure(len(kinds), width=3.9, height=1.35, nrows=len(names))
    for row, name in enumerate(names):
        role = roles.get(name, "")
        for col, kind in enumerate(kinds):
            ax = axes[row][col]
            if kind not in per_split[name]:
                ax.set_axis_off()
                continue
            v = np.asarray(per_split[name][kind], dtype=np.float64)
            r = np.asarray(per_split[ref].get(kind, np.zeros(0)), dtype=np.float64)
            lo, hi = _panel_range([v, r] if name != ref else [v])
            edges = np.linspace(lo, hi, bins + 1)
            color = colors.get(role, "#444444")
            if name != ref and r.size:
                ax.hist(np.clip(r, lo, hi), bins=edges, density=True, color="#bbbbbb", alpha=0.8, label=ref)
                ax.axvline(float(np.mean(r)), color="#777777", linewidth=1.0, linestyle="--")
            ax.hist(np.clip(v, lo, hi), bins=edges, density=True, histtype="step" if name != ref else "stepfilled",
                    linewidth=1.6, color=color, alpha=1.0 if name != ref else 0.75)
            ax.axvline(float(np.mean(v)), color=color, linewidth=1.2)
            text = f"mean {np.mean(v):.2f}" + (f"\n{ref} {np.mean(r):.2f}" if name != ref and r.size else "")
            ax.text(0.02, 0.95, text, transform=ax.transAxes, ha="left", va="top", fontsize=7,
                    bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1.5})
            ax.set_yticks([])
            ax.tick_params(axis="x", labelsize=7)
            ax.grid(alpha=0.3, axis="x")
            if row == 0:
                ax.set_title(f"{KIND_LABELS.get(kind, kind)} shift", fontsize=10)
            if col == 0:
                ax.set_ylabel(f"{name}\n({role or '?'})" if name != ref else f"{name}\n({role or '?'}, reference)", fontsize=8,
                              rotation=0, ha="right", va="center")
            if row == len(names) - 1:
                ax.set_xlabel("score = −Mahalanobis distance (higher = closer to training)", fontsize=8)
    fig.suptitle(title or "Per-sample shift scores per split", fontsize=11)
    return fig


def _place_labels(ax, xs: np.ndarray, ys: np.ndarray, labels: Sequence[str], *, fontsize: float = 7) -> None:
    """Annotate points without labels overlapping each other or the markers (greedy, in display space).

    Each label tries offsets around its point in turn and takes the first whose box touches no
    label placed so far and no other marker; failing that, the one with the least overlap.
    """
    fig = ax.figure
    fig.draw_without_rendering()  # settle the layout so data -> display transforms are final
    renderer = fig._get_renderer()
    to_px = fig.dpi / 72.0
    pts = ax.transData.transform(np.column_stack([xs, ys]))
    marker_r = 5.0 * to_px
    markers = [(px - marker_r, py - marker_r, px + marker_r, py + marker_r) for px, py in pts]
    placed: list[tuple[float, float, float, float]] = []
    offsets = [(5, 3), (5, -10), (-5, 3), (-5, -10), (5, 12), (-5, 12), (5, -19), (-5, -19), (0, 20), (0, -27)]

    def overlap(a, b) -> float:
        w = min(a[2], b[2]) - max(a[0], b[0])
        h = min(a[3], b[3]) - max(a[1], b[1])
        return w * h if w > 0 and h > 0 else 0.0

    order = np.argsort(-pts[:, 1])  # top to bottom: labels above crowded points get placed first
    for i in order:
        probe = ax.annotate(labels[i], (xs[i], ys[i]), fontsize=fontsize)
        bb = probe.get_window_extent(renderer)
        probe.remove()
        w, h = bb.width, bb.height
        best, best_cost = None, math.inf
        for dx, dy in offsets:
            x0 = pts[i, 0] + dx * to_px - (w if dx < 0 else 0)
            y0 = pts[i, 1] + dy * to_px
            box = (x0, y0, x0 + w, y0 + h)
            cost = sum(overlap(box, b) for b in placed) + sum(overlap(box, m) for k, m in enumerate(markers) if k != i)
            axbox = ax.bbox
            if box[0] < axbox.x0 or box[2] > axbox.x1 or box[1] < axbox.y0 or box[3] > axbox.y1:
                cost += 0.5 * w * h  # leaving the axes is allowed but discouraged
            if cost < best_cost:
                best, best_cost = (dx, dy, box), cost
            if cost == 0:
                break
        dx, dy, box = best
        placed.append(box)
        far_off = abs(dy) > 12 or dx == 0  # a displaced label gets a leader line to its point
        ann = ax.annotate(labels[i], (xs[i], ys[i]), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                          ha="right" if dx < 0 else "left", va="bottom", annotation_clip=False,
                          arrowprops={"arrowstyle": "-", "color": "grey", "linewidth": 0.5, "shrinkA": 0, "shrinkB": 4} if far_off else None)
        ann.set_in_layout(False)


def figure_shift_vs_accuracy(points: Sequence[Mapping[str, Any]], *, kinds: Sequence[str] = ("vision", "question", "joint"), title: str = ""):
    """``points``: dicts with ``label`` (method), ``split``, ``role``, ``shift`` ({kind: mean}) and ``accuracy``.

    Returns ``(figure, {kind: pearson r})``; the correlation is over all points with both values.
    """
    usable = [p for p in points if p.get("accuracy") is not None]
    kinds = [k for k in kinds if any(k in p.get("shift", {}) for p in usable)]
    if not usable or not kinds:
        raise ValueError("no split has both a shift and an accuracy")
    labels = list(dict.fromkeys(p["label"] for p in usable))
    method_colors = _split_colors(labels)
    fig, axes = _new_figure(len(kinds), width=4.8, height=4.0)
    correlations: dict[str, float] = {}
    handles: dict[str, Any] = {}
    to_label: list[tuple[Any, np.ndarray, np.ndarray, list[str]]] = []
    for ax, kind in zip(axes[0], kinds):
        pts = [p for p in usable if kind in p["shift"] and math.isfinite(p["shift"][kind])]
        x = np.array([p["shift"][kind] for p in pts])
        y = np.array([p["accuracy"] for p in pts])
        r = pearson(x, y)
        correlations[kind] = r
        for role, marker in ROLE_MARKERS.items():
            sel = [i for i, p in enumerate(pts) if p.get("role") == role]
            if not sel:
                continue
            role_name = "ID" if role == "id" else f"{role} OOD"
            if len(labels) == 1:  # one method: colour by role
                h = ax.scatter(x[sel], y[sel], marker=marker, s=46, color=ROLE_COLORS[role], edgecolor="black", linewidth=0.5, zorder=3)
            else:  # several methods: colour by method, marker by role
                ax.scatter(x[sel], y[sel], marker=marker, s=46, color=[method_colors[pts[i]["label"]] for i in sel],
                           edgecolor="black", linewidth=0.5, zorder=3)
                h = ax.scatter([], [], marker=marker, s=46, color="lightgrey", edgecolor="black", linewidth=0.5)
            handles.setdefault(role_name, h)
        if len(labels) > 1:
            for lab in labels:
                handles.setdefault(lab, ax.scatter([], [], marker="o", s=46, color=method_colors[lab]))
        if x.size >= 2 and np.ptp(x) > 0:
            slope, icpt = np.polyfit(x, y, 1)
            xs = np.linspace(x.min(), x.max(), 2)
            ax.plot(xs, slope * xs + icpt, color="grey", linewidth=1, linestyle=":", zorder=2)
        r_text = "n/a" if not math.isfinite(r) else f"{r:.2f}"
        ax.set_title(f"{KIND_LABELS.get(kind, kind)} shift · Pearson r = {r_text} (n={x.size})", fontsize=10)
        ax.set_xlabel("mean negative Mahalanobis distance (higher = closer)", fontsize=9)
        ax.set_ylabel("VQA accuracy (%)")
        ax.grid(alpha=0.3)
        ax.margins(x=0.12, y=0.1)
        # name each split once, at its first point (with several methods the others share its colour-less name)
        seen: set[str] = set()
        keep = [i for i, p in enumerate(pts) if not (p["split"] in seen or seen.add(p["split"]))]
        to_label.append((ax, x[keep], y[keep], [pts[i]["split"] for i in keep]))
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=min(len(handles), 6), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    for ax, xs_, ys_, names in to_label:  # after the legend: label placement needs the final layout
        if len(names):
            _place_labels(ax, xs_, ys_, names)
    return fig, correlations


def figure_correlation_heatmaps(
    table: Mapping[str, Mapping[str, Mapping[str, float]]],
    *,
    pairs: Sequence[tuple[str, str]] = CORRELATION_PAIRS,
    splits: Optional[Sequence[str]] = None,
    title: str = "",
):
    """``table[method][split]["question-joint"]`` → one heatmap per pair (rows methods, columns splits)."""
    methods = list(table)
    if not methods:
        raise ValueError("no runs to plot")
    if splits is None:
        splits = list(dict.fromkeys(s for m in methods for s in table[m]))
    keys = [f"{a}-{b}" for a, b in pairs]
    # panels stacked, one per pair, sharing the split columns (as the paper's Fig. 6 (a), (b))
    fig, axes = _new_figure(1, width=max(5.0, 0.75 * len(splits) + 2.8), height=max(2.2, 0.4 * len(methods) + 1.7), nrows=len(keys))
    for idx, (ax, key) in enumerate(zip(axes[:, 0], keys)):
        M = np.full((len(methods), len(splits)), np.nan)
        for i, m in enumerate(methods):
            for j, s in enumerate(splits):
                v = table[m].get(s, {}).get(key)
                if v is not None:
                    M[i, j] = v
        im = ax.imshow(np.ma.masked_invalid(M), vmin=-1.0, vmax=1.0, cmap="RdBu_r", aspect="auto")
        for i in range(len(methods)):
            for j in range(len(splits)):
                if np.isfinite(M[i, j]):
                    ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if abs(M[i, j]) > 0.6 else "black")
        ax.set_xticks(range(len(splits)), splits, rotation=40, ha="right", fontsize=8)
        ax.set_yticks(range(len(methods)), methods, fontsize=8)
        a, b = key.split("-")
        ax.set_title(f"({chr(ord('a') + idx)}) {a}–{b} shift correlation")
        fig.colorbar(im, ax=ax, shrink=0.9, label="Pearson r\nover samples")
    if title:
        fig.suptitle(title)
    return fig


def save_figure(fig, stem: str | Path, formats: Sequence[str] = ("png", "svg"), *, dpi: int = 150) -> list[Path]:
    """Write ``stem.png`` / ``stem.svg``; returns the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        fmt = fmt.lower().lstrip(".")
        if fmt not in ("png", "svg", "pdf"):
            raise ValueError(f"unsupported figure format {fmt!r} (png, svg, pdf)")
        path = stem.with_name(stem.name + "." + fmt)
        fig.savefig(path, dpi=dpi, format=fmt)
        paths.append(path)
    return paths


# --- DiGraP's projection strength ω over training (paper Fig. 4 and 5) ----------------------------

def short_tensor_name(name: str) -> str:
    """A readable label for a parameter name: wrapper prefixes, ``.default`` and ``.weight`` dropped,
    the model family's language and vision parts as ``lm.`` and ``vis.``."""
    import re

    from ..models.families import shorten_parameter_name

    s = re.sub(r"^(base_model\.model\.)?(model\.)?", "", name)
    s = shorten_parameter_name(s.replace(".default", ""))
    s = s.replace("self_attn.", "").replace("encoder.", "")
    return re.sub(r"\.weight$", "", s)


def omega_columns(entries: Sequence[Mapping[str, Any]], *, max_columns: int = 12) -> list[tuple[str, Mapping[str, Any]]]:
    """The logged steps a per-layer figure shows: ``[(column label, entry)]``.

    With at least two whole epochs logged, the entry at the end of each epoch (the last one
    logged at or before it) and the final entry; otherwise up to ``max_columns`` evenly spaced
    entries, labelled by step.
    """
    if not entries:
        return []
    epochs = [e.get("epoch") for e in entries]
    if all(ep is not None for ep in epochs) and epochs[-1] >= 2:
        cols: list[tuple[str, Mapping[str, Any]]] = []
        whole = int(math.floor(epochs[-1] + 1e-9))
        j = 0
        for ep in range(1, whole + 1):
            while j + 1 < len(entries) and epochs[j + 1] <= ep + 1e-9:
                j += 1
            cols.append((f"{ep}", entries[j]))
        if epochs[-1] > whole + 1e-9:
            cols.append((f"{epochs[-1]:.2g}", entries[-1]))
        return cols
    idx = sorted(set(np.linspace(0, len(entries) - 1, min(max_columns, len(entries))).round().astype(int).tolist()))
    return [(str(int(entries[i]["step"])), entries[i]) for i in idx]


def figure_omega_mean(series: Mapping[str, Sequence[Mapping[str, Any]]], *, title: str = ""):
    """Paper Fig. 4: the mean ω over all projected tensors against the training step, one line per run.

    ``series``: ``{label: omega log entries}`` (see :func:`vqa_ood_bench.methods.omega_log.read_omega_log`).
    The band shows the range (min–max) over tensors of the first run.
    """
    fig, axes = _new_figure(1, width=6.4, height=3.8)
    ax = axes[0, 0]
    colors = _split_colors(list(series))
    for i, (label, entries) in enumerate(series.items()):
        steps = np.array([e["step"] for e in entries], dtype=float)
        mean = np.array([e["mean"] for e in entries], dtype=float)
        ax.plot(steps, mean, color=colors[label], lw=1.8, label=label, marker="o" if len(steps) <= 30 else None, ms=3)
        if i == 0 and entries and entries[0]["omega"]:
            values = np.array([list(e["omega"].values()) for e in entries], dtype=float)
            ax.fill_between(steps, values.min(1), values.max(1), color=colors[label], alpha=0.15, lw=0, label=f"{label}: min–max over tensors")
    ax.set_xlabel("training step")
    ax.set_ylabel("projection strength ω (mean over tensors)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title or "DiGraP: mean projection strength over training")
    return fig


def figure_omega_layers(entries: Sequence[Mapping[str, Any]], *, title: str = "", max_columns: int = 12):
    """Paper Fig. 5: ω of every projected tensor (rows, in the model's order) over epochs (columns)."""
    from matplotlib import colormaps

    cols = omega_columns(entries, max_columns=max_columns)
    if not cols:
        raise ValueError("no omega entries to draw")
    names = list(cols[-1][1]["omega"])
    M = np.array([[entry["omega"].get(n, np.nan) for _, entry in cols] for n in names], dtype=float)
    height = min(14.0, 1.6 + 0.16 * len(names))
    fig, axes = _new_figure(1, width=max(5.5, 2.8 + 0.45 * len(cols)), height=height)
    ax = axes[0, 0]
    im = ax.imshow(M, aspect="auto", cmap=colormaps["viridis"], vmin=0.0, vmax=1.0, interpolation="nearest")
    by_epoch = cols[0][1].get("epoch") is not None and (cols[-1][1].get("epoch") or 0) >= 2
    ax.set_xticks(range(len(cols)), [c for c, _ in cols], fontsize=8)
    ax.set_xlabel("epoch" if by_epoch else "training step")
    step = max(1, len(names) // 60)  # at most ~60 row labels stay legible
    ax.set_yticks(range(0, len(names), step), [short_tensor_name(n) for n in names[::step]], fontsize=6 if len(names) > 30 else 7)
    fig.colorbar(im, ax=ax, shrink=0.8, label="projection strength ω")
    ax.set_title(title or "DiGraP: projection strength per tensor")
    return fig


__all__ += ["figure_omega_layers", "figure_omega_mean", "omega_columns", "short_tensor_name"]
