"""VQA accuracy (Antol et al.) in three variants, vectorised.

The rule: for each of a question's N human answers, leave that one answer out and count how
many of the remaining N - 1 equal the prediction; score ``min(1, count / 3)``; average over the
N. If ``m`` of the N answers match, the left-out answer is a match ``m`` times (count ``m - 1``)
and a non-match ``N - m`` times (count ``m``), so the score is

    (m * min(1, (m - 1) / 3) + (N - m) * min(1, m / 3)) / N

which needs only ``m`` per question. Leaving out removes one *entry*, so repeated answers
without ids (VizWiz) are handled one at a time.

Variants (which strings are normalised before comparing; steps as in ``normalize.py``):

``official``  GT-Vision-Lab master (2021). Step 1 on both sides. If the N answers (after step 1)
              are not all identical, steps 2-3 on the answers and on the prediction; if they
              are all identical, nothing more on either side (so ``Yes`` vs 10 x ``yes`` is 0).
``lavis``     LAVIS ``vqa_eval.py`` (the DiGraP paper's numbers). Steps 1-3 on the prediction
              always. The answers get no step 1; if the raw answers are not all identical each
              gets step 2 (punctuation) only, otherwise they are compared as they are.
``lenient``   lmms-eval / MMF style: steps 1-3 on both sides, always (official period rule,
              none of TextVQA's extra rules).

Speed: every distinct string is normalised once, strings become integer ids, and matching,
the "all identical" test and the leave-one-out rule are numpy operations over a padded
``(questions, max answers)`` id matrix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Callable

import numpy as np

from ..data.records import VQARecord
from ..errors import ConfigError, DataError
from .normalize import clean_whitespace, normalize_answer, process_punctuation

VARIANTS: tuple[str, ...] = ("official", "lavis", "lenient")
DEFAULT_VARIANT = "official"


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ConfigError(f"unknown VQA accuracy variant {variant!r}; known: {', '.join(VARIANTS)}")
    return variant


def _identity(s: str) -> str:
    return s


# Per variant: (prediction form if answers all identical, prediction form otherwise,
#               answer form if all identical, answer form otherwise).
# The "all identical" test compares the answers in their all-identical form.
_FORMS: dict[str, tuple[Callable[[str], str], Callable[[str], str], Callable[[str], str], Callable[[str], str]]] = {
    "official": (clean_whitespace, normalize_answer, clean_whitespace, normalize_answer),
    "lavis": (normalize_answer, normalize_answer, _identity, process_punctuation),
    "lenient": (normalize_answer, normalize_answer, normalize_answer, normalize_answer),
}


def leave_one_out_score(matches: np.ndarray, n_answers: np.ndarray) -> np.ndarray:
    """Per-question score from the number of matching answers ``m`` and the answer count ``N``."""
    m = np.asarray(matches, dtype=np.float64)
    n = np.asarray(n_answers, dtype=np.float64)
    hit_left_out = np.minimum(1.0, (m - 1.0) / 3.0)  # the left-out answer was one of the matches
    miss_left_out = np.minimum(1.0, m / 3.0)
    return (m * hit_left_out + (n - m) * miss_left_out) / n


def _check_inputs(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> np.ndarray:
    if len(predictions) != len(answers):
        raise DataError(f"{len(predictions)} predictions but {len(answers)} answer lists")
    lengths = np.fromiter(map(len, answers), dtype=np.int64, count=len(answers))
    empty = np.flatnonzero(lengths == 0)
    if empty.size:
        raise DataError(
            f"question {int(empty[0])} has no ground-truth answers"
            + (f" ({empty.size} questions have none)" if empty.size > 1 else "")
            + "; unlabelled splits cannot be scored",
            record=int(empty[0]),
        )
    return lengths


def _map_forms(strings: list[str], fn: Callable[[str], str], vocab: dict[str, int]) -> np.ndarray:
    """ids (in ``vocab``, grown as needed) of ``fn(s)`` for each distinct raw string ``s``."""
    out = np.empty(len(strings), dtype=np.int64)
    setdefault = vocab.setdefault
    for i, s in enumerate(strings):
        t = fn(s)
        out[i] = setdefault(t, len(vocab))
    return out


def vqa_scores(predictions: Sequence[str], answers: Sequence[Sequence[str]], variant: str = DEFAULT_VARIANT) -> np.ndarray:
    """float64 per-question VQA accuracy in [0, 1] (multiply the mean by 100 for the usual %).

    Raises :class:`ConfigError` for an unknown variant and :class:`DataError` naming the first
    question index without answers (or a length mismatch).
    """
    check_variant(variant)
    lengths = _check_inputs(predictions, answers)
    q = len(predictions)
    if q == 0:
        return np.zeros(0, dtype=np.float64)
    for i, p in enumerate(predictions):
        if not isinstance(p, str):
            raise DataError(f"prediction must be a string, got {type(p).__name__}", record=i)

    total = int(lengths.sum())
    flat = list(chain.from_iterable(answers))
    # Raw string -> id; dict.fromkeys dedups at C speed, keeps first-seen order.
    raw_vocab = dict.fromkeys(chain(predictions, flat))
    raw_strings = list(raw_vocab)
    raw_ids = dict(zip(raw_strings, range(len(raw_strings))))
    pred_raw = np.fromiter(map(raw_ids.__getitem__, predictions), dtype=np.int64, count=q)
    ans_raw_flat = np.fromiter(map(raw_ids.__getitem__, flat), dtype=np.int64, count=total)
    del raw_vocab

    pred_plain_fn, pred_proc_fn, ans_plain_fn, ans_proc_fn = _FORMS[variant]
    vocab: dict[str, int] = {}
    # Only the raw strings that occur on a side need that side's forms; a shared cache per
    # function keeps each (function, string) pair computed once.
    n_raw = len(raw_strings)
    uniq_pred = np.flatnonzero(np.bincount(pred_raw, minlength=n_raw))
    uniq_ans = np.flatnonzero(np.bincount(ans_raw_flat, minlength=n_raw))

    def table(fn: Callable[[str], str], which: np.ndarray, cache: dict) -> np.ndarray:
        t = np.full(n_raw, -1, dtype=np.int64)
        key = id(fn)
        if key not in cache:
            cache[key] = np.full(n_raw, -1, dtype=np.int64)
        done = cache[key]
        todo = which[done[which] < 0]
        if todo.size:
            done[todo] = _map_forms([raw_strings[i] for i in todo], fn, vocab)
        t[which] = done[which]
        return t

    cache: dict = {}
    pred_plain = table(pred_plain_fn, uniq_pred, cache)
    pred_proc = table(pred_proc_fn, uniq_pred, cache)
    ans_plain = table(ans_plain_fn, uniq_ans, cache)
    ans_proc = table(ans_proc_fn, uniq_ans, cache)

    # Padded (q, max_n) matrix of raw answer ids; -1 marks padding.
    max_n = int(lengths.max())
    if np.all(lengths == max_n):
        ans_raw = ans_raw_flat.reshape(q, max_n)
        valid = None
    else:
        ans_raw = np.full((q, max_n), -1, dtype=np.int64)
        rows = np.repeat(np.arange(q), lengths)
        starts = np.cumsum(lengths) - lengths
        cols = np.arange(total) - np.repeat(starts, lengths)
        ans_raw[rows, cols] = ans_raw_flat
        valid = ans_raw >= 0

    safe = np.where(ans_raw >= 0, ans_raw, 0)
    plain = ans_plain[safe]
    same_as_first = plain == plain[:, :1]
    if valid is not None:
        same_as_first |= ~valid
    identical = same_as_first.all(axis=1)

    pred_id = np.where(identical, pred_plain[pred_raw], pred_proc[pred_raw])
    gt_id = np.where(identical[:, None], plain, ans_proc[safe])
    hits = gt_id == pred_id[:, None]
    if valid is not None:
        hits &= valid
    matches = hits.sum(axis=1)
    return leave_one_out_score(matches, lengths)


def vqa_score_one(prediction: str, answers: Sequence[str], variant: str = DEFAULT_VARIANT) -> float:
    """The rule for one question, written plainly (the reference the vectorised code must equal)."""
    check_variant(variant)
    if not answers:
        raise DataError("question has no ground-truth answers")
    pred_plain_fn, pred_proc_fn, ans_plain_fn, ans_proc_fn = _FORMS[variant]
    gts = [ans_plain_fn(a) for a in answers]
    if len(set(gts)) > 1:
        gts = [ans_proc_fn(a) for a in answers]
        pred = pred_proc_fn(prediction)
    else:
        pred = pred_plain_fn(prediction)
    accs = []
    for i in range(len(gts)):
        others = gts[:i] + gts[i + 1 :]
        accs.append(min(1.0, sum(1 for g in others if g == pred) / 3.0))
    return sum(accs) / len(accs)


def vqa_scores_loop(predictions: Sequence[str], answers: Sequence[Sequence[str]], variant: str = DEFAULT_VARIANT) -> np.ndarray:
    """A plain per-question loop (no caching); for checks and the benchmark's baseline."""
    check_variant(variant)
    _check_inputs(predictions, answers)
    return np.array([vqa_score_one(p, a, variant) for p, a in zip(predictions, answers)], dtype=np.float64)


