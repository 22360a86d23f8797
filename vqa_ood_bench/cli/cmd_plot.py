"""``vqa-ood-bench plot shift``: shift figures from run folders (after ``vqa-ood-bench shift``).

    vqa-ood-bench plot shift RUN [RUN ...] [--out DIR] [--formats png,svg] [--json]

Writes, as PNG and SVG:

* ``shift_hist_<run>``: histograms of the per-sample scores, a row per split and a column per
  feature kind, each drawn over the ID test split's (paper App. 7.3.2);
* ``shift_vs_accuracy``: each split's mean shift against its VQA accuracy (all runs), with the
  Pearson correlation per kind;
* ``shift_correlation_heatmap``: per run (row) and split (column), the correlation over samples
  of question–joint and vision–joint scores (paper Fig. 6).

A folder written by ``shift MODEL --out DIR`` (no results.json) gives histograms and heatmaps
but no accuracy scatter. ``--json`` prints the files written and the correlations.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..errors import ConfigError, DataError
from .app import plot_app
from .options import JsonOpt

RunsArg = Annotated[list[Path], typer.Argument(help="Run folders holding shift/shift.json (and results.json for accuracies).")]
PlotOutOpt = Annotated[Optional[Path], typer.Option("--out", help="Folder for the figures (default: RUN/plots for one run, ./plots for several).")]
FormatsOpt = Annotated[str, typer.Option("--formats", help="Comma-separated figure formats: png, svg, pdf.")]
BinsOpt = Annotated[int, typer.Option("--bins", help="Histogram bins.", min=2)]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "run"


def _load_run(folder: Path) -> dict[str, Any]:
    from ..report.schema import read_results
    from ..shift.measure import load_shift_dir

    if not (folder / "shift" / "shift.json").is_file():
        raise DataError("no shift scores here; run `vqa-ood-bench shift` on it first", path=folder / "shift" / "shift.json")
    summary, per_split = load_shift_dir(folder)
    results = read_results(folder / "results.json") if (folder / "results.json").is_file() else None
    return {"folder": folder, "summary": summary, "per_split": per_split, "results": results}


def _finite(obj: Any) -> Any:
    """NaN / inf (undefined correlations) as null, so --json prints valid JSON."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _labels(runs: list[dict[str, Any]]) -> list[str]:
    base = [r["results"].method if r["results"] is not None else r["folder"].name for r in runs]
    out = []
    for r, b in zip(runs, base):
        out.append(b if base.count(b) == 1 else f"{b} ({r['folder'].name})")
    return out


