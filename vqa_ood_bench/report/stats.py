"""How far to trust a number: intervals for accuracies and averages, paired run comparisons, seed summaries.

Inputs are per-question scores in [0, 1] (what :func:`~vqa_ood_bench.score.vqa_accuracy.vqa_scores`
gives); every accuracy, difference and interval returned is in percentage points (0-100), as
results files store accuracies. Averages over splits are unweighted means of split accuracies,
as :func:`~vqa_ood_bench.report.schema.compute_averages` computes them.

* :func:`split_interval`: exact Clopper-Pearson interval when every score is 0 or 1, else a
  percentile bootstrap over questions.
* :func:`average_interval`: percentile bootstrap of the average of several splits' accuracies,
  each replicate resampling the questions of every split (the interval of the average, not an
  average of intervals).
* :func:`paired_difference` / :func:`paired_average_difference`: two runs scored on the same
  questions: B - A, a paired bootstrap interval, and a two-sided sign-flip permutation p-value.
* :func:`group_difference`: two groups of runs paired by seed on the same questions: the mean
  of the per-seed differences, a t interval whose variance counts both the seeds and the
  questions (crossed random-effects ANOVA, Satterthwaite degrees of freedom), and its p-value.
* :func:`seed_summary`: mean, sample standard deviation and t interval of one number over seeds.

Speed: a bootstrap replicate's mean depends only on how many times each distinct value was
drawn, and drawing n questions with replacement draws those counts from a multinomial over the
distinct values; VQA scores take a handful of values, so a replicate costs a few numbers, not n.
Likewise a sign-flip statistic depends only on how many of the entries of each distinct
magnitude are flipped (a Binomial(count, 1/2) each), which makes the exact null distribution
small enough to enumerate in most real cases (see :func:`sign_flip_test`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as sps

Interval = tuple[float, float]

# Largest number of distinct sign-flip outcomes enumerated exactly (2**20: every n <= 20).
EXACT_OUTCOMES = 1 << 20
# Elements per block of bootstrap / permutation draws (bounds memory for large inputs).
_BLOCK = 1 << 22


# --- checks ---------------------------------------------------------------------------------

def _scores(values: ArrayLike, name: str = "scores", *, unit: bool = True) -> np.ndarray:
    """1-D float64 copy of ``values``; non-empty, finite and (``unit``) within [0, 1], else ValueError."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} has non-finite values")
    if unit and (x.min() < 0.0 or x.max() > 1.0):
        raise ValueError(f"{name} must lie in [0, 1] (per-question scores), got [{x.min()}, {x.max()}]")
    return x


