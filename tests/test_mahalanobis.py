"""MahalanobisEstimator against scikit-learn (EmpiricalCovariance, ShrunkCovariance, LedoitWolf).

Convention under test: ``score = -sqrt(d^2)`` where ``d^2`` is what sklearn's ``mahalanobis``
returns (squared distances); ``squared_distance`` returns ``d^2`` itself.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import pytest
from sklearn.covariance import EmpiricalCovariance, LedoitWolf, ShrunkCovariance, ledoit_wolf_shrinkage

from vqa_ood_bench.errors import ConfigError, DataError
from vqa_ood_bench.shift import MahalanobisEstimator

RTOL = 1e-6


def correlated(rng: np.random.Generator, n: int, d: int, *, offset: float = 3.0, decay: float = 1.0) -> np.ndarray:
    """Features with a non-zero mean, unequal scales and correlations.

    A random rotation of a decaying spectrum (standard deviations ``1 / (1 + i) ** decay``),
    so the covariance's condition number is known (``(1 + d) ** (2 * decay)`` at most) and
    float64 answers are accurate to far better than the tolerances used here.
    """
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    scales = rng.uniform(0.5, 2.0, d)  # unequal feature scales on top of the correlations
    A = (Q * (1.0 / (1 + np.arange(d)) ** decay)[None, :]) * scales[:, None]
    return rng.standard_normal((n, d)) @ A.T + offset * rng.standard_normal(d)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("n,d", [(500, 8), (300, 40), (2000, 64)])
def test_empirical_matches_sklearn(n: int, d: int) -> None:
    rng = np.random.default_rng(n + d)
    X = correlated(rng, n, d)
    T = correlated(rng, 200, d, offset=4.0)  # shifted test set
    est = MahalanobisEstimator(batch_size=97, block_size=16).fit(X)
    ref = EmpiricalCovariance().fit(X)
    assert rel(est.location_, ref.location_) < RTOL
    assert rel(est.covariance_, ref.covariance_) < RTOL
    d2_ref = ref.mahalanobis(T)  # squared distances
    np.testing.assert_allclose(est.squared_distance(T), d2_ref, rtol=RTOL)
    scores = est.score(T)
    assert scores.dtype == np.float64 and scores.shape == (200,)
    np.testing.assert_allclose(scores, -np.sqrt(d2_ref), rtol=RTOL)
    assert np.all(scores <= 0)
    assert est.mean_score(T) == pytest.approx(float(np.mean(-np.sqrt(d2_ref))), rel=RTOL)


@pytest.mark.parametrize("n,d", [(400, 30), (50, 120), (20, 300)])  # includes d > n
def test_ledoit_wolf_matches_sklearn(n: int, d: int) -> None:
    rng = np.random.default_rng(7 * n + d)
    X = correlated(rng, n, d, decay=0.5)
    T = correlated(rng, 150, d, offset=5.0, decay=0.5)
    est = MahalanobisEstimator(shrinkage="ledoit-wolf", batch_size=13, block_size=32).fit(X)
    ref = LedoitWolf().fit(X)
    assert est.shrinkage_ == pytest.approx(ref.shrinkage_, rel=RTOL)
    assert est.shrinkage_ == pytest.approx(ledoit_wolf_shrinkage(X), rel=RTOL)
    assert 0 < est.shrinkage_ <= 1
    assert rel(est.covariance_, ref.covariance_) < RTOL
    np.testing.assert_allclose(est.squared_distance(T), ref.mahalanobis(T), rtol=RTOL)
    np.testing.assert_allclose(est.score(T), -np.sqrt(ref.mahalanobis(T)), rtol=RTOL)


def test_fixed_shrinkage_and_ridge() -> None:
    rng = np.random.default_rng(3)
    X = correlated(rng, 60, 90)  # d > n: singular without shrinkage
    T = correlated(rng, 40, 90)
    ref = ShrunkCovariance(shrinkage=0.3).fit(X)
    est = MahalanobisEstimator(shrinkage=0.3).fit(X)
    np.testing.assert_allclose(est.squared_distance(T), ref.mahalanobis(T), rtol=RTOL)
    # ridge: compare with an independent dense solve in float64
    est_r = MahalanobisEstimator(ridge=0.5).fit(X)
    C = np.cov(X, rowvar=False, bias=True) + 0.5 * np.eye(90)
    B = T - X.mean(0)
    d2 = np.einsum("ij,ij->i", B, np.linalg.solve(C, B.T).T)
    np.testing.assert_allclose(est_r.squared_distance(T), d2, rtol=RTOL)


def test_singular_without_shrinkage_is_refused() -> None:
    rng = np.random.default_rng(4)
    X = rng.standard_normal((10, 30))
    with pytest.raises(ConfigError, match="singular"):
        MahalanobisEstimator().fit(X).score(X)


@pytest.mark.parametrize("shrinkage", [None, "ledoit-wolf"])
def test_streaming_equals_one_shot(shrinkage) -> None:
    rng = np.random.default_rng(11)
    X = correlated(rng, 1500, 48, offset=50.0)  # a large offset exercises the shifted accumulation
    T = correlated(rng, 100, 48, offset=50.0)
    one = MahalanobisEstimator(shrinkage=shrinkage, batch_size=10_000).fit(X)
    stream = MahalanobisEstimator(shrinkage=shrinkage, batch_size=64, block_size=20)
    sizes = [1, 7, 300, 2, 590, 600]  # uneven batches; the first has one row (the shift is that row)
    start = 0
    for size in sizes:
        stream.partial_fit(X[start : start + size])
        start += size
    assert start == len(X)
    assert stream.n_samples_seen_ == len(X)
    np.testing.assert_allclose(stream.score(T), one.score(T), rtol=1e-9)
    np.testing.assert_allclose(stream.location_, one.location_, rtol=1e-10)
    np.testing.assert_allclose(stream.covariance_, one.covariance_, rtol=1e-9, atol=1e-12 * np.abs(one.covariance_).max())
    assert stream.shrinkage_ == pytest.approx(one.shrinkage_, rel=1e-9)
    # fit() also takes an iterable of batches (e.g. a memory-mapped feature file read in chunks)
    gen = MahalanobisEstimator(shrinkage=shrinkage).fit(X[i : i + 128] for i in range(0, len(X), 128))
    np.testing.assert_allclose(gen.score(T), one.score(T), rtol=1e-9)


def test_float32_input_and_large_offset_against_sklearn() -> None:
    """float32 features far from the origin (as hidden states are): statistics stay float64-accurate."""
    rng = np.random.default_rng(5)
    X = correlated(rng, 3000, 32, offset=1e3).astype(np.float32)
    T = correlated(rng, 100, 32, offset=1e3).astype(np.float32)
    est = MahalanobisEstimator(batch_size=256).fit(X)
    ref = EmpiricalCovariance().fit(X.astype(np.float64))
    assert rel(est.covariance_, ref.covariance_) < RTOL
    np.testing.assert_allclose(est.squared_distance(T), ref.mahalanobis(T.astype(np.float64)), rtol=RTOL)


@pytest.mark.parametrize("precision,score_rtol", [("mixed", 1e-5), ("float32", 1e-4)])
def test_reduced_precision_close_to_float64(precision: str, score_rtol: float) -> None:
    rng = np.random.default_rng(6)
    X = correlated(rng, 6000, 64, offset=20.0, decay=0.3).astype(np.float32)
    T = correlated(rng, 300, 64, offset=20.0, decay=0.3).astype(np.float32)
    exact = MahalanobisEstimator().fit(X)
    fast = MahalanobisEstimator(precision=precision, batch_size=1024).fit(X)
    assert rel(fast.covariance_, exact.covariance_) < RTOL
    assert rel(fast.location_, exact.location_) < RTOL
    np.testing.assert_allclose(fast.score(T), exact.score(T), rtol=score_rtol)
    assert fast.score(T).dtype == np.float64


@pytest.mark.parametrize("block_size", [37, 64, 1000])
def test_float32_blocked_inverse_factor_scoring(block_size: int) -> None:
    """float32 scoring multiplies by L^-1 in column blocks that skip its zero half (uneven
    blocks, one block): the same distances as SciPy's float64 solve on the same statistics."""
    rng = np.random.default_rng(9)
    X = correlated(rng, 4000, 150, offset=5.0, decay=0.5).astype(np.float32)
    T = correlated(rng, 200, 150, offset=5.0, decay=0.5).astype(np.float32)
    est = MahalanobisEstimator(precision="float32", batch_size=512, block_size=block_size).fit(X)
    L = scipy.linalg.cholesky(est.covariance_, lower=True)
    Z = scipy.linalg.solve_triangular(L, (T.astype(np.float64) - est.location_).T, lower=True)
    np.testing.assert_allclose(est.squared_distance(T), (Z * Z).sum(0), rtol=2e-4)


