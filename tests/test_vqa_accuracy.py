"""VQA accuracy: the golden edge-case table of docs/vqa-accuracy.md ("Edge cases measured on the
real implementations") for every variant, the normalisation steps on hand-worked strings, and
the vectorised scorer against a literal per-question re-implementation of each variant's
reference code (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vqa_ood_bench.data.records import VQARecord
from vqa_ood_bench.errors import ConfigError, DataError
from vqa_ood_bench.score.normalize import (
    clean_whitespace,
    normalize_answer,
    process_digit_article,
    process_punctuation,
)
from vqa_ood_bench.score.vqa_accuracy import (
    VARIANTS,
    leave_one_out_score,
    score_records,
    vqa_score_one,
    vqa_scores,
    vqa_scores_loop,
)

# docs/vqa-accuracy.md, "Edge cases measured on the real implementations".
# Columns: official, LAVIS, lmms-eval (= our "lenient").
GOLDEN = [
    ("Yes", ["yes"] * 10, {"official": 0.0, "lavis": 1.0, "lenient": 1.0}),
    ("two", ["2"] * 10, {"official": 0.0, "lavis": 1.0, "lenient": 1.0}),
    ("two", ["two"] * 8 + ["2"] * 2, {"official": 1.0, "lavis": 0.6, "lenient": 1.0}),
    ("a dog", ["a dog"] * 8 + ["dog"] * 2, {"official": 1.0, "lavis": 0.6, "lenient": 1.0}),
    ("3.", ["3"] * 6 + ["three"] * 4, {"official": 1.0, "lavis": 1.0, "lenient": 1.0}),
]


def test_variants_are_the_documented_three():
    assert VARIANTS == ("official", "lavis", "lenient")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("pred,answers,expected", GOLDEN, ids=[f"{g[0]}|{g[1][0]}x{g[1].count(g[1][0])}" for g in GOLDEN])
def test_golden_edge_cases(variant, pred, answers, expected):
    got = vqa_scores([pred], [answers], variant)
    assert got.dtype == np.float64 and got.shape == (1,)
    assert got[0] == pytest.approx(expected[variant], abs=1e-12)
    assert vqa_score_one(pred, answers, variant) == pytest.approx(expected[variant], abs=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
def test_golden_cases_scored_together_match_one_by_one(variant):
    got = vqa_scores([g[0] for g in GOLDEN], [g[1] for g in GOLDEN], variant)
    np.testing.assert_allclose(got, [g[2][variant] for g in GOLDEN], atol=1e-12)


@pytest.mark.parametrize("m,expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (7, 1.0), (10, 1.0)])
def test_matches_out_of_ten(m, expected):
    # Hand-worked: m = 3 -> 3 sets lose a match (2/3 each), 7 keep 3 (1 each): (2 + 7) / 10 = 0.9.
    answers = ["cat"] * m + [f"other{i}" for i in range(10 - m)]
    for variant in VARIANTS:
        assert vqa_scores(["cat"], [answers], variant)[0] == pytest.approx(expected, abs=1e-12)
    assert leave_one_out_score(np.array([m]), np.array([10]))[0] == pytest.approx(expected, abs=1e-12)


def test_repeated_answers_are_left_out_one_at_a_time():
    # Two answers, both "x" (VizWiz-style, no answer ids): leaving one out keeps the other,
    # so each of the 2 sets has 1 match -> 1/3. Removing every equal entry would give 0.
    assert vqa_scores(["x"], [["x", "x"]])[0] == pytest.approx(1 / 3)
    # y, z, y with prediction y: leave out y -> 1 match (1/3) twice, leave out z -> 2 (2/3): mean 4/9.
    assert vqa_scores(["y"], [["y", "z", "y"]])[0] == pytest.approx(4 / 9)


def test_ragged_answer_counts_in_one_call():
    preds = ["x", "y", "cat", "no"]
    answers = [["x", "x"], ["y", "z", "y"], ["cat"] * 3 + ["dog"] * 7, ["yes"]]
    np.testing.assert_allclose(vqa_scores(preds, answers), [1 / 3, 4 / 9, 0.9, 0.0], atol=1e-12)


# --- normalisation, hand-worked -------------------------------------------------------------

@pytest.mark.parametrize(
    "text,expected",
    [
        ("red, blue", "red blue"),  # "," next to a space -> deleted
        ("x-ray", "x ray"),  # no space next to "-" -> becomes a space
        ("x-ray - scan", "xray  scan"),  # " -" occurs somewhere -> every "-" deleted
        ("1,000", "1000"),  # digit,digit -> every punctuation character deleted
        ("1,000 (approx)", "1000 approx"),
        ("3.5", "3.5"),  # period followed by a digit stays
        ("end.", "end"),
        ("a.b", "ab"),
        ("2.", "2"),  # "not preceded by a digit" never fires in the official regex
        ("." * 40, "." * 8),  # the official code removes at most 32 periods (re.UNICODE as count)
        ("plain words", "plain words"),
    ],
)
def test_process_punctuation(text, expected):
    assert process_punctuation(text) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("The Two  Dogs", "2 dogs"),
        ("none", "0"),
        ("an apple a day", "apple day"),
        ("dont know", "don't know"),
        ("Im here", "im here"),  # the official table's capitalised keys never match
        ("somebody'd", "somebodyd"),  # the official table's reversed entry, kept
        ("ten eleven", "10 eleven"),
    ],
)
def test_process_digit_article(text, expected):
    assert process_digit_article(text) == expected


def test_clean_whitespace_and_full_pipeline():
    assert clean_whitespace("\tyes\nno \n") == "yes no"
    assert normalize_answer(" The  Two\tDogs! ") == "2 dogs"
    assert normalize_answer("Yes.") == "yes"


# --- errors --------------------------------------------------------------------------------

def test_unknown_variant_is_a_config_error():
    with pytest.raises(ConfigError, match="vqav2"):
        vqa_scores(["a"], [["a"]], "vqav2")


def test_question_without_answers_names_its_index():
    with pytest.raises(DataError, match=r"question 1 has no"):
        vqa_scores(["a", "b", "c"], [["a"], [], ["c"]])


def test_length_mismatch():
    with pytest.raises(DataError):
        vqa_scores(["a", "b"], [["a"]])


def test_empty_input():
    assert vqa_scores([], []).shape == (0,)


# --- score_records ---------------------------------------------------------------------------

def _rec(qid, answers, at="", qt=""):
    return VQARecord(question_id=qid, image="x.png", question="q?", answers=answers, answer_type=at, question_type=qt)


def test_score_records_breakdowns_by_hand():
    recs = [
        _rec("1", ["yes"] * 10, "yes/no", "is the"),  # pred yes -> 1
        _rec("2", ["no"] * 10, "yes/no", "is the"),  # pred yes -> 0
        _rec("3", ["2"] * 2 + ["3"] * 8, "number", "how many"),  # pred 2 -> 0.6
        _rec("4", ["red"] * 3 + ["blue"] * 7, "other", "what color"),  # pred red -> 0.9
    ]
    preds = {"1": "yes", "2": "yes", "3": "two", "4": "Red", "extra": "ignored"}
    res = score_records(recs, preds, "official")
    assert res.variant == "official" and res.n == 4
    np.testing.assert_allclose(res.scores, [1.0, 0.0, 0.6, 0.9], atol=1e-12)
    assert res.accuracy == pytest.approx(100 * 2.5 / 4)
    assert res.per_answer_type == pytest.approx({"yes/no": 50.0, "number": 60.0, "other": 90.0})
    assert res.per_question_type == pytest.approx({"is the": 50.0, "how many": 60.0, "what color": 90.0})
    assert res.to_json()["vqa_accuracy"] == pytest.approx(62.5)


def test_score_records_leaves_out_empty_type_labels():
    res = score_records([_rec("1", ["a"]), _rec("2", ["b"], "other")], {"1": "a", "2": "c"})
    assert res.per_answer_type == {"other": 0.0}
    assert res.per_question_type == {}


def test_missing_prediction_is_an_error_naming_the_question():
    recs = [_rec("q1", ["a"]), _rec("q2", ["b"])]
    with pytest.raises(DataError, match="q2"):
        score_records(recs, {"q1": "a"})


def test_empty_split_is_an_error():
    with pytest.raises(DataError, match="no records"):
        score_records([], {})


def test_record_without_answers_is_an_error_naming_the_question():
    with pytest.raises(DataError, match="q9"):
        score_records([_rec("q9", [])], {"q9": "a"})


# --- property: vectorised == literal per-question reference --------------------------------

def _reference(pred: str, answers: list[str], variant: str) -> float:
    """Literal transcription of each reference loop: answers as entries with ids, leave-one-out
    by entry identity, normalisation decided per question as the variant's code does."""
    gts = [{"answer_id": i, "answer": a} for i, a in enumerate(answers)]
    if variant == "official":
        for d in gts:
            d["answer"] = d["answer"].replace("\n", " ").replace("\t", " ").strip()
        res = pred.replace("\n", " ").replace("\t", " ").strip()
        if len({d["answer"] for d in gts}) > 1:
            for d in gts:
                d["answer"] = process_digit_article(process_punctuation(d["answer"]))
            res = process_digit_article(process_punctuation(res))
    elif variant == "lavis":
        res = process_digit_article(process_punctuation(pred.replace("\n", " ").replace("\t", " ").strip()))
        if len({d["answer"] for d in gts}) > 1:
            for d in gts:
                d["answer"] = process_punctuation(d["answer"])
    else:
        for d in gts:
            d["answer"] = normalize_answer(d["answer"])
        res = normalize_answer(pred)
    accs = []
    for left_out in gts:
        others = [d for d in gts if d is not left_out]
        accs.append(min(1, len([d for d in others if d["answer"] == res]) / 3))
    return sum(accs) / len(accs)


_TRICKY = [
    "yes", "Yes", "yes ", "\tyes\n", "no", "two", "2", "Two", "3", "3.", "three", "none", "0",
    "a dog", "dog", "the dog", "dont", "don't", "red, blue", "red blue", "red,blue", "1,000", "1000",
    "x-ray", "x ray", "xray", "3.5", "!", "", " ", "an apple", "apple.", "(apple)",
]
_answer = st.one_of(st.sampled_from(_TRICKY), st.text(alphabet="ab2. ,-!A\t", max_size=6))


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(
        st.tuples(_answer, st.lists(_answer, min_size=1, max_size=11)),
        min_size=1,
        max_size=25,
    ),
    variant=st.sampled_from(VARIANTS),
)
def test_vectorised_equals_per_question_reference(data, variant):
    preds = [p for p, _ in data]
    answers = [a for _, a in data]
    got = vqa_scores(preds, answers, variant)
    want = np.array([_reference(p, a, variant) for p, a in data])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(vqa_scores_loop(preds, answers, variant), want, rtol=0, atol=1e-12)
    assert np.all((got >= 0) & (got <= 1)) and not any(math.isnan(x) for x in got)
