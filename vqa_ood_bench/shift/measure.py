"""Per-split shift of a suite relative to its ID training split, for one feature encoder.

For each feature kind (vision / question / joint): features of the suite's training split (by
default a deterministic subsample of it, see :func:`fit_subsample`) → a
:class:`MahalanobisEstimator` (streamed from the memory-mapped feature cache; its statistics
are cached too and reused only for the same features) → per-sample scores of every evaluation
split → the split's shift = the mean score (paper App. 7.3; higher = closer to training).

All feature kinds of a split come from one extraction, cached per (model weights, records,
prompt, kinds) and verified on read (:func:`~vqa_ood_bench.shift.features.extract_features`):
a second ``shift`` of the same model reads them instead of running the model.

Outputs (:func:`save_shift`): ``DIR/shift/{split}.npz`` (``question_ids`` and one float64
array of per-sample scores per kind, for the histograms and correlation heatmaps) and
``DIR/shift/shift.json`` (the means, sample counts, the fit sample (``fit``) and settings).
:func:`write_into_results` puts the means into a run's ``results.json`` (``splits[*].shift``).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from ..data.suite import Suite, get_suite
from ..errors import ConfigError, DataError
from ..io import atomic_write_bytes, atomic_write_json, read_json
from .features import DEFAULT_PROMPT, FEATURE_KINDS, Encoder, FeatureSet, extract_features, inference_model, model_fingerprint
from .mahalanobis import MahalanobisEstimator

Progress = Callable[[str, int, int], None]  # (what, done, total)

DEFAULT_FIT_SIZE = 5000  # training records the Gaussian is fitted on, on the embedded suite (``fit_size="auto"``)
FIT_RULE = ("the fit_size training records with the smallest sha256('shift-fit/{seed}/' + question_id), "
            "taken from the split's records (after --limit), fitted in that order")

__all__ = [
    "DEFAULT_FIT_SIZE",
    "ShiftReport",
    "SplitShift",
    "fit_subsample",
    "load_shift_dir",
    "measure_shift",
    "save_shift",
    "write_into_results",
]


@dataclass
class SplitShift:
    name: str
    role: str
    shift_type: str
    question_ids: list[str]
    scores: dict[str, np.ndarray]  # kind -> per-sample negative Mahalanobis distances
    stands_in_for: str = ""

    @property
    def n(self) -> int:
        return len(self.question_ids)

    @property
    def means(self) -> dict[str, float]:
        return {k: float(np.mean(v)) for k, v in self.scores.items()}


@dataclass
class ShiftReport:
    suite: str
    suite_version: str
    model: str
    model_fingerprint: str
    train_split: str
    n_train: int
    kinds: tuple[str, ...]
    settings: dict[str, Any]
    shrinkage_used: dict[str, float]
    splits: dict[str, SplitShift] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)  # which training records the Gaussian was fitted on

    def to_json(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "suite_version": self.suite_version,
            "model": self.model,
            "model_fingerprint": self.model_fingerprint,
            "train_split": self.train_split,
            "n_train": self.n_train,
            "fit": self.fit,
            "kinds": list(self.kinds),
            "score": "negative Mahalanobis distance, -sqrt((x-mu)^T Sigma^-1 (x-mu)); split shift = mean over samples",
            "settings": self.settings,
            "shrinkage_used": self.shrinkage_used,
            "splits": {
                name: {"role": s.role, "shift_type": s.shift_type, "n": s.n, "stands_in_for": s.stands_in_for, "shift": s.means}
                for name, s in self.splits.items()
            },
        }


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "x"


def fit_subsample(records: Sequence, size: Optional[int], *, seed: int = 0) -> list:
    """The training records the Gaussian is fitted on: all of them (``size`` None or 0, or not
    fewer than the records), else the ``size`` records whose ``sha256(f"shift-fit/{seed}/{question_id}")``
    is smallest, in that hash order.

    Depends only on the question ids and ``seed``: not on the records' order, not on any global
    random state; a larger ``size`` keeps every record a smaller one chose (nested samples).
    """
    if size is not None and size < 0:
        raise ConfigError(f"fit size must be >= 0, got {size}")
    if not size or size >= len(records):
        return list(records)

    def rank(rec) -> str:
        return hashlib.sha256(f"shift-fit/{seed}/{rec.question_id}".encode()).hexdigest()

    return sorted(records, key=rank)[:size]


def resolve_fit_size(fit_size: Union[int, str, None], suite_name: str) -> Optional[int]:
    """``"auto"``: :data:`DEFAULT_FIT_SIZE` on the embedded suite, the whole split elsewhere (as in
    the paper; its 2,048-dim features need many samples); ``"all"``, ``0`` or None: the whole
    split; a number: at most that many records."""
    if isinstance(fit_size, str):
        v = fit_size.strip().lower()
        if v == "auto":
            return DEFAULT_FIT_SIZE if suite_name == "embedded" else None
        if v in ("all", "0", ""):
            return None
        try:
            fit_size = int(v)
        except ValueError:
            raise ConfigError(f"fit size must be a number of records, 'all' or 'auto', got {fit_size!r}") from None
    if fit_size is None or fit_size == 0:
        return None
    if fit_size < 2:
        raise ConfigError(f"fit size must be 0 (all) or at least 2 records, got {fit_size}")
    return int(fit_size)


def _default_cache() -> Path:
    from ..cache import cache_dir

    return cache_dir() / "shift"


def measure_shift(
    model,
    processor,
    suite: Union[Suite, str],
    *,
    data_root: Union[str, Path, None] = None,
    cache_dir: Union[str, Path, None] = None,
    kinds: Sequence[str] = FEATURE_KINDS,
    batch_size: int = 32,
    fit_size: Union[int, str, None] = "auto",
    fit_seed: int = 0,
    train_limit: Optional[int] = None,
    limit: Optional[int] = None,
    splits: Optional[Sequence[str]] = None,
    shrinkage: Any = None,
    ridge: float = 0.0,
    precision: str = "float64",
    prompt: str = DEFAULT_PROMPT,
    model_name: str = "",
    encode: Optional[Encoder] = None,
    estimator_device: Optional[str] = None,
    progress: Optional[Progress] = None,
    log: Callable[[str], None] = lambda s: None,
) -> ShiftReport:
    """Shift of every evaluation split of ``suite`` (or the named ``splits``) for one encoder.

    ``limit`` caps every split (smoke runs; the same records a run with that ``--limit`` used).
    The Gaussian is fitted on :func:`fit_subsample` of the training records: ``fit_size``
    records (``"auto"``: :data:`DEFAULT_FIT_SIZE` on the embedded suite, all elsewhere;
    ``"all"`` / 0 / None: all) chosen by ``fit_seed``; ``train_limit`` is the former name of
    ``fit_size``. Features and the fitted statistics are cached under ``cache_dir`` (default:
    the package cache's ``shift/``).
    """
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in FEATURE_KINDS]
    if bad or not kinds:
        raise ConfigError(f"feature kinds must be among {', '.join(FEATURE_KINDS)}, got {list(kinds)}")
    # validate the estimator settings before any expensive work
    MahalanobisEstimator(shrinkage=shrinkage, ridge=ridge, precision=precision)
    suite = get_suite(suite) if isinstance(suite, str) else suite
    if train_limit is not None:
        if fit_size not in ("auto", None) and resolve_fit_size(fit_size, suite.name) != train_limit:
            raise ConfigError("give the fit size once (train_limit is the former name of fit_size)")
        fit_size = train_limit
    fit_cap = resolve_fit_size(fit_size, suite.name)
    cache = Path(cache_dir) if cache_dir is not None else _default_cache()
    eval_specs = list(suite.evaluation)
    if splits:
        eval_specs = [suite.split(s) for s in splits]

    model_fp = model_fingerprint(model)  # of the model as given: the cache key of its features
    log(f"encoder {model_name or type(model).__name__} ({model_fp[:12]}), suite {suite.name}")
    runner = inference_model(model)  # LoRA merged into a copy (same features up to rounding, faster)

    def features(spec, records) -> FeatureSet:
        total = len(records)

        def tick(done: int) -> None:
            if progress:
                progress(f"features {spec.name}", done, total)

        return extract_features(runner, processor, records, split=spec.name, cache_dir=cache, batch_size=batch_size,
                                kinds=kinds, prompt=prompt, encode=encode, model_fp=model_fp, progress=tick, log=log)

    train_records = suite.load(suite.train, data_root, limit=limit)
    fit_records = fit_subsample(train_records, fit_cap, seed=fit_seed)
    fit_info = {
        "split": suite.train.name,
        "size": len(fit_records),
        "split_size": len(train_records),
        "fit_size": "all" if fit_cap is None else fit_cap,
        "seed": fit_seed,
        "rule": "all records of the split (after --limit)" if len(fit_records) == len(train_records) else FIT_RULE.replace("{seed}", str(fit_seed)),
    }
    if len(fit_records) < len(train_records):
        log(f"fitting on {len(fit_records)} of {len(train_records)} {suite.train.name} records (--fit-size, seed {fit_seed})")
    train = features(suite.train, fit_records)
    if len(train) < 2:
        raise DataError(f"training split {suite.train.name!r} has {len(train)} record(s); the covariance needs more")

    estimators: dict[str, MahalanobisEstimator] = {}
    shrinkage_used: dict[str, float] = {}
    for kind in kinds:
        stats_path = cache / model_fp[:16] / f"stats-{_safe(suite.train.name)}-{kind}-{precision}-{train.key[:16]}.npz"
        stats_key = f"{train.key}/{kind}/{precision}"
        est = None
        if stats_path.is_file():
            try:
                est = MahalanobisEstimator.load(stats_path, features_key=stats_key, shrinkage=shrinkage, ridge=ridge,
                                                device=estimator_device)
                log(f"{kind}: reusing fitted statistics {stats_path}")
            except DataError:
                est = None
        if est is None:
            if progress:
                progress(f"fit {kind}", 0, len(train))
            est = MahalanobisEstimator(shrinkage=shrinkage, ridge=ridge, precision=precision, device=estimator_device)
            for chunk in train.chunks(kind):
                est.partial_fit(chunk)
            est.save(stats_path, features_key=stats_key)
            if progress:
                progress(f"fit {kind}", len(train), len(train))
        try:
            est.finalize()  # raises a ConfigError naming the cure when the covariance is singular
        except ConfigError as exc:
            raise ConfigError(f"{kind} features of {suite.train.name} (n={len(train)}): {exc}") from None
        estimators[kind] = est
        shrinkage_used[kind] = float(est.shrinkage_)

    report = ShiftReport(
        suite=suite.name,
        suite_version=suite.version,
        model=model_name or getattr(getattr(model, "config", None), "name_or_path", "") or type(model).__name__,
        model_fingerprint=model_fp,
        train_split=suite.train.name,
        n_train=len(train),
        kinds=kinds,
        settings={
            "shrinkage": shrinkage if shrinkage is None or isinstance(shrinkage, str) else float(shrinkage),
            "ridge": float(ridge),
            "precision": precision,
            "prompt": prompt,
            "fit_size": fit_info["fit_size"],
            "fit_seed": fit_seed,
            "limit": limit,
            "batch_size": batch_size,
        },
        shrinkage_used=shrinkage_used,
        fit=fit_info,
    )
    for spec in eval_specs:
        fs = features(spec, suite.load(spec, data_root, limit=limit))
        scores = {}
        for kind in kinds:
            scores[kind] = np.concatenate([estimators[kind].score(c) for c in fs.chunks(kind)])
        report.splits[spec.name] = SplitShift(spec.name, spec.role, spec.shift_type, list(fs.question_ids), scores, spec.stands_in_for)
        log(f"{spec.name}: " + ", ".join(f"{k} {v:.3f}" for k, v in report.splits[spec.name].means.items()))
    return report


def save_shift(report: ShiftReport, out_dir: Union[str, Path]) -> Path:
    """Write ``out_dir/shift/{split}.npz`` (per-sample scores) and ``out_dir/shift/shift.json``."""
    import io

    folder = Path(out_dir) / "shift"
    folder.mkdir(parents=True, exist_ok=True)
    summary = report.to_json()
    for name, s in report.splits.items():
        buf = io.BytesIO()
        np.savez(buf, question_ids=np.array(s.question_ids, dtype=str), **{k: np.asarray(v, dtype=np.float64) for k, v in s.scores.items()})
        fname = f"{_safe(name)}.npz"
        atomic_write_bytes(folder / fname, buf.getvalue())
        summary["splits"][name]["scores_file"] = fname
    atomic_write_json(folder / "shift.json", summary)
    return folder


def load_shift_dir(run_dir: Union[str, Path]) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """``(summary, {split: {kind: scores, "question_ids": ids}})`` from a folder written by :func:`save_shift`."""
    folder = Path(run_dir) / "shift"
    summary = read_json(folder / "shift.json")
    per_split: dict[str, dict[str, np.ndarray]] = {}
    for name, info in summary.get("splits", {}).items():
        path = folder / info.get("scores_file", f"{_safe(name)}.npz")
        try:
            with np.load(path, allow_pickle=False) as z:
                per_split[name] = {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise DataError("per-sample shift scores missing", path=path) from None
        except (OSError, ValueError) as exc:
            raise DataError(f"unreadable shift scores ({exc})", path=path) from None
    return summary, per_split


def write_into_results(report: ShiftReport, run_dir: Union[str, Path]) -> Path:
    """Put each split's mean scores into ``run_dir/results.json`` (``splits[name].shift``)."""
    from ..report.schema import SplitResult, read_results, write_results

    path = Path(run_dir) / "results.json"
    results = read_results(path)
    if results.suite != report.suite:
        raise ConfigError(f"the run was scored on suite {results.suite!r}, the shift was measured on {report.suite!r}")
    for name, s in report.splits.items():
        means = {k: v for k, v in s.means.items() if math.isfinite(v)}
        if name in results.splits:
            results.splits[name].shift = means
        else:
            results.splits[name] = SplitResult(role=s.role, shift_type=s.shift_type, n=s.n, shift=means, stands_in_for=s.stands_in_for)
    notes = [n for n in results.notes if not n.startswith("shift: ")]
    notes.append(
        f"shift: negative Mahalanobis distance to {report.train_split} ({_fit_text(report)}) features of encoder "
        f"{report.model} [{report.model_fingerprint[:12]}], shrinkage {report.settings['shrinkage']}, ridge {report.settings['ridge']}"
    )
    results.notes = notes
    return write_results(results, path)


def _fit_text(report: ShiftReport) -> str:
    """``n=5000 of 34745, hash subsample seed 0`` or ``n=34745``."""
    fit = report.fit or {}
    if fit.get("split_size") and fit["split_size"] > report.n_train:
        return f"n={report.n_train} of {fit['split_size']}, hash subsample seed {fit.get('seed', 0)}"
    return f"n={report.n_train}"
