"""vqa-ood-bench sweep: grid expansion, resume, summaries, and the local / submitit / Ray backends.

The fast tests run cells through a stand-in for ``vqa-ood-bench run`` (a small script that
writes a valid results file whose numbers are a known function of the cell), so they check the
sweep's own logic; the slow tests run real cells of the tiny model.
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

import vqa_ood_bench.sweep as sweep_mod
from vqa_ood_bench.errors import ConfigError, DataError
from vqa_ood_bench.report.schema import write_results
from vqa_ood_bench.sweep import MethodGrid, SweepFailed, SweepSpec, run_sweep, sweep_status
from vqa_ood_bench.sweep.grid import Cell, expand, finished
from vqa_ood_bench.sweep.summary import summarize

from fixtures.sweep_cells import results_for

ROOT = Path(__file__).resolve().parents[1]


FAKE_RUN = r'''
import json, sys, time
sys.path.insert(0, {tests!r})
from fixtures.sweep_cells import results_for
from vqa_ood_bench.report.schema import write_results
run_dir, method, seed, params, counter, fail, sleep = sys.argv[1:8]
with open(counter, "a") as fh:
    fh.write(run_dir + "\n")
time.sleep(float(sleep))
if fail != "-" and run_dir.endswith(fail):
    sys.exit(3)
import pathlib
pathlib.Path(run_dir).mkdir(parents=True, exist_ok=True)
write_results(results_for(method, json.loads(params), int(seed)), pathlib.Path(run_dir) / "results.json")
print("done")
'''


@pytest.fixture
def fake_cells(tmp_path, monkeypatch):
    """Replace each cell's ``vqa-ood-bench run`` by FAKE_RUN; returns the counter file (one line
    per cell started) and a setter for the cell that fails and the time each cell takes."""
    script = tmp_path / "fake_run.py"
    script.write_text(FAKE_RUN.format(tests=str(Path(__file__).parent)))
    counter = tmp_path / "started.txt"
    opts = {"fail": "-", "sleep": "0"}

    def command(spec, cell, run_dir, *, threads):
        return [sys.executable, str(script), str(run_dir), cell.method, str(cell.seed), json.dumps(cell.params),
                str(counter), opts["fail"], opts["sleep"]]

    monkeypatch.setattr(sweep_mod, "cell_command", command)

    def started() -> list[str]:
        return [Path(line).name for line in counter.read_text().splitlines()] if counter.exists() else []

    return started, opts


def mu_spec(seeds=(0, 1, 2), mus=(0.01, 0.5, 100)) -> SweepSpec:
    return SweepSpec(methods=[MethodGrid(method="digrap", grid={"mu": list(mus)})], seeds=list(seeds))


# --- grid -----------------------------------------------------------------------------------------

def test_grid_expands_methods_params_adapters_seeds_once_each() -> None:
    spec = SweepSpec(methods=[MethodGrid(method="digrap", grid={"mu": [0.1, 1], "omega": [None, 1.0]}),
                              MethodGrid(method="vanilla"), MethodGrid(method="vanilla")],
                     adapters=["lora", "full"], seeds=[0, 2])
    cells = expand(spec)
    # 2 x 2 digrap settings + 1 vanilla (named twice, run once), x 2 adapters x 2 seeds
    assert len(cells) == (4 + 1) * 2 * 2
    assert len({c.folder for c in cells}) == len(cells)
    assert "digrap-lora-mu=0.1-omega=null-s2" in {c.folder for c in cells}
    assert {c.seed for c in cells} == {0, 2}


@pytest.mark.parametrize("entry, adapters, message", [
    ({"method": "no-such"}, ["lora"], "unknown method"),
    ({"method": "digrap", "grid": {"bogus": [1]}}, ["lora"], "bogus"),
    ({"method": "digrap", "params": {"mu": 1}, "grid": {"mu": [0.1]}}, ["lora"], "both fixed and swept"),
])
def test_bad_grid_is_refused_before_anything_runs(tmp_path, fake_cells, entry, adapters, message) -> None:
    spec = SweepSpec.model_validate({"methods": [entry], "adapters": adapters})
    with pytest.raises(ConfigError, match=message):
        run_sweep(spec, tmp_path / "sw")
    assert not (tmp_path / "sw" / "logs").exists() and fake_cells[0]() == []


@pytest.mark.parametrize("obj", [{"methods": []}, {"methods": [{"method": "vanilla"}], "seeds": [0, 0]},
                                 {"methods": [{"method": "digrap", "grid": {"mu": [0.1, 0.1]}}]},
                                 {"methods": [{"method": "vanilla"}], "adapters": ["qlora"]}])
def test_bad_spec_values_are_refused(obj) -> None:
    with pytest.raises(Exception) as exc:
        SweepSpec.model_validate(obj)
    assert "validation error" in str(exc.value)


def test_a_folder_holding_another_run_is_an_error_not_a_finished_cell(tmp_path) -> None:
    cell = Cell(method="digrap", adapter="lora", params={"mu": 0.1}, seed=1)
    run_dir = tmp_path / cell.folder
    run_dir.mkdir()
    write_results(results_for("digrap", {"mu": 0.5}, 1), run_dir / "results.json")
    with pytest.raises(DataError, match="not of this cell"):
        finished(run_dir, cell)
    write_results(results_for("digrap", {"mu": 0.1}, 1), run_dir / "results.json")
    assert finished(run_dir, cell)


# --- summary --------------------------------------------------------------------------------------

def test_summary_is_mean_std_and_t_interval_over_seeds() -> None:
    pairs = [(Cell(method="digrap", adapter="lora", params={"mu": mu}, seed=s), results_for("digrap", {"mu": mu}, s))
             for mu in (0.01, 0.5, 100) for s in (0, 1, 2)]
    summary = summarize(pairs)
    s = summary["settings"]["digrap-lora-mu=0.5"]
    # OOD average per seed, by hand: mean of the three OOD splits
    lg = math.log10(0.5)
    ood = [statistics.fmean([40 + 5 * lg + seed, 30 + seed * 0.5, 20 + lg]) for seed in (0, 1, 2)]
    assert s["averages"]["ood"]["values"] == pytest.approx(ood)
    assert s["averages"]["ood"]["mean"] == pytest.approx(statistics.fmean(ood))
    assert s["averages"]["ood"]["std"] == pytest.approx(statistics.stdev(ood))
    lo, hi = sps.t.interval(0.95, 2, loc=np.mean(ood), scale=sps.sem(ood))
    assert s["averages"]["ood"]["interval"] == pytest.approx([lo, hi])
    assert s["splits"]["near1"]["mean"] == pytest.approx(40 + 5 * lg + 1.0)
    # one curve: mu varies alone over three values
    (curve,) = summary["curves"]
    assert curve["param"] == "mu" and [p["value"] for p in curve["points"]] == [0.01, 0.5, 100]


# --- running, resuming, backends ------------------------------------------------------------------

def test_local_sweep_runs_every_cell_and_writes_summary_and_plot(tmp_path, fake_cells) -> None:
    started, _ = fake_cells
    out = tmp_path / "sw"
    summary = run_sweep(mu_spec(), out, threads=1, cpu_budget=2)
    assert sorted(started()) == sorted(c.folder for c in expand(mu_spec()))
    stored = json.loads((out / "summary.json").read_text())
    assert stored["settings"].keys() == summary["settings"].keys() and len(stored["settings"]) == 3
    assert stored["failed"] == []
    assert (out / "sensitivity-digrap-lora-mu.png").stat().st_size > 1000
    assert all(done for _, done in sweep_status(mu_spec(), out))


def test_restart_runs_only_unfinished_and_failed_cells(tmp_path, fake_cells) -> None:
    started, opts = fake_cells
    out = tmp_path / "sw"
    opts["fail"] = "mu=0.5-s1"
    with pytest.raises(SweepFailed, match=r"1 of 9 cells failed: digrap-lora-mu=0.5-s1 \(log: .*logs/digrap-lora-mu=0.5-s1.log\)"):
        run_sweep(mu_spec(), out, threads=1, cpu_budget=2)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"][0]["cell"] == "digrap-lora-mu=0.5-s1"
    assert summary["settings"]["digrap-lora-mu=0.5"]["seeds"] == [0, 2]  # the finished ones are summarised
    assert len(started()) == 9
    opts["fail"] = "-"
    run_sweep(mu_spec(), out, threads=1, cpu_budget=2)
    assert started()[9:] == ["digrap-lora-mu=0.5-s1"]
    # a grown grid runs only its new cells
    run_sweep(mu_spec(seeds=(0, 1, 2, 3)), out, threads=1, cpu_budget=2)
    assert sorted(started()[10:]) == sorted(f"digrap-lora-mu={m}-s3" for m in ("0.01", "0.5", "100"))


def test_local_backend_keeps_the_cpu_budget(tmp_path, fake_cells) -> None:
    """budget 4, 2 threads per cell: two cells at a time, never three (each cell sleeps 1 s and
    the cells' start times are recorded by the order of the counter lines and the wall time)."""
    started, opts = fake_cells
    opts["sleep"] = "1.0"
    t = time.perf_counter()
    run_sweep(mu_spec(seeds=(0, 1)), tmp_path / "sw", threads=2, cpu_budget=4)
    wall = time.perf_counter() - t
    assert len(started()) == 6
    # six 1-s cells two at a time take >= 3 s; all six at once would take ~1 s
    assert wall >= 3.0


INTERRUPTED_SWEEP = r'''
import sys
import vqa_ood_bench.sweep as sw
from vqa_ood_bench.sweep import MethodGrid, SweepSpec, run_sweep
pids = sys.argv[2]
cell = "import os, time; open(%r, 'a').write(str(os.getpid()) + chr(10)); time.sleep(120)" % pids
sw.cell_command = lambda spec, c, run_dir, threads: [sys.executable, "-c", cell]
run_sweep(SweepSpec(methods=[MethodGrid(method="vanilla")], seeds=[0, 1, 2]), sys.argv[1], threads=1, cpu_budget=2)
'''


def test_interrupted_local_sweep_stops_its_running_cells(tmp_path) -> None:
    """Ctrl-C stops the cells that are running (their worker threads only wait on them), at
    once, rather than leaving them to train on or waiting for them to finish."""
    script, pids = tmp_path / "sweep.py", tmp_path / "pids.txt"
    script.write_text(INTERRUPTED_SWEEP)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "sw"), str(pids)], stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while (not pids.exists() or len(pids.read_text().split()) < 2) and time.time() < deadline:
        time.sleep(0.2)
    cells = [int(p) for p in pids.read_text().split()]
    assert len(cells) == 2  # budget 2, one thread each: two cells at a time
    t = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    assert time.perf_counter() - t < 20 and b"KeyboardInterrupt" in proc.stderr.read()
    time.sleep(0.5)
    for pid in cells:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert len(pids.read_text().split()) == 2  # the third cell never started


