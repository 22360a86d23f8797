"""Per-sample logs (``samples/<split>.jsonl``): complete, consistent with the predictions file,
and enough to re-derive every number of results.json without the model."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
from fixtures.mini_suite import SPLITS, register

from vqa_ood_bench import runner
from vqa_ood_bench.config import RunConfig
from vqa_ood_bench.models.pretrain import PRETRAIN_STEPS_ENV
from vqa_ood_bench.models.tiny_artifact import load_shipped
from vqa_ood_bench.predict.samples import GENERATION_FIELDS, read_sample_log, rescore_sample_log, samples_path
from vqa_ood_bench.report.schema import read_results
from vqa_ood_bench.score.normalize import clean_whitespace, normalize_answer
from vqa_ood_bench.score.vqa_accuracy import vqa_score_one

SUITE = register()
EVAL_SPLITS = [n for n in SPLITS if n != "train"]


def _config(**extra) -> RunConfig:
    return RunConfig.model_validate({"method": "zeroshot", "suite": SUITE, "eval_batch_size": 5, **extra})


@pytest.fixture(scope="module")
def shipped_tiny():
    """Runs on the shipped tiny model (varied answers), not the tests' few-step one."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(PRETRAIN_STEPS_ENV, raising=False)
        yield


@pytest.fixture(scope="module")
def run(shipped_tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("logs") / "run"
    runner.run_benchmark(_config(), out, show_progress=False)
    return out


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_question_has_a_complete_row_beside_its_prediction(run) -> None:
    results = read_results(run / "results.json")
    _, processor, _ = load_shipped()
    tok = processor.tokenizer
    for split in EVAL_SPLITS:
        predictions = _rows(run / results.splits[split].predictions_file)
        assert all(set(p) == {"question_id", "prediction"} for p in predictions)  # the predictions format, nothing else
        log = read_sample_log(samples_path(run, split))
        assert [r["question_id"] for r in log] == [p["question_id"] for p in predictions]
        for row, pred in zip(log, predictions):
            assert row["prediction"] == pred["prediction"]
            assert row["prompt"] == f"answer en {row['question']}"
            assert row["prompt_sent"] == f"<bos>{row['prompt']}\n" and row["image_tokens"] == 64
            # the raw generation is its token ids decoded; the prediction is that without special tokens
            assert row["generation"] == tok.decode(row["generated_token_ids"], skip_special_tokens=False)
            assert row["prediction"] == tok.decode(row["generated_token_ids"], skip_special_tokens=True).strip()
            assert row["generated_token_ids"][-1] == tok.eos_token_id or len(row["generated_token_ids"]) == 4
            assert row["variant"] == "official" and len(row["answers"]) == 10 and row["seconds"] > 0


def test_rescoring_the_log_alone_gives_results_json(run) -> None:
    results = read_results(run / "results.json")
    for split in EVAL_SPLITS:
        path = samples_path(run, split)
        log = read_sample_log(path)
        stored = results.splits[split]
        assert rescore_sample_log(path) == stored.vqa_accuracy
        # independently: the rule written plainly, one question at a time
        plain = [vqa_score_one(r["prediction"], r["answers"], r["variant"]) for r in log]
        assert [r["score"] for r in log] == pytest.approx(plain, abs=1e-12)
        assert round(100 * sum(plain) / len(plain), 4) == stored.vqa_accuracy
        by_type = defaultdict(list)
        for r, s in zip(log, plain):
            by_type[r["answer_type"]].append(s)
        assert {k: round(100 * sum(v) / len(v), 4) for k, v in by_type.items()} == pytest.approx(stored.per_answer_type, abs=1e-9)
        # the answers differ (7 of 10 agree), so the official rule compares fully normalised forms
        assert all(r["normalized_prediction"] == normalize_answer(r["prediction"]) for r in log)
    assert any(r["score"] > 0 for s in EVAL_SPLITS for r in read_sample_log(samples_path(run, s)))


def test_normalized_prediction_follows_the_variant_rule() -> None:
    from vqa_ood_bench.predict.samples import compared_prediction

    agreed = ["Yes"] * 10
    assert compared_prediction(" Yes ", agreed, "official") == clean_whitespace(" Yes ") == "Yes"  # answers agree: no more than whitespace
    assert compared_prediction("Two!", ["2"] * 7 + ["3"] * 3, "official") == "2"  # answers differ: punctuation, number words
    assert compared_prediction("Two!", agreed, "lavis") == "2"  # LAVIS normalises the prediction always


def test_a_resumed_prediction_completes_the_log(shipped_tiny, run, tmp_path, monkeypatch) -> None:
    """Generation stopped after two batches: the resumed run's logs equal the uninterrupted
    run's (but for the timings)."""
    import vqa_ood_bench.predict.generate as gen

    real, calls = gen.generate_answers, []

    class Killed(Exception):
        pass

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(gen, "generate_answers", dying)
    with pytest.raises(Killed):
        runner.run_benchmark(_config(), tmp_path / "killed", show_progress=False)
    assert len(_rows(samples_path(tmp_path / "killed", EVAL_SPLITS[0]))) == 10  # two batches' details, appended
    monkeypatch.setattr(gen, "generate_answers", real)
    runner.run_benchmark(_config(), tmp_path / "killed", show_progress=False)

    def without_time(folder: Path, split: str) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in read_sample_log(samples_path(folder, split))]

    for split in EVAL_SPLITS:
        assert without_time(tmp_path / "killed", split) == without_time(run, split), split