@plot_app.command("shift")
def plot_shift(
    runs: RunsArg,
    out: PlotOutOpt = None,
    formats: FormatsOpt = "png,svg",
    bins: BinsOpt = 40,
    as_json: JsonOpt = False,
) -> None:
    """Histograms, shift-vs-accuracy scatter and uni-modal/joint correlation heatmaps."""
    from ..report.plots import (
        figure_correlation_heatmaps,
        figure_shift_histograms,
        figure_shift_vs_accuracy,
        save_figure,
        shift_correlations,
    )

    fmts = [f.strip().lower() for f in formats.split(",") if f.strip()]
    bad = [f for f in fmts if f not in ("png", "svg", "pdf")]
    if bad or not fmts:
        raise ConfigError(f"--formats must list png, svg or pdf, got {formats!r}")
    for folder in runs:
        if not folder.is_dir():
            raise ConfigError(f"{str(folder)!r} is not a folder")
    loaded = [_load_run(f) for f in runs]
    labels = _labels(loaded)
    out_dir = out or (runs[0] / "plots" if len(runs) == 1 else Path("plots"))

    written: list[str] = []
    kinds_all: list[str] = []
    points: list[dict[str, Any]] = []
    heat: dict[str, dict[str, dict[str, float]]] = {}
    for run, label in zip(loaded, labels):
        summary, per_split = run["summary"], run["per_split"]
        kinds = summary.get("kinds", ["vision", "question", "joint"])
        kinds_all += [k for k in kinds if k not in kinds_all]
        roles = {name: info.get("role", "") for name, info in summary["splits"].items()}
        scores = {name: {k: v for k, v in arrays.items() if k != "question_ids"} for name, arrays in per_split.items()}
        fig = figure_shift_histograms(scores, kinds=kinds, roles=roles, bins=bins,
                                      title=f"{label}: per-sample shift vs {summary.get('train_split', 'train')} · encoder {summary.get('model', '')}")
        written += [str(p) for p in save_figure(fig, out_dir / f"shift_hist_{_safe(label)}", fmts)]
        heat[label] = shift_correlations(scores)
        results = run["results"]
        for name, info in summary["splits"].items():
            acc = None
            if results is not None and name in results.splits:
                acc = results.splits[name].vqa_accuracy
            points.append({"label": label, "split": name, "role": info.get("role", ""), "shift": info.get("shift", {}), "accuracy": acc})

    correlations: dict[str, float] = {}
    if any(p["accuracy"] is not None for p in points):
        fig, correlations = figure_shift_vs_accuracy(points, kinds=kinds_all, title="Larger shift (lower score) vs VQA accuracy")
        written += [str(p) for p in save_figure(fig, out_dir / "shift_vs_accuracy", fmts)]
    elif not as_json:
        typer.echo("no VQA accuracies in these folders: the shift-vs-accuracy scatter is skipped", err=True)

    splits_order = list(dict.fromkeys(name for run in loaded for name in run["summary"]["splits"]))
    if any("joint" in k for k in kinds_all):
        fig = figure_correlation_heatmaps(heat, splits=splits_order, title="Correlation between uni-modal and joint shifts per dataset")
        written += [str(p) for p in save_figure(fig, out_dir / "shift_correlation_heatmap", fmts)]

    if as_json:
        payload = {"files": written, "shift_accuracy_pearson": correlations, "unimodal_joint_correlation": heat}
        typer.echo(json.dumps(_finite(payload), indent=2))
        return
    for path in written:
        typer.echo(path)
    for kind, r in correlations.items():
        typer.echo(f"shift vs accuracy, {kind}: Pearson r = {r:.3f}")


@plot_app.command("omega")
def plot_omega(
    runs: Annotated[list[Path], typer.Argument(help="DiGraP run folders (holding omega.jsonl).")],
    out: PlotOutOpt = None,
    formats: FormatsOpt = "png,svg",
    as_json: JsonOpt = False,
) -> None:
    """DiGraP's projection strength ω: mean over steps (paper Fig. 4) and per tensor over epochs (Fig. 5)."""
    from ..methods.omega_log import read_omega_log
    from ..report.plots import figure_omega_layers, figure_omega_mean, save_figure

    fmts = [f.strip().lower() for f in formats.split(",") if f.strip()]
    if not fmts or any(f not in ("png", "svg", "pdf") for f in fmts):
        raise ConfigError(f"--formats must list png, svg or pdf, got {formats!r}")
    for folder in runs:
        if not folder.is_dir():
            raise ConfigError(f"{str(folder)!r} is not a folder")
    logs = {}
    for folder in runs:
        label = folder.name if folder.name not in logs else str(folder)
        logs[label] = read_omega_log(folder)
    out_dir = out or (runs[0] / "plots" if len(runs) == 1 else Path("plots"))
    written = [str(p) for p in save_figure(figure_omega_mean(logs), out_dir / "omega_mean", fmts)]
    for label, entries in logs.items():
        stem = "omega_layers" if len(logs) == 1 else f"omega_layers_{_safe(label)}"
        written += [str(p) for p in save_figure(figure_omega_layers(entries, title=f"{label}: projection strength per tensor"), out_dir / stem, fmts)]
    final = {label: {"steps": len(e), "last_step": e[-1]["step"], "final_mean_omega": e[-1]["mean"]} for label, e in logs.items()}
    if as_json:
        typer.echo(json.dumps({"files": written, "runs": final}, indent=2))
        return
    for path in written:
        typer.echo(path)
    for label, info in final.items():
        typer.echo(f"{label}: mean ω at step {info['last_step']} = {info['final_mean_omega']:.3f}")
