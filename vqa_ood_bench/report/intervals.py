"""The intervals results files and leaderboard entries store, computed from per-question scores.

Every writer (the runner, the re-scorer, ``leaderboard add``) goes through :func:`fill_intervals`
with the same confidence, replicate count and seed, so the same predictions always give the
same bytes, and ``vqa-ood-bench compare``'s per-run intervals (same defaults) equal the stored ones.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from . import stats
from .schema import AVERAGE_ROLES, Interval, SplitResult, round_score

CONFIDENCE = 0.95
N_BOOT = 2000
SEED = 0


def _interval(bounds: tuple[float, float], method: str) -> Interval:
    low, high = (round_score(v) for v in bounds)
    # Rounding cannot swap the bounds, but the bootstrap can land a hair outside [0, 100] only
    # through floating point; clamp so that validation never trips on 1e-15.
    return Interval(low=min(max(low, 0.0), 100.0), high=min(max(high, 0.0), 100.0), confidence=CONFIDENCE, method=method)


def _usable(scores: Mapping[str, np.ndarray], name: str) -> bool:
    return name in scores and np.asarray(scores[name]).size > 0


def split_ci(scores: np.ndarray) -> Interval:
    """The stored interval of one split's accuracy (per-question scores in [0, 1])."""
    bounds = stats.split_interval(scores, confidence=CONFIDENCE, n_boot=N_BOOT, seed=SEED)
    return _interval(bounds, stats.interval_method(scores))


def average_cis(splits: Mapping[str, SplitResult], scores: Mapping[str, np.ndarray], metric: str = "vqa_accuracy") -> dict[str, Interval]:
    """Average name -> interval of that average, for every average whose member splits (as
    :func:`~.schema.compute_averages` picks them) all have per-question scores in ``scores``."""
    out: dict[str, Interval] = {}
    for key, roles in AVERAGE_ROLES.items():
        members = [n for n, s in splits.items() if s.role in roles and getattr(s, metric) is not None]
        if not members or not all(_usable(scores, n) for n in members):
            continue
        bounds = stats.average_interval(scores, members, confidence=CONFIDENCE, n_boot=N_BOOT, seed=SEED)
        out[key] = _interval(bounds, stats.interval_method(*(scores[n] for n in members)))
    return out


def fill_intervals(
    splits: Mapping[str, SplitResult], scores: Mapping[str, np.ndarray], metric: str = "vqa_accuracy"
) -> tuple[dict[str, SplitResult], dict[str, Interval]]:
    """``splits`` with ``ci`` set wherever ``scores`` has the split's per-question scores (other
    splits as they are), and the averages' intervals."""
    out = {name: (s.model_copy(update={"ci": split_ci(scores[name])}) if _usable(scores, name) else s)
           for name, s in splits.items()}
    return out, average_cis(out, scores, metric)
