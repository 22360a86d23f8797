"""Building the embedded suite's derived splits from easy-VQA, deterministically, once.

Each split mirrors how its real counterpart was made (README table; docs/embedded-suite.md):

====================  ======  ===========  ====================================================
split                 role    shift        construction (stands in for)
====================  ======  ===========  ====================================================
easyvqa-train         train   none         easy-VQA train minus 400 held-out images
easyvqa-val           valid.  none         questions on the 400 held-out train images
easyvqa-test          id      none         easy-VQA test, sampled
iv-edit               near    vision       answer-invariant edits: textured backgrounds, flips,
                                           quarter turns (IV-VQA)
cv-edit               near    vision       the shape recoloured; questions whose answer changes,
                                           relabelled (CV-VQA)
rephrase              near    question     each question re-asked in a broad phrasing of the same
                                           intent (VQA-Rephrasings)
prior-flip            near    answer       per question type, answers drawn from the inverse of the
                                           training prior (VQA-CP v2)
counterexamples       near    multimodal   questions where the most confident shortcut rule mined
                                           on train (question type + one cue) is wrong (VQA-CE)
adversarial           near    adversarial  candidate questions that a reference model (logistic
                                           regression on pixels + words, fit on train) gets wrong
                                           (AdVQA)
text-read             far     far          words written in images, "what is written?" (TextVQA)
degraded              far     far          blurred / dark / over-exposed / noisy photos, severe ones
                                           answered "unanswerable" (VizWiz)
knowledge             far     far          corners, roundness, colours of things (OK-VQA)
====================  ======  ===========  ====================================================

Every answer list holds 10 identical annotator answers, so the VQA rule scores 1 or 0.
Everything is a function of ``SUITE_SEED`` and the easy-vqa package: building twice gives
identical files (a test compares hashes). Bump ``SUITE_VERSION`` on any change.

The adversarial split's reference-model decisions are shipped data (``adversary-v1.0.json``;
:func:`adversary_decisions` says why). A published number on "v1.0" means these exact records
and images, so every build is checked
against the content hashes recorded when the version was defined (``suite-v1.0.sha256.json``):
the easy-vqa source files and each derived split. A library that renders, samples or fits
differently (Pillow, numpy, scikit-learn) would silently change the benchmark; instead the suite
refuses to load, naming what differs, unless ``VQA_OOD_BENCH_ALLOW_SUITE_DRIFT=1`` is set, in
which case it runs as version "1.0+local" so no result passes for the published suite.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from PIL import Image

from ...cache import cache_dir
from ...errors import DataError
from ...io import atomic_write_json
from ..records import VQARecord, open_image
from . import render
from .broad import KNOWLEDGE_COLOR_QUESTION, KNOWLEDGE_SHAPE_QUESTIONS, OCR_NUMBERS, OCR_QUESTIONS, OCR_WORDS, pale, random_shape
from .questions import (
    BROAD_PHRASINGS,
    COLOR_OF,
    EASYVQA_COLORS,
    EASYVQA_SHAPES,
    UNANSWERABLE,
    Intent,
    answer_for,
    easyvqa_template,
    intent_key,
    parse_easyvqa_question,
    phrase,
)
from .source import SourceImage, SourceQuestion, package_root, read_images, read_questions

SUITE_VERSION = "1.0"
SUITE_SEED = 20250121
EXPECTED_HASHES = Path(__file__).with_name(f"suite-v{SUITE_VERSION}.sha256.json")
DRIFT_ENV = "VQA_OOD_BENCH_ALLOW_SUITE_DRIFT"
N_ANNOTATORS = 10
VALIDATION_IMAGES = 400

SPLIT_SIZES = {
    "easyvqa-test": 1000,
    "iv-edit": 1000,
    "cv-edit": 800,
    "rephrase": 1000,
    "prior-flip": 1000,
    "counterexamples": 1000,
    "adversarial": 1000,
    "text-read": 600,
    "degraded": 800,
    "knowledge": 800,
}
PKG_PREFIX = "easyvqa://"  # image paths inside the easy-vqa package, resolved at load time


@dataclass(frozen=True)
class Row:
    """A record before it has a split folder: image is a package ref or a PIL image to save."""

    question_id: str
    image: str | Image.Image
    question: str
    answer: str
    answer_type: str
    question_type: str
    meta: dict


def answer_type_of(answer: str) -> str:
    if answer in ("yes", "no"):
        return "yes/no"
    if answer.isdigit():
        return "number"
    if answer == UNANSWERABLE:
        return "unanswerable"
    return "other"


def _pkg_ref(split: str, image_id: int) -> str:
    return f"{PKG_PREFIX}{split}/images/{image_id}.png"


def resolve_image(ref: str, split_dir: Path) -> str:
    if ref.startswith(PKG_PREFIX):
        return str(package_root() / ref[len(PKG_PREFIX):])
    return str(split_dir / ref)


class _Sources:
    """easy-VQA read once: questions, images with attributes, the train/validation image split."""

    def __init__(self) -> None:
        self.train_q = read_questions("train")
        self.test_q = read_questions("test")
        self.train_img = read_images("train", self.train_q)
        self.test_img = read_images("test", self.test_q)
        rng = np.random.default_rng([SUITE_SEED, 0])
        ids = sorted(self.train_img)
        self.val_ids = set(int(i) for i in rng.choice(ids, size=VALIDATION_IMAGES, replace=False))
        self.fit_q = [q for q in self.train_q if q.image_id not in self.val_ids]

    def test_image(self, image_id: int) -> Image.Image:
        return open_image(self.test_img[image_id].path)


def _sample(rows: list[Row], n: int, rng: np.random.Generator) -> list[Row]:
    if len(rows) <= n:
        return rows
    idx = np.sort(rng.choice(len(rows), size=n, replace=False))
    return [rows[i] for i in idx]


def _easyvqa_row(prefix: str, k: int, q: SourceQuestion, image: str | Image.Image, answer: str | None = None, **meta) -> Row:
    a = q.answer if answer is None else answer
    return Row(f"{prefix}-{k}", image, q.question, a, answer_type_of(a), easyvqa_template(q.question), dict(meta))


# --- the splits ----------------------------------------------------------------------------------

def build_test(src: _Sources, rng: np.random.Generator) -> list[Row]:
    rows = [_easyvqa_row("test", k, q, _pkg_ref("test", q.image_id), image_id=q.image_id) for k, q in enumerate(src.test_q)]
    return _sample(rows, SPLIT_SIZES["easyvqa-test"], rng)


def build_iv(src: _Sources, rng: np.random.Generator) -> list[Row]:
    rows: list[Row] = []
    by_image = collections.defaultdict(list)
    for k, q in enumerate(src.test_q):
        by_image[q.image_id].append((k, q))
    for image_id in sorted(by_image):
        info = src.test_img[image_id]
        img = src.test_image(image_id)
        edit = str(rng.choice(["stripes", "checker", "gradient", "flip_lr", "flip_tb", "rot90", "rot270"]))
        if edit in ("stripes", "checker", "gradient"):
            edited = render.replace_background(img, info.color, edit, rng)
        else:
            edited = render.geometric(img, edit)
        for k, q in by_image[image_id]:
            rows.append(_easyvqa_row("iv", k, q, edited, image_id=image_id, edit=edit))
    return _sample(rows, SPLIT_SIZES["iv-edit"], rng)


def build_cv(src: _Sources, rng: np.random.Generator) -> list[Row]:
    rows: list[Row] = []
    by_image = collections.defaultdict(list)
    for k, q in enumerate(src.test_q):
        by_image[q.image_id].append((k, q))
    for image_id in sorted(by_image):
        info = src.test_img[image_id]
        new = str(rng.choice([c for c in EASYVQA_COLORS if c != info.color]))
        edited = render.recolor(src.test_image(image_id), info.color, new)
        for k, q in by_image[image_id]:
            intent = parse_easyvqa_question(q.question)
            if intent.kind == "shape" and intent.color:  # "what is the red shape?" loses its premise
                continue
            a = answer_for(intent, new, info.shape)
            if a != q.answer:  # CV-VQA keeps the questions whose answer the edit changes
                rows.append(_easyvqa_row("cv", k, q, edited, answer=a, image_id=image_id, edit=f"recolor:{info.color}->{new}", original_answer=q.answer))
    return _sample(rows, SPLIT_SIZES["cv-edit"], rng)


def build_rephrase(src: _Sources, rng: np.random.Generator) -> list[Row]:
    rows: list[Row] = []
    for k, q in enumerate(src.test_q):
        intent = parse_easyvqa_question(q.question)
        template = str(rng.choice(BROAD_PHRASINGS[intent_key(intent)]))
        question = phrase(template, intent)
        rows.append(Row(f"rep-{k}", _pkg_ref("test", q.image_id), question, q.answer, answer_type_of(q.answer), template, {"image_id": q.image_id, "rephrasing_of": f"test-{k}"}))
    return _sample(rows, SPLIT_SIZES["rephrase"], rng)


def _template_pool(images: dict[int, SourceImage]) -> list[tuple[str, int, str]]:
    """Every easy-VQA template instance on every image: (question, image_id, answer)."""
    from .questions import easyvqa_templates

    pool = []
    for image_id in sorted(images):
        info = images[image_id]
        for t in easyvqa_templates():
            if "X" not in t:
                fills = [t]
            elif "X shape" in t:  # every colour slot in easy-VQA is followed by "shape"
                fills = [t.replace("X", c) for c in EASYVQA_COLORS]
            else:
                fills = [t.replace("X", s) for s in EASYVQA_SHAPES]
            for question in fills:
                intent = parse_easyvqa_question(question)
                if intent.kind == "color" and intent.shape and intent.shape != info.shape:
                    continue  # "what color is the circle?" about a triangle has no answer
                if intent.kind == "shape" and intent.color and intent.color != info.color:
                    continue
                pool.append((question, image_id, answer_for(intent, info.color, info.shape)))
    return pool


def train_priors(questions: Iterable[SourceQuestion]) -> dict[str, collections.Counter]:
    prior: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for q in questions:
        prior[easyvqa_template(q.question)][q.answer] += 1
    return prior


def build_prior_flip(src: _Sources, rng: np.random.Generator) -> list[Row]:
    prior = train_priors(src.fit_q)
    pool = _template_pool(src.test_img)
    by_type = collections.defaultdict(lambda: collections.defaultdict(list))
    for question, image_id, answer in pool:
        by_type[easyvqa_template(question)][answer].append((question, image_id))
    types = sorted(prior)
    type_p = np.array([sum(prior[t].values()) for t in types], dtype=float)
    type_p /= type_p.sum()
    rows: list[Row] = []
    used: set[tuple[str, int]] = set()
    n = SPLIT_SIZES["prior-flip"]
    while len(rows) < n:
        t = types[int(rng.choice(len(types), p=type_p))]
        answers = sorted(a for a in prior[t] if by_type[t][a])
        freq = np.array([prior[t][a] for a in answers], dtype=float)
        inv = (1.0 / freq) / (1.0 / freq).sum()  # the inverse of the training prior
        a = answers[int(rng.choice(len(answers), p=inv))]
        cands = by_type[t][a]
        question, image_id = cands[int(rng.integers(len(cands)))]
        if (question, image_id) in used:
            continue
        used.add((question, image_id))
        rows.append(Row(f"cp-{len(rows)}", _pkg_ref("test", image_id), question, a, answer_type_of(a), t, {"image_id": image_id, "train_prior": round(prior[t][a] / sum(prior[t].values()), 4)}))
    return rows


@dataclass(frozen=True)
class Rule:
    qtype: str
    cue: str  # "" (question type alone), "word:red", "color:red", "shape:circle"
    answer: str
    confidence: float
    support: int


def _cues(question: str, info: SourceImage) -> list[str]:
    words = [f"word:{w}" for w in question.rstrip("?").split() if w in EASYVQA_COLORS or w in EASYVQA_SHAPES]
    return ["", *words, f"color:{info.color}", f"shape:{info.shape}"]


def mine_shortcuts(questions: Iterable[SourceQuestion], images: dict[int, SourceImage], *, min_support: int = 30, min_confidence: float = 0.75) -> dict[tuple[str, str], Rule]:
    """Rules (question type + at most one cue) → answer that hold with high confidence on train.

    A cue is a slot word of the question or one attribute of the image; a rule that predicts the
    answer from the type and one cue, ignoring the rest, is a shortcut (VQA-CE's notion).
    """
    counts: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
    for q in questions:
        t = easyvqa_template(q.question)
        for cue in _cues(q.question, images[q.image_id]):
            counts[(t, cue)][q.answer] += 1
    rules = {}
    for key, c in counts.items():
        total = sum(c.values())
        answer, n = c.most_common(1)[0]
        if total >= min_support and n / total >= min_confidence:
            rules[key] = Rule(key[0], key[1], answer, n / total, total)
    return rules


def shortcut_prediction(question: str, info: SourceImage, rules: dict[tuple[str, str], Rule]) -> Rule | None:
    t = easyvqa_template(question)
    matching = [rules[(t, cue)] for cue in _cues(question, info) if (t, cue) in rules]
    return max(matching, key=lambda r: (r.confidence, r.support, r.cue)) if matching else None


def build_counterexamples(src: _Sources, rng: np.random.Generator) -> list[Row]:
    rules = mine_shortcuts(src.fit_q, src.train_img)
    rows: list[Row] = []
    for k, (question, image_id, answer) in enumerate(_template_pool(src.test_img)):
        rule = shortcut_prediction(question, src.test_img[image_id], rules)
        if rule is not None and rule.answer != answer:
            meta = {"image_id": image_id, "rule_cue": rule.cue, "rule_answer": rule.answer, "rule_confidence": round(rule.confidence, 4)}
            rows.append(Row(f"ce-{k}", _pkg_ref("test", image_id), question, answer, answer_type_of(answer), easyvqa_template(question), meta))
    return _sample(rows, SPLIT_SIZES["counterexamples"], rng)


class ReferenceModel:
    """The adversary's model: logistic regression on 8×8 pixels + question words, fit on train."""

    def __init__(self, src: _Sources):
        from sklearn.feature_extraction.text import CountVectorizer
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        self.vectorizer = CountVectorizer(binary=True, token_pattern=r"[a-z]+")
        pix = {i: self._pixels(info.path) for i, info in src.train_img.items()}
        qs = src.fit_q
        X = self._features([q.question for q in qs], [pix[q.image_id] for q in qs], fit=True)
        self.clf = LogisticRegression(max_iter=300, C=1.0)
        with warnings.catch_warnings(), _pinned_blas():
            # lbfgs stops at max_iter before its tolerance; the fit is deterministic either way
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.clf.fit(X, [q.answer for q in qs])

    @staticmethod
    def _pixels(path: Path | Image.Image) -> np.ndarray:
        im = path if isinstance(path, Image.Image) else open_image(path)
        return np.asarray(im.convert("RGB").resize((8, 8), Image.BILINEAR), dtype=np.float32).ravel() / 255.0

    def _features(self, questions: list[str], pixels: list[np.ndarray], fit: bool = False) -> np.ndarray:
        words = self.vectorizer.fit_transform(questions) if fit else self.vectorizer.transform(questions)
        return np.hstack([np.stack(pixels), words.toarray().astype(np.float32)])

    def predict(self, questions: list[str], images: list[Path | Image.Image]) -> list[str]:
        with _pinned_blas():
            return list(self.clf.predict(self._features(questions, [self._pixels(p) for p in images])))


def _pinned_blas():
    """Fix the BLAS thread count while the reference model runs.

    lbfgs stops at max_iter, so the summation order of BLAS (which follows the thread count)
    decides some borderline predictions, and with them the adversarial split: a build under
    OMP_NUM_THREADS=1 (torchrun's default) differed from one under 2. Pinned to one thread,
    the setting the v1.0 numbers in the README were measured on.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


ADVERSARY_FILE = Path(__file__).with_name(f"adversary-v{SUITE_VERSION}.json")


def _adversarial_candidates(src: _Sources, rng: np.random.Generator) -> list[tuple[str, int, str, str]]:
    """Candidate questions, as an adversary would write them: easy-VQA templates and broad phrasings."""
    cands: list[tuple[str, int, str, str]] = []
    for question, image_id, answer in _template_pool(src.test_img):
        if rng.random() < 0.1:
            cands.append((question, image_id, answer, easyvqa_template(question)))
    for image_id in sorted(src.test_img):
        info = src.test_img[image_id]
        for key, templates in BROAD_PHRASINGS.items():
            template = str(rng.choice(templates))
            kind = key.removeprefix("not_").split(":")[0]
            slot_c = str(rng.choice(list(EASYVQA_COLORS))) if kind == "has_color" else (info.color if key == "shape:color" else None)
            slot_s = str(rng.choice(list(EASYVQA_SHAPES))) if kind == "has_shape" else (info.shape if key == "color:shape" else None)
            intent = Intent(kind, color=slot_c, shape=slot_s, negated=key.startswith("not_"))
            cands.append((phrase(template, intent), image_id, answer_for(intent, info.color, info.shape), template))
    return cands


def _candidates_digest(cands: list[tuple[str, int, str, str]]) -> str:
    return hashlib.sha256(json.dumps(cands).encode()).hexdigest()


def reference_predictions(src: _Sources, cands: list[tuple[str, int, str, str]]) -> list[str]:
    """The reference model's answer to every candidate, fit and predicted here."""
    ref = ReferenceModel(src)
    return ref.predict([c[0] for c in cands], [src.test_img[c[1]].path for c in cands])


def adversary_decisions(src: _Sources, cands: list[tuple[str, int, str, str]]) -> dict[int, str]:
    """The candidates the reference model got wrong (index → its prediction), as released.

    The reference fit stops at lbfgs's iteration limit, so which borderline candidates it gets
    wrong follows the BLAS kernels of the CPU it runs on (an AVX2 build of OpenBLAS flips a few
    against an AVX-512 one). Like AdVQA's human adversaries, the decisions are therefore data:
    recorded once (``adversary-v1.0.json``) and read by every build; the model is refit only
    when no record exists for the candidates (a new suite version).
    """
    digest = _candidates_digest(cands)
    if ADVERSARY_FILE.is_file():
        record = json.loads(ADVERSARY_FILE.read_text())
        if record.get("candidates_sha256") != digest:
            raise DataError("the adversarial split's candidate questions differ from the recorded ones "
                            "(easy-vqa source or numpy's random generator changed)", path=ADVERSARY_FILE)
        return {int(k): str(v) for k, v in record["wrong"].items()}
    preds = reference_predictions(src, cands)
    return {k: p for k, ((_, _, a, _), p) in enumerate(zip(cands, preds)) if p != a}


def record_adversary_decisions(path: Path, src: _Sources | None = None) -> dict:
    """Fit the reference model here and write its decisions in the shipped record's format."""
    src = src or _Sources()
    k = list(BUILDERS).index("adversarial")
    cands = _adversarial_candidates(src, np.random.default_rng([SUITE_SEED, k + 1]))
    preds = reference_predictions(src, cands)
    record = {
        "version": SUITE_VERSION,
        "candidates": len(cands),
        "candidates_sha256": _candidates_digest(cands),
        "wrong": {str(k): p for k, ((_, _, a, _), p) in enumerate(zip(cands, preds)) if p != a},
    }
    atomic_write_json(path, record)
    return record


def build_adversarial(src: _Sources, rng: np.random.Generator) -> list[Row]:
    cands = _adversarial_candidates(src, rng)
    wrong = adversary_decisions(src, cands)
    rows = [
        Row(f"adv-{k}", _pkg_ref("test", image_id), q, a, answer_type_of(a), qt, {"image_id": image_id, "reference_prediction": wrong[k]})
        for k, (q, image_id, a, qt) in enumerate(cands)
        if k in wrong
    ]
    return _sample(rows, SPLIT_SIZES["adversarial"], rng)


def build_text(src: _Sources, rng: np.random.Generator) -> list[Row]:
    rows = []
    for k in range(SPLIT_SIZES["text-read"]):
        word = str(rng.choice(OCR_WORDS + OCR_NUMBERS))
        color = str(rng.choice(["black", "blue", "red", "brown", "teal"]))
        with_shape = None
        if rng.random() < 0.5:  # a distractor shape in the lower part of the image
            with_shape = random_shape(rng, colors=tuple(EASYVQA_COLORS), shapes=EASYVQA_SHAPES, r_range=(6.0, 9.0))
            with_shape.cy = float(rng.uniform(render.SIZE - 16, render.SIZE - 9))
        img = render.draw_text(word, color, pale(rng), rng, with_shape=with_shape)
        q = str(rng.choice(OCR_QUESTIONS))
        rows.append(Row(f"text-{k}", img, q, word, answer_type_of(word), q, {"text_color": color, "with_shape": with_shape is not None}))
    return rows


def build_degraded(src: _Sources, rng: np.random.Generator) -> list[Row]:
    rows = []
    image_ids = sorted(src.test_img)
    by_image = collections.defaultdict(list)
    for q in src.test_q:
        by_image[q.image_id].append(q)
    for k in range(SPLIT_SIZES["degraded"]):
        image_id = image_ids[k % len(image_ids)]
        q = by_image[image_id][int(rng.integers(len(by_image[image_id])))]
        kind = str(rng.choice(["blur", "dark", "bright", "noise"]))
        severe = bool(rng.random() < 0.5)
        img = render.degrade(src.test_image(image_id), kind, severe, rng)
        a = UNANSWERABLE if severe else q.answer
        rows.append(Row(f"deg-{k}", img, q.question, a, answer_type_of(a), easyvqa_template(q.question), {"image_id": image_id, "degradation": kind, "severe": severe}))
    return rows


def build_knowledge(src: _Sources, rng: np.random.Generator) -> list[Row]:
    rows = []
    image_ids = sorted(src.test_img)
    facts = {v: k for k, v in COLOR_OF.items()}
    for k in range(SPLIT_SIZES["knowledge"]):
        info = src.test_img[image_ids[int(rng.integers(len(image_ids)))]]
        if rng.random() < 0.6:
            q = str(rng.choice(list(KNOWLEDGE_SHAPE_QUESTIONS)))
            a = KNOWLEDGE_SHAPE_QUESTIONS[q](info.shape)
            qt = q
        else:
            thing = facts[info.color] if rng.random() < 0.5 else str(rng.choice(list(COLOR_OF)))
            q = KNOWLEDGE_COLOR_QUESTION.format(thing=thing)
            a = "yes" if COLOR_OF[thing] == info.color else "no"
            qt = KNOWLEDGE_COLOR_QUESTION
        rows.append(Row(f"know-{k}", _pkg_ref("test", info.image_id), q, a, answer_type_of(a), qt, {"image_id": info.image_id}))
    return rows


BUILDERS: dict[str, Callable[[_Sources, np.random.Generator], list[Row]]] = {
    "easyvqa-test": build_test,
    "iv-edit": build_iv,
    "cv-edit": build_cv,
    "rephrase": build_rephrase,
    "prior-flip": build_prior_flip,
    "counterexamples": build_counterexamples,
    "adversarial": build_adversarial,
    "text-read": build_text,
    "degraded": build_degraded,
    "knowledge": build_knowledge,
}


# --- writing and reading -----------------------------------------------------------------------

def suite_dir(root: Path | None = None) -> Path:
    return (root or cache_dir()) / "embedded" / f"v{SUITE_VERSION}"


def _write_split(folder: Path, name: str, rows: list[Row]) -> str:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    lines = []
    saved: dict[int, str] = {}  # one file per edited image, shared by its questions
    for row in rows:
        image = row.image
        if isinstance(image, Image.Image):
            if id(image) not in saved:
                rel = f"images/{row.question_id}.png"
                image.save(folder / rel, format="PNG", optimize=False)
                h.update(np.asarray(image).tobytes())
                saved[id(image)] = rel
            image = saved[id(image)]
        rec = {
            "question_id": row.question_id,
            "image": image,
            "question": row.question,
            "answers": [row.answer] * N_ANNOTATORS,
            "answer_type": row.answer_type,
            "question_type": row.question_type,
            "dataset": "embedded",
            "split": name,
            "meta": row.meta,
        }
        line = json.dumps(rec, sort_keys=True)
        h.update(line.encode())
        lines.append(line)
    (folder / "records.jsonl").write_text("\n".join(lines) + "\n")
    return h.hexdigest()


def build(root: Path | None = None, *, progress: Callable[[str], None] | None = None) -> Path:
    """Build every derived split into the cache (atomically: a temp folder renamed at the end),
    then check the content against the version's recorded hashes (:func:`check_content`)."""
    target = suite_dir(root)
    build_once(target, SUITE_VERSION, lambda folder: _build_into(folder, progress))
    check_content(target)
    return target


def build_once(target: Path, version: str, build_into: Callable[[Path], None]) -> None:
    """``build_into(target)`` unless ``target`` holds a finished build (its manifest.json).
    One build at a time per cache (threads or processes): the builds would be identical, and
    two at once only double the work."""
    if (target / "manifest.json").is_file():
        return
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".build-v{version}.lock")):
        if not (target / "manifest.json").is_file():
            build_into(target)