def test_second_sweep_on_the_same_folder_is_refused(tmp_path, fake_cells) -> None:
    from filelock import FileLock

    out = tmp_path / "sw"
    out.mkdir()
    with FileLock(str(out / sweep_mod.LOCK_FILE)):
        with pytest.raises(ConfigError, match="another sweep is running"):
            run_sweep(mu_spec(), out, threads=1, cpu_budget=1)


def test_submitit_local_executor_gives_the_local_results(tmp_path, fake_cells) -> None:
    pytest.importorskip("submitit")
    spec = mu_spec(seeds=(0, 1), mus=(0.1, 1))
    a = run_sweep(spec, tmp_path / "local", threads=1, cpu_budget=2)
    b = run_sweep(spec, tmp_path / "submitit", backend="submitit", threads=1, cpu_budget=2)
    assert a["settings"] == b["settings"]
    assert (tmp_path / "submitit" / "submitit").is_dir()  # submitit's own job files


@pytest.mark.slow  # starting a Ray instance takes ~15 s
def test_ray_backend_gives_the_local_results(tmp_path, fake_cells) -> None:
    pytest.importorskip("ray")
    spec = mu_spec(seeds=(0, 1), mus=(0.1, 1))
    a = run_sweep(spec, tmp_path / "local", threads=1, cpu_budget=2)
    b = run_sweep(spec, tmp_path / "ray", backend="ray", threads=1, cpu_budget=2)
    assert a["settings"] == b["settings"]


