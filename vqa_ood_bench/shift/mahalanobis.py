"""Mahalanobis shift scores: a streaming Gaussian fitted on ID training features.

The paper (DiGraP, Sec. 4.3 and App. 7.3, following feature-based OOD detection) fits the
empirical mean and covariance of the training split's features and scores every test sample
by its negative Mahalanobis distance to that Gaussian; a split's shift is the mean of its
samples' scores. Higher (closer to 0) means less shift.

Conventions (fixed here, tested in ``tests/test_mahalanobis.py``):

* **score** = ``-sqrt((x - mu)^T Sigma^-1 (x - mu))``: the negative *distance*, not its square.
  :meth:`MahalanobisEstimator.squared_distance` returns the square, which is what
  scikit-learn's ``EmpiricalCovariance().mahalanobis`` returns.
* **covariance** = the maximum-likelihood estimate (divides by ``n``), as scikit-learn's
  ``EmpiricalCovariance`` and ``LedoitWolf`` do.
* **shrinkage** ``s`` (a number in [0, 1] or ``"ledoit-wolf"``) replaces the covariance by
  ``(1 - s) C + s (tr C / d) I`` (scikit-learn's ``ShrunkCovariance`` / ``LedoitWolf``; the
  Ledoit-Wolf ``s`` is computed exactly as ``sklearn.covariance.ledoit_wolf_shrinkage`` does,
  from streamed fourth moments); ``ridge`` then adds ``ridge * I``.
* Distances are computed with the Cholesky factor ``L`` of the covariance: a triangular solve
  (``"float64"``, ``"mixed"``), or for ``"float32"`` a product with ``L^-1`` (triangular, made
  once by a float64 triangular solve) in blocked GEMMs that skip its zero half. No inverse of
  the covariance and no pseudo-inverse is formed. A singular covariance (for instance more
  features than samples) is refused with a message asking for shrinkage or a ridge.

Fitting streams: :meth:`~MahalanobisEstimator.partial_fit` takes batches of any size and keeps
only ``O(d^2)`` float64 state: a fixed shift ``c`` (the first batch's mean), ``sum(y)``,
``sum(y y^T)`` (upper blocks only, a blocked SYRK), ``sum(|y|^4)`` and ``sum(|y|^2 y)`` for
``y = x - c``. Shifting by a value close to the mean keeps the one-pass formula
``C = S/n - m m^T`` accurate in floating point. One-shot :meth:`fit` is the same loop, so the
two agree to rounding.

Precision (``precision=``):

* ``"float64"`` (default): every product in float64. The reference; use it when in doubt.
* ``"mixed"``: the fit's ``sum(y y^T)`` products run in float32 on the shifted data,
  ``batch_size`` rows at a time, each added into the float64 accumulator (about twice as fast
  on a CPU); scoring stays float64. Mean and covariance still match the float64 ones to a few
  1e-8 relative, but the score is sensitive to the covariance along its smallest directions,
  so distances move more, growing with cond(Sigma). Measured at 200,000 x 2,048 (cond 6.8e6):
  covariance 3e-8, per-sample scores 5e-5, split mean 1.2e-5 relative. Almost all of it is the
  float32 accumulation inside each batch product, not the rounding of the features to float32
  (at 40,000 x 512, a float64 product of the same rounded features moves scores by 6e-8, the
  float32 product by 4.6e-5 with 4,096-row batches and 1.9e-5 with 256-row ones).
* ``"float32"``: also the scoring in float32, by blocked products with ``L^-1`` (at 200,000 x
  2,048: 6.1 s against 11.2 s for the float64 solve, 7.9 s for a float32 triangular solve); in
  the same measurement it adds no visible error on top of the fit's (per-sample scores 4.8e-5,
  split mean 1.3e-5 relative, as for ``"mixed"``). Fit + score: 12.9 s, peak 260 MiB above
  the inputs, where scikit-learn takes ~250 s and 3.1 GiB.

``benchmarks/bench_mahalanobis.py`` reports the errors of each against the float64 answer.
"""

from __future__ import annotations

import io
import json
import math
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..io import atomic_write_bytes

