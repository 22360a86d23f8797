"""Leaderboard entries: schema round trip, clear errors, export, add, reproduce (and a tampered entry flagged)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from vqa_ood_bench.cli import main
from vqa_ood_bench.errors import ConfigError, DataError
from vqa_ood_bench.report.leaderboard import (
    LeaderboardEntry,
    entry_from_results,
    export_csv,
    export_json,
    load_entries,
    read_entry,
    write_entry,
)
from vqa_ood_bench.report.leaderboard_reproduce import compare, missing_requirements, record
from vqa_ood_bench.report.schema import ModelInfo, RunResults, SplitResult, compute_averages, read_results, write_results

REPO = Path(__file__).resolve().parents[1]
BOARD = REPO / "vqa_ood_bench" / "leaderboards"


def fake_results(model: str = "google/paligemma-3b-pt-224", suite: str = "paper-vqa", values=(80.0, 60.0, 30.0)) -> RunResults:
    """A hand-made run (no training): one ID, one near and one far split of the given suite."""
    splits = {
        "vqav2-val": SplitResult(role="id", shift_type="none", n=10, vqa_accuracy=values[0]),
        "iv-vqa": SplitResult(role="near", shift_type="vision", n=10, vqa_accuracy=values[1]),
        "textvqa": SplitResult(role="far", shift_type="far", n=10, vqa_accuracy=values[2]),
    }
    config = {"method": "vanilla", "adapter": "lora", "model": model, "suite": suite, "data_root": None, "seed": 0}
    from vqa_ood_bench.config import RunConfig

    return RunResults(
        run_id="20250101-000000-vanilla-abc123", created_at="2025-01-01T00:00:00+00:00", method="vanilla",
        method_params={"name": "vanilla", "adapter": "lora"}, model=ModelInfo(name_or_path=model), suite=suite, suite_version="1",
        seed=0, dtype="float32", batch_size=8, scoring_variant="official", package_version="0.1.0",
        config=RunConfig.model_validate(config).model_dump(mode="json"), splits=splits, averages=compute_averages(splits),
    )


def test_paper_entries_load_and_round_trip(tmp_path: Path) -> None:
    entries = load_entries(BOARD / "paper")
    assert len(entries) >= 40
    for path, entry in entries:
        copy = tmp_path / path.name
        write_entry(entry, copy)
        again = read_entry(copy)
        assert again == entry
        # and the file on disk is exactly what write_entry produces (no hand-edited drift)
        assert json.loads(copy.read_text()) == json.loads(path.read_text()), path.name


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda d: d["splits"]["vqav2-val"].update(vqa_accuracy=120.0), "splits.vqav2-val.vqa_accuracy"),
        (lambda d: d.update(colour="red"), "colour"),
        (lambda d: d.update(status="verified"), "status"),
        (lambda d: d["splits"]["iv-vqa"].pop("vqa_accuracy"), "have no vqa_accuracy"),
        (lambda d: d.update(status="reproduced"), "needs the run config"),
        (lambda d: d.update(entry_id="other-name"), "does not match the file name"),
    ],
)
def test_malformed_entry_names_file_and_field(tmp_path: Path, edit, fragment) -> None:
    data = json.loads((BOARD / "paper" / "paper-tab3-digrap.json").read_text())
    edit(data)
    path = tmp_path / "paper-tab3-digrap.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as info:
        read_entry(path)
    assert str(path) in str(info.value) and fragment in str(info.value)


def test_broken_file_gives_one_line_cli_error(tmp_path: Path, capsys) -> None:
    shutil.copy(BOARD / "paper" / "paper-tab3-digrap.json", tmp_path)
    (tmp_path / "broken.json").write_text('{"entry_id": "broken", ')
    assert main(["leaderboard", "show", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "broken.json" in err and "malformed JSON" in err and "Traceback" not in err and err.count("\n") == 1


def test_export_json_and_csv_equal_the_entries(tmp_path: Path, capsys) -> None:
    entries = {e.entry_id: e for _, e in load_entries(BOARD / "paper")}
    assert main(["leaderboard", "export", "--dir", str(BOARD / "paper"), "--format", "json", "--out", str(tmp_path / "all.json")]) == 0
    exported = json.loads((tmp_path / "all.json").read_text())["entries"]
    assert {e["entry_id"]: LeaderboardEntry.model_validate(e) for e in exported} == entries

    assert main(["leaderboard", "export", "--dir", str(BOARD / "paper"), "--format", "csv", "--out", str(tmp_path / "all.csv")]) == 0
    frame = pd.read_csv(tmp_path / "all.csv")
    assert len(frame) == len(entries) and frame["entry_id"].is_unique
    split_cols = [c for c in frame.columns if c.startswith("split:")]
    for _, row in frame.iterrows():
        e = entries[row["entry_id"]]
        assert row["method"] == e.method and row["suite"] == e.suite and row["metric"] == e.metric
        for field in ("id", "near_ood", "far_ood", "ood"):
            want = getattr(e.averages, field)
            got = row[f"avg_{field}"]
            assert (math.isnan(got) if want is None else got == pytest.approx(want, abs=1e-12)), (e.entry_id, field)
        for col in split_cols:
            want = e.value(col[len("split:"):])
            assert (math.isnan(row[col]) if want is None else row[col] == pytest.approx(want, abs=1e-12)), (e.entry_id, col)
    assert main(["leaderboard", "export", "--dir", str(BOARD / "paper"), "--format", "xml", "--out", str(tmp_path / "x")]) == 2
    assert "unknown export format 'xml'" in capsys.readouterr().err


def test_show_json_and_table_order(capsys) -> None:
    assert main(["leaderboard", "show", "--dir", str(BOARD / "paper"), "--suite", "paper-vqa", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert {e["entry_id"] for e in shown} == {e.entry_id for _, e in load_entries(BOARD / "paper", suite="paper-vqa")}
    assert main(["leaderboard", "show", "--dir", str(BOARD / "paper"), "--suite", "paper-vqa"]) == 0
    out = capsys.readouterr().out
    # rows sorted by OOD average, best first: DiGraP (63.50) above Vanilla FT (62.64) above FTP (62.18)
    assert out.index("paper-tab3-digrap") < out.index("paper-tab3-vanilla-ft") < out.index("paper-tab3-ftp") < out.index("paper-tab6-zero-shot")


def test_add_from_a_run_folder_and_what_reproduce_needs(tmp_path: Path, capsys, monkeypatch) -> None:
    run = tmp_path / "run"
    results = fake_results()
    write_results(results, run / "results.json")
    board = tmp_path / "board"
    assert main(["leaderboard", "add", str(run), "--dir", str(board), "--tolerance", "0.5"]) == 0
    (path,) = list((board / "submitted").glob("*.json"))
    entry = read_entry(path)
    assert entry.entry_id == "paper-vqa-vanilla-lora-abc123" and entry.status == "reported" and entry.tolerance == 0.5
    assert entry.config == results.config and entry.source == "vqa-ood-bench 0.1.0 run 20250101-000000-vanilla-abc123"
    assert {n: entry.value(n) for n in entry.splits} == {n: s.vqa_accuracy for n, s in results.splits.items()}
    assert entry.averages == compute_averages(results.splits)
    # a second add of the same run is refused rather than silently overwriting
    assert main(["leaderboard", "add", str(run), "--dir", str(board)]) == 2
    assert "exists" in capsys.readouterr().err

    # a paper-suite entry needs the data and a GPU, and says which is missing before doing anything
    missing = missing_requirements(entry, cuda_available=False)
    assert any("--data-root" in m for m in missing) and any("CUDA GPU" in m for m in missing)
    assert missing_requirements(entry, data_root=str(tmp_path), cuda_available=True) == []
    assert main(["leaderboard", "reproduce", entry.entry_id, "--dir", str(board), "--out", str(tmp_path / "re")]) == 2
    err = capsys.readouterr().err
    assert "cannot reproduce paper-vqa-vanilla-lora-abc123 here: missing" in err and "--data-root" in err
    assert not (tmp_path / "re").exists() and read_entry(path) == entry  # nothing ran, nothing recorded

    # a reported paper entry has no config: it says so
    assert main(["leaderboard", "reproduce", "paper-tab3-digrap", "--dir", str(BOARD)]) == 2
    assert "without one" in capsys.readouterr().err


def test_compare_flags_splits_beyond_tolerance() -> None:
    entry = entry_from_results(fake_results(values=(80.0, 60.0, 30.0)), entry_id="x", tolerance=1.0)
    near_miss = compare(entry, fake_results(values=(80.9, 59.1, 30.0)))
    assert near_miss.all_within and near_miss.diffs["vqav2-val"] == pytest.approx(0.9)
    off = compare(entry, fake_results(values=(80.0, 61.2, 27.0)))
    assert off.off_splits == ["iv-vqa", "textvqa"] and off.diffs["textvqa"] == pytest.approx(-3.0)
    assert record(entry, near_miss).status == "reproduced" and record(entry, off).status == "reported"
    missing_split = fake_results()
    del missing_split.splits["textvqa"]
    rep = compare(entry, missing_split)
    assert rep.within_tolerance["textvqa"] is False and rep.measured["textvqa"] is None
    with pytest.raises(ConfigError, match="no leaderboard entry"):
        from vqa_ood_bench.report.leaderboard import find_entry

        find_entry("nosuch", BOARD)


SMOKE = """\
method: vanilla
adapter: full
limit: 24
train:
  learning_rate: 0.003
  epochs: 30
  batch_size: 8
  validation_size: 16
  warmup_ratio: 0.0
