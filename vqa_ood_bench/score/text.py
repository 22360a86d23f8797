"""Exact match and "contains" for classification-style sets (one class name per question).

Both compare after the VQA answer normalisation (:func:`normalize.normalize_answer`: lowercase,
punctuation, number words to digits, articles dropped), with ``_`` in class names read as a
space (``hot_air_balloon`` -> ``hot air balloon``), as class lists are often written that way.

* exact match: the normalised prediction equals a normalised target.
* contains: a normalised target occurs in the normalised prediction as whole words
  (``"a red fire truck"`` contains ``"fire truck"``; ``"cathedral"`` does not contain ``"cat"``).

A question may have several acceptable targets (synonyms); it counts if any matches. Each
distinct string is normalised once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from .normalize import normalize_answer


def normalize_label(text: str) -> str:
    return normalize_answer(text.replace("_", " "))


def _targets_list(targets: Sequence[str | Sequence[str]]) -> list[list[str]]:
    out = []
    for i, t in enumerate(targets):
        ts = [t] if isinstance(t, str) else list(t)
        if not ts:
            raise DataError(f"question {i} has no target", record=i)
        out.append(ts)
    return out


def _normalized(strings: list[str], cache: dict[str, str]) -> list[str]:
    out = []
    for s in strings:
        n = cache.get(s)
        if n is None:
            n = cache[s] = normalize_label(s)
        out.append(n)
    return out


def exact_match(predictions: Sequence[str], targets: Sequence[str | Sequence[str]]) -> np.ndarray:
    """Per question: 1.0 if the normalised prediction equals any normalised target."""
    if len(predictions) != len(targets):
        raise DataError(f"{len(predictions)} predictions but {len(targets)} targets")
    cache: dict[str, str] = {}
    preds = _normalized(list(predictions), cache)
    tgts = _targets_list(targets)
    return np.array([float(p in set(_normalized(t, cache))) for p, t in zip(preds, tgts)], dtype=np.float64)


def contains_match(predictions: Sequence[str], targets: Sequence[str | Sequence[str]]) -> np.ndarray:
    """Per question: 1.0 if any normalised target occurs in the normalised prediction as whole words."""
    if len(predictions) != len(targets):
        raise DataError(f"{len(predictions)} predictions but {len(targets)} targets")
    cache: dict[str, str] = {}
    preds = _normalized(list(predictions), cache)
    tgts = _targets_list(targets)
    out = np.zeros(len(preds), dtype=np.float64)
    for i, (p, ts) in enumerate(zip(preds, tgts)):
        padded = f" {p} "
        out[i] = float(any(t and f" {t} " in padded for t in _normalized(ts, cache)))
    return out


@dataclass
class TextMatch:
    n: int
    exact_match: float  # 0-100
    contains: float  # 0-100


def text_match(predictions: Sequence[str], targets: Sequence[str | Sequence[str]]) -> TextMatch:
    em = exact_match(predictions, targets)
    co = contains_match(predictions, targets)
    n = len(em)
    return TextMatch(n=n, exact_match=float(100 * em.mean()) if n else 0.0, contains=float(100 * co.mean()) if n else 0.0)
