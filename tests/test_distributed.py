"""Several processes: sharding and merging predictions, refusals, and a real 2-process gloo run.

The 2-process run (``torchrun --nproc_per_node 2`` on CPU) must give what one process gives
with the same global batch: the same trained tensors (float tolerance), the same predictions
row for row, the same per-split numbers, and no shard file left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from vqa_ood_bench import distributed as dist
from vqa_ood_bench.errors import ConfigError, DataError
from vqa_ood_bench.predict.jsonl import PredictionWriter, read_predictions

# ---------------------------------------------------------------- shard + merge (no processes)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 60), world=st.integers(1, 7))
def test_shards_partition_the_records_and_merge_back_in_order(n, world):
    ids = [f"q{i:03d}" for i in range(n)][::-1]  # an order that is not the sorted one
    shards = [dist.shard(ids, r, world) for r in range(world)]
    assert sorted(sum(shards, [])) == sorted(ids)  # every record in exactly one shard
    assert max(map(len, shards)) - min(map(len, shards)) <= 1  # balanced
    parts = [(Path(f"shard{r}"), {q: {"question_id": q, "prediction": q.upper()} for q in s}) for r, s in enumerate(shards)]
    merged = dist.merge_rows(ids, parts, target=Path("out.jsonl"))
    assert [row["question_id"] for row in merged] == ids
    assert all(row["prediction"] == row["question_id"].upper() for row in merged)


def _rows(ids):
    return {q: {"question_id": q, "prediction": "x"} for q in ids}


def test_merge_refuses_a_duplicate_naming_both_files():
    with pytest.raises(DataError, match=r"'b' is in both a\.jsonl and c\.jsonl"):
        dist.merge_rows(["a", "b", "c"], [(Path("a.jsonl"), _rows("ab")), (Path("c.jsonl"), _rows("bc"))], target=Path("t.jsonl"))


def test_merge_refuses_a_missing_question_naming_the_target():
    with pytest.raises(DataError, match=r"t\.jsonl: 1 question\(s\) missing .*'c'"):
        dist.merge_rows(["a", "b", "c"], [(Path("a.jsonl"), _rows("ab"))], target=Path("t.jsonl"))


def test_merge_refuses_a_question_not_in_the_split():
    with pytest.raises(DataError, match=r"not in this split .*'z'"):
        dist.merge_rows(["a"], [(Path("a.jsonl"), _rows("az"))], target=Path("t.jsonl"))


def test_merge_shards_combines_the_main_file_and_the_shards_and_cleans_up(tmp_path):
    order = [f"q{i}" for i in range(7)]
    target = tmp_path / "split.jsonl"
    with PredictionWriter(target) as w:  # a previous attempt finished the first two
        w.write({"question_id": q, "prediction": f"p{q}"} for q in order[:2])
    rest = order[2:]
    for r in range(3):
        with PredictionWriter(dist.shard_path(target, r, 3)) as w:
            w.write({"question_id": q, "prediction": f"p{q}"} for q in dist.shard(rest, r, 3))
    dist.merge_shards(target, order, 3)
    lines = target.read_text().splitlines()
    assert [json.loads(line)["question_id"] for line in lines] == order
    assert all(json.loads(line)["prediction"] == "p" + json.loads(line)["question_id"] for line in lines)
    assert not list(tmp_path.glob(".split.rank*"))  # shards removed


def test_merge_shards_with_a_lost_shard_fails_and_keeps_the_target(tmp_path):
    target = tmp_path / "split.jsonl"
    with PredictionWriter(dist.shard_path(target, 0, 2)) as w:
        w.write([{"question_id": "a", "prediction": "x"}])
    with pytest.raises(DataError, match="missing"):
        dist.merge_shards(target, ["a", "b"], 2)
    assert not target.exists() and dist.shard_path(target, 0, 2).exists()


def test_global_batch_is_divided_by_the_processes():
    assert dist.per_device_batch(8, 2) == 4 and dist.per_device_batch(8, 1) == 8
    with pytest.raises(ConfigError, match="divisible by the 3 processes"):
        dist.per_device_batch(8, 3)


@pytest.mark.parametrize("method", ["digrap", "ftp", "tpgm", "mars-sp", "l2-sp"])
@pytest.mark.parametrize("sharding", ["fsdp", "deepspeed"])
def test_whole_tensor_optimizers_refuse_parameter_sharding(method, sharding):
    with pytest.raises(ConfigError, match=f"{method}.*cannot train under {sharding}"):
        dist.check_sharding(method, sharding)


@pytest.mark.parametrize("method", ["vanilla", "lp-ft", "wise-ft", "linear-probe", "zeroshot"])
def test_elementwise_methods_may_shard(method):
    dist.check_sharding(method, "fsdp")
    dist.check_sharding(method, "deepspeed")
    dist.check_sharding("digrap", "none")


def test_accelerate_fsdp_environment_is_refused_for_digrap(monkeypatch, tmp_path):
    """``accelerate launch`` with an FSDP config says so through the environment; fit refuses."""
    from vqa_ood_bench.config import TrainConfig
    from vqa_ood_bench.train.engine import ExampleDataset, fit

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match="digrap.*fsdp"):
        fit(torch.nn.Linear(2, 2), None, ExampleDataset([]), TrainConfig(), output_dir=tmp_path, method_name="digrap")


def test_one_process_is_untouched(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert dist.init_from_env() is False
    assert (dist.rank(), dist.world_size(), dist.is_main()) == (0, 1, True)
    assert dist.broadcast("x") == "x"


# ---------------------------------------------------------------- a real 2-process run

CONFIG = {
    "method": "vanilla",
    "lora_dropout": 0.0,  # dropout masks are drawn per process: equal runs need none
    "limit": 24,
    "eval_batch_size": 4,
    "train": {"batch_size": 4, "grad_accum": 2, "max_steps": 3, "validation_size": 4, "eval_steps": 2},
}


TORCHRUN = Path(sys.executable).parent / "torchrun"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(argv: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc's parent links."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _predictions(run: Path) -> dict[str, list[tuple[str, str]]]:
    out = {}
    for f in sorted((run / "predictions").glob("*.jsonl")):
        rows = [json.loads(line) for line in f.read_text().splitlines()]
        out[f.name] = [(r["question_id"], r["prediction"]) for r in rows]
    return out


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this Python")
def test_two_processes_match_one_process_at_the_same_global_batch(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    one, two = tmp_path / "one", tmp_path / "two"
    cli = ["-m", "vqa_ood_bench.cli", "run", "--config", str(cfg), "--json"]
    _run([sys.executable, *cli, "--out", str(one)], tmp_path)  # also builds the test cache
    _run([str(TORCHRUN), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
          *cli, "--out", str(two)], tmp_path)

    a = torch.load(one / "trained_state.pt", weights_only=True)
    b = torch.load(two / "trained_state.pt", weights_only=True)
    init = {k for k in a if "lora_B" in k}  # B starts at 0: a non-zero B proves training happened
    assert a.keys() == b.keys() and init and all(a[k].abs().max() > 1e-4 for k in init)
    # Float tolerance: the all-reduce sums in another order, and Adam's m/sqrt(v) magnifies that on
    # elements whose gradient is near zero; measured ~3e-4 relative (a different batch split: O(1)).
    for k in a:
        assert ((b[k] - a[k]).norm() / a[k].norm().clamp_min(1e-12)).item() < 2e-3, k
    ha = json.loads((one / "train_history.json").read_text())
    hb = json.loads((two / "train_history.json").read_text())
    losses = [(h["step"], h["loss"]) for h in ha if "loss" in h]
    assert len(losses) == 3 and [h["step"] for h in hb if "loss" in h] == [s for s, _ in losses]
    assert [h["loss"] for h in hb if "loss" in h] == pytest.approx([x for _, x in losses], rel=1e-5)  # the same batches

    pa, pb = _predictions(one), _predictions(two)
    assert pa.keys() == pb.keys() and len(pa) == 10
    assert pa == pb  # same questions, same order, same answers
    for name, rows in pb.items():
        assert len({q for q, _ in rows}) == len(rows) == 24, name
    assert not list((two / "predictions").glob(".*rank*"))  # shards merged and removed

    ra = json.loads((one / "results.json").read_text())
    rb = json.loads((two / "results.json").read_text())
    assert {k: (v["n"], v["vqa_accuracy"]) for k, v in ra["splits"].items()} == \
           {k: (v["n"], v["vqa_accuracy"]) for k, v in rb["splits"].items()}
    fa, fb = ra["method_params"]["fit"], rb["method_params"]["fit"]
    assert (fa["steps"], fa["best_step"]) == (fb["steps"], fb["best_step"]) == (3, fa["best_step"])
    assert fb["final_loss"] == pytest.approx(fa["final_loss"], rel=1e-5)
    assert read_predictions(two / "predictions" / "easyvqa-test.jsonl")  # a valid predictions file


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this Python")
def test_killed_two_process_prediction_resumes_to_the_one_process_file(tmp_path):
    """SIGKILL every process of a 2-process zero-shot run while the shards fill; resume on 2 processes."""
    import signal
    import time

    n = 24
    cfg = tmp_path / "zs.yaml"
    cfg.write_text(yaml.safe_dump({"method": "zeroshot", "limit": n, "eval_batch_size": 1}))
    one, two = tmp_path / "one", tmp_path / "two"
    cli = ["-m", "vqa_ood_bench.cli", "run", "--config", str(cfg), "--json"]
    _run([sys.executable, *cli, "--out", str(one)], tmp_path)

    def torchrun() -> list[str]:
        return [str(TORCHRUN), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                *cli, "--out", str(two)]

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(torchrun(), env=env, cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shard1 = dist.shard_path(two / "predictions" / "easyvqa-test.jsonl", 1, 2)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if shard1.is_file() and shard1.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.01)
    # torchrun and both workers (which torchrun may start in sessions of their own, out of reach
    # of killpg: they would go on as orphans and, rightly, keep the run folder locked)
    tree = _descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    left = sorted(p.name for p in (two / "predictions").glob(".*rank*"))
    assert not (two / "results.json").exists() and left, left  # killed while the shards were filling
    _run(torchrun(), tmp_path)

    pa, pb = _predictions(one), _predictions(two)
    assert len(pa) == 10 and pa == pb
    for name, rows in pb.items():
        assert len({q for q, _ in rows}) == len(rows) == n, name
    assert not list((two / "predictions").glob(".*rank*"))