"""


@pytest.mark.slow
def test_submitted_embedded_entry_reproduces_and_a_tampered_copy_is_flagged(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "smoke.yaml"
    cfg.write_text(SMOKE)
    run = tmp_path / "run"
    assert main(["run", "--config", str(cfg), "--out", str(run), "--json"]) == 0
    capsys.readouterr()
    submitted = read_results(run / "results.json")
    assert submitted.averages.ood and submitted.averages.ood > 0  # a model that learned something, so equality means something
    board = tmp_path / "board"
    assert main(["leaderboard", "add", str(run), "--dir", str(board), "--id", "smoke", "--tolerance", "0.5"]) == 0
    path = board / "submitted" / "smoke.json"
    entry = read_entry(path)
    assert entry.tiny_pretrain_steps == 4 and entry.model_key

    # Re-run end to end into a fresh folder: trains again (not resumed) and matches within tolerance.
    rerun = tmp_path / "rerun"
    assert main(["leaderboard", "reproduce", "smoke", "--dir", str(board), "--out", str(rerun)]) == 0
    assert "reproduced: all 10 splits" in capsys.readouterr().err
    assert "resumed" not in json.loads((rerun / "fit.json").read_text())
    done = read_entry(path)
    assert done.status == "reproduced" and len(done.reproductions) == 1
    rep = done.reproductions[0]
    measured = read_results(rerun / "results.json")
    assert rep.measured == {n: s.vqa_accuracy for n, s in measured.splits.items()}
    assert all(abs(d) <= 0.5 for d in rep.diffs.values()) and rep.model_key == entry.model_key

    # Tamper: edit one split's number by hand (and its averages, as a careful forger would).
    data = json.loads(path.read_text())
    data["entry_id"] = "tampered"
    data["splits"]["easyvqa-test"]["vqa_accuracy"] += 5.0
    data["averages"]["id"] += 5.0
    data["status"], data["reproductions"] = "reported", []
    tampered = board / "submitted" / "tampered.json"
    tampered.write_text(json.dumps(data))
    # (same --out: the identical config resumes the re-run above instead of training a third time)
    assert main(["leaderboard", "reproduce", str(tampered), "--out", str(rerun)]) == 1
    captured = capsys.readouterr()
    assert "NOT REPRODUCED" in captured.err and "easyvqa-test" in captured.err and "diff -5.00" in captured.err
    flagged = read_entry(tampered)
    assert flagged.status == "reported" and flagged.verdict() == "OFF"
    assert flagged.reproductions[-1].off_splits == ["easyvqa-test"]


# ---------------------------------------------------------------- integrity: one ranking per variant, re-scored submissions


def test_entries_of_two_variants_are_ranked_in_two_tables(tmp_path: Path, capsys) -> None:
    """Official and LAVIS numbers of one suite never share a ranking: `show` prints two tables and
    the CSV two groups, each sorted on its own (one ranking would interleave them: 55, 50, 40, 35)."""
    board = tmp_path / "board"
    ood = {"lav-hi": ("lavis", (80.0, 70.0, 40.0)), "off-hi": ("official", (80.0, 60.0, 40.0)),  # OOD averages 55, 50
           "lav-lo": ("lavis", (80.0, 50.0, 30.0)), "off-lo": ("official", (80.0, 40.0, 30.0))}  # 40, 35
    for entry_id, (variant, values) in ood.items():
        entry = entry_from_results(fake_results(values=values), entry_id=entry_id).model_copy(update={"variant": variant})
        write_entry(entry, board / f"{entry_id}.json")
    assert main(["leaderboard", "show", "--dir", str(board)]) == 0
    out = capsys.readouterr().out
    lavis, official = "paper-vqa · VQA accuracy (lavis)", "paper-vqa · VQA accuracy (official)"
    assert out.index(lavis) < out.index("lav-hi") < out.index("lav-lo") < out.index(official) < out.index("off-hi") < out.index("off-lo")

    assert main(["leaderboard", "export", "--dir", str(board), "--format", "csv", "--out", str(tmp_path / "all.csv")]) == 0
    frame = pd.read_csv(tmp_path / "all.csv")
    assert list(frame["entry_id"]) == ["lav-hi", "lav-lo", "off-hi", "off-lo"]
    assert list(frame["group"]) == [lavis, lavis, official, official] and list(frame["rank"]) == [1, 2, 1, 2]


def embedded_run(run: Path, correct: dict[str, int]) -> RunResults:
    """A run folder on the embedded suite (limit 10) with predictions files: per split the first
    ``correct[split]`` predictions right, the rest wrong. An embedded record's ten answers agree, so
    a right prediction scores 100 and a wrong one 0 in every variant: accuracy = 10 * correct."""
    from vqa_ood_bench.data.suite import get_suite

    suite = get_suite("embedded")  # built from the installed easy-vqa package: offline
    base = fake_results(suite="embedded")
    splits = {}
    for name, k in correct.items():
        spec = suite.split(name)
        records = suite.load(spec, None, limit=10)
        lines = [{"question_id": r.question_id, "prediction": r.answers[0] if i < k else "xyzzy"} for i, r in enumerate(records)]
        (run / "predictions").mkdir(parents=True, exist_ok=True)
        (run / "predictions" / f"{name}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        splits[name] = SplitResult(role=spec.role, shift_type=spec.shift_type, n=len(records), vqa_accuracy=10.0 * k,
                                   predictions_file=f"predictions/{name}.jsonl")
    results = base.model_copy(update={"suite_version": suite.version, "config": {**base.config, "limit": 10}, "splits": splits,
                                      "averages": compute_averages(splits)})
    write_results(results, run / "results.json")
    return results


CORRECT = {"easyvqa-test": 7, "iv-edit": 4, "text-read": 2}


def test_add_rescores_a_faithful_run_and_stores_its_prediction_hashes(tmp_path: Path) -> None:
    import hashlib

    run, board = tmp_path / "run", tmp_path / "board"
    embedded_run(run, CORRECT)
    assert main(["leaderboard", "add", str(run), "--dir", str(board), "--id", "faithful"]) == 0
    entry = read_entry(board / "submitted" / "faithful.json")
    assert entry.predictions_sha256 == {
        f"predictions/{name}.jsonl": hashlib.sha256((run / "predictions" / f"{name}.jsonl").read_bytes()).hexdigest() for name in CORRECT
    }
    assert {n: entry.value(n) for n in entry.splits} == {"easyvqa-test": 70.0, "iv-edit": 40.0, "text-read": 20.0}


def test_add_refuses_a_results_file_its_predictions_do_not_give(tmp_path: Path, capsys) -> None:
    run, board = tmp_path / "run", tmp_path / "board"
    embedded_run(run, CORRECT)
    data = json.loads((run / "results.json").read_text())
    data["splits"]["iv-edit"]["vqa_accuracy"] = 60.0  # the predictions give 40.0
    (run / "results.json").write_text(json.dumps(data))
    assert main(["leaderboard", "add", str(run), "--dir", str(board), "--id", "edited"]) == 2
    err = capsys.readouterr().err
    assert "split 'iv-edit'" in err and "60.0" in err and "40.0" in err and err.count("\n") == 1
    assert not (board / "submitted" / "edited.json").exists()