def _check_confidence(confidence: float) -> float:
    if not (isinstance(confidence, (int, float)) and 0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return float(confidence)


def _check_count(value: int, name: str) -> int:
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _groups(per_split: Mapping[str, ArrayLike], splits: Sequence[str], who: str = "per_split_scores") -> list[np.ndarray]:
    if not splits:
        raise ValueError("no splits to average")
    if len(set(splits)) != len(splits):
        raise ValueError(f"splits named twice: {list(splits)}")
    missing = [s for s in splits if s not in per_split]
    if missing:
        raise ValueError(f"{who} has no split {missing[0]!r}")
    return [_scores(per_split[s], f"{who}[{s!r}]") for s in splits]


# --- building blocks ------------------------------------------------------------------------

def bootstrap_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``n_boot`` means of ``values`` resampled with replacement (same size), as fractions.

    Drawn as multinomial counts over the distinct values, which has exactly the distribution
    of resampling the entries themselves.
    """
    uniq, counts = np.unique(values, return_counts=True)
    n = int(values.size)
    probs = counts / n
    out = np.empty(n_boot, dtype=np.float64)
    block = max(1, _BLOCK // uniq.size)
    for start in range(0, n_boot, block):
        m = min(block, n_boot - start)
        out[start : start + m] = rng.multinomial(n, probs, size=m) @ uniq / n
    return out


def _percentile(replicates: np.ndarray, confidence: float) -> Interval:
    alpha = 1.0 - confidence
    low, high = np.quantile(replicates, [alpha / 2, 1.0 - alpha / 2])
    return float(100.0 * low), float(100.0 * high)


def _is_binary(x: np.ndarray) -> bool:
    return bool(np.all((x == 0.0) | (x == 1.0)))


def sign_flip_test(values: ArrayLike, *, n_perm: int = 10_000, seed: int | np.random.Generator = 0) -> tuple[float, bool]:
    """Two-sided p-value of ``sum(values)`` against flipping each value's sign at random.

    Returns ``(p, exact)``. The null distribution is enumerated exactly when it has at most
    :data:`EXACT_OUTCOMES` distinct outcomes: entries are grouped by magnitude (zeros drop out),
    and ``k`` flips among ``c`` entries of magnitude ``u`` contribute ``u * (c - 2k)`` with
    probability Binomial(c, 1/2); that covers every ``n <= 20``, and e.g. 0/1 scores of any
    size. Then ``p = P(|T| >= |t|)``, which equals scipy's exact
    ``permutation_test(..., permutation_type="samples")`` (twice the smaller one-sided p; the
    null is symmetric). Otherwise ``n_perm`` Monte Carlo sign patterns give
    ``p = (1 + #{|T*| >= |t|}) / (n_perm + 1)``, never 0. Outcomes equal to ``|t|`` up to
    rounding count as at least as extreme.
    """
    n_perm = _check_count(n_perm, "n_perm")
    x = np.asarray(values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(x)):
        raise ValueError("values has non-finite entries")
    nonzero = x[x != 0.0]
    if nonzero.size == 0:
        return 1.0, True
    mags, inverse, counts = np.unique(np.abs(nonzero), return_inverse=True, return_counts=True)
    negatives = np.bincount(inverse, weights=(nonzero < 0).astype(np.float64), minlength=mags.size)
    observed = abs(float((counts - 2.0 * negatives) @ mags))
    mass = float(counts @ mags)
    threshold = observed - (1e-12 * mass + 100 * np.finfo(np.float64).eps * observed)
    if threshold <= 0.0:  # a zero statistic (up to rounding): every outcome is as extreme
        return 1.0, True

    if math.prod(int(c) + 1 for c in counts) <= EXACT_OUTCOMES:
        totals = np.zeros(1)
        probs = np.ones(1)
        for u, c in zip(mags, counts):
            k = np.arange(int(c) + 1)
            totals = (totals[:, None] + u * (c - 2.0 * k)[None, :]).ravel()
            probs = (probs[:, None] * sps.binom.pmf(k, int(c), 0.5)[None, :]).ravel()
        # As a share of the total (which rounding keeps near, not at, 1): all outcomes give exactly 1.
        return min(1.0, float(probs[np.abs(totals) >= threshold].sum() / probs.sum())), True

    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    hits = 0
    block = max(1, _BLOCK // mags.size)
    for start in range(0, n_perm, block):
        m = min(block, n_perm - start)
        flips = rng.binomial(counts, 0.5, size=(m, mags.size))
        totals = (counts - 2.0 * flips) @ mags
        hits += int(np.count_nonzero(np.abs(totals) >= threshold))
    return (hits + 1) / (n_perm + 1), False


# --- one run --------------------------------------------------------------------------------

def split_interval(scores: ArrayLike, *, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0) -> Interval:
    """Interval (points) for a split's accuracy, the mean of its per-question ``scores`` in [0, 1].

    Exact Clopper-Pearson when every score is 0 or 1; otherwise a percentile bootstrap over
    questions with ``n_boot`` replicates drawn from ``numpy.random.default_rng(seed)``.
    """
    x = _scores(scores)
    confidence = _check_confidence(confidence)
    if _is_binary(x):
        ci = sps.binomtest(int(np.count_nonzero(x)), int(x.size)).proportion_ci(confidence_level=confidence, method="exact")
        return float(100.0 * ci.low), float(100.0 * ci.high)
    n_boot = _check_count(n_boot, "n_boot")
    return _percentile(bootstrap_means(x, n_boot, np.random.default_rng(seed)), confidence)


def interval_method(*groups: ArrayLike) -> str:
    """How :func:`split_interval` (one group) or :func:`average_interval` (several) computes the
    interval of these per-question scores: ``clopper-pearson`` or ``bootstrap``."""
    if len(groups) == 1 and _is_binary(_scores(groups[0])):
        return "clopper-pearson"
    return "bootstrap"


def average_accuracy(per_split_scores: Mapping[str, ArrayLike], splits: Sequence[str]) -> float:
    """Unweighted mean (points) of the accuracies of ``splits`` (as ``compute_averages``)."""
    return float(100.0 * np.mean([g.mean() for g in _groups(per_split_scores, splits)]))


def average_interval(
    per_split_scores: Mapping[str, ArrayLike],
    splits: Sequence[str],
    *,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> Interval:
    """Interval (points) of the unweighted mean of the accuracies of ``splits``.

    Each bootstrap replicate resamples the questions within every split and averages the
    resampled split accuracies, so the interval is that of the average itself. One split:
    :func:`split_interval` of it.
    """
    groups = _groups(per_split_scores, splits)
    confidence = _check_confidence(confidence)
    if len(groups) == 1:
        return split_interval(groups[0], confidence=confidence, n_boot=n_boot, seed=seed)
    n_boot = _check_count(n_boot, "n_boot")
    rng = np.random.default_rng(seed)
    replicates = np.mean([bootstrap_means(g, n_boot, rng) for g in groups], axis=0)
    return _percentile(replicates, confidence)


# --- two runs on the same questions ---------------------------------------------------------

@dataclass(frozen=True)
class PairedDifference:
    """Run B against run A on the same questions. Accuracies and the interval are in points."""

    a: float
    b: float
    difference: float  # b - a
    interval: Interval  # paired percentile bootstrap interval of the difference
    p_value: float  # two-sided sign-flip permutation test of "no difference"
    n: int  # questions (all splits together)
    exact: bool  # p-value from the exact null distribution (else Monte Carlo)
    confidence: float

    @property
    def significant(self) -> bool:
        """p < 1 - confidence."""
        return self.p_value < 1.0 - self.confidence

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n, "a": self.a, "b": self.b, "difference": self.difference, "interval": list(self.interval),
            "p_value": self.p_value, "exact": self.exact, "significant": self.significant,
        }


def _paired(
    pairs: list[tuple[np.ndarray, np.ndarray]], confidence: float, n_boot: int, n_perm: int, seed: int
) -> PairedDifference:
    confidence = _check_confidence(confidence)
    n_boot = _check_count(n_boot, "n_boot")
    n_perm = _check_count(n_perm, "n_perm")
    diffs = [b - a for a, b in pairs]
    boot_seq, perm_seq = np.random.SeedSequence(seed).spawn(2)  # the p-value does not depend on n_boot
    boot_rng = np.random.default_rng(boot_seq)
    replicates = np.mean([bootstrap_means(d, n_boot, boot_rng) for d in diffs], axis=0)
    # The average difference is sum_i d_i / (S * n_split(i)): a sign-flip test of those terms.
    terms = np.concatenate([d / (len(diffs) * d.size) for d in diffs])
    p, exact = sign_flip_test(terms, n_perm=n_perm, seed=np.random.default_rng(perm_seq))
    return PairedDifference(
        a=float(100.0 * np.mean([a.mean() for a, _ in pairs])),
        b=float(100.0 * np.mean([b.mean() for _, b in pairs])),
        difference=float(100.0 * np.mean([d.mean() for d in diffs])),
        interval=_percentile(replicates, confidence),
        p_value=float(p),
        n=int(sum(d.size for d in diffs)),
        exact=exact,
        confidence=confidence,
    )


def paired_difference(
    a_scores: ArrayLike,
    b_scores: ArrayLike,
    *,
    confidence: float = 0.95,
    n_boot: int = 2000,
    n_perm: int = 10_000,
    seed: int = 0,
) -> PairedDifference:
    """B - A on one split: per-question scores of the same questions in the same order.

    The interval resamples questions (pairs kept together); the p-value is
    :func:`sign_flip_test` of the per-question differences. Different lengths: ValueError.
    """
    a, b = _scores(a_scores, "a_scores"), _scores(b_scores, "b_scores")
    if a.size != b.size:
        raise ValueError(f"paired scores need the same questions: {a.size} scores for A, {b.size} for B")
    return _paired([(a, b)], confidence, n_boot, n_perm, seed)


def paired_average_difference(
    a_per_split: Mapping[str, ArrayLike],
    b_per_split: Mapping[str, ArrayLike],
    splits: Sequence[str],
    *,
    confidence: float = 0.95,
    n_boot: int = 2000,
    n_perm: int = 10_000,
    seed: int = 0,
) -> PairedDifference:
    """B - A on the unweighted average of ``splits``' accuracies (each split's questions paired).

    Each bootstrap replicate resamples the question pairs of every split; the permutation test
    flips the sign of each question's difference (weighted by 1 / (splits x its split's size)).
    With one split this is :func:`paired_difference` of it.
    """
    a_groups = _groups(a_per_split, splits, "a_per_split")
    b_groups = _groups(b_per_split, splits, "b_per_split")
    for name, a, b in zip(splits, a_groups, b_groups):
        if a.size != b.size:
            raise ValueError(f"split {name!r}: paired scores need the same questions: {a.size} scores for A, {b.size} for B")
    return _paired(list(zip(a_groups, b_groups)), confidence, n_boot, n_perm, seed)


# --- two groups of seeds on the same questions ----------------------------------------------

@dataclass(frozen=True)
class GroupDifference:
    """Group B against group A: runs paired by seed, every run on the same questions. Points."""

    a: float  # mean over seeds of A's accuracy (or average)
    b: float
    difference: float  # b - a: the mean over seeds of the per-seed paired differences
    interval: Interval  # difference +- t(df) * se
    p_value: float  # two-sided t test of "no difference", df as below
    se: float  # standard error of the difference (seeds and questions)
    df: float  # Satterthwaite degrees of freedom
    seeds: int
    n: int  # questions (all splits together; the same for every seed)
    per_seed: tuple[float, ...]  # each seed's paired difference
    confidence: float

    @property
    def significant(self) -> bool:
        return self.p_value < 1.0 - self.confidence

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n, "seeds": self.seeds, "a": self.a, "b": self.b, "difference": self.difference,
            "interval": list(self.interval), "p_value": self.p_value, "significant": self.significant,
            "se": self.se, "df": self.df, "per_seed": list(self.per_seed),
        }


def group_difference(
    a_runs: Sequence[Mapping[str, ArrayLike]],
    b_runs: Sequence[Mapping[str, ArrayLike]],
    splits: Sequence[str],
    *,
    confidence: float = 0.95,
) -> GroupDifference:
    """B - A on the unweighted average of ``splits`` over seeds: ``a_runs[i]`` and ``b_runs[i]``
    are the per-question scores (per split) of the runs of seed ``i``, every run on the same
    questions in the same order. At least two seeds (one seed: :func:`paired_average_difference`).

    The differences ``d[s, q] = b[s, q] - a[s, q]`` are taken as a crossed design with random
    seeds and random questions (each split's questions its own sample; a seed's effect shared
    by its splits). The variance of the mean difference is estimated without bias from the
    ANOVA mean squares::

        var = s2_seed / S + sum_k (s2_q[k] - ms_e[k] / S) / (K**2 * Q[k])

    ``s2_seed``: sample variance over seeds of each seed's difference (its average over the
    splits); ``s2_q[k]``: sample variance over split ``k``'s questions of the question's mean
    difference over seeds; ``ms_e[k]``: the split's seed x question interaction mean square;
    ``K`` splits, ``Q[k]`` questions, ``S`` seeds. A question component estimated below zero
    counts as zero. The interval is ``difference +- t * sqrt(var)`` and the p-value a two-sided
    t test, both with Satterthwaite's degrees of freedom for that sum of mean squares.
    """
    confidence = _check_confidence(confidence)
    if len(a_runs) != len(b_runs):
        raise ValueError(f"paired seeds need as many runs on each side: {len(a_runs)} for A, {len(b_runs)} for B")
    n_seeds = len(a_runs)
    if n_seeds < 2:
        raise ValueError("a group comparison needs at least two seeds (one seed: paired_average_difference)")
    if not splits or len(set(splits)) != len(splits):
        raise ValueError(f"splits must be named once each, got {list(splits)}")
    k = len(splits)
    diffs: list[np.ndarray] = []  # per split, (seeds, questions)
    a_acc = np.zeros(n_seeds)
    b_acc = np.zeros(n_seeds)
    for name in splits:
        rows_a = _groups_per_seed(a_runs, name, "a_runs")
        rows_b = _groups_per_seed(b_runs, name, "b_runs")
        sizes = {r.size for r in rows_a + rows_b}
        if len(sizes) != 1:
            raise ValueError(f"split {name!r}: every run needs the same questions, got sizes {sorted(sizes)}")
        a_mat, b_mat = np.stack(rows_a), np.stack(rows_b)
        diffs.append(b_mat - a_mat)
        a_acc += a_mat.mean(axis=1) / k
        b_acc += b_mat.mean(axis=1) / k

    per_seed = np.mean([d.mean(axis=1) for d in diffs], axis=0)  # (seeds,)
    seed_term = float(per_seed.var(ddof=1)) / n_seeds
    terms = [(seed_term, n_seeds - 1.0)]  # (c * mean square, its degrees of freedom)
    for d in diffs:
        q = d.shape[1]
        if q < 2:
            continue
        by_q = d.mean(axis=0)
        resid = d - d.mean(axis=1, keepdims=True) - by_q[None, :] + d.mean()
        ms_e = float((resid**2).sum()) / ((n_seeds - 1) * (q - 1))
        s2_q = float(by_q.var(ddof=1))
        if s2_q - ms_e / n_seeds > 0:
            scale = k * k * q
            terms += [(s2_q / scale, q - 1.0), (-ms_e / (n_seeds * scale), (n_seeds - 1.0) * (q - 1.0))]
    var = max(0.0, sum(t for t, _ in terms))
    denom = sum(t * t / df for t, df in terms if t != 0.0)
    df = var * var / denom if denom > 0 else float(n_seeds - 1)
    se = 100.0 * math.sqrt(var)
    diff = float(100.0 * per_seed.mean())
    if se > 0:
        half = float(sps.t.ppf(0.5 + confidence / 2, df)) * se
        p = float(2.0 * sps.t.sf(abs(diff) / se, df))
    else:  # no variation at all: the difference is what it is
        half = 0.0
        p = 1.0 if diff == 0.0 else 0.0
    return GroupDifference(
        a=float(100.0 * a_acc.mean()), b=float(100.0 * b_acc.mean()), difference=diff,
        interval=(diff - half, diff + half), p_value=min(1.0, p), se=se, df=float(df), seeds=n_seeds,
        n=int(sum(d.shape[1] for d in diffs)), per_seed=tuple(float(100.0 * v) for v in per_seed), confidence=confidence,
    )


def _groups_per_seed(runs: Sequence[Mapping[str, ArrayLike]], name: str, who: str) -> list[np.ndarray]:
    return [_groups(r, [name], f"{who}[{i}]")[0] for i, r in enumerate(runs)]


# --- seeds ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SeedSummary:
    """One number over runs that differ only in their seed (same units as the values)."""

    n: int
    mean: float
    std: Optional[float]  # sample standard deviation (ddof=1); None for one seed
    interval: Optional[Interval]  # t interval of the mean; None for one seed
    confidence: float

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "std": self.std,
                "interval": None if self.interval is None else list(self.interval), "confidence": self.confidence}


def seed_summary(values: ArrayLike, *, confidence: float = 0.95) -> SeedSummary:
    """Mean, sample std and Student-t interval of ``values`` (one per seed)."""
    v = _scores(values, "values", unit=False)
    confidence = _check_confidence(confidence)
    mean = float(v.mean())
    if v.size == 1:
        return SeedSummary(n=1, mean=mean, std=None, interval=None, confidence=confidence)
    std = float(v.std(ddof=1))
    half = float(sps.t.ppf(0.5 + confidence / 2, v.size - 1)) * std / math.sqrt(v.size)
    return SeedSummary(n=int(v.size), mean=mean, std=std, interval=(mean - half, mean + half), confidence=confidence)