@contextlib.contextmanager
def building_folder(target: Path) -> Iterator[Path]:
    """A temporary folder beside ``target`` to build into: renamed to ``target`` when the block
    ends (after writing the manifest.json), removed when it fails, so a build appears whole or
    not at all."""
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        yield tmp
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: keep theirs
            if not (target / "manifest.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _build_into(target: Path, progress: Callable[[str], None] | None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with building_folder(target) as tmp:
        src = _Sources()
        manifest = {"version": SUITE_VERSION, "seed": SUITE_SEED, "source_sha256": source_digest(), "splits": {}}
        for k, (name, builder) in enumerate(BUILDERS.items()):
            if progress:
                progress(name)
            rng = np.random.default_rng([SUITE_SEED, k + 1])
            rows = builder(src, rng)
            digest = _write_split(tmp / name, name, rows)
            manifest["splits"][name] = {"n": len(rows), "sha256": digest}
        manifest["validation_image_ids"] = sorted(src.val_ids)
        atomic_write_json(tmp / "manifest.json", manifest)


@functools.lru_cache(maxsize=None)
def source_digest() -> str:
    """SHA-256 over the easy-vqa package's data files (questions and images; names and bytes):
    the training and validation splits are read from them directly."""
    root = package_root()
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


def _ids_digest(ids: list[int]) -> str:
    return hashlib.sha256(json.dumps(sorted(ids)).encode()).hexdigest()


def drift_allowed() -> bool:
    return os.environ.get(DRIFT_ENV, "").strip().lower() not in ("", "0", "false", "no")


def suite_version() -> str:
    """The version results record: "1.0", or "1.0+local" when a drifted build is allowed."""
    return f"{SUITE_VERSION}+local" if drift_allowed() else SUITE_VERSION


def content_differences(manifest: dict) -> list[str]:
    """What in a built suite differs from the version's recorded content (empty: identical)."""
    return manifest_differences(manifest, EXPECTED_HASHES)


def manifest_differences(manifest: dict, expected_hashes: Path) -> list[str]:
    """What in a suite built from easy-VQA (this one, ``embedded-domains``) differs from the
    content recorded in ``expected_hashes`` (empty: identical): the easy-vqa source files, the
    validation images where the record has them, and each split."""
    expected = json.loads(expected_hashes.read_text())
    differ = []
    # Caches built before the source was hashed lack it; the files they read are hashed now.
    source = manifest["source_sha256"] if "source_sha256" in manifest else source_digest()
    if source != expected["source_sha256"]:
        differ.append("the easy-vqa source files")
    if "validation_image_ids_sha256" in expected and _ids_digest(manifest.get("validation_image_ids", [])) != expected["validation_image_ids_sha256"]:
        differ.append("the validation images")
    got = manifest.get("splits", {})
    differ += [name for name, digest in expected["splits"].items() if got.get(name, {}).get("sha256") != digest]
    return differ


def check_manifest(manifest_path: Path, expected_hashes: Path | None, *, suite: str, version: str, remedy: Callable[[], str]) -> None:
    """Refuse a built suite whose ``manifest.json`` is unreadable or differs from the content
    recorded in ``expected_hashes`` (None: no content recorded yet, only while a new version is
    being defined), unless drift is allowed (:data:`DRIFT_ENV`): then warn that it runs as
    "<version>+local". Once per process and manifest (its mtime).

    ``suite`` names it in the messages; ``remedy()`` is what the refusal says between "differ
    from the recorded content" and the drift option."""
    _checked(manifest_path, manifest_path.stat().st_mtime_ns, expected_hashes, suite, version, remedy)


@functools.lru_cache(maxsize=None)
def _checked(manifest_path: Path, mtime_ns: int, expected_hashes: Path | None, suite: str, version: str, remedy: Callable[[], str]) -> None:
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"unreadable suite manifest ({exc}); delete {manifest_path.parent} to rebuild", path=manifest_path) from None
    differ = manifest_differences(manifest, expected_hashes) if expected_hashes is not None else []
    if differ and not drift_allowed():
        raise DataError(
            f"the {suite} suite built here is not v{version}: {', '.join(differ)} differ from the recorded content{remedy()}, "
            f"or set {DRIFT_ENV}=1 to run it as version {version}+local",
            path=manifest_path,
        )
    if differ:  # stacklevel 4: reported where the suite's own check (check_content, domains' build) was called
        warnings.warn(f"{suite} suite differs from v{version} ({', '.join(differ)}); running as {version}+local", stacklevel=4)


