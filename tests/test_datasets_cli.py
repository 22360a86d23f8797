"""`vqa-ood-bench datasets list` and `vqa-ood-bench datasets verify`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures.make_fixtures import make_all
from vqa_ood_bench.cli import main

MINE = {
    "vqav2": ("id", "none"),
    "iv-vqa": ("near", "vision"),
    "cv-vqa": ("near", "vision"),
    "vqa-rephrasings": ("near", "question"),
    "vqa-cp-v2": ("near", "answer"),
    "vqa-ce": ("near", "multimodal"),
    "advqa": ("near", "adversarial"),
    "textvqa": ("far", "far"),
    "vizwiz": ("far", "far"),
    "ok-vqa": ("far", "far"),
    "domainnet-real": ("id", "none"),
    "domainnet-sketch": ("near", "vision"),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_all(tmp_path_factory.mktemp("released"))


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_list_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "datasets", "list", "--json")
    assert rc == 0
    data = json.loads(out)
    by_name = {d["name"]: d for d in data["datasets"]}
    for name, (role, shift) in MINE.items():
        assert (by_name[name]["role"], by_name[name]["shift_type"]) == (role, shift)
        assert by_name[name]["expected_files"] and by_name[name]["licence"] and by_name[name]["source"]
    assert "vqav2/v2_mscoco_val2014_annotations.json" in by_name["vqav2"]["expected_files"]
    suites = {s["name"]: s for s in data["suites"]}
    assert suites["paper-vqa"]["train"]["options"] == {"split": "train", "fraction": 0.1}
    assert len(suites["paper-vqa"]["evaluation"]) == 10
    assert suites["domainnet-ovqa"]["needs_data_root"] is True


def test_list_table(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "datasets", "list")
    assert rc == 0
    for name in ("vqa-rephrasings", "paper-vqa", "domainnet-ovqa", "adversarial"):
        assert name in out


def test_verify_json_clean(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "datasets", "verify", "vqav2", "--root", str(root), "--json")
    res = json.loads(out)
    assert rc == 0 and res["ok"] is True
    assert res["records"] == 5 and res["images"] == 2 and res["images_present"] == 2
    assert res["images_missing"] == [] and res["skipped"] == [] and res["errors"] == []
    files = {f["file"]: f["present"] for f in res["files"]}
    assert files["vqav2/v2_mscoco_val2014_annotations.json"] is True
    assert files["vqav2/v2_OpenEnded_mscoco_test2015_questions.json"] is False  # not in the fixture


def test_verify_reports_known_quirks_with_reasons(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "datasets", "verify", "vqa-rephrasings", "--root", str(root), "--json")
    res = json.loads(out)
    assert rc == 0 and res["records"] == 4 and res["skipped_count"] == 2 and res["known_quirk_count"] == 2
    assert sorted(s["record"] for s in res["skipped"]) == ["9000003", "9000004"]
    assert all("empty question" in s["reason"] and s["file"].endswith("humans_og_questions.json") for s in res["skipped"])


def test_verify_split_and_options(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "datasets", "verify", "vqa-ce", "--root", str(root), "--split", "easy", "--json")
    assert rc == 0 and json.loads(out)["records"] == 2
    rc, out, _ = run(capsys, "datasets", "verify", "vqav2", "--root", str(root), "--split", "train", "-o", "fraction=0.5", "--json")
    res = json.loads(out)
    assert rc == 0 and res["records"] + res["filtered"] == 40 and 0 < res["records"] < 40


def test_verify_missing_image_and_malformed_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_all(tmp_path)
    (root / "vizwiz" / "val" / "VizWiz_val_00000001.jpg").unlink()
    p = root / "vizwiz" / "val.json"
    entries = json.loads(p.read_text())
    entries[0]["answers"] = "unanswerable"  # malformed
    p.write_text(json.dumps(entries))
    rc, out, err = run(capsys, "datasets", "verify", "vizwiz", "--root", str(root), "--json")
    res = json.loads(out)
    assert rc == 1 and res["ok"] is False and "Traceback" not in err
    assert res["records"] == 1
    assert res["images_missing"] == [
        {"image": str(root / "vizwiz" / "val" / "VizWiz_val_00000001.jpg"), "record": "VizWiz_val_00000001"}
    ]
    reasons = {s["record"]: (s["known_quirk"], s["reason"]) for s in res["skipped"]}
    assert reasons["VizWiz_val_00000000"][0] is False and "'answers' must be a list" in reasons["VizWiz_val_00000000"][1]
    assert reasons["VizWiz_val_00000002"][0] is True
    # the table form says the same without a traceback
    rc, out, err = run(capsys, "datasets", "verify", "vizwiz", "--root", str(root))
    assert rc == 1 and "VizWiz_val_00000001.jpg" in out and "problems found" in out and "Traceback" not in out + err


def test_verify_malformed_json_is_one_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_all(tmp_path)
    p = root / "textvqa" / "TextVQA_0.5.1_val.json"
    p.write_text('{"dataset_type": "val", "data": [')
    rc, out, err = run(capsys, "datasets", "verify", "textvqa", "--root", str(root), "--json")
    res = json.loads(out)
    assert rc == 1 and len(res["errors"]) == 1 and str(p) in res["errors"][0] and "malformed JSON" in res["errors"][0]
    assert "Traceback" not in err


def test_verify_unknown_dataset_and_bad_option(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "datasets", "verify", "no-such-set", "--root", str(root))
    assert rc == 2 and "unknown dataset 'no-such-set'" in err and "Traceback" not in err
    rc, _, err = run(capsys, "datasets", "verify", "vqav2", "--root", str(root), "-o", "fraction")
    assert rc == 2 and "KEY=VALUE" in err


def test_list_shows_every_registered_dataset(capsys: pytest.CaptureFixture[str]) -> None:
    from vqa_ood_bench.data.registry import DATASETS, dataset_names

    rc, out, _ = run(capsys, "datasets", "list", "--json")
    listed = [d["name"] for d in json.loads(out)["datasets"]]
    assert rc == 0 and listed == dataset_names() and len(listed) == len(DATASETS)
