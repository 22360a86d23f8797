"""One run at a time per run folder, and files a resume trusts are written atomically and verified.

Two ``run_benchmark`` calls on one folder used to both run, each appending every question to the
predictions files; now the second is refused at once with a one-line error naming the holder,
and the folder is free again when the holder ends (also when it is killed: the OS drops the lock).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from vqa_ood_bench import runner
from vqa_ood_bench.config import RunConfig, dump_config
from vqa_ood_bench.errors import ConfigError
from vqa_ood_bench.io import atomic_torch_save, digest_problem, file_digest

ZS = {"method": "zeroshot", "limit": 2, "eval_batch_size": 2}


def _rows(run: Path) -> dict[str, list[str]]:
    return {f.name: [json.loads(line)["question_id"] for line in f.read_text().splitlines()]
            for f in sorted((run / "predictions").glob("*.jsonl"))}


def test_two_concurrent_runs_on_one_folder_exactly_one_is_refused(tmp_path, monkeypatch):
    config = RunConfig.model_validate(ZS)
    run = tmp_path / "run"
    real = runner._predict_and_score
    entered, refused = [], threading.Event()

    def slow(*args, **kwargs):  # the holder keeps the folder (predicting) until the other call has ended
        entered.append(threading.get_ident())
        refused.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "_predict_and_score", slow)
    outcomes: dict[int, object] = {}

    def call(i: int) -> None:
        t = time.monotonic()
        try:
            outcomes[i] = runner.run_benchmark(config, run, show_progress=False)
        except ConfigError as exc:
            outcomes[i] = (exc, time.monotonic() - t)
            refused.set()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    errors = [o for o in outcomes.values() if isinstance(o, tuple)]
    assert len(outcomes) == 2 and len(errors) == 1 and len(entered) == 1, outcomes
    exc, seconds = errors[0]
    msg = str(exc)
    assert seconds < 10 and "\n" not in msg  # at once, one line
    assert f"run folder {run} is in use by another run (pid {os.getpid()} on {socket.gethostname()}" in msg
    assert msg.endswith("wait for it or choose another --out")
    # the run that held the folder wrote every question once; then the folder is free again
    rows = _rows(run)
    assert len(rows) == 10 and all(len(q) == len(set(q)) == 2 for q in rows.values())
    assert not (run / runner.LOCK_OWNER_FILE).exists()
    monkeypatch.setattr(runner, "_predict_and_score", real)
    runner.run_benchmark(config, run, show_progress=False)  # resumes: nothing redone, nothing doubled
    assert _rows(run) == rows


HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from vqa_ood_bench.runner import run_folder_lock
    with run_folder_lock(Path(sys.argv[1])):
        print("held", flush=True)
        time.sleep(600)
""")


def test_a_run_held_by_another_process_is_refused_and_free_once_that_process_is_killed(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert holder.stdout.readline().strip() == "held"
        t = time.monotonic()
        with pytest.raises(ConfigError, match=rf"is in use by another run \(pid {holder.pid} on "):
            runner.run_benchmark(RunConfig.model_validate(ZS), run, show_progress=False)
        assert time.monotonic() - t < 10
        assert not (run / "predictions").exists() and not (run / "config.yaml").exists()  # refused before any work
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # killed while holding it: no stale lock (the owner file it left is only stale information)
    results = runner.run_benchmark(RunConfig.model_validate(ZS), run, show_progress=False)
    assert len(results.splits) == 10 and not (run / runner.LOCK_OWNER_FILE).exists()


def test_a_holder_that_ends_within_the_grace_period_does_not_refuse_the_run(tmp_path):
    """A restart right after a kill finds the dying holder's lock for a moment: it waits, then runs."""
    brief = HOLDER.replace("time.sleep(600)", "time.sleep(1.0)")
    holder = subprocess.Popen([sys.executable, "-c", brief, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert holder.stdout.readline().strip() == "held"
        t = time.monotonic()
        with runner.run_folder_lock(tmp_path):
            waited = time.monotonic() - t
        assert 0.2 < waited < runner.LOCK_GRACE_S + 1  # entered once the holder let go, not before
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_released_when_the_run_fails(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with runner.run_folder_lock(tmp_path):
            raise RuntimeError("boom")
    with runner.run_folder_lock(tmp_path):
        pass
    # a config error inside the locked body (another configuration in the folder) releases it too
    run.mkdir()
    (run / "config.yaml").write_text("method: something-else\n")
    for _ in range(2):
        with pytest.raises(ConfigError, match="different configuration"):
            runner.run_benchmark(RunConfig.model_validate(ZS), run, show_progress=False)


# ---------------------------------------------------------------- atomic writes and checksums


def test_atomic_torch_save_leaves_the_old_file_when_the_save_fails(tmp_path):
    path = tmp_path / "state.pt"
    atomic_torch_save({"w": torch.ones(3)}, path)
    before = path.read_bytes()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot save this")

    with pytest.raises(RuntimeError, match="cannot save this"):
        atomic_torch_save({"w": torch.zeros(3), "x": Unpicklable()}, path)
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]  # no temporary file left
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))


def test_digest_problem_names_truncation_and_changes(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 1000)
    record = file_digest(path)
    assert record["bytes"] == 1000 and digest_problem(path, record) is None
    path.write_bytes(b"x" * 500)
    assert "500 bytes, 1000 were written" in digest_problem(path, record)
    path.write_bytes(b"y" + b"x" * 999)
    assert "does not match the sha256" in digest_problem(path, record)
    path.unlink()
    assert "missing" in digest_problem(path, record)
    assert digest_problem(path, {"bytes": "1000"}) is not None


def test_checkpoint_verification(tmp_path):
    """A checkpoint counts only when its manifest, written last, verifies; the highest good one wins."""
    from vqa_ood_bench.train.engine import MANIFEST_FILE, SELECTION_FILE, _last_checkpoint, _write_manifest

    def make(step: int, manifest: bool = True) -> Path:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text("{}")
        atomic_torch_save({"history": []}, folder / SELECTION_FILE)
        (folder / "optimizer.pt").write_bytes(os.urandom(256))
        if manifest:
            _write_manifest(folder)
        return folder

    assert _last_checkpoint(tmp_path) is None
    good = make(2)
    assert _last_checkpoint(tmp_path) == good
    make(4, manifest=False)  # killed while saving
    bad = make(6)
    (bad / SELECTION_FILE).write_bytes((bad / SELECTION_FILE).read_bytes()[:10])  # truncated later
    warned: list[str] = []
    assert _last_checkpoint(tmp_path, warned.append) == good
    assert len(warned) == 2 and "checkpoint-6" in warned[0] and "bytes" in warned[0] and "checkpoint-4" in warned[1]
    manifest = json.loads((good / MANIFEST_FILE).read_text())
    manifest["files"]["../../escape"] = {"bytes": 1, "sha256": "0" * 64}
    (good / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert _last_checkpoint(tmp_path) is None


def test_a_run_resumes_with_another_thread_count_but_not_another_seed(tmp_path):
    # 1 and 2 CPU threads give identical predictions, so a resume may change the thread count
    # (a sweep re-run with another --threads); any option that changes numbers is refused.
    base = dump_config(RunConfig.model_validate({**ZS, "cpu_threads": 2}))
    runner.record_config(tmp_path, base)
    runner.record_config(tmp_path, dump_config(RunConfig.model_validate({**ZS, "cpu_threads": 1})))
    assert "cpu_threads: 1" in (tmp_path / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="different configuration"):
        runner.record_config(tmp_path, dump_config(RunConfig.model_validate({**ZS, "cpu_threads": 1, "seed": 5})))
