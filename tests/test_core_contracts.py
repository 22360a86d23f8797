"""VQARecord, file helpers, predictions files and the results schema."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from vqa_ood_bench.data.records import VQARecord
from vqa_ood_bench.errors import DataError
from vqa_ood_bench.io import atomic_write_json, read_json, safe_join
from vqa_ood_bench.predict.jsonl import PredictionWriter, read_predictions
from vqa_ood_bench.report.schema import ModelInfo, RunResults, SplitResult, compute_averages, read_results, write_results


# --- VQARecord -----------------------------------------------------------------------------------

def test_record_round_trip_and_lazy_image(tmp_path: Path) -> None:
    img = tmp_path / "a.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(img)
    rec = VQARecord("q1", str(img), "what color?", ["red"] * 3, "other", "what color", "ds", "val", {"k": 1})
    back = VQARecord.from_json(json.loads(json.dumps(rec.to_json())))
    assert back == rec
    assert back.load_image().getpixel((0, 0)) == (255, 0, 0)


def test_record_relative_image_resolved_against_root(tmp_path: Path) -> None:
    rec = VQARecord.from_json({"question_id": 7, "image": "imgs/x.png", "question": "q"}, root=tmp_path)
    assert rec.question_id == "7"
    assert Path(rec.image) == tmp_path / "imgs" / "x.png"


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"question_id": ""}, "question_id"),
        ({"question_id": 3}, "question_id"),
        ({"answers": "yes"}, "answers"),
        ({"answers": ["yes", 1]}, "answers"),
        ({"image": 5}, "image"),
        ({"question": None}, "question"),
    ],
)
def test_record_rejects_bad_fields(kwargs: dict, fragment: str) -> None:
    base = {"question_id": "q", "image": "x.png", "question": "q?", "answers": ["a"]}
    with pytest.raises(DataError, match=fragment):
        VQARecord(**{**base, **kwargs})


def test_missing_image_names_file_and_record(tmp_path: Path) -> None:
    rec = VQARecord("q9", str(tmp_path / "nope.png"), "q?", ["a"])
    with pytest.raises(DataError) as exc:
        rec.load_image()
    assert "nope.png" in str(exc.value) and "q9" in str(exc.value)


def test_unreadable_image_names_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad.png"):
        VQARecord("q", str(bad), "q?", ["a"]).load_image()


# --- io --------------------------------------------------------------------------------------------

def test_read_json_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing.json.*not found"):
        read_json(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"a": 1,,}')
    with pytest.raises(DataError, match=r"broken.json.*line 1"):
        read_json(broken)


def test_atomic_write_leaves_no_temp_files_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "r.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert read_json(target) == {"a": 2}
    assert os.listdir(target.parent) == ["r.json"]


def test_atomic_write_failure_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"a": object()})  # not serialisable: fails before the rename
    assert read_json(target) == {"a": 1}


@pytest.mark.parametrize("rel", ["../secret.txt", "a/../../x.jpg", "/etc/passwd"])
def test_safe_join_refuses_escapes(tmp_path: Path, rel: str) -> None:
    with pytest.raises(DataError, match="escapes the data root"):
        safe_join(tmp_path, rel, record="q1")


def test_safe_join_allows_inside(tmp_path: Path) -> None:
    assert safe_join(tmp_path, "a/b/../c.jpg") == (tmp_path / "a" / "c.jpg").resolve()


# --- predictions files -----------------------------------------------------------------------------

def test_writer_resumes_without_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    with PredictionWriter(path) as w:
        w.write([{"question_id": "a", "prediction": "yes"}, {"question_id": 2, "prediction": "no"}])
    with PredictionWriter(path) as w:
        assert set(w.done) == {"a", "2"}
        with pytest.raises(DataError, match="already predicted"):
            w.write([{"question_id": "a", "prediction": "x"}])
        w.write([{"question_id": "c", "prediction": "red"}])
    assert {k: v["prediction"] for k, v in read_predictions(path).items()} == {"a": "yes", "2": "no", "c": "red"}


def test_torn_tail_is_dropped_and_truncated_on_resume(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"question_id": "a", "prediction": "yes"}\n{"question_id": "b", "predi')
    assert set(read_predictions(path)) == {"a"}
    with PredictionWriter(path) as w:
        w.write([{"question_id": "b", "prediction": "no"}])
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line) for line in lines)


def test_malformed_middle_line_and_duplicates_are_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": "a", "prediction": "y"}\nnot json\n{"question_id": "b", "prediction": "n"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl.*line 2"):
        read_predictions(bad)
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"question_id": "a", "prediction": "y"}\n{"question_id": "a", "prediction": "n"}\n')
    with pytest.raises(DataError, match="twice"):
        read_predictions(dup)


# --- results schema --------------------------------------------------------------------------------

def _results(**over) -> RunResults:
    splits = {
        "id": SplitResult(role="id", shift_type="none", n=10, vqa_accuracy=80.0),
        "n1": SplitResult(role="near", shift_type="vision", n=10, vqa_accuracy=60.0),
        "n2": SplitResult(role="near", shift_type="question", n=10, vqa_accuracy=50.0),
        "f1": SplitResult(role="far", shift_type="far", n=10, vqa_accuracy=20.0),
    }
    base = dict(
        run_id="r", created_at="2026-01-01T00:00:00+00:00", method="vanilla", model=ModelInfo(name_or_path="tiny"),
        suite="embedded", suite_version="1.0", seed=0, dtype="float32", batch_size=64, scoring_variant="official",
        package_version="0.1.0", config={}, splits=splits, averages=compute_averages(splits),
    )
    return RunResults(**{**base, **over})


def test_averages_follow_the_paper() -> None:
    avg = _results().averages
    assert avg.id == 80.0 and avg.near_ood == 55.0 and avg.far_ood == 20.0
    assert avg.ood == pytest.approx((60 + 50 + 20) / 3)  # mean over all OOD splits, not of the two means


def test_results_round_trip(tmp_path: Path) -> None:
    r = _results()
    write_results(r, tmp_path / "results.json")
    assert read_results(tmp_path / "results.json") == r


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda d: d.pop("method"), "method"),
        (lambda d: d["splits"]["id"].update(vqa_accuracy=140.0), "vqa_accuracy"),
        (lambda d: d["splits"]["id"].update(role="middle"), "role"),
        (lambda d: d.update(unexpected=1), "unexpected"),
        (lambda d: d.update(splits={}), "at least one split"),
        (lambda d: d.update(schema_version=99), "schema_version"),
    ],
)
def test_bad_results_files_are_rejected(tmp_path: Path, mutate, fragment: str) -> None:
    d = json.loads(_results().model_dump_json())
    mutate(d)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(d))
    with pytest.raises(DataError) as exc:
        read_results(path)
    assert "results.json" in str(exc.value) and fragment in str(exc.value)


def test_malformed_results_json(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text("{")
    with pytest.raises(DataError, match="malformed JSON"):
        read_results(path)