def test_save_load_roundtrip_and_key_check(tmp_path) -> None:
    rng = np.random.default_rng(8)
    X = correlated(rng, 400, 20)
    T = correlated(rng, 50, 20)
    est = MahalanobisEstimator(shrinkage="ledoit-wolf").fit(X)
    path = est.save(tmp_path / "stats.npz", features_key="model-a/train/vision")
    back = MahalanobisEstimator.load(path, features_key="model-a/train/vision")
    np.testing.assert_array_equal(back.score(T), est.score(T))
    assert back.shrinkage == "ledoit-wolf"
    with pytest.raises(DataError, match="other features"):
        MahalanobisEstimator.load(path, features_key="model-b/train/vision")
    # the saved statistics allow another shrinkage without refitting
    plain = MahalanobisEstimator.load(path, shrinkage=None)
    np.testing.assert_allclose(plain.score(T), MahalanobisEstimator().fit(X).score(T), rtol=1e-12)
    # resuming a streamed fit from a saved state
    half = MahalanobisEstimator().partial_fit(X[:200])
    half.save(tmp_path / "half.npz")
    resumed = MahalanobisEstimator.load(tmp_path / "half.npz").partial_fit(X[200:])
    np.testing.assert_allclose(resumed.score(T), MahalanobisEstimator().fit(X).score(T), rtol=1e-10)


def test_bad_inputs() -> None:
    est = MahalanobisEstimator()
    with pytest.raises(ConfigError, match="not fitted"):
        est.score(np.zeros((2, 3)))
    X = np.random.default_rng(0).standard_normal((50, 3))
    X[4, 1] = np.nan
    with pytest.raises(DataError, match="NaN"):
        MahalanobisEstimator().fit(X)
    est = MahalanobisEstimator().fit(np.random.default_rng(0).standard_normal((50, 3)))
    with pytest.raises(DataError, match="columns"):
        est.score(np.zeros((2, 4)))
    with pytest.raises(ConfigError):
        MahalanobisEstimator(shrinkage=1.5)
    with pytest.raises(ConfigError):
        MahalanobisEstimator(shrinkage="oas")
    with pytest.raises(ConfigError):
        MahalanobisEstimator(precision="float16")
