"""A finished sweep's numbers: every setting over its seeds, in the paper's table forms.

Per setting (method, adapter, parameters) and per number (each split's accuracy; the ID,
near-OOD, far-OOD and OOD averages): mean, sample standard deviation and Student-t interval
over seeds (:func:`..report.stats.seed_summary`). Where one parameter of a method varies and
the others stay fixed (the paper's mu sweep of Tab. 4 and 11), the settings also form a
sensitivity curve: ID and OOD average against the parameter, one plot per such parameter.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

from ..report.schema import RunResults
from ..report.stats import seed_summary
from .grid import Cell

AVERAGES = ("id", "near_ood", "far_ood", "ood")


def summarize(results: list[tuple[Cell, RunResults]], *, confidence: float = 0.95) -> dict[str, Any]:
    """``{"settings": {name: {method, adapter, params, seeds, averages: {...}, splits: {...}}},
    "curves": [...]}`` from the finished cells (cells without results are left out)."""
    by_setting: dict[str, list[tuple[Cell, RunResults]]] = defaultdict(list)
    for cell, res in results:
        by_setting[cell.setting].append((cell, res))
    settings: dict[str, Any] = {}
    for name, runs in by_setting.items():
        runs.sort(key=lambda cr: cr[0].seed)
        cell = runs[0][0]
        averages = {}
        for key in AVERAGES:
            values = [getattr(r.averages, key) for _, r in runs]
            if all(v is not None for v in values):
                averages[key] = seed_summary(values, confidence=confidence).to_json() | {"values": values}
        splits = {}
        for split in runs[0][1].splits:
            values = [r.splits[split].vqa_accuracy if split in r.splits else None for _, r in runs]
            if all(v is not None for v in values):
                splits[split] = seed_summary(values, confidence=confidence).to_json() | {"values": values}
        settings[name] = {"method": cell.method, "adapter": cell.adapter, "params": cell.params,
                          "seeds": [c.seed for c, _ in runs], "averages": averages, "splits": splits}
    return {"confidence": confidence, "settings": settings, "curves": curves(settings)}


def curves(settings: dict[str, Any]) -> list[dict[str, Any]]:
    """One curve per (method, adapter, numeric parameter) along which at least three settings
    differ in that parameter alone: ``{method, adapter, param, fixed, points: [{value, setting}]}``."""
    out = []
    groups: dict[tuple, list[tuple[Any, str]]] = defaultdict(list)
    for name, s in settings.items():
        for key, value in s["params"].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                rest = {k: v for k, v in s["params"].items() if k != key}
                groups[(s["method"], s["adapter"], key, json.dumps(rest, sort_keys=True))].append((value, name))
    for (method, adapter, key, rest), points in groups.items():
        if len({v for v, _ in points}) >= 3:
            points.sort()
            out.append({"method": method, "adapter": adapter, "param": key, "fixed": json.loads(rest),
                        "points": [{"value": v, "setting": n} for v, n in points]})
    return out


def fmt(summary: Optional[dict[str, Any]]) -> str:
    """``45.23 ± 0.41`` (mean ± sample std over seeds), ``45.23`` for one seed, ``—`` for none."""
    if not summary:
        return "—"
    if summary["std"] is None:
        return f"{summary['mean']:.2f}"
    return f"{summary['mean']:.2f} ± {summary['std']:.2f}"


def settings_table(summary: dict[str, Any], *, title: str = "sweep: mean ± std over seeds"):
    """A rich table: one row per setting, the averages as columns (the paper's Tab. 4/5 form)."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("method", "adapter", "parameters", "seeds", "ID", "near OOD", "far OOD", "OOD avg", f"OOD {int(summary['confidence'] * 100)}% CI"):
        table.add_column(col, justify="left" if col in ("method", "adapter", "parameters") else "right")
    for s in summary["settings"].values():
        avg = s["averages"]
        ood = avg.get("ood")
        ci = "—" if not ood or ood["interval"] is None else f"[{ood['interval'][0]:.2f}, {ood['interval'][1]:.2f}]"
        params = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(s["params"].items())) or "(defaults)"
        table.add_row(s["method"], s["adapter"], params, str(len(s["seeds"])), fmt(avg.get("id")), fmt(avg.get("near_ood")),
                      fmt(avg.get("far_ood")), fmt(ood), ci)
    return table


def plot_curves(summary: dict[str, Any], out_dir: Path) -> list[Path]:
    """One sensitivity plot per curve: ID and OOD average (mean ± std over seeds) against the
    parameter, log-scaled where the values span two decades or more. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_write_bytes

    written = []
    for curve in summary["curves"]:
        xs = [p["value"] for p in curve["points"]]
        fig, ax = plt.subplots(figsize=(5, 3.4))
        for key, label in (("id", "ID"), ("ood", "OOD avg")):
            pts = [(x, summary["settings"][p["setting"]]["averages"].get(key)) for x, p in zip(xs, curve["points"])]
            pts = [(x, s) for x, s in pts if s]
            if pts:
                ax.errorbar([x for x, _ in pts], [s["mean"] for _, s in pts], yerr=[s["std"] or 0.0 for _, s in pts],
                            marker="o", capsize=3, label=label)
        if min(xs) > 0 and max(xs) / min(xs) >= 100:
            ax.set_xscale("log")
        fixed = ", ".join(f"{k}={v}" for k, v in curve["fixed"].items())
        ax.set_xlabel(curve["param"])
        ax.set_ylabel("VQA accuracy (%)")
        ax.set_title(f"{curve['method']} ({curve['adapter']}{', ' + fixed if fixed else ''})", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        import io

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120)
        plt.close(fig)
        name = f"sensitivity-{curve['method']}-{curve['adapter']}-{curve['param']}.png"
        written.append(atomic_write_bytes(out_dir / name, buf.getvalue()))
    return written
