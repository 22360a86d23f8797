"""The embedded suite: each derived split really has the property its real counterpart has."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
from PIL import Image

from vqa_ood_bench.data.embedded import build
from vqa_ood_bench.data.embedded.broad import KNOWLEDGE_SHAPE_QUESTIONS
from vqa_ood_bench.data.embedded.questions import (
    BROAD_PHRASINGS,
    COLOR_OF,
    UNANSWERABLE,
    answer_for,
    easyvqa_template,
    easyvqa_templates,
    parse_easyvqa_question,
)
from vqa_ood_bench.data.embedded.source import attributes_from_pixels, read_images, read_questions
from vqa_ood_bench.data.suite import get_suite


@pytest.fixture(scope="module")
def src():
    return build._Sources()


@pytest.fixture(scope="module")
def splits():
    build.build()
    return {name: build.read_split(name) for name in build.SPLIT_SIZES}


def test_grammar_reproduces_every_released_answer() -> None:
    for split in ("train", "test"):
        qs = read_questions(split)
        images = read_images(split, qs)
        wrong = [q for q in qs if answer_for(parse_easyvqa_question(q.question), images[q.image_id].color, images[q.image_id].shape) != q.answer]
        assert not wrong, wrong[:3]
    assert len(easyvqa_templates()) == 24


def test_pixel_attributes_agree_with_released_answers(src) -> None:
    ids = sorted(src.test_img)[:400]
    agree = [attributes_from_pixels(np.asarray(Image.open(src.test_img[i].path).convert("RGB"))) == (src.test_img[i].color, src.test_img[i].shape) for i in ids]
    assert np.mean(agree) >= 0.99


def test_broad_phrasings_are_not_easyvqa_templates() -> None:
    for templates in BROAD_PHRASINGS.values():
        for t in templates:
            q = t.format(c="red", s="circle")
            with pytest.raises(ValueError):
                parse_easyvqa_question(q)


def test_sizes_ids_answers_and_images(splits) -> None:
    for name, recs in splits.items():
        assert len(recs) == build.SPLIT_SIZES[name], name
        assert len({r.question_id for r in recs}) == len(recs)
        for r in recs[:50]:
            assert len(r.answers) == build.N_ANNOTATORS and len(set(r.answers)) == 1
            assert r.split == name
            r.load_image()


def test_train_and_validation_are_disjoint_by_image() -> None:
    train = build.train_records("train")
    val = build.train_records("validation")
    assert len(train) + len(val) == len(read_questions("train"))
    assert not {r.meta["image_id"] for r in train} & {r.meta["image_id"] for r in val}
    assert len({r.meta["image_id"] for r in val}) == build.VALIDATION_IMAGES


def test_iv_edit_keeps_every_answer_and_changes_the_image(src, splits) -> None:
    for r in splits["iv-edit"]:
        info = src.test_img[r.meta["image_id"]]
        assert r.answers[0] == answer_for(parse_easyvqa_question(r.question), info.color, info.shape)
    for r in splits["iv-edit"][:100]:
        edited = np.asarray(r.load_image())
        original = np.asarray(Image.open(src.test_img[r.meta["image_id"]].path).convert("RGB"))
        assert not np.array_equal(edited, original)
        if r.meta["edit"].startswith(("flip", "rot")):  # geometry keeps the pixels' colours
            assert attributes_from_pixels(edited)[0] == src.test_img[r.meta["image_id"]].color


def test_cv_edit_changes_every_answer_consistently_with_the_new_colour(src, splits) -> None:
    for r in splits["cv-edit"]:
        old, new = r.meta["edit"].removeprefix("recolor:").split("->")
        info = src.test_img[r.meta["image_id"]]
        assert old == info.color and new != old
        assert r.answers[0] != r.meta["original_answer"]
        assert r.answers[0] == answer_for(parse_easyvqa_question(r.question), new, info.shape)
    for r in splits["cv-edit"][:100]:
        assert attributes_from_pixels(np.asarray(r.load_image()))[0] == r.meta["edit"].split("->")[1]


def test_rephrase_keeps_intent_and_answer_with_new_wording(src, splits) -> None:
    test_q = read_questions("test")
    for r in splits["rephrase"]:
        with pytest.raises(ValueError):
            parse_easyvqa_question(r.question)
        original = test_q[int(r.meta["rephrasing_of"].removeprefix("test-"))]
        assert original.answer == r.answers[0] and original.image_id == r.meta["image_id"]


def _distribution(pairs):
    d = collections.defaultdict(collections.Counter)
    for t, a in pairs:
        d[t][a] += 1
    return d


def test_prior_flip_really_shifts_the_answer_prior(src, splits) -> None:
    train = _distribution((easyvqa_template(q.question), q.answer) for q in src.fit_q)
    cp = _distribution((r.question_type, r.answers[0]) for r in splits["prior-flip"])
    test = _distribution((r.question_type, r.answers[0]) for r in splits["easyvqa-test"])

    def tv(p, q):
        keys = set(p) | set(q)
        sp, sq = sum(p.values()), sum(q.values())
        return 0.5 * sum(abs(p[k] / sp - q[k] / sq) for k in keys)

    yes_no = [t for t in cp if set(train[t]) <= {"yes", "no"} and sum(cp[t].values()) >= 20]
    assert len(yes_no) >= 10
    shift_cp = np.mean([tv(train[t], cp[t]) for t in yes_no])
    shift_id = np.mean([tv(train[t], test[t]) for t in yes_no if sum(test[t].values()) >= 20])
    assert shift_cp >= 0.3 and shift_id <= 0.1, (shift_cp, shift_id)
    for t in yes_no:  # where training has a clear majority answer, the split's majority is the other one
        top, n = train[t].most_common(1)[0]
        if n / sum(train[t].values()) >= 0.65:
            assert cp[t].most_common(1)[0][0] != top, t


def test_counterexamples_break_the_mined_shortcuts(src, splits) -> None:
    rules = build.mine_shortcuts(src.fit_q, src.train_img)
    assert rules and min(r.confidence for r in rules.values()) >= 0.75

    def shortcut_accuracy(recs):
        hits = []
        for r in recs:
            rule = build.shortcut_prediction(r.question, src.test_img[r.meta["image_id"]], rules)
            if rule is not None:
                hits.append(rule.answer == r.answers[0])
        return np.mean(hits), len(hits)

    acc_ce, n_ce = shortcut_accuracy(splits["counterexamples"])
    acc_id, n_id = shortcut_accuracy(splits["easyvqa-test"])
    assert n_ce == len(splits["counterexamples"]) and acc_ce == 0.0  # every record breaks its rule
    assert acc_id >= 0.8 and n_id >= 500  # …while the same rules do work in distribution


def test_adversarial_questions_fool_the_reference_and_are_labelled_right(src, splits) -> None:
    for r in splits["adversarial"]:
        assert r.meta["reference_prediction"] != r.answers[0]
        try:
            intent = parse_easyvqa_question(r.question)
        except ValueError:
            continue  # a broad phrasing; its label is checked through the template below
        info = src.test_img[r.meta["image_id"]]
        assert r.answers[0] == answer_for(intent, info.color, info.shape)


def test_far_splits(src, splits) -> None:
    for r in splits["degraded"]:
        assert (r.answers[0] == UNANSWERABLE) == r.meta["severe"]
    for r in splits["knowledge"]:
        info = src.test_img[r.meta["image_id"]]
        if r.question in KNOWLEDGE_SHAPE_QUESTIONS:
            assert r.answers[0] == KNOWLEDGE_SHAPE_QUESTIONS[r.question](info.shape)
        else:
            thing = r.question.removeprefix("is the shape the color of ").removesuffix("?")
            assert r.answers[0] == ("yes" if COLOR_OF[thing] == info.color else "no")
    assert {r.answer_type for r in splits["text-read"]} <= {"other", "number"}


def test_suite_shape_matches_the_paper() -> None:
    suite = get_suite("embedded")
    roles = collections.Counter(s.role for s in suite.evaluation)
    assert roles == {"id": 1, "near": 6, "far": 3}
    assert {s.shift_type for s in suite.evaluation if s.role == "near"} == {"vision", "question", "answer", "multimodal", "adversarial"}


@pytest.mark.slow
def test_build_is_deterministic(tmp_path) -> None:
    first = json.loads((build.build() / "manifest.json").read_text())
    second = json.loads((build.build(tmp_path) / "manifest.json").read_text())
    assert first == second
