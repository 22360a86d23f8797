"""Benchmark: Mahalanobis fit on 200,000 x 2,048 features and scoring of 200,000 more.

Compares :class:`vqa_ood_bench.shift.MahalanobisEstimator` (float64 and mixed precision) with
scikit-learn's ``EmpiricalCovariance().fit(X).mahalanobis(T)`` in the same run, on float32
features shaped like a language model's hidden states: a non-zero mean, 64 strong directions
over an anisotropic noise floor, and a test set drawn from a shifted distribution.

    .venv/bin/python benchmarks/bench_mahalanobis.py [--n 200000] [--d 2048] [--sklearn-score-rows 10000]

scikit-learn's fit runs on the full training set; its ``mahalanobis`` (a per-row SciPy ``cdist``
loop, ~1.3 ms per row at d = 2,048) runs on the first ``--sklearn-score-rows`` test rows and its
full-size time is extrapolated linearly (``--sklearn-score-rows 0`` scores all rows: ~4-5 min).

Accuracy is measured against the float64 answer: the mean in float64 (numpy), the covariance
from scikit-learn's fit (``np.cov`` in float64, two-pass), and distances for the scored
subsample from an independent SciPy Cholesky solve on those statistics.

Peak memory is the peak resident set size above the level just before each call (inputs
already in memory), sampled every 2 ms by a thread; each contender runs in the same process,
one after the other. Prints one JSON object at the end.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import scipy.linalg  # noqa: E402
import torch  # noqa: E402

from vqa_ood_bench.shift import MahalanobisEstimator  # noqa: E402

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * _PAGE


class PeakRSS:
    """Peak RSS above the starting level while the ``with`` block runs (2 ms sampling)."""

    def __enter__(self) -> "PeakRSS":
        gc.collect()
        self.base = rss_bytes()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def above_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def make_features(n: int, d: int, *, k: int = 64, seed: int = 0, shift: float = 0.0) -> np.ndarray:
    """float32 rows = mean + W z + noise, W: d x k strong directions, noise with unequal scales."""
    rng = np.random.default_rng(1234)  # the same "model" for train and test
    W = (rng.standard_normal((d, k)) * np.linspace(3.0, 0.5, k)).astype(np.float32)
    noise_scale = rng.uniform(0.05, 1.0, d).astype(np.float32)
    mean = (5.0 * rng.standard_normal(d)).astype(np.float32)
    mean_shift = (rng.standard_normal(d) * 0.3).astype(np.float32)
    rng = np.random.default_rng(seed)
    X = np.empty((n, d), dtype=np.float32)
    for i in range(0, n, 16384):
        j = min(n, i + 16384)
        z = rng.standard_normal((j - i, k), dtype=np.float32) * (1.0 + shift)
        e = rng.standard_normal((j - i, d), dtype=np.float32) * noise_scale
        X[i:j] = z @ W.T + e + mean + shift * mean_shift
    return X


def rel_max(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(a - ref)) / np.max(np.abs(ref)))


def run_ours(X: np.ndarray, T: np.ndarray, precision: str, **kw) -> dict:
    est = MahalanobisEstimator(precision=precision, **kw)
    with PeakRSS() as mem:
        c0 = time.process_time()
        t0 = time.perf_counter()
        est.fit(X)
        t1 = time.perf_counter()
        scores = est.score(T)
        t2 = time.perf_counter()
        c2 = time.process_time()
    return {
        "est": est,
        "scores": scores,
        "fit_s": t1 - t0,
        "score_s": t2 - t1,
        "total_s": t2 - t0,
        "cpu_s": c2 - c0,
        "peak_above_inputs_mb": mem.above_mb,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="training rows (and test rows)")
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--sklearn-score-rows", type=int, default=10_000, help="0: score every test row with sklearn")
    ap.add_argument("--skip-sklearn", action="store_true")
    ap.add_argument("--precisions", default="float64,mixed,float32")
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--block-size", type=int, default=256)
    args = ap.parse_args()
    n, d = args.n, args.d

    t0 = time.perf_counter()
    X = make_features(n, d, seed=1)
    T = make_features(n, d, seed=2, shift=0.5)
    inputs_mb = (X.nbytes + T.nbytes) / 2**20
    print(f"data: train {X.shape} + test {T.shape} float32 = {inputs_mb:.0f} MiB ({time.perf_counter() - t0:.1f} s to make)", file=sys.stderr)
    print(f"threads: torch {torch.get_num_threads()}, cpus {os.cpu_count()}, load {os.getloadavg()}", file=sys.stderr)

    results: dict = {"n_train": n, "n_test": n, "d": d, "inputs_mib": round(inputs_mb), "torch_threads": torch.get_num_threads()}
    ours = {}
    for precision in [p for p in args.precisions.split(",") if p]:
        r = run_ours(X, T, precision, batch_size=args.batch_size, block_size=args.block_size)
        ours[precision] = r
        print(
            f"ours[{precision}]: fit {r['fit_s']:.2f} s + score {r['score_s']:.2f} s = {r['total_s']:.2f} s, "
            f"cpu {r['cpu_s']:.1f} s, peak +{r['peak_above_inputs_mb']:.0f} MiB",
            file=sys.stderr,
        )
        gc.collect()

    m = args.sklearn_score_rows if args.sklearn_score_rows > 0 else n
    sub = T[:m]
    ref: dict = {}
    if not args.skip_sklearn:
        from sklearn.covariance import EmpiricalCovariance

        sk = EmpiricalCovariance()
        with PeakRSS() as mem_fit:
            t_a = time.perf_counter()
            sk.fit(X)
            t_b = time.perf_counter()
        with PeakRSS() as mem_score:
            t_c = time.perf_counter()
            d2_sk = sk.mahalanobis(sub)
            t_d = time.perf_counter()
        score_s = (t_d - t_c) * n / m
        results["sklearn"] = {
            "fit_s": t_b - t_a,
            "score_s_measured": t_d - t_c,
            "score_rows_measured": m,
            "score_s_full_extrapolated" if m < n else "score_s": score_s,
            "total_s" if m == n else "total_s_extrapolated": (t_b - t_a) + score_s,
            "fit_peak_above_inputs_mb": mem_fit.above_mb,
            "score_peak_above_inputs_mb": mem_score.above_mb,
            "peak_above_inputs_mb": max(mem_fit.above_mb, mem_score.above_mb),
        }
        print(f"sklearn: {json.dumps(results['sklearn'])}", file=sys.stderr)
        ref["covariance"] = np.asarray(sk.covariance_, dtype=np.float64)
        ref["d2_sklearn"] = d2_sk
        del sk
    else:
        Xc = np.empty((0, d))
        cov = np.zeros((d, d))
        mean64 = X.mean(0, dtype=np.float64)
        for i in range(0, n, 8192):
            Xc = X[i : i + 8192].astype(np.float64) - mean64
            cov += Xc.T @ Xc
        ref["covariance"] = cov / n
    gc.collect()

    # the float64 answer: mean in float64, covariance two-pass float64 (np.cov), distances by SciPy
    mean64 = X.mean(0, dtype=np.float64)
    c_and_lower = scipy.linalg.cho_factor(ref["covariance"], lower=True)
    B = sub.astype(np.float64) - mean64
    d2_ref = np.einsum("ij,ij->i", B, scipy.linalg.cho_solve(c_and_lower, B.T).T)
    s_ref = -np.sqrt(d2_ref)
    results["reference"] = {
        "mean": "X.mean(0, dtype=float64)",
        "covariance": "sklearn EmpiricalCovariance (np.cov, float64)" if not args.skip_sklearn else "numpy two-pass float64",
        "distances": f"scipy cho_factor/cho_solve on the first {m} test rows",
        "covariance_condition_number": float(np.linalg.cond(ref["covariance"])),
    }
    if "d2_sklearn" in ref:
        results["sklearn"]["score_rel_err_vs_reference"] = rel_max(-np.sqrt(ref["d2_sklearn"]), s_ref)

    for precision, r in ours.items():
        est = r["est"]
        s = r["scores"][:m]
        results[f"ours_{precision}"] = {
            "fit_s": r["fit_s"],
            "score_s": r["score_s"],
            "total_s": r["total_s"],
            "cpu_s": r["cpu_s"],
            "peak_above_inputs_mb": r["peak_above_inputs_mb"],
            "mean_rel_err": rel_max(est.location_, mean64),
            "covariance_rel_err_max": rel_max(est.covariance_, ref["covariance"]),
            "covariance_rel_err_fro": float(np.linalg.norm(est.covariance_ - ref["covariance"]) / np.linalg.norm(ref["covariance"])),
            "score_rel_err_max": float(np.max(np.abs(s - s_ref) / np.abs(s_ref))),
            "split_mean_score_rel_err": float(abs(s.mean() - s_ref.mean()) / abs(s_ref.mean())),
            "split_mean_score": float(r["scores"].mean()),
        }
        if "sklearn" in results:
            sk_total = results["sklearn"].get("total_s", results["sklearn"].get("total_s_extrapolated"))
            results[f"ours_{precision}"]["speedup_vs_sklearn"] = sk_total / r["total_s"]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
