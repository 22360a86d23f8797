"""`vqa-ood-bench score`: re-scoring a run folder / a predictions file with a small suite
registered here (records built in the test), numbers checked against hand-worked values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vqa_ood_bench.cli import main
from vqa_ood_bench.data.records import VQARecord
from vqa_ood_bench.data.registry import DATASETS, register_dataset
from vqa_ood_bench.data.suite import SUITES, SplitSpec, Suite, register_suite
from vqa_ood_bench.report.schema import Averages, ModelInfo, RunResults, SplitResult, read_results, write_results

SUITE = "scoretest-suite"


def _r(qid, answers, at, qt, split):
    return VQARecord(
        question_id=qid, image="unused.png", question="q?", answers=answers, answer_type=at, question_type=qt,
        dataset=f"scoretest-{split}", split=split,
    )


RECORDS = {
    "id": [
        _r("i1", ["yes"] * 10, "yes/no", "is the", "id"),
        _r("i2", ["yes"] * 10, "yes/no", "is the", "id"),
        _r("i3", ["2"] * 2 + ["3"] * 8, "number", "how many", "id"),
        _r("i4", ["red"] * 3 + ["blue"] * 7, "other", "what color", "id"),
    ],
    "near": [
        _r("n1", ["dog"] * 10, "other", "what is", "near"),
        _r("n2", ["cat"] * 4 + ["dog"] * 6, "other", "what is", "near"),
    ],
    "far": [_r("f1", ["zebra"] * 10, "other", "what is", "far")],
}
PREDS = {
    "id": {"i1": "yes", "i2": "Yes", "i3": "two", "i4": "red"},
    "near": {"n1": "a dog", "n2": "cat"},
    "far": {"f1": "horse"},
}
# Hand-worked per-question scores (see docs/vqa-accuracy.md, "Scoring variants"):
#  i1 yes / 10 x yes: 1 everywhere. i2 "Yes" / 10 x yes: official 0 (identical answers -> no
#  normalisation), lavis 1. i3 "two" / 2 x 2 + 8 x 3: "2" matches 2 -> 0.6. i4 red 3 of 10 -> 0.9.
#  n1 "a dog" / 10 x dog: official 0, lavis 1 ("a" dropped). n2 cat 4 of 10 -> 1. f1 -> 0.
HAND = {
    "official": {"i1": 1, "i2": 0, "i3": 0.6, "i4": 0.9, "n1": 0, "n2": 1, "f1": 0},
    "lavis": {"i1": 1, "i2": 1, "i3": 0.6, "i4": 0.9, "n1": 1, "n2": 1, "f1": 0},
}
ROLES = {"id": ("id", "none"), "near": ("near", "question"), "far": ("far", "far")}


def _register() -> None:
    for split, (role, shift) in ROLES.items():
        name = f"scoretest-{split}"
        if name not in DATASETS:
            register_dataset(name, role=role, shift_type=shift)(lambda root, _s=split, **kw: list(RECORDS[_s]))
    if SUITE not in SUITES:

        @register_suite(SUITE)
        def _suite() -> Suite:
            specs = {s: SplitSpec(name=s, dataset=f"scoretest-{s}", role=r, shift_type=t) for s, (r, t) in ROLES.items()}
            return Suite(
                name=SUITE, description="score CLI test", train=specs["id"], validation=specs["id"],
                evaluation=tuple(specs.values()), needs_data_root=False, version="7",
            )


_register()


def _write_preds(path: Path, preds: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"question_id": k, "prediction": v}) + "\n" for k, v in preds.items()))


def _make_run(tmp_path: Path, variant: str = "official") -> Path:
    run = tmp_path / "run"
    splits = {}
    for split, (role, shift) in ROLES.items():
        _write_preds(run / "predictions" / f"{split}.jsonl", PREDS[split])
        # Deliberately wrong numbers: re-scoring must replace them.
        splits[split] = SplitResult(role=role, shift_type=shift, n=99, vqa_accuracy=1.0, clipmatch_top1=42.0,
                                    per_answer_type={"stale": 1.0}, predictions_file=f"predictions/{split}.jsonl")
    results = RunResults(
        run_id="r1", created_at="2025-01-01T00:00:00Z", method="zero-shot", model=ModelInfo(name_or_path="tiny"),
        suite=SUITE, suite_version="7", seed=0, dtype="float32", batch_size=8, scoring_variant=variant,
        package_version="0.1.0", config={"suite": SUITE, "scoring_variant": variant, "data_root": None, "limit": None},
        splits=splits, averages=Averages(id=1.0, near_ood=1.0, far_ood=1.0, ood=1.0),
    )
    write_results(results, run / "results.json")
    return run


def _run_cli(capsys, *args):
    rc = main(["score", *map(str, args)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _mean(variant, ids):
    return 100 * float(np.mean([HAND[variant][q] for q in ids]))


def test_run_folder_rescored_and_results_rewritten(tmp_path, capsys):
    run = _make_run(tmp_path)
    rc, out, err = _run_cli(capsys, "--predictions", run, "--json")
    assert rc == 0, err
    obj = json.loads(out)
    all_ids = [q for s in PREDS.values() for q in s]
    assert obj["variant"] == "official"
    assert obj["n"] == 7
    assert obj["vqa_accuracy"] == pytest.approx(_mean("official", all_ids))  # pooled over the 7 questions
    assert obj["per_answer_type"] == pytest.approx(
        {"yes/no": _mean("official", ["i1", "i2"]), "number": _mean("official", ["i3"]),
         "other": _mean("official", ["i4", "n1", "n2", "f1"])}
    )
    assert obj["splits"]["near"]["vqa_accuracy"] == pytest.approx(_mean("official", ["n1", "n2"]))

    res = read_results(run / "results.json")
    id_acc = _mean("official", ["i1", "i2", "i3", "i4"])
    near_acc, far_acc = _mean("official", ["n1", "n2"]), _mean("official", ["f1"])
    assert res.splits["id"].vqa_accuracy == pytest.approx(id_acc)
    assert res.splits["id"].n == 4
    assert res.splits["id"].per_answer_type == pytest.approx({"yes/no": 50.0, "number": 60.0, "other": 90.0})
    assert res.splits["id"].per_question_type == pytest.approx({"is the": 50.0, "how many": 60.0, "what color": 90.0})
    assert res.splits["id"].clipmatch_top1 == 42.0  # not asked for: kept
    assert res.averages.id == pytest.approx(id_acc)
    assert res.averages.near_ood == pytest.approx(near_acc)
    assert res.averages.far_ood == pytest.approx(far_acc)
    assert res.averages.ood == pytest.approx((near_acc + far_acc) / 2)
    assert res.scoring_variant == "official"
    assert obj["averages"]["ood"] == pytest.approx((near_acc + far_acc) / 2)


def test_variant_change_rescores_everything_and_is_recorded(tmp_path, capsys):
    run = _make_run(tmp_path)
    rc, out, err = _run_cli(capsys, "--predictions", run, "--variant", "lavis", "--json")
    assert rc == 0, err
    obj = json.loads(out)
    assert obj["variant"] == "lavis"
    assert obj["vqa_accuracy"] == pytest.approx(_mean("lavis", [q for s in PREDS.values() for q in s]))
    res = read_results(run / "results.json")
    assert res.scoring_variant == "lavis" and res.config["scoring_variant"] == "lavis"
    assert res.splits["near"].vqa_accuracy == pytest.approx(100.0)
    assert res.splits["id"].vqa_accuracy == pytest.approx(_mean("lavis", ["i1", "i2", "i3", "i4"]))
    assert any("lavis" in n for n in res.notes)


def test_predictions_file_inside_a_run_updates_that_split(tmp_path, capsys):
    run = _make_run(tmp_path)
    rc, out, err = _run_cli(capsys, "--predictions", run / "predictions" / "near.jsonl", "--json")
    assert rc == 0, err
    obj = json.loads(out)
    assert obj["split"] == "near" and obj["n"] == 2
    assert obj["vqa_accuracy"] == pytest.approx(_mean("official", ["n1", "n2"]))
    res = read_results(run / "results.json")
    assert res.splits["near"].vqa_accuracy == pytest.approx(_mean("official", ["n1", "n2"]))
    assert res.splits["id"].vqa_accuracy == 1.0  # other splits untouched (same variant)
    assert res.averages.near_ood == pytest.approx(_mean("official", ["n1", "n2"]))


def test_no_write_leaves_results_alone(tmp_path, capsys):
    run = _make_run(tmp_path)
    before = (run / "results.json").read_bytes()
    rc, out, _ = _run_cli(capsys, "--predictions", run, "--variant", "lenient", "--no-write", "--json")
    assert rc == 0
    assert json.loads(out)["results_file"] is None
    assert (run / "results.json").read_bytes() == before


def test_loose_file_against_suite_split_and_dataset(tmp_path, capsys):
    f = tmp_path / "loose" / "id.jsonl"
    _write_preds(f, PREDS["id"])
    # Split inferred from the file name.
    rc, out, err = _run_cli(capsys, "--predictions", f, "--suite", SUITE, "--variant", "lavis", "--json")
    assert rc == 0, err
    obj = json.loads(out)
    assert obj["split"] == "id" and obj["variant"] == "lavis"
    assert obj["vqa_accuracy"] == pytest.approx(_mean("lavis", ["i1", "i2", "i3", "i4"]))
    g = tmp_path / "loose" / "whatever.jsonl"
    _write_preds(g, PREDS["near"])
    rc, out, err = _run_cli(capsys, "--predictions", g, "--dataset", "scoretest-near", "--json")
    assert rc == 0, err
    obj = json.loads(out)
    assert obj["dataset"] == "scoretest-near" and obj["variant"] == "official"
    assert obj["vqa_accuracy"] == pytest.approx(_mean("official", ["n1", "n2"]))
    assert not (tmp_path / "loose" / "results.json").exists()


def test_table_output(tmp_path, capsys):
    run = _make_run(tmp_path)
    rc, out, _ = _run_cli(capsys, "--predictions", run)
    assert rc == 0
    assert "official" in out and "near" in out and f"{_mean('official', ['n1', 'n2']):.2f}" in out


def test_missing_prediction_is_an_error_naming_the_question(tmp_path, capsys):
    run = _make_run(tmp_path)
    _write_preds(run / "predictions" / "id.jsonl", {k: v for k, v in PREDS["id"].items() if k != "i3"})
    before = (run / "results.json").read_bytes()
    rc, out, err = _run_cli(capsys, "--predictions", run, "--json")
    assert rc == 2
    assert "i3" in err and "id.jsonl" in err
    assert (run / "results.json").read_bytes() == before


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--variant", "vqav2"], "vqav2"),
        (["--suite", SUITE], "drop --suite"),
    ],
)
def test_bad_options(tmp_path, capsys, args, needle):
    run = _make_run(tmp_path)
    rc, _, err = _run_cli(capsys, "--predictions", run, *args)
    assert rc == 2 and needle in err


def test_missing_path(tmp_path, capsys):
    rc, _, err = _run_cli(capsys, "--predictions", tmp_path / "nope.jsonl", "--suite", SUITE)
    assert rc == 2 and "nope.jsonl" in err and "not found" in err


def test_loose_file_needs_a_source(tmp_path, capsys):
    f = tmp_path / "x.jsonl"
    _write_preds(f, PREDS["id"])
    rc, _, err = _run_cli(capsys, "--predictions", f)
    assert rc == 2 and "--suite" in err


def test_exact_and_clipmatch_through_the_cli(tmp_path, capsys):
    """ClipMatch with a tiny offline open_clip model: the CLI's numbers equal a direct ClipMatcher run."""
    import open_clip
    import torch

    from vqa_ood_bench.score.clipmatch import ClipMatcher, OpenClipTextEmbedder

    cfg_dir = tmp_path / "clipcfg"
    cfg_dir.mkdir()
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (cfg_dir / "TinyCLIP-score-cli.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(cfg_dir)
    torch.manual_seed(7)
    ckpt = tmp_path / "tiny.pt"
    torch.save(open_clip.create_model("TinyCLIP-score-cli", pretrained=None).state_dict(), ckpt)

    run = _make_run(tmp_path)
    rc, out, err = _run_cli(
        capsys, "--predictions", run / "predictions" / "id.jsonl", "--exact", "--clipmatch",
        "--clip-model", "TinyCLIP-score-cli", "--clip-pretrained", ckpt, "--clip-config-dir", cfg_dir,
        "--clip-templates", "none", "--cache-dir", tmp_path / "cache", "--json",
    )
    assert rc == 0, err
    obj = json.loads(out)
    targets = [r.answers[0] for r in RECORDS["id"]]
    preds = [PREDS["id"][r.question_id] for r in RECORDS["id"]]
    direct = ClipMatcher(sorted(set(targets)), OpenClipTextEmbedder("TinyCLIP-score-cli", str(ckpt), device="cpu"),
                         templates="none", cache_dir=False).score(preds, targets)
    assert obj["clipmatch_top1"] == pytest.approx(direct.top1)
    assert obj["clipmatch_top5"] == pytest.approx(direct.top5)
    # 3 classes (yes, 2, red): top-5 holds them all.
    assert obj["clipmatch_top5"] == pytest.approx(100.0)
    # exact match against the class or any annotator answer: yes, Yes, two (-> "2"), red all match.
    assert obj["exact_match"] == pytest.approx(100.0)
    res = read_results(run / "results.json")
    assert res.splits["id"].clipmatch_top1 == pytest.approx(direct.top1)
    assert res.splits["id"].exact_match == pytest.approx(100.0)
    assert list((tmp_path / "cache").glob("*.npy"))  # class embeddings cached
