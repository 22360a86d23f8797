"""The main job: fine-tune a model with a method on a suite, predict every split, score, report.

``run_benchmark`` is what ``vqa-ood-bench run`` calls; it is also the Python API. Every stage
writes into the run folder as it goes (config, predictions per split, results), so a killed
run can be resumed with the same ``--out``: finished predictions are kept and not redone.

One run at a time per folder: ``run_benchmark`` holds an exclusive lock on the run folder
(``.lock``; the holder's pid and host in ``.lock-owner.json``) from start to end, and a second
run on the same folder is refused at once. Files a resume trusts are written atomically and
verified before use: ``trained_state.pt`` by the sha256 that ``fit.json`` records (written
after it), the training checkpoints by their ``manifest.json`` (see ``train/engine.py``); a
damaged one is skipped with a warning, never a traceback.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import resource
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
import yaml

from . import __version__, distributed
from .config import RunConfig, dump_config
from .data.records import VQARecord
from .data.suite import Suite, get_suite
from .errors import ConfigError
from .io import atomic_torch_save, atomic_write_json, atomic_write_text, digest_problem, ensure_writable_dir, file_digest
from .methods.base import MethodContext, get_method
from . import numerics
from .numerics import fixed_cpu_numerics
from .report.intervals import fill_intervals
from .report.schema import ModelInfo, RunResults, SplitResult, compute_averages, write_results

Log = Callable[[str], None]


def new_run_dir(base: str | Path = "runs", method: str = "run") -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(base) / f"{stamp}-{method}-{uuid.uuid4().hex[:6]}"


def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def peak_memory_mb() -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if platform.system() == "Darwin" else rss / 1024


def load_model(config: RunConfig, log: Log, show_progress: bool = True, *, tiny_key: Optional[str] = None):
    """(model, processor, ModelInfo) for ``config.model``: the tiny embedded model or a real one.

    ``tiny_key``: for ``tiny``, the model a run recorded (its ``content_hash``): the shipped
    artifact's key or the cache key of a model pre-trained here. Any other model is loaded by its
    family: ``config.family`` when set, else the one its checkpoint's ``model_type`` names.
    """
    from .models.families import resolve_family
    from .models.paligemma import TINY, count_parameters

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[config.dtype]
    if config.model == TINY:
        from .models.pretrain import load_tiny

        if config.family not in (None, "paligemma"):
            raise ConfigError(f"--model tiny is a PaliGemma; it cannot be read as family {config.family!r}")
        if tiny_key:
            model, processor, info = _tiny_from_key(tiny_key)
        else:
            model, processor, info = load_tiny(show_progress=show_progress)
        model.to(dtype)
        name, content_hash = TINY, info["key"]
    else:
        family = resolve_family(config.model, config.family, config.model_revision)
        model, processor = family.load(config.model, dtype=dtype, revision=config.model_revision)
        name, content_hash = config.model, None
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    total, _ = count_parameters(model)
    return model, processor, ModelInfo(name_or_path=name, revision=config.model_revision, content_hash=content_hash, parameters=total)


def load_run_model(run_dir: str | Path, *, device: Optional[str] = None, dtype: Optional[str] = None,
                   log: Log = lambda s: None, show_progress: bool = True):
    """(model, processor, RunResults) of a finished run folder: the model its predictions came from.

    Rebuilds what :func:`run_benchmark` evaluated, from the run's own record: the config stored in
    ``results.json``, the pre-trained model (for ``tiny``, the exact cached pre-training the run
    used, found by ``results.model.content_hash``), the method's ``prepare`` (e.g. the LoRA
    wrapper), the trained tensors from ``trained_state.pt`` and the method's ``finalize`` (e.g.
    WiSE-FT's weight averaging). A method that does not train (zero-shot) gives the pre-trained
    model. ``device`` / ``dtype`` override the run's settings (a GPU run read on a CPU machine).
    """
    from .report.schema import read_results

    run_dir = Path(run_dir)
    results_path = run_dir / "results.json"
    if not results_path.is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a finished run folder (no results.json)")
    results = read_results(results_path)
    if not results.config:
        raise ConfigError(f"{results_path} records no run config; cannot rebuild the run's model (pass --model ENCODER)")
    overrides = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
    from pydantic import ValidationError

    from .evaluate import EVAL_METHOD

    if results.method == EVAL_METHOD:  # an `eval` folder: its model and adapter, loaded as the evaluation did
        from .config import EvalConfig
        from .evaluate import load_eval_model

        try:
            eval_config = EvalConfig.model_validate({**results.config, **overrides})
        except ValidationError as exc:
            raise ConfigError(f"{results_path}: the stored evaluation config is not valid for this version ({str(exc).splitlines()[0]})") from None
        if results.model.adapter and not eval_config.adapter_path:
            raise ConfigError(f"{results_path}: an evaluation of a model with an adapter in memory ({results.model.adapter}); "
                              "its model cannot be rebuilt from the folder")
        model, processor, _ = load_eval_model(eval_config, log=log, show_progress=show_progress)
        return model, processor, results

    try:
        config = RunConfig.model_validate({**results.config, **overrides})
    except ValidationError as exc:  # an old or edited config
        raise ConfigError(f"{results_path}: the stored run config is not valid for this version ({str(exc).splitlines()[0]})") from None
    method = get_method(config.method, **config.method_params)
    trained = run_dir / "trained_state.pt"
    if method.trains and not trained.is_file():
        raise ConfigError(f"run folder {str(run_dir)!r} has no trained_state.pt: the fine-tuned weights of this {method.name} run are missing")

    torch.manual_seed(config.seed)
    model, processor, info = load_model(config, log, show_progress, tiny_key=results.model.content_hash)
    ctx = MethodContext(config=config, processor=processor, run_dir=run_dir)
    model = method.prepare(model, ctx)
    ctx.pretrained_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    if method.trains:
        _load_trainable(model, trained)
        log(f"loaded the fine-tuned weights from {trained}")
    model = method.finalize(model, ctx)
    model.eval()
    return model, processor, results


def _tiny_from_key(key: str):
    """The tiny model a run recorded as ``model.content_hash``: the shipped artifact, or a model
    pre-trained here and cached.

    Cached models are found by ``pretrain.json``'s ``key`` (older caches wrote the temporary
    folder's name there, newer ones the recipe hash in the cache folder's name). A run made with
    another model must not be rebuilt on a different one: its LoRA adapters would sit on the
    wrong weights.
    """
    from transformers import PaliGemmaForConditionalGeneration, PaliGemmaProcessor

    from .cache import cache_dir
    from .models.tiny_artifact import IMAGE_BACKEND, artifact_key, load_shipped

    if key == artifact_key():
        return load_shipped()
    models = cache_dir() / "models"
    for info_path in sorted(models.glob("*/pretrain.json")) if models.is_dir() else []:
        try:
            saved = json.loads(info_path.read_text())
        except (OSError, ValueError):
            continue
        if key not in (saved.get("key"), info_path.parent.name, info_path.parent.name.rsplit("-", 1)[-1]):
            continue
        folder = info_path.parent  # load exactly these weights (load_tiny would re-derive the folder from versions)
        return (PaliGemmaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32),
                PaliGemmaProcessor.from_pretrained(folder, backend=IMAGE_BACKEND), saved)
    raise ConfigError(
        f"the run's tiny model ({key}) is neither the shipped one ({artifact_key()}) nor in the cache {models}; "
        "set VQA_OOD_BENCH_CACHE (and VQA_OOD_BENCH_PRETRAIN_STEPS) as for the run"
    )


def records_to_examples(records: list[VQARecord], prompt: str):
    from .train.engine import ExampleDataset, TrainExample

    # Each record's first answer is the training target; for real VQAv2 use the most common one.
    def target(rec: VQARecord) -> str:
        from collections import Counter

        return Counter(rec.answers).most_common(1)[0][0]

    return ExampleDataset([TrainExample(r.image, prompt.format(question=r.question), target(r)) for r in records if r.answers])


def run_benchmark(
    config: RunConfig,
    out_dir: str | Path | None = None,
    *,
    log: Log = lambda s: None,
    show_progress: bool = True,
) -> RunResults:
    """Fine-tune, predict every split, score; everything into ``out_dir`` (resumable).

    Raises :class:`ConfigError` at once when another run holds ``out_dir``.
    """
    from .classify import is_classification_suite

    if is_classification_suite(config.suite):  # image classification: a backbone + linear head, its own loop
        from .classify.runner import run_classification

        return run_classification(config, out_dir, log=log, show_progress=show_progress)
    get_method(config.method, **config.method_params).check(config)  # bad options: refused before a folder is made
    get_suite(config.suite)
    with locked_run_folder(out_dir, config.method) as run_dir, fixed_cpu_numerics(config.cpu_threads):
        return _run_benchmark(config, run_dir, log=log, show_progress=show_progress)


@contextlib.contextmanager
def locked_run_folder(out_dir: str | Path | None, method: str) -> Iterator[Path]:
    """The folder a run or an evaluation writes into (``out_dir``, or a new one under ``runs/``
    named after ``method``): created, checked writable, the same on every process, and locked
    (:func:`run_folder_lock`) while the block runs."""
    distributed.init_from_env()
    run_dir = ensure_writable_dir(distributed.broadcast(str(out_dir or new_run_dir(method=method))))
    with run_folder_lock(run_dir):
        yield run_dir


CONFIG_MISMATCH = "holds a run with a different configuration; resume with the same options or choose a new --out"


#: options a run may resume with changed: they do not change its numbers (the CPU thread count
#: is fixed per run for reproducibility, and 1 and 2 threads give identical predictions)
RESUME_FREE_KEYS = ("cpu_threads",)


def _resume_view(config_text: str) -> Any:
    """A recorded config as compared on resume: parsed, without :data:`RESUME_FREE_KEYS`."""
    parsed = yaml.safe_load(config_text)
    if isinstance(parsed, dict):
        for key in RESUME_FREE_KEYS:
            parsed.pop(key, None)
    return parsed


def record_config(run_dir: Path, config_text: str, refusal: str = CONFIG_MISMATCH) -> None:
    """Write ``config_text`` as the folder's ``config.yaml`` (rank 0). A folder whose
    ``config.yaml`` says otherwise is refused (``f"{run_dir} {refusal}"``): a resume there would
    mix its predictions with these."""
    previous = run_dir / "config.yaml"
    if previous.is_file() and _resume_view(previous.read_text()) != _resume_view(config_text):
        raise ConfigError(f"{run_dir} {refusal}")
    if distributed.is_main():
        atomic_write_text(previous, config_text)


def assemble_results(run_dir: Path, config, suite: Suite, splits: dict[str, SplitResult], averages_ci: dict, timings: dict[str, float],
                     **fields) -> RunResults:
    """``results.json``'s record of a run or an evaluation (``config``: its RunConfig or
    EvalConfig): what both record alike, plus ``fields`` for what differs (method, model,
    batch_size, method_params)."""
    return RunResults(
        run_id=run_dir.name,
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        suite=suite.name,
        suite_version=suite.version,
        seed=config.seed,
        dtype=config.dtype,
        scoring_variant=config.scoring_variant,
        package_version=__version__,
        git_commit=git_commit(),
        config=config.model_dump(mode="json"),
        splits=splits,
        averages=compute_averages(splits),
        averages_ci=averages_ci,
        timings={k: round(v, 2) for k, v in timings.items()},
        peak_memory_mb=round(peak_memory_mb(), 1),
        environment=numerics.describe(config.cpu_threads),
        **fields,
    )


def publish_results(results: RunResults, run_dir: Path) -> RunResults:
    """``results`` written to ``run_dir/results.json`` by rank 0, then waited for by every
    process: no process exits before the results are written."""
    if distributed.is_main():
        write_results(results, run_dir / "results.json")
    distributed.barrier()
    return results


LOCK_FILE = ".lock"
LOCK_OWNER_FILE = ".lock-owner.json"
# A holder that was just killed keeps its lock until the OS has finished tearing the process
# down (torchrun's workers outlive torchrun by a moment): retry this long before refusing.
LOCK_GRACE_S = 3.0


@contextlib.contextmanager
def run_folder_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run folder's exclusive lock (``filelock``, an ``flock`` released by the OS when
    the holder dies) for the block; another holder: :class:`ConfigError` after at most
    ``LOCK_GRACE_S`` seconds, no queueing.

    All processes of one ``torchrun`` run share the folder: rank 0 takes the lock and tells the
    others whether it got it, so every rank of a refused run raises the same error.
    """
    from filelock import FileLock, Timeout

    lock, refusal = None, None
    if distributed.is_main():
        candidate = FileLock(str(run_dir / LOCK_FILE))
        try:
            candidate.acquire(timeout=LOCK_GRACE_S, poll_interval=0.05)
        except Timeout:
            refusal = f"run folder {run_dir} is in use by another run ({_lock_owner(run_dir)}); wait for it or choose another --out"
        else:
            lock = candidate
            try:
                atomic_write_json(run_dir / LOCK_OWNER_FILE, {"pid": os.getpid(), "host": socket.gethostname(),
                                                              "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
            except BaseException:
                lock.release()
                raise
    refusal = distributed.broadcast(refusal)
    if refusal:
        raise ConfigError(refusal)
    try:
        yield
    finally:
        if lock is not None:
            (run_dir / LOCK_OWNER_FILE).unlink(missing_ok=True)
            lock.release()


def _lock_owner(run_dir: Path, wait_s: float = 2.0) -> str:
    """Who holds the lock, from the owner file. The holder writes it just after acquiring, and a
    killed holder leaves a stale one: wait briefly for a record of a live process."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            owner = json.loads((run_dir / LOCK_OWNER_FILE).read_text())
            pid, host = int(owner["pid"]), str(owner["host"])
            if host != socket.gethostname() or _alive(pid):
                return f"pid {pid} on {host}, since {owner['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if time.monotonic() > deadline:
            return "pid unknown"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by another user
    return True


def _run_benchmark(config: RunConfig, run_dir: Path, *, log: Log, show_progress: bool) -> RunResults:
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    method = get_method(config.method, **config.method_params)
    method.check(config)
    suite: Suite = get_suite(config.suite)
    # Under torchrun / accelerate launch every process runs this function; only rank 0 writes run files.
    distributed.init_from_env()
    main = distributed.is_main()
    record_config(run_dir, dump_config(config))
    torch.manual_seed(config.seed)

    # 1. data (the embedded suite builds itself on first use)
    t = time.perf_counter()
    log(f"suite {suite.name} v{suite.version}: loading splits")
    with distributed.main_first():  # rank 0 builds the shared caches (embedded suite) alone
        eval_records = {spec.name: suite.load(spec, config.data_root, limit=config.limit) for spec in suite.evaluation}
    timings["data_s"] = time.perf_counter() - t

    # 2. model
    t = time.perf_counter()
    with distributed.main_first():  # the tiny model pre-trains once, then every rank loads the same one
        model, processor, model_info = load_model(config, log, show_progress)
    timings["model_s"] = time.perf_counter() - t

    # 3. train
    ctx = MethodContext(config=config, processor=processor, run_dir=run_dir)
    # Re-seed: building a cache above (suite, tiny pre-training) draws random numbers, and the
    # adapters' initialisation must not depend on whether this process happened to build it.
    torch.manual_seed(config.seed)
    model = method.prepare(model, ctx)
    ctx.pretrained_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    fit_info: dict = {}
    trained = run_dir / "trained_state.pt"
    finished = _finished_training(model, run_dir, log) if method.trains else None
    if finished is not None:  # resuming a run whose training finished
        fit_info = {**finished, "resumed": True}
        log(f"resumed: loaded the fine-tuned weights from {trained}")
    elif method.trains:
        t = time.perf_counter()
        fit_info = _train(model, processor, suite, config, method, ctx, run_dir, show_progress=show_progress, log=log)
        timings["train_s"] = time.perf_counter() - t
        if main:  # trained_state.pt first, then fit.json with its checksum: fit.json marks training finished
            _save_trainable(model, trained)
            atomic_write_json(run_dir / "fit.json", {**fit_info, TRAINED_RECORD: file_digest(trained)})
    model = method.finalize(model, ctx)
    from .models.paligemma import count_parameters

    model_info.trainable_parameters = count_parameters(model)[1] if method.trains else 0
    if main and method.trains:  # the evaluated model's adapter as a PEFT folder, for `eval --adapter RUN_DIR`
        from .evaluate import save_run_adapter

        save_run_adapter(model, run_dir, _adapter_record(run_dir, config, method, model_info), log=log)

    # 4. predict + 5. score
    splits, scores, timings["predict_s"], timings["score_s"] = _predict_and_score(model, processor, suite, eval_records, config, run_dir, show_progress)
    t = time.perf_counter()
    splits, averages_ci = fill_intervals(splits, scores)
    timings["intervals_s"] = time.perf_counter() - t

    timings["total_s"] = time.perf_counter() - t_start
    results = assemble_results(
        run_dir, config, suite, splits, averages_ci, timings,
        method=method.name,
        method_params={**method.describe(), "adapter": config.adapter, **({"fit": fit_info} if fit_info else {})},
        model=model_info,
        batch_size=config.train.batch_size * config.train.grad_accum,
    )
    return publish_results(results, run_dir)


TRAINED_RECORD = "trained_state"  # fit.json's key for trained_state.pt's size and sha256


def _adapter_record(run_dir: Path, config: RunConfig, method, model_info: ModelInfo) -> dict:
    """What a run's saved adapter says about itself: its base model, the run, and the prediction
    options the run used (``eval`` takes them unless told otherwise)."""
    from .evaluate import RECORDED_OPTIONS

    return {
        "base_model": {"name_or_path": model_info.name_or_path, "revision": model_info.revision, "content_hash": model_info.content_hash},
        "run_id": run_dir.name, "method": method.name, "method_params": {**method.describe(), "adapter": config.adapter},
        "prediction": {k: getattr(config, k) for k in RECORDED_OPTIONS},
        # the family the run was told (--family); unset, eval detects it from the base model as the run did
        **({"family": config.family} if config.family else {}),
    }


def _save_trainable(model, path: Path) -> None:
    """The weights training changed (adapters, or everything for full fine-tuning), atomically."""
    state = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
    atomic_torch_save(state, path)


def _finished_training(model, run_dir: Path, log: Log) -> Optional[dict]:
    """``fit.json``'s record, with ``trained_state.pt`` loaded into ``model``, when an earlier
    attempt finished training and both files verify; None (train, continuing from the last good
    training checkpoint) when there is none, or with a one-line warning when either is missing,
    unreadable or does not match the checksum ``fit.json`` recorded."""
    trained, fit_path = run_dir / "trained_state.pt", run_dir / "fit.json"
    if not trained.exists() and not fit_path.exists():
        return None
    problem = None
    fit_info: dict = {}
    try:
        fit_info = json.loads(fit_path.read_text())
        if not isinstance(fit_info, dict):
            raise ValueError
    except FileNotFoundError:
        problem = "fit.json is missing (interrupted right after training)"
    except (OSError, ValueError):
        problem = "fit.json is unreadable"
    record = fit_info.pop(TRAINED_RECORD, None)
    if problem is None:
        if record is not None:  # run folders of earlier versions have none: loading is the check
            problem = digest_problem(trained, record)
        elif not trained.is_file():
            problem = "trained_state.pt is missing"
    if problem is None:
        try:
            _load_trainable(model, trained)
        except ConfigError:
            raise  # a readable file for another model: not damage, say so
        except Exception as exc:  # truncated or not a tensor file (never unpickled: weights_only)
            problem = f"trained_state.pt cannot be read ({type(exc).__name__})"
    if problem is None:
        return fit_info
    log(f"warning: {run_dir}: the finished training's files cannot be used ({problem}); training again from the last good checkpoint")
    return None


def _load_trainable(model, path: Path) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    if missing:
        raise ConfigError(f"{path} does not match this model ({len(missing)} trainable tensors missing, e.g. {missing[0]})")
    # checked before the first copy: a refused file leaves the model as it was
    unknown = [n for n in state if n not in params]
    if unknown:
        raise ConfigError(f"{path} does not match this model ({len(unknown)} tensors it does not have, e.g. {unknown[0]})")
    wrong = [n for n, v in state.items() if not isinstance(v, torch.Tensor) or v.shape != params[n].shape]
    if wrong:
        raise ConfigError(f"{path} does not match this model ({wrong[0]} has another shape)")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def _train(model, processor, suite: Suite, config: RunConfig, method, ctx: MethodContext, run_dir: Path, *, show_progress: bool,
           log: Log = lambda s: None) -> dict:
    from .predict.generate import generate_answers
    from .score.vqa_accuracy import vqa_scores
    from .train.engine import fit

    train_records = suite.load(suite.train, config.data_root, limit=config.limit)
    val_records = suite.load(suite.validation, config.data_root, limit=config.train.validation_size or None)
    if not train_records:
        raise ConfigError(f"suite {suite.name!r}: the training split is empty")
    val_images = [r.load_image() for r in val_records]
    ctx.train_size = len(train_records)  # lets per-step logs (DiGraP's omega) convert steps to epochs

    def validate(m) -> float:
        preds: list[str] = []
        for i in range(0, len(val_records), config.eval_batch_size):
            batch = val_records[i : i + config.eval_batch_size]
            preds += generate_answers(m, processor, val_images[i : i + len(batch)], [config.prompt.format(question=r.question) for r in batch],
                                      max_new_tokens=config.max_new_tokens)
        return float(vqa_scores(preds, [r.answers for r in val_records], config.scoring_variant).mean() * 100)

    result = fit(
        model, processor, records_to_examples(train_records, config.prompt), config.train,
        output_dir=run_dir / "checkpoints", seed=config.seed,
        optimizer_factory=method.optimizer_factory(ctx), step_hooks=method.step_hooks(ctx),
        validate=validate if val_records else None, description=f"fine-tuning ({method.name}, {config.adapter})",
        show_progress=show_progress, bf16=config.dtype == "bfloat16",
        resume=True, method_name=method.name, log=log,  # continue from the last good run_dir/checkpoints/checkpoint-N
    )
    if distributed.is_main():
        atomic_write_json(run_dir / "train_history.json", result.history)
    return {"steps": result.steps, "seconds": round(result.seconds, 1), "final_loss": result.final_loss,
            "best_validation": result.best_validation, "best_step": result.best_step, "train_records": len(train_records)}


def _predict_and_score(model, processor, suite: Suite, eval_records: dict[str, list[VQARecord]], config, run_dir: Path, show_progress: bool):
    """Predict and score every evaluation split into ``run_dir`` (``run`` and ``eval`` alike).

    ``config``: a :class:`RunConfig` or :class:`~vqa_ood_bench.config.EvalConfig` (their
    prediction fields: prompt, eval_batch_size, max_new_tokens, num_beams, scoring_variant).
    Writes ``predictions/<split>.jsonl`` and the per-sample log ``samples/<split>.jsonl``.
    """
    from .predict.samples import samples_path, write_sample_log
    from .predict.sharded import predict_sharded
    from .score.vqa_accuracy import score_records

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    splits: dict[str, SplitResult] = {}
    scores: dict[str, np.ndarray] = {}  # per-question scores, for the intervals
    t_pred = t_score = 0.0
    with Progress(TextColumn("[bold]predicting {task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  transient=True, disable=not show_progress) as progress:
        for spec in suite.evaluation:
            records = eval_records[spec.name]
            rel = f"predictions/{spec.name}.jsonl"
            task = progress.add_task(spec.name, total=len(records))
            t = time.perf_counter()
            samples = samples_path(run_dir, spec.name)
            preds = predict_sharded(model, processor, records, run_dir / rel, prompt=config.prompt, batch_size=config.eval_batch_size,
                                    max_new_tokens=config.max_new_tokens, num_beams=config.num_beams, progress=progress, task=task,
                                    samples_path=samples)
            t_pred += time.perf_counter() - t
            t = time.perf_counter()
            acc = score_records(records, preds, config.scoring_variant)
            t_score += time.perf_counter() - t
            scores[spec.name] = acc.scores
            if distributed.is_main():
                write_sample_log(samples, records, preds, acc.scores, variant=config.scoring_variant, prompt=config.prompt)
            splits[spec.name] = SplitResult(
                role=spec.role, shift_type=spec.shift_type, n=acc.n, vqa_accuracy=round(acc.accuracy, 4),
                per_answer_type={k: round(v, 4) for k, v in acc.per_answer_type.items()},
                per_question_type={k: round(v, 4) for k, v in acc.per_question_type.items()},
                stands_in_for=spec.stands_in_for, predictions_file=rel,
            )
            progress.remove_task(task)
    return splits, scores, t_pred, t_score
