"""Smaller defects a user reported, each pinned by a test with hand-worked expectations.

1. a predictions file whose valid last line has no final newline: the line counts (scoring and
   resume); a line genuinely cut mid-write is still dropped on resume and named when scoring;
2. predicted question ids that the scored split does not have are an error naming the file;
3. an empty predictions file is an error that says so and names the file;
4. re-scoring a run gives the runner's rounded numbers, and leaves results.json byte-identical
   when nothing changed;
5. names with rich markup in them (``[/bold]``) are printed as text, not parsed;
6. tables of numbers never cut a number short ("55…") in an 80-column console.

The run folders and predictions files are built with ``test_score_cli``'s helpers and its
small registered suite (whose per-question scores are worked out by hand there).
"""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from rich.console import Console

import test_score_cli as sc  # registers "scoretest-suite"; its records, predictions and HAND scores
from test_leaderboard import BOARD, fake_results
from vqa_ood_bench import distributed as dist
from vqa_ood_bench.cli import main
from vqa_ood_bench.data.registry import DATASETS, register_dataset
from vqa_ood_bench.data.suite import SUITES, SplitSpec, Suite, register_suite
from vqa_ood_bench.errors import DataError
from vqa_ood_bench.predict.jsonl import PredictionWriter, read_predictions
from vqa_ood_bench.report.leaderboard import by_group, entry_from_results, load_entries, write_entry
from vqa_ood_bench.report.schema import ModelInfo, RunResults, SplitResult, compute_averages, read_results, write_results
from vqa_ood_bench.report.table import leaderboard_table, results_table

# --- a split whose accuracy is not a short decimal -------------------------------------------------
# Official VQA accuracy averages min(1, matches / 3) over the 10 leave-one-out subsets of the 10
# answers. Predicting "red":
#   t1: 1 of 10 answers is red -> 9 subsets hold it: 9 * (1/3) / 10           = 0.3
#   t2: 2 of 10 are red        -> 2 subsets hold one, 8 hold two:
#                                 (2 * 1/3 + 8 * 2/3) / 10                     = 0.6
#   t3: 10 of 10 are red                                                       = 1.0
# Split: 100 * (0.3 + 0.6 + 1.0) / 3 = 190 / 3 = 63.333…, stored as round(…, 4) = 63.3333.
# Question types: "what [/b] color" (t1, t2): 100 * 0.9 / 2 = 45.0; "is it" (t3): 100.0.
THIRDS_SUITE = "smallfix-thirds-suite"
MARKUP_QTYPE = "what [/b] color"  # a type name that is also a rich closing tag
THIRDS = [
    sc._r("t1", ["red"] + ["blue"] * 9, "other", MARKUP_QTYPE, "thirds"),
    sc._r("t2", ["red"] * 2 + ["blue"] * 8, "other", MARKUP_QTYPE, "thirds"),
    sc._r("t3", ["red"] * 10, "other", "is it", "thirds"),
]
THIRDS_PREDS = {"t1": "red", "t2": "red", "t3": "red"}
THIRDS_ACC = 63.3333
THIRDS_QTYPES = {MARKUP_QTYPE: 45.0, "is it": 100.0}

if "smallfix-thirds" not in DATASETS:
    register_dataset("smallfix-thirds", role="id", shift_type="none")(lambda root, **kw: list(THIRDS))
if THIRDS_SUITE not in SUITES:

    @register_suite(THIRDS_SUITE)
    def _thirds_suite() -> Suite:
        spec = SplitSpec(name="thirds", dataset="smallfix-thirds", role="id", shift_type="none")
        return Suite(name=THIRDS_SUITE, description="small fixes test", train=spec, validation=spec, evaluation=(spec,),
                     needs_data_root=False, version="1")


def _thirds_run(tmp_path: Path, *, as_the_runner_writes: bool) -> Path:
    """A run folder of the thirds suite; its numbers either the hand-worked ones or stale."""
    run = tmp_path / "thirds-run"
    sc._write_preds(run / "predictions" / "thirds.jsonl", THIRDS_PREDS)
    if as_the_runner_writes:  # rounded to 4 places, averages from compute_averages: runner.py's way
        split = SplitResult(role="id", shift_type="none", n=3, vqa_accuracy=THIRDS_ACC, per_answer_type={"other": THIRDS_ACC},
                            per_question_type=THIRDS_QTYPES, predictions_file="predictions/thirds.jsonl")
    else:
        split = SplitResult(role="id", shift_type="none", n=9, vqa_accuracy=1.0, predictions_file="predictions/thirds.jsonl")
    splits = {"thirds": split}
    results = RunResults(
        run_id="r-thirds", created_at="2025-01-01T00:00:00Z", method="zero-shot", model=ModelInfo(name_or_path="tiny"),
        suite=THIRDS_SUITE, suite_version="1", seed=0, dtype="float32", batch_size=8, scoring_variant="official",
        package_version="0.1.0", config={"suite": THIRDS_SUITE, "scoring_variant": "official", "data_root": None, "limit": None},
        splits=splits, averages=compute_averages(splits),
    )
    write_results(results, run / "results.json")
    return run


