"""Re-run a leaderboard entry end to end and compare the re-measured numbers with the submitted ones.

Submissions are reproduced, not trusted: :func:`reproduce_entry` runs :func:`~vqa_ood_bench.runner.run_benchmark`
with the entry's own config and records, per split, the measured number, the difference and
whether it is within the entry's tolerance. Paper-suite entries need the released data and a
GPU; :func:`missing_requirements` says which is missing before any work starts.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
from pathlib import Path
from typing import Callable, Iterator, Optional

from .. import __version__
from ..errors import ConfigError
from .leaderboard import LeaderboardEntry, Reproduction
from .schema import RunResults

Log = Callable[[str], None]
PRETRAIN_ENV = "VQA_OOD_BENCH_PRETRAIN_STEPS"  # models.pretrain.PRETRAIN_STEPS_ENV, without importing torch here


def tiny_model_key(steps: Optional[int] = None) -> str:
    """The key of the tiny model a run with ``steps`` of pre-training loads (default: as this
    process would): the shipped artifact's key, or the cache key of a model pre-trained here."""
    from ..models.paligemma import TinySpec
    from ..models.pretrain import PretrainRecipe, cache_key, steps_override
    from ..models.tiny_artifact import artifact_key

    steps = steps or steps_override()
    return cache_key(TinySpec(), PretrainRecipe(steps=steps)) if steps else artifact_key()


def tiny_pretraining_of(results: RunResults) -> tuple[Optional[str], Optional[int]]:
    """(model key, pre-training steps) of the tiny model a run used; steps is ``None`` for the
    shipped artifact.

    A run records ``model.content_hash``: the shipped artifact's key, or the cache key of a model
    pre-trained here, whose cached ``pretrain.json`` holds the recipe.
    """
    if results.model.name_or_path != "tiny":
        return None, None
    from ..cache import cache_dir
    from ..models.tiny_artifact import artifact_key

    recorded = results.model.content_hash
    if recorded == artifact_key():
        return recorded, None
    models = cache_dir() / "models"
    for info_path in sorted(models.glob("*/pretrain.json")) if models.is_dir() else []:
        try:
            saved = json.loads(info_path.read_text())
        except (OSError, ValueError):
            continue
        if recorded in (saved.get("key"), info_path.parent.name):
            steps = int(saved.get("recipe", {}).get("steps") or saved.get("steps"))
            return tiny_model_key(steps), steps
    return None, None


def missing_requirements(entry: LeaderboardEntry, *, data_root: Optional[str] = None, cuda_available: Optional[bool] = None) -> list[str]:
    """What this machine lacks to re-run ``entry`` (empty: it can be re-run here)."""
    import torch

    from ..data.suite import get_suite, suite_names

    if entry.config is None:
        return [f"a run config: {entry.entry_id} is a reported number ({entry.source}) without one; "
                f"to reproduce it, run `vqa-ood-bench run --suite {entry.suite} ...` with the source's recipe and `leaderboard add` the run"]
    missing: list[str] = []
    if entry.suite not in suite_names():
        return [f"the suite {entry.suite!r} (this version knows {', '.join(suite_names())})"]
    suite = get_suite(entry.suite)
    if suite.needs_data_root:
        root = data_root or entry.config.get("data_root")
        if not root:
            missing.append(f"the released datasets of suite {entry.suite!r} (pass --data-root DIR)")
        elif not Path(root).is_dir():
            missing.append(f"the released datasets of suite {entry.suite!r}: data root {root!r} is not a folder here (pass --data-root DIR)")
        if cuda_available is None:
            cuda_available = torch.cuda.is_available()
        device = entry.config.get("device")
        if not cuda_available and device != "cpu":
            missing.append(f"a CUDA GPU (suite {entry.suite!r} fine-tunes {entry.model_id}; none is visible to torch)")
    return missing


@contextlib.contextmanager
def _pretrain_steps(steps: Optional[int]) -> Iterator[None]:
    """Use the entry's tiny model for the re-run: the shipped artifact (``steps`` None) or a model
    pre-trained for ``steps`` (the step count is part of that model's key)."""
    before = os.environ.get(PRETRAIN_ENV)
    if steps is None:
        os.environ.pop(PRETRAIN_ENV, None)
    else:
        os.environ[PRETRAIN_ENV] = str(steps)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PRETRAIN_ENV, None)
        else:
            os.environ[PRETRAIN_ENV] = before


def compare(entry: LeaderboardEntry, results: RunResults, *, run_dir: Optional[str] = None, device: str = "cpu",
            model_key: Optional[str] = None) -> Reproduction:
    """Per split: measured, measured − submitted, and |diff| ≤ tolerance (a missing split is off)."""
    measured: dict[str, Optional[float]] = {}
    diffs: dict[str, Optional[float]] = {}
    within: dict[str, bool] = {}
    for name in entry.splits:
        submitted = entry.value(name)
        got = getattr(results.splits[name], entry.metric) if name in results.splits else None
        measured[name] = got
        if got is None or submitted is None:
            diffs[name], within[name] = None, False
            continue
        diff = got - submitted
        diffs[name] = round(diff, 6)
        within[name] = abs(diff) <= entry.tolerance + 1e-9  # float slack for numbers printed to 4 decimals
    notes = []
    if entry.model_key and model_key and entry.model_key != model_key:
        notes.append(f"model key differs: submitted {entry.model_key}, re-run {model_key} (library versions or pre-training changed)")
    extra = sorted(set(results.splits) - set(entry.splits))
    if extra:
        notes.append(f"re-run has splits the entry lacks: {', '.join(extra)}")
    from .schema import compute_averages

    return Reproduction(
        date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        package_version=__version__,
        git_commit=results.git_commit,
        device=device,
        run_dir=run_dir,
        run_id=results.run_id,
        model_key=model_key,
        tolerance=entry.tolerance,
        measured=measured,
        diffs=diffs,
        within_tolerance=within,
        measured_averages=compute_averages(results.splits, entry.metric),
        notes=notes,
    )


def reproduce_entry(entry: LeaderboardEntry, out_dir: str | Path, *, data_root: Optional[str] = None,
                    log: Log = lambda s: None, show_progress: bool = True) -> Reproduction:
    """Re-run ``entry``'s config into ``out_dir`` and compare; raises ConfigError naming what is missing."""
    import torch

    from ..config import RunConfig
    from ..runner import run_benchmark

    missing = missing_requirements(entry, data_root=data_root)
    if missing:
        raise ConfigError(f"cannot reproduce {entry.entry_id} here: missing " + "; ".join(missing))
    assert entry.config is not None
    config = RunConfig.model_validate({**entry.config, **({"data_root": str(data_root)} if data_root else {})})
    steps = entry.tiny_pretrain_steps if config.model == "tiny" else None
    with _pretrain_steps(steps):
        results = run_benchmark(config, out_dir, log=log, show_progress=show_progress)
        key = tiny_model_key() if config.model == "tiny" else None
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and torch.cuda.is_available():
        device = f"cuda ({torch.cuda.get_device_name(0)})"
    return compare(entry, results, run_dir=str(out_dir), device=device, model_key=key)


def record(entry: LeaderboardEntry, reproduction: Reproduction) -> LeaderboardEntry:
    """The entry with the reproduction appended; status follows the latest reproduction."""
    status = "reproduced" if reproduction.all_within else "reported"
    return entry.model_copy(update={"reproductions": [*entry.reproductions, reproduction], "status": status})
