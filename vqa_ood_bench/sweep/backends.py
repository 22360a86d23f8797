"""Where a sweep's cells run: local processes, a Ray cluster, or Slurm through submitit.

Every backend runs the same thing, the cell's ``vqa-ood-bench run`` command line in a fresh
process with its CPU threads fixed, so a cell's numbers do not depend on the backend. The
backends only place and schedule those processes; none of them is ours:

* ``local``: at most ``cpu_budget // threads`` cells at a time on this machine (a thread pool
  that waits on child processes; two trainings on the same cores run several times slower).
* ``ray``: one Ray task per cell asking for ``threads`` CPUs, on the cluster at ``address``
  (``ray start --head`` on a cluster) or, without one, on a Ray instance started here with
  ``cpu_budget`` CPUs. Ray's scheduler keeps the budget.
* ``submitit``: one job per cell. On Slurm (``cluster="slurm"``) every cell is submitted at
  once and Slurm schedules them; submitit's local executor (``cluster="local"``, for a
  workstation and the tests) runs them in waves that fit the budget.

A cell that fails does not stop the others; the sweep reports every failure with its log file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..errors import ConfigError

BACKENDS = ("local", "ray", "submitit")


@dataclass(frozen=True)
class Job:
    """One cell to run: its name, command line, environment additions and log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: str


@dataclass(frozen=True)
class Outcome:
    name: str
    returncode: int
    log: str


# Cells running in this process (local backend): an interrupted sweep stops them itself, since
# its worker threads sit in wait() and never see the KeyboardInterrupt.
_running: set[subprocess.Popen] = set()
_running_lock = threading.Lock()


def run_job(job: Job) -> Outcome:
    """Run one cell's command, its stdout and stderr into its log file (in the calling
    process's working directory, with the calling environment plus ``job.env``)."""
    Path(job.log).parent.mkdir(parents=True, exist_ok=True)
    with open(job.log, "ab") as log:
        # its own session: stopping the cell stops the processes it started (torchrun workers)
        proc = subprocess.Popen(job.argv, env={**os.environ, **job.env}, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        with _running_lock:
            _running.add(proc)
        try:
            code = proc.wait()
        except BaseException:
            # interrupted here (a Ray or submitit worker being cancelled): no orphan may keep
            # training and holding the run folder's lock
            _kill_group(proc)
            raise
        finally:
            with _running_lock:
                _running.discard(proc)
    return Outcome(job.name, code, job.log)


def stop_running() -> None:
    """Stop every cell this process is running (and what each started)."""
    with _running_lock:
        procs = list(_running)
    for proc in procs:
        _kill_group(proc)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, PermissionError):
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_jobs(
    jobs: Sequence[Job],
    backend: str,
    *,
    threads: int,
    cpu_budget: int,
    on_done: Callable[[Outcome], None] = lambda o: None,
    ray_address: Optional[str] = None,
    submitit_folder: Optional[Path] = None,
    submitit_cluster: str = "local",
    slurm: Optional[dict[str, Any]] = None,
) -> list[Outcome]:
    """Run ``jobs`` on ``backend``; ``on_done`` is called as each finishes (in this process)."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown sweep backend {backend!r}; known: {', '.join(BACKENDS)}")
    if threads < 1 or cpu_budget < threads:
        raise ConfigError(f"the CPU budget ({cpu_budget}) must hold at least one cell's threads ({threads})")
    if not jobs:
        return []
    if backend == "local":
        return _run_local(jobs, cpu_budget // threads, on_done)
    if backend == "ray":
        return _run_ray(jobs, threads=threads, cpu_budget=cpu_budget, address=ray_address, on_done=on_done)
    if submitit_folder is None:
        raise ConfigError("the submitit backend needs a folder for its job files")
    return _run_submitit(jobs, threads=threads, cpu_budget=cpu_budget, folder=submitit_folder,
                         cluster=submitit_cluster, slurm=slurm or {}, on_done=on_done)


def _run_local(jobs: Sequence[Job], workers: int, on_done: Callable[[Outcome], None]) -> list[Outcome]:
    outcomes: list[Outcome] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(run_job, job) for job in jobs]
        try:
            for fut in futures:
                outcome = fut.result()
                on_done(outcome)
                outcomes.append(outcome)
        except BaseException:
            for fut in futures:
                fut.cancel()  # cells not started yet never start
            stop_running()  # the running ones stop, so leaving the pool does not wait for them
            raise
    return outcomes


def _run_ray(jobs: Sequence[Job], *, threads: int, cpu_budget: int, address: Optional[str],
             on_done: Callable[[Outcome], None]) -> list[Outcome]:
    try:
        import ray
    except ImportError:
        raise ConfigError("the ray backend needs Ray: pip install 'vqa-ood-bench[sweep]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        init: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address:
            ray.init(address=address, **init)
        else:
            ray.init(num_cpus=cpu_budget, **init)
    try:
        task = ray.remote(num_cpus=threads, max_retries=0)(_ray_cell)
        cwd = os.getcwd()
        pending = {task.remote(job, cwd): job for job in jobs}
        outcomes: list[Outcome] = []
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    job = pending.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except ray.exceptions.RayError as exc:  # the worker died: the cell failed
                        _append(job.log, f"ray: {type(exc).__name__}: {exc}\n")
                        outcome = Outcome(job.name, -1, job.log)
                    on_done(outcome)
                    outcomes.append(outcome)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return outcomes
    finally:
        if started_here:
            ray.shutdown()


def _ray_cell(job: Job, cwd: str) -> Outcome:
    os.chdir(cwd)
    return run_job(job)


def _run_submitit(jobs: Sequence[Job], *, threads: int, cpu_budget: int, folder: Path, cluster: str,
                  slurm: dict[str, Any], on_done: Callable[[Outcome], None]) -> list[Outcome]:
    try:
        import submitit
    except ImportError:
        raise ConfigError("the submitit backend needs submitit: pip install 'vqa-ood-bench[sweep]'") from None
    if cluster not in ("local", "slurm"):
        raise ConfigError(f"submitit cluster must be local or slurm, got {cluster!r}")
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    params: dict[str, Any] = {"cpus_per_task": threads, "timeout_min": int(slurm.pop("timeout_min", 24 * 60))}
    if cluster == "slurm":
        params.update({f"slurm_{k}": v for k, v in slurm.items()})
    executor.update_parameters(**params)
    # Slurm schedules every submitted job against its own resources; the local executor starts
    # whatever it is given at once, so it gets waves that fit the budget.
    wave = len(jobs) if cluster == "slurm" else max(1, cpu_budget // threads)
    cwd = os.getcwd()
    outcomes: list[Outcome] = []
    for start in range(0, len(jobs), wave):
        batch = list(jobs[start : start + wave])
        submitted = [(job, executor.submit(_ray_cell, job, cwd)) for job in batch]
        try:
            for job, handle in submitted:
                try:
                    outcome = handle.result()
                except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as exc:
                    _append(job.log, f"submitit: {exc}\n")
                    outcome = Outcome(job.name, -1, job.log)
                on_done(outcome)
                outcomes.append(outcome)
        except BaseException:
            for _, handle in submitted:
                handle.cancel(check=False)
            raise
    return outcomes


def _append(path: str, text: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(text)