@dataclass
class VQAAccuracy:
    """Scores of one split. Percentages are 0-100; ``scores`` are per question in [0, 1]."""

    variant: str
    n: int
    accuracy: float
    per_answer_type: dict[str, float] = field(default_factory=dict)
    per_question_type: dict[str, float] = field(default_factory=dict)
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def to_json(self) -> dict:
        return {
            "variant": self.variant,
            "n": self.n,
            "vqa_accuracy": self.accuracy,
            "per_answer_type": dict(self.per_answer_type),
            "per_question_type": dict(self.per_question_type),
        }


def group_means(labels: Sequence[str], scores: np.ndarray) -> dict[str, float]:
    """Mean score x 100 per label; empty labels (no type annotated) are left out."""
    if len(labels) == 0:
        return {}
    names, inverse = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)
    sums = np.bincount(inverse, weights=scores, minlength=len(names))
    counts = np.bincount(inverse, minlength=len(names))
    return {str(k): float(100.0 * s / c) for k, s, c in zip(names, sums, counts) if k != ""}


def score_records(records: Sequence[VQARecord], predictions: Mapping[str, str], variant: str = DEFAULT_VARIANT) -> VQAAccuracy:
    """Score ``records`` with ``predictions`` (question_id -> answer string).

    Every record needs a prediction and at least one answer: a missing one raises a
    :class:`DataError` naming the question_id (a missing prediction is neither counted wrong nor
    skipped). Predictions for questions not in ``records`` are ignored.
    """
    check_variant(variant)
    if not records:
        raise DataError("no records to score (an empty split has no accuracy)")
    missing = [r.question_id for r in records if r.question_id not in predictions]
    if missing:
        more = f" ({len(missing)} questions lack one)" if len(missing) > 1 else ""
        raise DataError(f"no prediction for question {missing[0]!r}{more}", record=missing[0])
    for r in records:
        if not r.answers:
            raise DataError(f"question {r.question_id!r} has no ground-truth answers; unlabelled splits cannot be scored", record=r.question_id)
        p = predictions[r.question_id]
        if not isinstance(p, str):
            raise DataError(f"prediction for question {r.question_id!r} must be a string, got {type(p).__name__}", record=r.question_id)
    preds = [predictions[r.question_id] for r in records]
    scores = vqa_scores(preds, [r.answers for r in records], variant)
    n = len(records)
    return VQAAccuracy(
        variant=variant,
        n=n,
        accuracy=float(100.0 * scores.mean()),
        per_answer_type=group_means([r.answer_type for r in records], scores),
        per_question_type=group_means([r.question_type for r in records], scores),
        scores=scores,
    )
