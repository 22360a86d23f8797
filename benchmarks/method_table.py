"""The README's method table: every method over its seeds, against its vanilla baseline.

    .venv/bin/python benchmarks/method_table.py \
        --row "zero-shot" runs/zeroshot \
        --row "vanilla LoRA" "runs/methods/vanilla-lora-s*" \
        --row "DiGraP (LoRA)" "runs/sweep-digrap/digrap-lora-mu=0.5-s*" --vs "vanilla LoRA" \
        ... [--json table.json]

A row is a label and a glob of run folders (one method, one run per seed). Each cell is the
mean ± sample standard deviation over the row's seeds. ``--vs LABEL`` after a row compares it
with an earlier row by :func:`vqa_ood_bench.report.compare.compare_groups` (runs paired by seed,
the same questions; seeds and questions both random): the last column is the OOD-average
difference with its 95% interval, and a ``*`` marks the ID and OOD cells whose difference from
the baseline has p < 0.05. The table is printed as Markdown; ``--json`` keeps everything.
"""

from __future__ import annotations

import glob
import json
import sys
from pathlib import Path
from typing import Any

from vqa_ood_bench.io import atomic_write_text
from vqa_ood_bench.report.compare import compare_groups
from vqa_ood_bench.report.schema import RunResults
from vqa_ood_bench.report.stats import seed_summary

COLUMNS = (("id", "ID"), ("near_ood", "near-OOD"), ("far_ood", "far-OOD"), ("ood", "OOD"))


def parse_rows(argv: list[str]) -> list[dict[str, Any]]:
    """``--row LABEL GLOB [--vs LABEL]`` ... in order (``--vs`` belongs to the row before it)."""
    rows: list[dict[str, Any]] = []
    i = 0
    while i < len(argv):
        if argv[i] == "--row" and i + 2 < len(argv) + 1:
            rows.append({"label": argv[i + 1], "glob": argv[i + 2], "vs": None})
            i += 3
        elif argv[i] == "--vs" and rows:
            rows[-1]["vs"] = argv[i + 1]
            i += 2
        else:
            raise SystemExit(f"unexpected argument {argv[i]!r}: expected --row LABEL GLOB [--vs LABEL]")
    return rows


def runs_of(pattern: str) -> list[Path]:
    paths = sorted(Path(p) for p in glob.glob(pattern) if (Path(p) / "results.json").is_file())
    if not paths:
        raise SystemExit(f"no finished run matches {pattern!r}")
    return paths


def cell(values: list[float], marked: bool) -> str:
    s = seed_summary(values)
    text = f"{s.mean:.1f}" if s.std is None else f"{s.mean:.1f} ± {s.std:.1f}"
    return text + ("*" if marked else "")


def build(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_label: dict[str, dict[str, Any]] = {}
    for row in rows:
        paths = runs_of(row["glob"])
        results = [RunResults.model_validate_json((p / "results.json").read_text()) for p in paths]
        row["paths"] = [str(p) for p in paths]
        row["seeds"] = sorted(r.seed for r in results)
        row["values"] = {key: [getattr(r.averages, key) for r in results] for key, _ in COLUMNS}
        row["comparison"] = None
        if row["vs"] is not None:
            if row["vs"] not in by_label:
                raise SystemExit(f"--vs {row['vs']!r}: no earlier row has that label")
            base = by_label[row["vs"]]
            row["comparison"] = compare_groups([Path(p) for p in base["paths"]], [Path(p) for p in paths])
        by_label[row["label"]] = row
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    head = "| method | seeds | " + " | ".join(name for _, name in COLUMNS) + " | Δ OOD vs baseline (95% CI) |"
    lines = [head, "|---|---:|" + "---:|" * len(COLUMNS) + "---|"]
    for row in rows:
        comp = row["comparison"]
        marks = {key: bool(comp and key in comp["averages"] and comp["averages"][key]["significant"])
                 for key in ("id", "ood")}
        cells = [cell(row["values"][key], marks.get(key, False)) for key, _ in COLUMNS]
        delta = ""
        if comp is not None:
            d = comp["averages"]["ood"]
            lo, hi = d["interval"]
            delta = f"{d['difference']:+.1f} [{lo:+.1f}, {hi:+.1f}] vs {row['vs']}"
        lines.append(f"| {row['label']} | {len(row['seeds'])} | " + " | ".join(cells) + f" | {delta} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    out = None
    if "--json" in argv:
        k = argv.index("--json")
        out = Path(argv[k + 1])
        argv = argv[:k] + argv[k + 2:]
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    rows = build(parse_rows(argv))
    print(markdown(rows))
    if out is not None:
        atomic_write_text(out, json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main(sys.argv[1:])