def _strip_final_newline(path: Path) -> None:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    path.write_bytes(data[:-1])


# --- 1. last line without a final newline -------------------------------------------------------------


def test_valid_last_line_without_newline_is_scored(tmp_path, capsys):
    loose = tmp_path / "near.jsonl"
    sc._write_preds(loose, sc.PREDS["near"])
    _strip_final_newline(loose)
    rc, out, err = sc._run_cli(capsys, "--predictions", loose, "--suite", sc.SUITE, "--json")
    assert rc == 0, err
    obj = json.loads(out)
    assert obj["n"] == 2 and obj["vqa_accuracy"] == pytest.approx(sc._mean("official", ["n1", "n2"]))  # n2 (the last line) counted

    run = sc._make_run(tmp_path)
    _strip_final_newline(run / "predictions" / "id.jsonl")
    rc, out, err = sc._run_cli(capsys, "--predictions", run, "--json")
    assert rc == 0, err
    assert read_results(run / "results.json").splits["id"].vqa_accuracy == pytest.approx(sc._mean("official", ["i1", "i2", "i3", "i4"]))


def test_resume_keeps_a_whole_unterminated_last_line_and_drops_a_torn_one(tmp_path):
    whole = tmp_path / "whole.jsonl"
    whole.write_text('{"question_id": "a", "prediction": "yes"}\n{"question_id": "b", "prediction": "no"}')
    with PredictionWriter(whole) as w:
        assert set(w.done) == {"a", "b"}  # b is not predicted again
        w.write([{"question_id": "c", "prediction": "red"}])
    rows = [json.loads(line) for line in whole.read_text().splitlines()]
    assert [(r["question_id"], r["prediction"]) for r in rows] == [("a", "yes"), ("b", "no"), ("c", "red")]

    torn = tmp_path / "torn.jsonl"
    torn.write_text('{"question_id": "a", "prediction": "yes"}\n{"question_id": "b", "predi')
    assert set(read_predictions(torn)) == {"a"}  # what a kill leaves: b is redone
    with pytest.raises(DataError, match=r"torn.jsonl.*line 2: the file ends in the middle of a line"):
        read_predictions(torn, allow_torn_tail=False)
    with PredictionWriter(torn) as w:
        assert set(w.done) == {"a"}
        w.write([{"question_id": "b", "prediction": "no"}])
    rows = [json.loads(line) for line in torn.read_text().splitlines()]
    assert [(r["question_id"], r["prediction"]) for r in rows] == [("a", "yes"), ("b", "no")]


def test_merge_counts_a_shard_whose_last_line_has_no_newline(tmp_path):
    target = tmp_path / "split.jsonl"
    for r, qids in enumerate((["a", "c"], ["b"])):
        dist.shard_path(target, r, 2).write_text(
            "\n".join(json.dumps({"question_id": q, "prediction": q.upper()}) for q in qids))  # no final newline
    dist.merge_shards(target, ["a", "b", "c"], 2)
    assert [json.loads(line) for line in target.read_text().splitlines()] == [
        {"question_id": q, "prediction": q.upper()} for q in ("a", "b", "c")
    ]


def test_scoring_a_file_cut_mid_line_names_the_cut_not_a_missing_prediction(tmp_path, capsys):
    loose = tmp_path / "near.jsonl"
    loose.write_text(json.dumps({"question_id": "n1", "prediction": "dog"}) + '\n{"question_id": "n2", "predic')
    rc, _, err = sc._run_cli(capsys, "--predictions", loose, "--suite", sc.SUITE)
    assert rc == 2
    assert str(loose) in err and "line 2" in err and "middle of a line" in err


# --- 2. unknown question ids -----------------------------------------------------------------------------


