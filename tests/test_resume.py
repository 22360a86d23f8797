"""Kill a run midway, resume it, and get what an uninterrupted run gives.

Prediction: a ``vqa-ood-bench run`` subprocess is SIGKILLed once the first predictions file has
a few rows (slow: three subprocesses); the same command resumes it. A fast in-process twin stops
generation with an exception after three batches. Every predictions file must then equal an
uninterrupted run's row for row (same ids, order, answers), with no id twice or missing.

Training: a run with ``save_steps`` is stopped by an exception right after a checkpoint was
written (what a kill leaves on disk, deterministically); the same ``run_benchmark`` call resumes
from the Trainer checkpoint. The resumed run must take only the remaining optimizer steps and
end with the uninterrupted run's tensors, model selection and history — which needs the
optimizer's ``state_dict`` (DiGraP's ω and moments), the scheduler and the RNG restored.

The shipped default config checkpoints (a default run killed in training continues from its
checkpoint), and damaged files never end a resume in a traceback: a checkpoint whose manifest
does not verify (truncated ``model_selection.pt``, no manifest, a changed byte) is skipped for
the previous good one or a fresh start; a ``trained_state.pt`` without ``fit.json``, truncated,
changed or missing is rebuilt from the final checkpoint (or by training again), to the same tensors.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from vqa_ood_bench import runner
from vqa_ood_bench.config import RunConfig
from vqa_ood_bench.predict.jsonl import read_predictions

N = 12  # questions per split


def _rows(path: Path) -> list[tuple[str, str]]:
    return [(r["question_id"], r["prediction"]) for r in map(json.loads, path.read_text().splitlines())]


def _cli(cfg: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "vqa_ood_bench.cli", "run", "--config", str(cfg), "--out", str(out), "--json"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def test_prediction_stopped_after_some_batches_resumes_without_loss_or_duplicates(tmp_path, monkeypatch):
    """In-process and fast: generation dies after 3 batches of 2; the same call finishes the job."""
    import vqa_ood_bench.predict.generate as gen

    config = RunConfig.model_validate({"method": "zeroshot", "limit": N, "eval_batch_size": 2})
    runner.run_benchmark(config, tmp_path / "full", show_progress=False)

    real, calls = gen.generate_answers, []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise Killed("killed during batch 4")
        return real(*args, **kwargs)

    monkeypatch.setattr(gen, "generate_answers", dying)
    with pytest.raises(Killed):
        runner.run_benchmark(config, tmp_path / "killed", show_progress=False)
    first = tmp_path / "killed" / "predictions" / "easyvqa-test.jsonl"
    assert len(_rows(first)) == 6 and not (tmp_path / "killed" / "results.json").exists()
    monkeypatch.setattr(gen, "generate_answers", real)
    runner.run_benchmark(config, tmp_path / "killed", show_progress=False)
    for f in sorted((tmp_path / "full" / "predictions").glob("*.jsonl")):
        b = _rows(tmp_path / "killed" / "predictions" / f.name)
        assert b == _rows(f), f.name
        assert len({q for q, _ in b}) == len(b) == N, f.name


@pytest.mark.slow
def test_killed_prediction_resumes_to_the_uninterrupted_file(tmp_path):
    cfg = tmp_path / "zs.yaml"
    cfg.write_text(yaml.safe_dump({"method": "zeroshot", "limit": N, "eval_batch_size": 1}))
    full, killed = tmp_path / "full", tmp_path / "killed"
    done = subprocess.run(_cli(cfg, full), env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

    proc = subprocess.Popen(_cli(cfg, killed), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = killed / "predictions" / "easyvqa-test.jsonl"  # the suite's first split
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if first.is_file() and first.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    written = {f.name: len(read_predictions(f)) for f in (killed / "predictions").glob("*.jsonl")}
    assert not (killed / "results.json").exists() and sum(written.values()) < 10 * N, written  # killed midway
    assert written["easyvqa-test.jsonl"] >= 3

    resumed = subprocess.run(_cli(cfg, killed), env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    files = sorted(f.name for f in (full / "predictions").glob("*.jsonl"))
    assert len(files) == 10 and files == sorted(f.name for f in (killed / "predictions").glob("*.jsonl"))
    for name in files:
        a, b = _rows(full / "predictions" / name), _rows(killed / "predictions" / name)
        assert b == a, name
        assert len({q for q, _ in b}) == len(b) == N, name  # none twice, none missing
    res_full = json.loads((full / "results.json").read_text())["splits"]
    res_killed = json.loads((killed / "results.json").read_text())["splits"]
    assert {k: v["n"] for k, v in res_killed.items()} == {k: v["n"] for k, v in res_full.items()}


_REAL_GET_METHOD = runner.get_method


class Killed(Exception):
    """Stands for SIGKILL: stops training between two optimizer steps."""


def _with_hooks(kill_at: int | None, seen: list[int]):
    """get_method whose method also records each optimizer step and dies after step ``kill_at``."""
    real = _REAL_GET_METHOD

    def get_method(name, **params):
        method = real(name, **params)
        hooks = method.step_hooks

        def step_hooks(ctx):
            def record(model, step):
                seen.append(step)
                if step == kill_at:
                    raise Killed(f"killed after step {step}")

            return [*hooks(ctx), record]

        method.step_hooks = step_hooks
        return method

    return get_method


# vanilla: model selection on (validated every 2 steps; with the tiny model every accuracy ties,
# so the best stays step 2's weights only if the selection state survives the kill).
# digrap: the custom optimizer's per-tensor state (ω, its Adam moments, P_prev) must round-trip.
CASES = {
    "vanilla": {"train": {"eval_steps": 2, "validation_size": 4}},
    "digrap": {"train": {"validation_size": 2}, "method_params": {"mu": 0.5, "log_every": 0}},  # validated at the end only
}


@pytest.mark.parametrize("method", sorted(CASES))
def test_training_killed_after_a_checkpoint_resumes_to_the_same_tensors(tmp_path, monkeypatch, method):
    case = CASES[method]
    config = RunConfig.model_validate({
        "method": method, "method_params": case.get("method_params", {}), "limit": 8, "eval_batch_size": 8,
        "train": {"batch_size": 2, "max_steps": 6, "save_steps": 2, "learning_rate": 5e-3, **case["train"]},
    })  # 8 examples, 2 a step: resuming at step 2 is mid-epoch and crosses an epoch boundary later

    steps_full: list[int] = []
    monkeypatch.setattr(runner, "get_method", _with_hooks(None, steps_full))
    runner.run_benchmark(config, tmp_path / "full", show_progress=False)

    steps_killed: list[int] = []
    monkeypatch.setattr(runner, "get_method", _with_hooks(4, steps_killed))
    with pytest.raises(Killed):
        runner.run_benchmark(config, tmp_path / "killed", show_progress=False)
    checkpoints = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-2"] and not (tmp_path / "killed" / "trained_state.pt").exists()

    steps_resumed: list[int] = []
    monkeypatch.setattr(runner, "get_method", _with_hooks(None, steps_resumed))
    runner.run_benchmark(config, tmp_path / "killed", show_progress=False)

    assert steps_full == [1, 2, 3, 4, 5, 6] and steps_killed == [1, 2, 3, 4]
    assert steps_resumed == [3, 4, 5, 6]  # continued from checkpoint-2, did not start over
    full = torch.load(tmp_path / "full" / "trained_state.pt", weights_only=True)
    resumed = torch.load(tmp_path / "killed" / "trained_state.pt", weights_only=True)
    assert full.keys() == resumed.keys()
    assert any(v.abs().max() > 0 for k, v in full.items() if "lora_B" in k)  # it trained
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], rtol=1e-5, atol=1e-7, msg=k)
    fit_full = json.loads((tmp_path / "full" / "fit.json").read_text())
    fit_resumed = json.loads((tmp_path / "killed" / "fit.json").read_text())
    assert fit_resumed["best_step"] == fit_full["best_step"] and fit_resumed["best_validation"] == fit_full["best_validation"]
    hist_full = json.loads((tmp_path / "full" / "train_history.json").read_text())
    hist_resumed = json.loads((tmp_path / "killed" / "train_history.json").read_text())
    assert [sorted(h) for h in hist_resumed] == [sorted(h) for h in hist_full]
    assert [h.get("loss", h.get("validation_accuracy")) for h in hist_resumed] == \
        pytest.approx([h.get("loss", h.get("validation_accuracy")) for h in hist_full], rel=1e-5)


# ---------------------------------------------------------------- the default config checkpoints


def test_default_config_checkpoints_and_a_run_killed_in_training_resumes_from_the_checkpoint(tmp_path, monkeypatch):
    """README: "An interrupted run resumes where it stopped". With the shipped defaults (no
    save_steps given anywhere) a run killed after the first checkpoint continues from it."""
    from vqa_ood_bench.cli.cmd_run import default_config
    from vqa_ood_bench.config import TrainConfig

    every = TrainConfig().save_steps
    shipped = yaml.safe_load((Path(__file__).parents[1] / "vqa_ood_bench" / "configs" / "embedded.yaml").read_text())["train"]
    cfg = default_config()
    assert every > 0 and cfg.train.save_steps == shipped["save_steps"] == every
    assert 2 <= cfg.train.save_total_limit == shipped["save_total_limit"] == TrainConfig().save_total_limit
    # the default's save settings, with a step budget just past the first checkpoint (seconds on the tiny model)
    config = cfg.model_copy(update={"limit": 4, "eval_batch_size": 4, "train": cfg.train.model_copy(
        update={"batch_size": 1, "max_steps": every + 2, "validation_size": 2})})

    killed: list[int] = []
    monkeypatch.setattr(runner, "get_method", _with_hooks(every + 1, killed))
    with pytest.raises(Killed):
        runner.run_benchmark(config, tmp_path / "run", show_progress=False)
    ckpt = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpt.glob("checkpoint-*")) == [f"checkpoint-{every}"]
    assert (ckpt / f"checkpoint-{every}" / "manifest.json").is_file()

    resumed: list[int] = []
    monkeypatch.setattr(runner, "get_method", _with_hooks(None, resumed))
    results = runner.run_benchmark(config, tmp_path / "run", show_progress=False)
    assert resumed == [every + 1, every + 2]  # not step 1 again
    assert results.method_params["fit"]["steps"] == every + 2
    # the end of training is a checkpoint too; save_total_limit keeps the disk bounded
    assert sorted(p.name for p in ckpt.glob("checkpoint-*")) == [f"checkpoint-{every}", f"checkpoint-{every + 2}"]


# ---------------------------------------------------------------- damaged files: fall back, never a traceback

SMALL = {"method": "vanilla", "limit": 8, "eval_batch_size": 8,
         "train": {"batch_size": 2, "max_steps": 6, "save_steps": 2, "learning_rate": 5e-3, "eval_steps": 2, "validation_size": 4}}


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) * 3 // 4] ^= 0xFF  # inside the tensor data: torch.load alone would not notice
    path.write_bytes(bytes(data))


def _assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(tb[k], ta[k], rtol=1e-5, atol=1e-7, msg=k)


@pytest.fixture(scope="module")
def small_full_run(tmp_path_factory) -> Path:
    """The uninterrupted reference run of SMALL."""
    out = tmp_path_factory.mktemp("small") / "full"
    runner.run_benchmark(RunConfig.model_validate(SMALL), out, show_progress=False)
    return out


@pytest.mark.parametrize("damage, resumed_from", [
    ("truncate-newest-selection", 2),  # model_selection.pt of checkpoint-4 cut in half
    ("no-manifest-newest", 2),  # killed while saving checkpoint-4
    ("flip-newest-weights", 2),  # a silently changed byte in checkpoint-4's adapter weights
    ("truncate-all", 0),  # nothing usable: start over
])
def test_damaged_checkpoint_falls_back_to_the_previous_good_one(tmp_path, monkeypatch, small_full_run, damage, resumed_from):
    config = RunConfig.model_validate(SMALL)
    monkeypatch.setattr(runner, "get_method", _with_hooks(5, []))
    with pytest.raises(Killed):
        runner.run_benchmark(config, tmp_path / "run", show_progress=False)
    ckpt = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpt.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    if damage == "truncate-newest-selection":
        _truncate(ckpt / "checkpoint-4" / "model_selection.pt")
    elif damage == "no-manifest-newest":
        (ckpt / "checkpoint-4" / "manifest.json").unlink()
    elif damage == "flip-newest-weights":
        _flip_a_byte(next((ckpt / "checkpoint-4").glob("adapter_model.*")))
    else:
        for sel in ckpt.glob("checkpoint-*/model_selection.pt"):
            _truncate(sel)

    seen: list[int] = []
    lines: list[str] = []
    monkeypatch.setattr(runner, "get_method", _with_hooks(None, seen))
    runner.run_benchmark(config, tmp_path / "run", show_progress=False, log=lines.append)
    assert seen == list(range(resumed_from + 1, 7))
    warnings = [s for s in lines if "checkpoint-4" in s and "skipping" in s]
    assert len(warnings) == 1 and "\n" not in warnings[0], lines
    _assert_same_tensors(small_full_run / "trained_state.pt", tmp_path / "run" / "trained_state.pt")
    fit_full = json.loads((small_full_run / "fit.json").read_text())
    fit_run = json.loads((tmp_path / "run" / "fit.json").read_text())
    assert (fit_run["best_step"], fit_run["best_validation"]) == (fit_full["best_step"], fit_full["best_validation"])
    # every checkpoint left now verifies
    from vqa_ood_bench.train.engine import _checkpoint_problem

    assert all(_checkpoint_problem(p) is None for p in ckpt.glob("checkpoint-*"))


@pytest.mark.parametrize("damage", ["no-fit-json", "truncated-trained-state", "flipped-trained-state", "no-trained-state"])
@pytest.mark.parametrize("checkpoints", [True, False])
def test_damaged_trained_state_is_recovered(tmp_path, monkeypatch, small_full_run, damage, checkpoints):
    """Killed between trained_state.pt and fit.json, or a damaged trained_state.pt: the resume
    warns in one line and gets the same weights again, from the final training checkpoint (no
    step repeated) or, without checkpoints, by training again."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(small_full_run, run)
    (run / "results.json").unlink()
    if not checkpoints:
        shutil.rmtree(run / "checkpoints")
    if damage == "no-fit-json":
        (run / "fit.json").unlink()
    elif damage == "truncated-trained-state":
        _truncate(run / "trained_state.pt")
    elif damage == "flipped-trained-state":
        _flip_a_byte(run / "trained_state.pt")
    else:
        (run / "trained_state.pt").unlink()

    seen: list[int] = []
    lines: list[str] = []
    monkeypatch.setattr(runner, "get_method", _with_hooks(None, seen))
    results = runner.run_benchmark(RunConfig.model_validate(SMALL), run, show_progress=False, log=lines.append)
    assert seen == ([] if checkpoints else [1, 2, 3, 4, 5, 6])
    warnings = [s for s in lines if "cannot be used" in s]
    assert len(warnings) == 1 and "\n" not in warnings[0], lines
    _assert_same_tensors(small_full_run / "trained_state.pt", run / "trained_state.pt")
    fit = json.loads((run / "fit.json").read_text())
    assert fit["trained_state"]["sha256"] and "resumed" not in fit
    assert results.method_params["fit"]["best_step"] == json.loads((small_full_run / "fit.json").read_text())["best_step"]

    # and a second resume trusts the files it wrote (no training, no warning)
    lines.clear()
    seen.clear()
    results = runner.run_benchmark(RunConfig.model_validate(SMALL), run, show_progress=False, log=lines.append)
    assert seen == [] and results.method_params["fit"]["resumed"] is True
    assert not [s for s in lines if "warning" in s]