def test_unknown_backend_and_budget_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown sweep backend"):
        run_sweep(mu_spec(seeds=(0,)), tmp_path / "a", backend="mpi")
    with pytest.raises(ConfigError, match="CPU budget"):
        run_sweep(mu_spec(seeds=(0,)), tmp_path / "b", threads=4, cpu_budget=2)


def test_cli_grid_options_and_dry_run(tmp_path) -> None:
    from vqa_ood_bench.cli import main

    out = tmp_path / "sw"
    assert main(["sweep", "--out", str(out), "--method", "digrap", "--grid", "mu=0.01,0.1,0.5,1,100", "--grid", "omega=null",
                 "--seeds", "0,1,2", "--dry-run", "--json"]) == 0


def test_cli_errors_are_one_line(tmp_path, capsys) -> None:
    from vqa_ood_bench.cli import main

    assert main(["sweep", "--out", str(tmp_path), "--method", "digrap", "--grid", "mu"]) == 2
    assert "expected KEY=V1,V2" in capsys.readouterr().err
    assert main(["sweep", "--out", str(tmp_path), "--method", "digrap", "--seeds", "0,x"]) == 2
    assert "--seeds" in capsys.readouterr().err
    spec = tmp_path / "s.yaml"
    spec.write_text("methods: [{method: digrap}]\nseeds: [0, 0]\n")
    assert main(["sweep", "--out", str(tmp_path / "o"), "--spec", str(spec)]) == 2
    err = capsys.readouterr().err
    assert str(spec) in err and "seeds" in err


