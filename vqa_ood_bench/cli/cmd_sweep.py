"""``vqa-ood-bench sweep``: a grid of runs, one folder per cell, resumable, summarised over seeds."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..errors import ConfigError
from .app import app
from .options import JsonOpt, parse_key_values


@app.command("sweep")
def sweep(
    out: Annotated[Path, typer.Option("--out", help="Sweep folder: one run folder per cell, logs/, summary.json, plots.")],
    spec_file: Annotated[Optional[Path], typer.Option("--spec", help="YAML/JSON sweep specification (methods with grids, adapters, seeds, run options); the options below build one instead.")] = None,
    method: Annotated[Optional[list[str]], typer.Option("--method", help="Method to sweep (repeatable).")] = None,
    grid: Annotated[Optional[list[str]], typer.Option("--grid", help="Method parameter and its values, KEY=V1,V2,... (repeatable; values read as JSON: 0.5, null, true), e.g. --grid mu=0.01,0.1,0.5,1,100. Applies to every --method.")] = None,
    param: Annotated[Optional[list[str]], typer.Option("--param", help="Fixed method parameter KEY=VALUE for every cell (repeatable).")] = None,
    adapter: Annotated[Optional[list[str]], typer.Option("--adapter", help="lora and/or full (repeatable; default lora).")] = None,
    seeds: Annotated[str, typer.Option("--seeds", help="Comma-separated seeds, e.g. 0,1,2.")] = "0",
    config: Annotated[Optional[str], typer.Option("--config", help="Run config file or packaged config name for every cell.")] = None,
    suite: Annotated[Optional[str], typer.Option("--suite", help="Benchmark suite of every cell.")] = None,
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help="Released dataset files (real suites).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="At most N records per split (smoke sweeps).")] = None,
    epochs: Annotated[Optional[float], typer.Option("--epochs", help="Training epochs of every cell.")] = None,
    backend: Annotated[str, typer.Option("--backend", help="local (processes on this machine), ray, or submitit (Slurm, or its local executor).")] = "local",
    threads: Annotated[int, typer.Option("--threads", min=1, help="CPU threads per cell (its run --cpu-threads).")] = 2,
    cpu_budget: Annotated[Optional[int], typer.Option("--cpu-budget", min=1, help="CPUs the sweep may use at once on this machine (default: all); cells run budget // threads at a time.")] = None,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="Ray cluster to join (e.g. 'auto'); default: start a local Ray instance.")] = None,
    cluster: Annotated[str, typer.Option("--submitit-cluster", help="submitit executor: slurm or local.")] = "local",
    slurm: Annotated[Optional[list[str]], typer.Option("--slurm", help="Slurm option KEY=VALUE for submitit (repeatable), e.g. --slurm partition=gpu --slurm timeout_min=240 --slurm gpus_per_node=1.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the cells and which are finished; run nothing.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run a grid of methods x parameters x seeds (finished cells are skipped), then print and write the summary."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from rich.console import Console

    from ..sweep import SweepFailed, load_spec, run_sweep, sweep_status
    from ..sweep.grid import validate_spec

    if spec_file is not None:
        given = [name for name, v in (("--method", method), ("--grid", grid), ("--param", param), ("--adapter", adapter)) if v]
        if given:
            raise ConfigError(f"--spec gives the grid; {', '.join(given)} cannot be combined with it")
        spec = load_spec(spec_file)
    else:
        if not method:
            raise ConfigError("give --method (repeatable) with optional --grid KEY=V1,V2,..., or a --spec file")
        spec = validate_spec(
            {
                "methods": [{"method": m, "params": parse_key_values(param or [], "--param", "mu=0.5"),
                             "grid": parse_grid(grid or [])} for m in method],
                "adapters": adapter or ["lora"], "seeds": parse_seeds(seeds), "config": config, "suite": suite,
                "data_root": str(data_root) if data_root else None, "limit": limit, "epochs": epochs,
            },
            where="sweep options",
        )
    err = Console(stderr=True)
    log = (lambda s: None) if as_json else (lambda s: err.print(f"[dim]{s}[/dim]"))
    if dry_run:
        status = sweep_status(spec, out)
        if as_json:
            typer.echo(json.dumps([{"cell": c.folder, "finished": done} for c, done in status], indent=2))
        else:
            for cell, done in status:
                typer.echo(f"{'finished' if done else 'to run  '}  {out / cell.folder}")
        return
    slurm_opts = parse_key_values(slurm or [], "--slurm", "partition=gpu")
    # `kill` (a scheduler's cancel, a closed session) stops the running cells as Ctrl-C does,
    # instead of leaving them to train on, holding their run folders
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        summary = run_sweep(spec, out, backend=backend, threads=threads, cpu_budget=cpu_budget, log=log,
                            ray_address=ray_address, submitit_cluster=cluster, slurm=slurm_opts)
    except SweepFailed:
        _show(out, as_json)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    _show(out, as_json, summary)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _show(out: Path, as_json: bool, summary: Optional[dict[str, Any]] = None) -> None:
    from ..io import read_json
    from ..sweep import SUMMARY_FILE, settings_table

    path = out / SUMMARY_FILE
    if summary is None:
        if not path.is_file():
            return
        summary = read_json(path)
    if as_json:
        typer.echo(json.dumps({"out": str(out), **summary}, indent=2))
        return
    from .cmd_run import wide_console

    console = wide_console()
    console.print(settings_table(summary))
    plots = sorted(p.name for p in out.glob("sensitivity-*.png"))
    console.print(f"summary: {path}" + (f"  ·  plots: {', '.join(plots)}" if plots else ""))


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["mu=0.01,0.1", "omega=null,1.0"]`` -> ``{"mu": [0.01, 0.1], "omega": [None, 1.0]}``."""
    out: dict[str, list[Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or not raw.strip():
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,..., e.g. --grid mu=0.01,0.1,0.5")
        if key.strip() in out:
            raise ConfigError(f"--grid {key.strip()} given twice")
        values = []
        for part in raw.split(","):
            try:
                values.append(json.loads(part))
            except json.JSONDecodeError:
                values.append(part.strip())
        out[key.strip()] = values
    return out


def parse_seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