def _pinned_libraries_remedy() -> str:
    """The refusal's middle for this suite: the libraries that render, sample and fit it, as
    installed here (imported only to say so)."""
    import PIL
    import sklearn

    return (f" (numpy {np.__version__}, Pillow {PIL.__version__}, scikit-learn {sklearn.__version__} here). Results would not be "
            f"comparable with published v{SUITE_VERSION} numbers: install the versions pyproject.toml pins (README)")


def check_content(target: Path) -> None:
    """Refuse a built suite whose content differs from the version's recorded hashes (once per
    process and manifest; the split files are hashed when built, the source files here)."""
    check_manifest(target / "manifest.json", EXPECTED_HASHES, suite="embedded", version=SUITE_VERSION, remedy=_pinned_libraries_remedy)


def read_split(name: str, root: Path | None = None) -> list[VQARecord]:
    folder = build(root) / name
    path = folder / "records.jsonl"
    out = []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DataError(f"embedded split missing ({exc.strerror}); delete {folder.parent} to rebuild", path=path) from None
    for lineno, line in enumerate(lines, start=1):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"line {lineno}: malformed JSON ({exc.msg}); delete the folder to rebuild", path=path) from None
        obj["image"] = resolve_image(obj["image"], folder)
        out.append(VQARecord.from_json(obj))
    return out


def train_records(part: str, root: Path | None = None) -> list[VQARecord]:
    """easy-VQA train questions, split by image into fitting ("train") and validation parts."""
    manifest = json.loads((build(root) / "manifest.json").read_text())
    val_ids = set(manifest["validation_image_ids"])
    out = []
    for k, q in enumerate(read_questions("train")):
        if (q.image_id in val_ids) != (part == "validation"):
            continue
        out.append(
            VQARecord(
                question_id=f"train-{k}",
                image=str(package_root() / "train" / "images" / f"{q.image_id}.png"),
                question=q.question,
                answers=[q.answer] * N_ANNOTATORS,
                answer_type=answer_type_of(q.answer),
                question_type=easyvqa_template(q.question),
                dataset="embedded",
                split="easyvqa-train" if part == "train" else "easyvqa-val",
                meta={"image_id": q.image_id},
            )
        )
    return out