def test_unknown_question_ids_in_a_run_are_an_error_naming_file_and_ids(tmp_path, capsys):
    run = sc._make_run(tmp_path)
    sc._write_preds(run / "predictions" / "near.jsonl", {**sc.PREDS["near"], "zz1": "dog", "zz2": "cat"})
    before = (run / "results.json").read_bytes()
    rc, _, err = sc._run_cli(capsys, "--predictions", run, "--json")
    assert rc == 2
    assert "near.jsonl" in err and "'zz1'" in err and "'zz2'" in err and "split 'near'" in err
    assert (run / "results.json").read_bytes() == before


def test_unknown_question_ids_in_a_loose_file_name_the_first_ones(tmp_path, capsys):
    loose = tmp_path / "whatever.jsonl"
    sc._write_preds(loose, {**sc.PREDS["near"], "x1": "a", "x2": "b", "x3": "c", "x4": "d"})
    rc, _, err = sc._run_cli(capsys, "--predictions", loose, "--dataset", "scoretest-near")
    assert rc == 2
    assert str(loose) in err and "4 predicted question id(s)" in err
    assert "'x1', 'x2', 'x3' and 1 more" in err  # the first three, in file order


# --- 3. empty predictions file ------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_empty_predictions_file_is_named_and_said_to_be_empty(tmp_path, capsys, content):
    loose = tmp_path / "id.jsonl"
    loose.write_text(content)
    rc, _, err = sc._run_cli(capsys, "--predictions", loose, "--suite", sc.SUITE)
    assert rc == 2
    assert str(loose) in err and "empty" in err


# --- 4. rounding and leaving results.json alone ------------------------------------------------------------


def test_rescore_rounds_as_the_runner_does(tmp_path, capsys):
    run = _thirds_run(tmp_path, as_the_runner_writes=False)
    rc, out, err = sc._run_cli(capsys, "--predictions", run, "--json")
    assert rc == 0, err
    split = read_results(run / "results.json").splits["thirds"]
    assert split.n == 3
    assert split.vqa_accuracy == THIRDS_ACC  # exactly: not 63.33333333333333
    assert split.per_answer_type == {"other": THIRDS_ACC}
    assert split.per_question_type == THIRDS_QTYPES
    assert '"vqa_accuracy": 63.3333,' in (run / "results.json").read_text()
    assert json.loads(out)["splits"]["thirds"]["vqa_accuracy"] == THIRDS_ACC


def test_same_numbers_leave_results_json_byte_identical(tmp_path, capsys):
    run = _thirds_run(tmp_path, as_the_runner_writes=True)
    before = (run / "results.json").read_bytes()
    rc, out, err = sc._run_cli(capsys, "--predictions", run, "--json")
    assert rc == 0, err
    obj = json.loads(out)
    assert obj["results_file"] is None and obj["results_changed"] is False
    assert (run / "results.json").read_bytes() == before

    # A stale file is rewritten once; scoring it again changes nothing.
    stale = sc._make_run(tmp_path)
    assert sc._run_cli(capsys, "--predictions", stale, "--json")[0] == 0
    rewritten = (stale / "results.json").read_bytes()
    rc, out, _ = sc._run_cli(capsys, "--predictions", stale)
    assert rc == 0 and "unchanged" in out
    assert (stale / "results.json").read_bytes() == rewritten


# --- 5. rich markup in names ------------------------------------------------------------------------------


def test_leaderboard_show_prints_markup_in_names_as_text(tmp_path, capsys):
    entry = entry_from_results(fake_results(), entry_id="markup-entry")
    entry = entry.model_copy(update={"method": "Vanilla [/bold] FT", "backbone": "[red]tiny[/red]"})
    write_entry(entry, tmp_path / "markup-entry.json")
    for extra in ([], ["--splits"]):
        assert main(["leaderboard", "show", "--dir", str(tmp_path), *extra]) == 0
        out = capsys.readouterr().out
        assert "Vanilla [/bold] FT" in out and "[red]tiny[/red]" in out


def test_results_and_score_tables_print_markup_in_names_as_text(tmp_path, capsys):
    res = _results_with_splits(["[/bold]vanilla"], n_splits=2)
    console = Console(width=120, record=True, file=io.StringIO())
    console.print(results_table(res))
    assert "[/bold]vanilla" in console.export_text()

    run = _thirds_run(tmp_path, as_the_runner_writes=True)
    rc, out, err = sc._run_cli(capsys, "--predictions", run)  # the per-question-type table shows MARKUP_QTYPE
    assert rc == 0, err
    assert MARKUP_QTYPE in out


# --- 6. numbers never cut ---------------------------------------------------------------------------------

NUMBER = re.compile(r"[-+]?\d+\.\d+|–")