ArrayLike = Union[np.ndarray, torch.Tensor]
Shrinkage = Union[None, float, str]

STATS_FORMAT = "vqa_ood_bench.mahalanobis/1"
PRECISIONS = ("float64", "mixed", "float32")

__all__ = ["MahalanobisEstimator", "PRECISIONS", "ledoit_wolf_coefficient"]


def _as_tensor(X: ArrayLike, device: torch.device) -> torch.Tensor:
    """A 2-D tensor view of ``X`` (no copy for numpy arrays and memory maps on the CPU)."""
    if isinstance(X, torch.Tensor):
        t = X.detach()
    else:
        arr = np.asarray(X)
        if arr.dtype.kind not in "fiu":
            raise DataError(f"features must be numeric, got dtype {arr.dtype}")
        with warnings.catch_warnings():  # read-only memory maps: we never write through the view
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(arr) if arr.dtype.kind == "f" else torch.from_numpy(arr.astype(np.float64))
    if t.ndim == 1:
        t = t.reshape(1, -1)
    if t.ndim != 2:
        raise DataError(f"features must be a 2-D array (samples x features), got shape {tuple(t.shape)}")
    return t.to(device) if t.device != device else t


def _chunks(X: ArrayLike, batch_size: int) -> Iterator[ArrayLike]:
    n = X.shape[0] if X.ndim > 1 else 1
    if X.ndim == 1:
        yield X
        return
    for start in range(0, n, batch_size):
        yield X[start : start + batch_size]


