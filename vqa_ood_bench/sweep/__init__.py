"""Sweeps: a grid of runs (methods x adapters x method parameters x seeds), one run folder per
cell, run locally, on Ray or through submitit (Slurm), summarised over seeds.

    from vqa_ood_bench.sweep import SweepSpec, MethodGrid, run_sweep
    spec = SweepSpec(methods=[MethodGrid(method="digrap", grid={"mu": [0.01, 0.1, 0.5, 1, 100]})],
                     seeds=[0, 1, 2])
    summary = run_sweep(spec, "runs/mu-sweep")          # finished cells are skipped on restart

The folder holds ``sweep-spec.json`` (the grid last run), one run folder per cell
(``digrap-lora-mu=0.5-s0/``), ``logs/`` (each cell's output), ``summary.json`` and
``sensitivity-*.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import BenchError, ConfigError
from .backends import BACKENDS, Job, Outcome, run_jobs
from .grid import SPEC_FILE, Cell, MethodGrid, SweepSpec, cell_command, expand, finished, load_spec
from .summary import plot_curves, settings_table, summarize

__all__ = ["BACKENDS", "Cell", "MethodGrid", "SweepFailed", "SweepSpec", "load_spec", "run_sweep", "settings_table", "sweep_status"]

SUMMARY_FILE = "summary.json"
LOCK_FILE = ".sweep.lock"


class SweepFailed(BenchError):
    """Some cells failed; the others finished and are summarised."""


def sweep_status(spec: SweepSpec, out: str | Path) -> list[tuple[Cell, bool]]:
    """Every cell of ``spec`` and whether its run folder under ``out`` holds finished results."""
    out = Path(out)
    return [(cell, finished(out / cell.folder, cell)) for cell in expand(spec)]


def run_sweep(
    spec: SweepSpec,
    out: str | Path,
    *,
    backend: str = "local",
    threads: int = 2,
    cpu_budget: Optional[int] = None,
    log: Callable[[str], None] = lambda s: None,
    ray_address: Optional[str] = None,
    submitit_cluster: str = "local",
    slurm: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Run every unfinished cell of ``spec`` into ``out``, then summarise all finished ones.

    ``threads``: CPU threads per cell (its ``run --cpu-threads``); ``cpu_budget``: CPUs this
    sweep may use at once on this machine (default: all), so ``cpu_budget // threads`` cells
    run side by side (local, submitit's local executor, a Ray instance started here).
    Raises :class:`SweepFailed` after summarising when a cell failed.
    """
    import os

    from filelock import FileLock, Timeout

    from ..io import atomic_write_json, ensure_writable_dir

    out = ensure_writable_dir(out)
    budget = cpu_budget if cpu_budget is not None else (os.cpu_count() or 1)
    lock = FileLock(str(out / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ConfigError(f"another sweep is running in {out}; wait for it or choose another folder") from None
    try:
        status = sweep_status(spec, out)
        atomic_write_json(out / SPEC_FILE, spec.model_dump(mode="json"))
        todo = [cell for cell, done in status if not done]
        log(f"{len(status)} cells: {len(status) - len(todo)} finished, {len(todo)} to run "
            f"({backend}, {threads} threads each, {max(1, budget // threads)} at a time)" if todo else f"{len(status)} cells, all finished")
        jobs = [Job(cell.folder, cell_command(spec, cell, (out / cell.folder).resolve(), threads=threads),
                    {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"},
                    str((out / "logs" / f"{cell.folder}.log").resolve()))
                for cell in todo]
        count = {"done": 0}

        def on_done(o: Outcome) -> None:
            count["done"] += 1
            state = "finished" if o.returncode == 0 else f"FAILED (exit {o.returncode}; log: {o.log})"
            log(f"[{count['done']}/{len(jobs)}] {o.name}: {state}")

        outcomes = run_jobs(jobs, backend, threads=threads, cpu_budget=budget, on_done=on_done, ray_address=ray_address,
                            submitit_folder=(out / "submitit").resolve(), submitit_cluster=submitit_cluster, slurm=slurm)
        summary = _summarize(spec, out)
        failed = [o for o in outcomes if o.returncode != 0]
        summary["failed"] = [{"cell": o.name, "returncode": o.returncode, "log": str(Path(o.log).relative_to(out.resolve()))}
                             for o in failed]
        atomic_write_json(out / SUMMARY_FILE, summary)
        plot_curves(summary, out)
    finally:
        lock.release()
    if failed:
        names = ", ".join(f"{o.name} (log: {o.log})" for o in failed)
        raise SweepFailed(f"{len(failed)} of {len(jobs)} cells failed: {names}; run the sweep again to retry them")
    return summary


def _summarize(spec: SweepSpec, out: Path) -> dict[str, Any]:
    from ..report.schema import read_results

    results = [(cell, read_results(out / cell.folder / "results.json")) for cell, done in sweep_status(spec, out) if done]
    return summarize(results)