def _number_cells(text: str) -> Counter:
    """Every body cell of the rendered tables that is a whole number (or the "–" placeholder)."""
    cells: Counter = Counter()
    for line in text.splitlines():
        if line.startswith("│"):
            cells.update(c.strip() for c in line.strip("│").split("│") if NUMBER.fullmatch(c.strip()))
    return cells


def _results_with_splits(methods, n_splits=10):
    """One run per method over ``n_splits`` splits (long names, values of every width)."""
    roles = ["id"] + ["near"] * ((n_splits - 1) // 2) + ["far"] * (n_splits - 1 - (n_splits - 1) // 2)
    out = []
    for m, method in enumerate(methods):
        values = [100.0, 5.25, 55.4, 0.0, 99.96, 12.34, 7.0, 63.3333, 88.8, 41.06][:n_splits]
        values = [max(0.0, v - 3 * m) for v in values]
        splits = {f"split-number-{i}-{role}": SplitResult(role=role, shift_type="none" if role == "id" else ("far" if role == "far" else "vision"),
                                                          n=10, vqa_accuracy=v)
                  for i, (role, v) in enumerate(zip(roles, values))}
        out.append(RunResults(
            run_id=f"r{m}", created_at="2025-01-01T00:00:00Z", method=method, method_params={"adapter": "lora"},
            model=ModelInfo(name_or_path="tiny"), suite="embedded", suite_version="1", seed=0, dtype="float32", batch_size=8,
            scoring_variant="official", package_version="0.1.0", config={}, splits=splits, averages=compute_averages(splits),
        ))
    return out


@pytest.mark.parametrize("width", [80, 60])
def test_results_table_never_cuts_a_number(width):
    runs = _results_with_splits(["vanilla", "digrap", "wise-ft"])
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(results_table(runs, delta_baseline="vanilla"))
    text = console.export_text()
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    want: Counter = Counter()
    for r in runs:
        want.update(f"{s.vqa_accuracy:.1f}" for s in r.splits.values())
        want.update(f"{v:.1f}" for v in (r.averages.near_ood, r.averages.far_ood, r.averages.ood))
        # Δ vs vanilla's run, in percent, computed here from the averages (vanilla: 0 %)
        base = runs[0].averages
        want.update(f"{(x - b) / b * 100:+.2f}" for x, b in ((r.averages.id, base.id), (r.averages.ood, base.ood)))
    assert _number_cells(text) == want


def test_leaderboard_table_never_cuts_a_number_at_80_columns():
    entries = [e for _, e in load_entries(BOARD / "paper", suite="paper-vqa")]
    ((name, _, _), group), = by_group(entries).items()
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(leaderboard_table(name, group, with_splits=True))
    text = console.export_text()
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    want: Counter = Counter()
    for e in group:
        want.update("–" if e.value(s) is None else f"{e.value(s):.2f}"
                    for s in {n for g in group for n in g.splits})
        want.update("–" if v is None else f"{v:.2f}" for v in e.averages.model_dump().values())
    assert _number_cells(text) == want
    assert all(e.entry_id in text for e in group)  # the key column, repeated in every part, is whole


def test_a_missing_training_image_is_a_data_error_naming_the_file(tmp_path):
    from vqa_ood_bench.errors import DataError
    from vqa_ood_bench.train.engine import TrainExample, VQACollator

    missing = tmp_path / "gone.png"
    with pytest.raises(DataError, match="image file not found") as err:
        VQACollator(processor=None)([TrainExample(image=str(missing), prompt="what?", answer="red")])
    assert "gone.png" in str(err.value)


def test_clipmatch_without_open_clip_names_the_extra(monkeypatch):
    import sys

    from vqa_ood_bench.errors import ConfigError
    from vqa_ood_bench.score.clipmatch import template_set

    monkeypatch.setitem(sys.modules, "open_clip", None)  # import fails
    with pytest.raises(ConfigError, match=r"pip install 'vqa-ood-bench\[clipmatch\]'"):
        template_set("openai_imagenet")
    assert template_set("none") == ("{}",)  # no open_clip needed


def test_model_selection_keeps_its_best_weights_in_host_memory():
    import torch

    from vqa_ood_bench.train.engine import _trainable_state

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    model[1].weight.requires_grad_(False)
    best = _trainable_state(model)
    assert set(best) == {"0.weight", "0.bias", "1.bias"}  # trainable only
    assert all(t.device.type == "cpu" for t in best.values())
    before = best["0.weight"].clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)  # training goes on: the kept copy must not follow
    assert torch.equal(best["0.weight"], before)