# --- real cells (slow) ----------------------------------------------------------------------------

def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "vqa_ood_bench.cli", "sweep", *args]


@pytest.mark.slow
def test_killed_sweep_resumes_without_redoing_finished_cells_and_ray_matches_local(tmp_path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "sw"
    args = ["--out", str(out), "--method", "vanilla", "--seeds", "0,1,2", "--limit", "6", "--threads", "1", "--cpu-budget", "1"]
    proc = subprocess.Popen(_cli(*args), env=env, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = out / "vanilla-lora-s0" / "results.json"
    deadline = time.time() + 600
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert first.exists(), proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "first cell never finished"
    stamp = first.stat().st_mtime_ns
    os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C in a terminal reaches the whole group
    proc.wait(timeout=60)
    assert not (out / "vanilla-lora-s2" / "results.json").exists()
    done = subprocess.run(_cli(*args, "--json"), env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert first.stat().st_mtime_ns == stamp  # not run again
    summary = json.loads(done.stdout)
    assert summary["settings"]["vanilla-lora"]["seeds"] == [0, 1, 2]
    # the same cell through Ray: the same predictions, byte for byte
    ray_out = tmp_path / "ray"
    r = subprocess.run(_cli("--out", str(ray_out), "--method", "vanilla", "--seeds", "1", "--limit", "6", "--threads", "1",
                            "--cpu-budget", "1", "--backend", "ray", "--json"), env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    local_preds = sorted((out / "vanilla-lora-s1" / "predictions").glob("*.jsonl"))
    assert local_preds
    for f in local_preds:
        assert (ray_out / "vanilla-lora-s1" / "predictions" / f.name).read_bytes() == f.read_bytes()
    assert math.isclose(json.loads(r.stdout)["settings"]["vanilla-lora"]["averages"]["ood"]["mean"],
                        summary["settings"]["vanilla-lora"]["averages"]["ood"]["values"][1])
