"""Methods x seeds on the embedded suite: per-split mean and spread, for the release notes.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/embedded_seeds.py \
        --runs zeroshot:lora vanilla:lora vanilla:full --seeds 0 1 2 --out runs/seeds [--jobs 1] [--threads N]

A run is ``METHOD:ADAPTER`` or ``METHOD:ADAPTER:KEY=VALUE[,KEY=VALUE]`` (method parameters, as
``run --param``), e.g. ``digrap:full:omega=1.0``.

Each (method, adapter, seed) is an ordinary run folder under ``--out`` (resumed if present), so
an interrupted sweep picks up where it stopped. Prints a table of mean ± sample standard
deviation over seeds per split and average, and writes ``summary.json`` beside the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_run(spec: str) -> tuple[str, str, list[str]]:
    """``METHOD:ADAPTER[:K=V,K=V]`` → (method, adapter, ["K=V", ...])."""
    parts = spec.split(":", 2)
    if len(parts) < 2:
        raise SystemExit(f"--runs {spec!r}: expected METHOD:ADAPTER[:KEY=VALUE,...]")
    return parts[0], parts[1], [p for p in (parts[2].split(",") if len(parts) == 3 else []) if p]


def run_one(spec: str, seed: int, out: Path, threads: int) -> tuple[str, float]:
    method, adapter, params = parse_run(spec)
    suffix = "".join(f"-{p.replace('=', '')}" for p in params)
    folder = out / f"{method}-{adapter}{suffix}-s{seed}"
    if (folder / "results.json").is_file():
        return str(folder), 0.0
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-m", "vqa_ood_bench.cli", "run", "--method", method, "--adapter", adapter,
           *(a for p in params for a in ("--param", p)),
           "--seed", str(seed), "--cpu-threads", str(threads), "--out", str(folder), "--json"]
    t = time.perf_counter()
    proc = subprocess.run(cli, env=env, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cli)} failed:\n{proc.stderr[-2000:]}")
    return str(folder), time.perf_counter() - t


def summarize(folders: dict[str, list[Path]]) -> dict:
    summary: dict = {}
    for spec, runs in folders.items():
        results = [json.loads((f / "results.json").read_text()) for f in runs]
        columns: dict[str, list[float]] = {}
        for r in results:
            for split, s in r["splits"].items():
                columns.setdefault(split, []).append(s["vqa_accuracy"])
            for k, v in r["averages"].items():
                if v is not None:
                    columns.setdefault(f"avg:{k}", []).append(v)
        summary[spec] = {
            k: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "values": v}
            for k, v in columns.items()
        }
    return summary


def print_table(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    keys = list(next(iter(summary.values())))
    table = Table(title="embedded suite, VQA accuracy (mean ± std over seeds)")
    table.add_column("split")
    for name in summary:
        table.add_column(name, justify="right")
    for k in keys:
        table.add_row(k, *(f"{summary[n][k]['mean']:.1f} ± {summary[n][k]['std']:.1f}" for n in summary))
    Console(width=200).print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", default=["zeroshot:lora", "vanilla:lora", "vanilla:full"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path("runs/seeds"))
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (each with 2/jobs threads)")
    ap.add_argument("--threads", type=int, default=None,
                    help="each run's --cpu-threads (default: cores / jobs); the published numbers use 2, "
                         "and another count changes them within float noise")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    threads = args.threads or max(1, (os.cpu_count() or 2) // args.jobs)
    for spec in args.runs:
        parse_run(spec)  # malformed specs refused before any run
    jobs = [(r, s) for r in args.runs for s in args.seeds]
    folders: dict[str, list[Path]] = {}
    with ThreadPoolExecutor(args.jobs) as pool:
        for (spec, s), (folder, secs) in zip(jobs, pool.map(lambda j: run_one(*j, args.out, threads), jobs)):
            folders.setdefault(spec, []).append(Path(folder))
            print(f"{spec} seed {s}: {folder} ({secs:.0f} s)", flush=True)
    summary = summarize(folders)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print_table(summary)


if __name__ == "__main__":
    main()
