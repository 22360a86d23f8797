"""`vqa-ood-bench run`: one-line errors for bad arguments, and a fast end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vqa_ood_bench.cli import main
from vqa_ood_bench.data.suite import get_suite
from vqa_ood_bench.predict.jsonl import read_predictions
from vqa_ood_bench.report.schema import read_results


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["run", "--method", "nosuch"], "unknown method 'nosuch'; known:"),
        (["run", "--suite", "nosuch"], "unknown suite 'nosuch'; known:"),
        (["run", "--variant", "nosuch"], "unknown scoring variant 'nosuch'"),
        (["run", "--adapter", "half"], "unknown adapter 'half'"),
        (["run", "--data-root", "/no/such/folder"], "is not a folder"),
        (["run", "--method", "digrap", "--param", "nope=1"], "method 'digrap' has no parameter(s) nope"),
        (["run", "--method", "digrap", "--param", "mu"], "expected KEY=VALUE"),
        (["run", "--method", "digrap", "--param", "compile=sometimes"], "compile must be true, false or auto"),
        (["run", "--method", "all", "--param", "mu=1"], "for --method all put method_params in a --config"),
    ],
)
def test_bad_arguments_give_one_line(capsys, argv, fragment) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and err.count("\n") == 1


def test_unwritable_output_folder(capsys, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["run", "--method", "zeroshot", "--limit", "2", "--out", str(blocker / "run")]) == 2
    err = capsys.readouterr().err
    assert "not writable" in err and str(blocker) in err and "Traceback" not in err


def test_config_file_errors(capsys, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  learning_rate: -1\n")
    assert main(["run", "--config", str(cfg)]) == 2
    assert "learning_rate" in capsys.readouterr().err


def test_end_to_end_on_a_few_dozen_examples(capsys, tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["run", "--method", "vanilla", "--adapter", "lora", "--limit", "24", "--out", str(out), "--json"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    results = read_results(out / "results.json")
    assert printed["run_id"] == results.run_id and results.method == "vanilla"
    suite = get_suite("embedded")
    assert set(results.splits) == {s.name for s in suite.evaluation}
    for spec in suite.evaluation:
        records = suite.load(spec, limit=24)
        preds = read_predictions(out / results.splits[spec.name].predictions_file)
        assert set(preds) == {r.question_id for r in records}  # every question once, nothing else
        assert results.splits[spec.name].n == len(records)
    assert results.method_params["fit"]["steps"] >= 1 and results.timings["total_s"] > 0
    assert results.averages.ood is not None

    # The same command again resumes: trained weights and predictions are reused, nothing duplicated.
    before = {p.name: p.read_text() for p in (out / "predictions").iterdir()}
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    after = {p.name: p.read_text() for p in (out / "predictions").iterdir()}
    assert before == after
    assert again["method_params"]["fit"]["resumed"] is True
    assert {k: v["vqa_accuracy"] for k, v in again["splits"].items()} == {k: v.vqa_accuracy for k, v in results.splits.items()}

    # A different run into the same folder is refused rather than mixed with it.
    assert main(["run", "--method", "zeroshot", "--limit", "24", "--out", str(out)]) == 2
    assert "different configuration" in capsys.readouterr().err


def test_param_values_reach_the_run_config(monkeypatch, tmp_path: Path) -> None:
    """--param KEY=VALUE (JSON values where they parse) overrides the config's method_params, before any training."""
    from vqa_ood_bench import runner
    from vqa_ood_bench.cli.cmd_run import parse_params

    assert parse_params(["mu=0.25", "omega=null", "compile=true", "log_every=5", "name=x=y"]) == {
        "mu": 0.25, "omega": None, "compile": True, "log_every": 5, "name": "x=y"}
    seen = {}

    def fake_run(cfg, out, **kw):
        seen["cfg"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr(runner, "run_benchmark", fake_run)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: digrap\nmethod_params: {mu: 0.5, omega: 0.3}\n")
    main(["run", "--config", str(cfg), "--param", "omega=1.0", "--out", str(tmp_path / "r")])  # (stops in fake_run)
    assert seen["cfg"].method == "digrap" and seen["cfg"].method_params == {"mu": 0.5, "omega": 1.0}
