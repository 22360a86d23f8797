"""The VQAv2-family loaders read their fixtures (released shapes) into the right records."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

from fixtures.make_fixtures import VQAV2_TRAIN_N, make_all, make_lavis
from vqa_ood_bench.data.formats._common import LoadReport
from vqa_ood_bench.data.registry import get_dataset


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_all(tmp_path_factory.mktemp("released"))


def load(name: str, root: Path, **opts):
    report = LoadReport()
    recs = list(get_dataset(name).load(root, report=report, **opts))
    return {r.question_id: r for r in recs}, [r.question_id for r in recs], report


# ------------------------------------------------------------------ VQAv2


def test_vqav2_val_pairs_questions_with_annotations_by_id(root: Path) -> None:
    recs, order, report = load("vqav2", root)
    # question-file order, although the annotations file lists them differently
    assert order == ["393225000", "393225001", "262148000", "262148001", "262148002"]
    r = recs["262148000"]
    assert r.question == "How many people are there?"
    assert r.answers == ["2", "2", "2", "3", "2", "2", "2", "2", "2", "2"]
    assert (r.answer_type, r.question_type) == ("number", "how many")
    assert (r.dataset, r.split) == ("vqav2", "val")
    assert r.meta == {"multiple_choice_answer": "2", "image_id": 262148}
    assert r.image_path == root / "coco" / "val2014" / "COCO_val2014_000000262148.jpg"
    assert recs["393225001"].answers[2] == "light blue"
    assert report.records == 5 and report.skipped == [] and report.finished
    assert r.load_image().size == (4, 4)


def test_vqav2_test_dev_has_questions_only_and_test2015_images(root: Path) -> None:
    recs, order, _ = load("vqav2", root, split="test-dev")
    assert order == ["1000"]
    r = recs["1000"]
    assert r.answers == [] and r.question == "What is on the plate?"
    assert r.image_path == root / "coco" / "test2015" / "COCO_test2015_000000000001.jpg"


def _u(text: str) -> float:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") / 2**64


def test_vqav2_fraction_is_a_deterministic_hash_sample(root: Path) -> None:
    all_ids = {str(458752000 + k) for k in range(VQAV2_TRAIN_N)}
    full, _, _ = load("vqav2", root, split="train")
    assert set(full) == all_ids
    quarter, _, rep = load("vqav2", root, split="train", fraction=0.25)
    expected = {q for q in all_ids if _u(f"vqav2/train:{q}") < 0.25}
    assert set(quarter) == expected
    assert 0 < len(expected) < VQAV2_TRAIN_N  # the fixture is big enough for the check to mean something
    assert rep.records == len(expected) and rep.filtered == VQAV2_TRAIN_N - len(expected)
    half, _, _ = load("vqav2", root, split="train", fraction=0.5)
    other, _, _ = load("vqav2", root, split="train", fraction=0.5, fraction_start=0.5)
    assert set(quarter) <= set(half)  # nested
    assert not set(half) & set(other) and set(half) | set(other) == all_ids  # disjoint, covering


def test_vqav2_sample_does_not_depend_on_file_order(tmp_path: Path) -> None:
    root = make_all(tmp_path)
    before, _, _ = load("vqav2", root, split="train", fraction=0.3)
    for fname, key in (("v2_OpenEnded_mscoco_train2014_questions.json", "questions"), ("v2_mscoco_train2014_annotations.json", "annotations")):
        p = root / "vqav2" / fname
        obj = json.loads(p.read_text())
        random.Random(1).shuffle(obj[key])
        p.write_text(json.dumps(obj))
    after, _, _ = load("vqav2", root, split="train", fraction=0.3)
    assert set(before) == set(after)


def test_vqav2_root_may_be_the_dataset_folder_and_coco_an_option(root: Path) -> None:
    recs, _, _ = load("vqav2", root / "vqav2", coco=str(root / "coco"))
    assert len(recs) == 5
    assert recs["393225000"].image_path == root / "coco" / "val2014" / "COCO_val2014_000000393225.jpg"
    # without the option, COCO is found next to the dataset folder
    recs, _, _ = load("vqav2", root / "vqav2")
    assert recs["393225000"].image_path == root / "coco" / "val2014" / "COCO_val2014_000000393225.jpg"


def test_vqav2_finds_coco_images_in_the_lavis_place(tmp_path: Path) -> None:
    root = make_lavis(tmp_path)
    recs, _, _ = load("vqav2", root)
    assert recs["262148000"].image_path == root / "coco" / "images" / "val2014" / "COCO_val2014_000000262148.jpg"
    assert recs["262148000"].image_path.is_file()


# ------------------------------------------------------------------ IV-VQA / CV-VQA


def test_iv_vqa_string_image_ids_and_repeated_question_ids(root: Path) -> None:
    recs, order, _ = load("iv-vqa", root)
    assert order == [
        "393225000_000000393225_000000000001",
        "393225000_000000393225_000000000003",
        "262148001_000000262148_000000000062",
    ]
    r = recs["393225000_000000393225_000000000003"]
    # paired with the annotation of *this* edit (it has one "no"), not the other edit's
    assert r.answers == ["yes"] * 9 + ["no"]
    assert recs["393225000_000000393225_000000000001"].answers == ["yes"] * 10
    assert r.meta["original_question_id"] == "393225000"
    assert r.meta["coco_image_id"] == 393225 and r.meta["removed_category_id"] == 3
    assert r.image_path == root / "iv-vqa" / "images" / "COCO_val2014_000000393225_000000000003.jpg"
    assert r.load_image().mode == "RGB"


def test_cv_vqa_scores_against_decremented_answers(root: Path) -> None:
    recs, _, _ = load("cv-vqa", root)
    r = recs["262148000_000000262148_000000123456"]
    assert r.answers == ["1", "1", "1", "2", "1", "1", "1", "1", "1", "1"]
    assert r.meta["multiple_choice_answer"] == "2"  # as released: not decremented
    assert r.meta["removed_instance_id"] == 123456
    assert recs["262148000_000000262148_000000654321"].answers == ["1"] * 10


# ------------------------------------------------------------------ VQA-Rephrasings


def test_rephrasings_keep_rephrasing_of_and_skip_empty_questions(root: Path) -> None:
    recs, order, report = load("vqa-rephrasings", root)
    assert order == ["393225001", "9000001", "9000002", "9000005"]
    assert "rephrasing_of" not in recs["393225001"].meta
    assert recs["9000002"].meta["rephrasing_of"] == "393225001"
    assert recs["9000005"].question == "How many humans can be seen?"
    assert recs["9000005"].answers[3] == "3"
    assert sorted(s.record for s in report.skipped) == ["9000003", "9000004"]
    assert all(s.known and "empty question" in s.reason for s in report.skipped)
    assert report.records == 4


def test_rephrasings_only_rephrasings_option(root: Path) -> None:
    recs, _, report = load("vqa-rephrasings", root, only_rephrasings=True)
    assert sorted(recs) == ["9000001", "9000002", "9000005"]
    assert report.filtered == 1


def test_skipped_records_are_logged_when_no_report_is_asked(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="vqa_ood_bench.data"):
        recs = list(get_dataset("vqa-rephrasings").load(root))
    assert len(recs) == 4
    assert "2 skipped" in caplog.text and "empty question" in caplog.text


# ------------------------------------------------------------------ VQA-CP v2


def test_vqacp_bare_lists_and_coco_split_choose_the_image_folder(root: Path) -> None:
    recs, order, _ = load("vqa-cp-v2", root)
    assert order == ["9000", "262148002"]
    assert recs["9000"].image_path == root / "coco" / "train2014" / "COCO_train2014_000000000009.jpg"
    assert recs["262148002"].image_path == root / "coco" / "val2014" / "COCO_val2014_000000262148.jpg"
    assert recs["9000"].meta["coco_split"] == "train2014"
    assert recs["9000"].answers.count("tennis") == 9
    train, _, _ = load("vqa-cp-v2", root, split="train")
    assert list(train) == ["458752000"] and train["458752000"].split == "train"


# ------------------------------------------------------------------ VQA-CE


@pytest.mark.parametrize(
    "split, expected",
    [
        ("counterexamples", ["262148000", "393225001"]),
        ("hard", ["262148001"]),
        ("easy", ["393225000", "262148002"]),
    ],
)
def test_vqace_subsets_come_from_vqav2_val(root: Path, split: str, expected: list[str]) -> None:
    recs, order, _ = load("vqa-ce", root, split=split)
    assert order == expected
    for qid in expected:
        assert recs[qid].meta["vqa_ce_subset"] == split
    if split == "counterexamples":
        assert recs["393225001"].answers[6] == "gray"
        assert recs["393225001"].question == "What color is the sky?"


# ------------------------------------------------------------------ AdVQA / OK-VQA


def test_advqa_missing_optional_keys_and_val2017_images(root: Path) -> None:
    recs, _, _ = load("advqa", root)
    r = recs["10002"]
    assert r.question_type == "" and "multiple_choice_answer" not in r.meta
    assert r.answers.count("unanswerable") == 9 and "main street" in r.answers
    assert r.image_path == root / "coco" / "val2017" / "000000397133.jpg"
    assert recs["10001"].meta["multiple_choice_answer"] == "5"
    assert recs["10001"].question_type == "what number is"


def test_okvqa_uses_processed_answers_and_keeps_raw_ones(root: Path) -> None:
    recs, _, _ = load("ok-vqa", root)
    r = recs["2971475"]
    assert r.answers == ["race", "race", "race", "race", "motocross", "motocross", "ride", "ride", "race", "race"]
    assert r.meta["raw_answers"][0] == "racing" and r.meta["raw_answers"][6] == "riding"
    assert r.question_type == "one" and "multiple_choice_answer" not in r.meta
    assert r.image_path == root / "coco" / "val2014" / "COCO_val2014_000000297147.jpg"