def test_a_log_lost_from_a_finished_run_is_rebuilt_without_generation_details(shipped_tiny, run, tmp_path) -> None:
    """A run folder of an earlier version has predictions but no logs: resuming it writes logs
    whose generation fields are null and whose scores still add up."""
    import shutil

    folder = tmp_path / "old"
    shutil.copytree(run, folder)
    shutil.rmtree(folder / "samples")
    runner.run_benchmark(_config(), folder, show_progress=False)
    results = read_results(folder / "results.json")
    for split in EVAL_SPLITS:
        log = read_sample_log(samples_path(folder, split))
        full = read_sample_log(samples_path(run, split))
        assert all(r[k] is None for r in log for k in GENERATION_FIELDS)
        assert [(r["prediction"], r["score"]) for r in log] == [(r["prediction"], r["score"]) for r in full]
        assert rescore_sample_log(log) == results.splits[split].vqa_accuracy


def test_details_written_by_several_ranks_are_merged_into_one_log(tmp_path) -> None:
    """Data-parallel prediction: each rank appends details to its shard of the log; the log
    holds every question once, in record order, and the shards are removed."""
    from fixtures.mini_suite import records

    from vqa_ood_bench import distributed as dist
    from vqa_ood_bench.predict.generate import predict_records
    from vqa_ood_bench.predict.jsonl import read_predictions
    from vqa_ood_bench.predict.samples import write_sample_log
    from vqa_ood_bench.score.vqa_accuracy import score_records

    model, processor, _ = load_shipped()
    recs = records("styled")
    preds_path, log_path = tmp_path / "predictions" / "styled.jsonl", tmp_path / "samples" / "styled.jsonl"
    for rank in range(2):  # what predict_sharded has each of two processes do
        predict_records(model, processor, dist.shard(recs, rank, 2), dist.shard_path(preds_path, rank, 2), batch_size=4,
                        samples_path=dist.shard_path(log_path, rank, 2))
    dist.merge_shards(preds_path, [r.question_id for r in recs], 2)
    preds = {q: row["prediction"] for q, row in read_predictions(preds_path).items()}
    write_sample_log(log_path, recs, preds, score_records(recs, preds).scores, variant="official", prompt="answer en {question}")
    log = read_sample_log(log_path)
    assert [r["question_id"] for r in log] == [r.question_id for r in recs]
    assert all(r["generation"] is not None and r["prediction"] == preds[r["question_id"]] for r in log)
    assert sorted(p.name for p in log_path.parent.iterdir()) == ["styled.jsonl"]