def _block_edges(d: int, block: int) -> list[tuple[int, int]]:
    nb = max(1, math.ceil(d / block))
    edges = np.linspace(0, d, nb + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def ledoit_wolf_coefficient(cov: np.ndarray, n: int, sum_sq_norm4: float) -> float:
    """The Ledoit-Wolf shrinkage coefficient from streamed statistics.

    ``cov`` is the MLE covariance, ``n`` the sample count and ``sum_sq_norm4`` the sum over
    samples of ``|x - mean|^4``. This is ``sklearn.covariance.ledoit_wolf_shrinkage``'s
    formula: there ``beta_ = sum_ij (X2^T X2)_ij = sum_k |x_k|^4`` and
    ``delta_ = |X^T X|_F^2 / n^2 = |C|_F^2``.
    """
    d = cov.shape[0]
    if d == 1:
        return 0.0
    trace = float(np.trace(cov))
    mu = trace / d
    fro2 = float(np.einsum("ij,ij->", cov, cov))
    beta = (sum_sq_norm4 / n - fro2) / (d * n)
    delta = (fro2 - 2.0 * mu * trace + d * mu * mu) / d
    beta = min(beta, delta)
    return 0.0 if beta == 0 else float(beta / delta)


def _upper_triangular_sq_norms(B: torch.Tensor, Ut: torch.Tensor, block: int) -> torch.Tensor:
    """Row norms squared of ``B @ Ut`` for an upper-triangular ``Ut``: output column block
    ``[i0, i1)`` only needs ``B[:, :i1] @ Ut[:i1, i0:i1]``."""
    k, d = B.shape
    Z = torch.empty((k, d), dtype=B.dtype, device=B.device)
    for i0, i1 in _block_edges(d, block):
        torch.mm(B[:, :i1], Ut[:i1, i0:i1], out=Z[:, i0:i1])
    return torch.einsum("ij,ij->i", Z, Z)


class MahalanobisEstimator:
    """Gaussian fitted on ID features; scores samples by negative Mahalanobis distance.

    >>> est = MahalanobisEstimator(shrinkage="ledoit-wolf").fit(train_features)
    >>> scores = est.score(test_features)        # float64, shape (n,), <= 0
    >>> split_shift = float(scores.mean())

    Parameters
    ----------
    shrinkage: ``None`` (empirical covariance), a float in [0, 1] (fixed shrinkage towards
        ``tr(C)/d * I``) or ``"ledoit-wolf"``.
    ridge: added to the covariance's diagonal after shrinkage (absolute, >= 0).
    precision: ``"float64"`` (default), ``"mixed"`` (float32 products in the fit) or ``"float32"`` (also
        in the scoring solve); see the module doc.
    batch_size: rows per internal batch (bounds the working memory to ``O(d^2 + batch_size * d)``).
    device: torch device for the arithmetic (``"cpu"``, ``"cuda"``...); results come back as numpy.
    block_size: column block of the blocked SYRK (only the upper triangle of ``sum(y y^T)`` is computed).
    """

    def __init__(
        self,
        shrinkage: Shrinkage = None,
        ridge: float = 0.0,
        *,
        precision: str = "float64",
        batch_size: int = 4096,
        device: Union[str, torch.device, None] = None,
        block_size: int = 256,
    ):
        if isinstance(shrinkage, str):
            key = shrinkage.strip().lower().replace("_", "-")
            if key in ("ledoit-wolf", "lw"):
                shrinkage = "ledoit-wolf"
            elif key in ("none", ""):
                shrinkage = None
            else:
                try:
                    shrinkage = float(key)
                except ValueError:
                    raise ConfigError(f"shrinkage must be a number in [0, 1], 'ledoit-wolf' or 'none', got {shrinkage!r}") from None
        if shrinkage is not None and not isinstance(shrinkage, str):
            shrinkage = float(shrinkage)
            if not 0.0 <= shrinkage <= 1.0:
                raise ConfigError(f"shrinkage must lie in [0, 1], got {shrinkage}")
        if not (ridge >= 0.0 and math.isfinite(ridge)):
            raise ConfigError(f"ridge must be a finite number >= 0, got {ridge}")
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if batch_size < 1 or block_size < 1:
            raise ConfigError("batch_size and block_size must be positive")
        self.shrinkage = shrinkage
        self.ridge = float(ridge)
        self.precision = precision
        self.batch_size = int(batch_size)
        self.block_size = int(block_size)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> "MahalanobisEstimator":
        """Forget everything fitted so far."""
        self.n_samples_seen_ = 0
        self.n_features_in_: Optional[int] = None
        self._shift: Optional[torch.Tensor] = None  # float64 (d,)
        self._sum: Optional[torch.Tensor] = None  # sum of y, float64 (d,)
        self._gram: Optional[torch.Tensor] = None  # sum of y y^T, upper blocks valid, float64 (d, d)
        self._sum_a2 = 0.0  # sum of |y|^4
        self._v3: Optional[torch.Tensor] = None  # sum of |y|^2 y, float64 (d,)
        self._invalidate()
        return self

    def _invalidate(self) -> None:
        self._chol_lower: Optional[torch.Tensor] = None  # L with Sigma = L L^T
        self._inv_factor_t: Optional[torch.Tensor] = None  # float32 (L^-1)^T, made on first float32 scoring
        self._location: Optional[torch.Tensor] = None
        self.location_: Optional[np.ndarray] = None
        self.raw_covariance_: Optional[np.ndarray] = None
        self.covariance_: Optional[np.ndarray] = None
        self.shrinkage_: Optional[float] = None

    # -------------------------------------------------------------------- fit
    def fit(self, X: Union[ArrayLike, Iterable[ArrayLike]]) -> "MahalanobisEstimator":
        """Fit from scratch on ``X`` (an array, or an iterable of arrays streamed batch by batch)."""
        self.reset()
        if isinstance(X, (np.ndarray, torch.Tensor)):
            self.partial_fit(X)
        else:
            for chunk in X:
                self.partial_fit(chunk)
        if self.n_samples_seen_ == 0:
            raise DataError("no samples to fit the Mahalanobis estimator on")
        self._finalize()
        return self

    def partial_fit(self, X: ArrayLike) -> "MahalanobisEstimator":
        """Add a batch of samples (rows) to the running statistics."""
        for chunk in _chunks(X, self.batch_size):
            t = _as_tensor(chunk, self.device)
            if t.shape[0] == 0:
                continue
            self._accumulate(t)
        self._invalidate()
        return self

    def _accumulate(self, X: torch.Tensor) -> None:
        k, d = X.shape
        f64 = torch.float64
        if self.n_features_in_ is None:
            self.n_features_in_ = d
            shift = X.to(f64).mean(0)
            if self.precision != "float64":  # a float32-exact shift, so y = x - c is one correctly rounded op
                shift = shift.to(torch.float32).to(f64)
            self._shift = shift
            self._sum = torch.zeros(d, dtype=f64, device=self.device)
            self._v3 = torch.zeros(d, dtype=f64, device=self.device)
            self._gram = torch.zeros(d, d, dtype=f64, device=self.device)
        elif d != self.n_features_in_:
            raise DataError(f"features have {d} columns, the estimator was fitted on {self.n_features_in_}")

        if self.precision != "float64":
            if X.dtype == torch.float32:
                Y = X - self._shift.to(torch.float32)
            else:
                Y = (X.to(f64) - self._shift).to(torch.float32)
        else:
            Y = X.to(f64, copy=True).sub_(self._shift)  # one float64 temporary per batch, not two

        # float32 column sums for the float32 products (a float64-accumulating reduction over a
        # float32 batch is a slow path, ~15% of the fit); the sum only moves the mean of the
        # shifted data, which is tiny by construction
        batch_sum = Y.sum(0).to(f64)
        gram = self._gram
        for i0, i1 in _block_edges(d, self.block_size):
            if Y.dtype == f64:
                gram[i0:i1, i0:].addmm_(Y[:, i0:i1].T, Y[:, i0:])
            else:  # mixed: a float32 product of this batch, added into the float64 sum
                gram[i0:i1, i0:].add_(Y[:, i0:i1].T @ Y[:, i0:])
        a = torch.einsum("ij,ij->i", Y, Y)  # |y|^2 per row
        v3 = Y.T @ a
        a64 = a.to(f64)
        sum_a2 = float((a64 * a64).sum())
        if not (torch.isfinite(batch_sum).all() and math.isfinite(sum_a2)):
            raise DataError("features contain NaN or infinite values")
        self._sum += batch_sum
        self._v3 += v3.to(f64)
        self._sum_a2 += sum_a2
        self.n_samples_seen_ += k

    def finalize(self) -> "MahalanobisEstimator":
        """Compute mean, covariance, shrinkage and the Cholesky factor now (scoring does it lazily).

        Raises :class:`ConfigError` when the (shrunk) covariance is singular.
        """
        self._finalize()
        return self

    def _finalize(self) -> None:
        if self._chol_lower is not None:
            return
        if self.n_samples_seen_ == 0 or self._gram is None:
            raise ConfigError("the Mahalanobis estimator is not fitted yet: call fit() or partial_fit() first")
        n = self.n_samples_seen_
        d = self.n_features_in_
        m = self._sum / n  # mean of the shifted data
        gram = torch.triu(self._gram)
        gram = gram + torch.triu(gram, 1).T
        cov = gram / n - torch.outer(m, m)
        cov = 0.5 * (cov + cov.T)
        location = self._shift + m

        if self.shrinkage == "ledoit-wolf":
            # sum_k |x_k - mean|^4 from moments about the shift c: with y = x - c, delta = mean - c,
            # |x - mean|^2 = a - 2 b + e, a = |y|^2, b = y.delta, e = |delta|^2.
            e = float(m @ m)
            sum_a = float(torch.trace(gram))
            sum_b = float(self._sum @ m)
            sum_ab = float(self._v3 @ m)
            sum_b2 = float(m @ gram @ m)
            s4 = self._sum_a2 - 4.0 * sum_ab + 4.0 * sum_b2 + 2.0 * e * sum_a - 4.0 * e * sum_b + n * e * e
            s4 = max(s4, 0.0)
            cov_np = cov.cpu().numpy()
            shrink = ledoit_wolf_coefficient(cov_np, n, s4)
        elif self.shrinkage is None:
            shrink = 0.0
        else:
            shrink = float(self.shrinkage)

        sigma = cov.clone()
        if shrink > 0.0:
            mu = float(torch.trace(cov)) / d
            sigma.mul_(1.0 - shrink)
            sigma.diagonal().add_(shrink * mu)
        if self.ridge > 0.0:
            sigma.diagonal().add_(self.ridge)

        L, info = torch.linalg.cholesky_ex(sigma)
        if int(info) != 0 or not torch.isfinite(L).all():
            hint = f" (only {n} samples for {d} features)" if n <= d else ""
            raise ConfigError(
                f"the feature covariance is singular{hint}: use shrinkage ('ledoit-wolf' or a number in (0, 1]) or a ridge > 0"
            )
        self._chol_lower = L
        self._location = location
        self.location_ = location.cpu().numpy()
        self.raw_covariance_ = cov.cpu().numpy()
        self.covariance_ = sigma.cpu().numpy()
        self.shrinkage_ = shrink

    # ------------------------------------------------------------------ score
    def squared_distance(self, X: ArrayLike) -> np.ndarray:
        """Squared Mahalanobis distances (float64), the quantity sklearn's ``mahalanobis`` returns."""
        return np.concatenate(list(self._squared_chunks(X))) if _nrows(X) else np.zeros(0)

    def _squared_chunks(self, X: ArrayLike) -> Iterator[np.ndarray]:
        self._finalize()
        solve_dtype = torch.float32 if self.precision == "float32" else torch.float64
        L = self._chol_lower.to(solve_dtype)
        # float32: multiply by W^T, W = L^-1 (triangular, made once in float64 by a triangular
        # solve) in column blocks that skip W's zero half: the same flops as a solve, in plain
        # GEMMs, which run ~1.4x faster than a float32 triangular solve on the CPU
        Wt = self._inverse_factor_t() if solve_dtype == torch.float32 else None
        loc = self._location
        # float32 solve: centre in float32 with the mean split into two float32 parts (hi + lo = the
        # float64 mean to ~1e-14): within a float32 rounding of centring in float64 and rounding, without
        # float64 copies of every batch (their allocation costs ~25% of a float32 solve)
        loc_hi = loc.to(torch.float32)
        loc_lo = (loc - loc_hi.to(torch.float64)).to(torch.float32)
        for chunk in _chunks(X, self.batch_size):
            t = _as_tensor(chunk, self.device)
            if t.shape[1] != self.n_features_in_:
                raise DataError(f"features have {t.shape[1]} columns, the estimator was fitted on {self.n_features_in_}")
            if solve_dtype == torch.float32 and t.dtype == torch.float32:
                B = (t - loc_hi).sub_(loc_lo)
            else:
                B = t.to(torch.float64, copy=True).sub_(loc).to(solve_dtype)
            if Wt is None:
                # L Z^T = B^T  =>  |z|^2 = b^T (L L^T)^-1 b = b^T Sigma^-1 b  (a triangular solve)
                Zt = torch.linalg.solve_triangular(L, B.T, upper=False)
                q = torch.einsum("ij,ij->j", Zt, Zt).to(torch.float64)
            else:
                q = _upper_triangular_sq_norms(B, Wt, self.block_size).to(torch.float64)
            if not torch.isfinite(q).all():
                raise DataError("features to score contain NaN or infinite values")
            yield q.cpu().numpy()

    def _inverse_factor_t(self) -> torch.Tensor:
        """``(L^-1)^T`` as float32 (upper triangular); reset with the factor by ``_invalidate``."""
        if self._inv_factor_t is None:
            L = self._chol_lower
            eye = torch.eye(L.shape[0], dtype=L.dtype, device=L.device)
            self._inv_factor_t = torch.linalg.solve_triangular(L, eye, upper=False).T.contiguous().to(torch.float32)
        return self._inv_factor_t

    def score(self, X: ArrayLike) -> np.ndarray:
        """Per-sample shift scores: negative Mahalanobis distances (float64, <= 0)."""
        return -np.sqrt(self.squared_distance(X))

    def mean_score(self, X: Union[ArrayLike, Iterable[ArrayLike]]) -> float:
        """The split's shift: the mean of :meth:`score` over its samples (streams an iterable)."""
        if isinstance(X, (np.ndarray, torch.Tensor)):
            s = self.score(X)
            return float(s.mean()) if s.size else float("nan")
        total, count = 0.0, 0
        for chunk in X:
            s = self.score(chunk)
            total += float(s.sum())
            count += s.size
        return total / count if count else float("nan")

    # --------------------------------------------------------------- persist
    @property
    def is_fitted(self) -> bool:
        return self.n_samples_seen_ > 0

    def state_dict(self) -> dict[str, Any]:
        if not self.is_fitted:
            raise ConfigError("nothing to save: the estimator is not fitted")
        return {
            "n": self.n_samples_seen_,
            "shift": self._shift.cpu().numpy(),
            "sum": self._sum.cpu().numpy(),
            "gram": torch.triu(self._gram).cpu().numpy(),
            "sum_a2": self._sum_a2,
            "v3": self._v3.cpu().numpy(),
        }

    def save(self, path: Union[str, Path], *, features_key: str = "") -> Path:
        """Write the streamed statistics (not only the final covariance) and the settings.

        ``features_key`` identifies the features the statistics came from (model, split,
        extraction settings); :meth:`load` with ``features_key=`` refuses a file whose key differs.
        """
        state = self.state_dict()
        meta = {
            "format": STATS_FORMAT,
            "features_key": features_key,
            "n_features": self.n_features_in_,
            "shrinkage": self.shrinkage,
            "ridge": self.ridge,
            "precision": self.precision,
        }
        buf = io.BytesIO()
        np.savez(
            buf,
            meta=np.array(json.dumps(meta)),
            n=np.array(state["n"], dtype=np.int64),
            shift=state["shift"],
            sum=state["sum"],
            gram=state["gram"],
            sum_a2=np.array(state["sum_a2"], dtype=np.float64),
            v3=state["v3"],
        )
        return atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(
        cls,
        path: Union[str, Path],
        *,
        features_key: Optional[str] = None,
        shrinkage: Any = "saved",
        ridge: Optional[float] = None,
        device: Union[str, torch.device, None] = None,
        batch_size: int = 4096,
    ) -> "MahalanobisEstimator":
        """Read statistics saved by :meth:`save`.

        With ``features_key`` given, a file fitted on other features raises :class:`DataError`
        (callers treat that as "refit"). ``shrinkage`` / ``ridge`` override the saved settings
        (the saved statistics suffice for any of them).
        """
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                arrays = {k: z[k] for k in ("n", "shift", "sum", "gram", "sum_a2", "v3")}
        except FileNotFoundError:
            raise DataError("statistics file not found", path=path) from None
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"unreadable statistics file ({exc})", path=path) from None
        if meta.get("format") != STATS_FORMAT:
            raise DataError(f"not a Mahalanobis statistics file (format {meta.get('format')!r})", path=path)
        if features_key is not None and meta.get("features_key") != features_key:
            raise DataError("statistics were fitted on other features (key mismatch)", path=path)
        est = cls(
            shrinkage=meta["shrinkage"] if shrinkage == "saved" else shrinkage,
            ridge=meta["ridge"] if ridge is None else ridge,
            precision=meta.get("precision", "float64"),
            device=device,
            batch_size=batch_size,
        )
        f64 = torch.float64
        est.n_samples_seen_ = int(arrays["n"])
        est.n_features_in_ = int(meta["n_features"])
        est._shift = torch.as_tensor(arrays["shift"], dtype=f64, device=est.device)
        est._sum = torch.as_tensor(arrays["sum"], dtype=f64, device=est.device)
        est._gram = torch.as_tensor(arrays["gram"], dtype=f64, device=est.device).clone()
        est._sum_a2 = float(arrays["sum_a2"])
        est._v3 = torch.as_tensor(arrays["v3"], dtype=f64, device=est.device)
        est.features_key = meta.get("features_key", "")
        return est

    def __repr__(self) -> str:
        return (
            f"MahalanobisEstimator(shrinkage={self.shrinkage!r}, ridge={self.ridge}, precision={self.precision!r}, "
            f"n_samples_seen={self.n_samples_seen_}, n_features={self.n_features_in_})"
        )


def _nrows(X: ArrayLike) -> int:
    return int(X.shape[0]) if X.ndim > 1 else 1
