"""One classification run: fine-tune a backbone + linear head with a method on a suite, score
top-1 on every split, write ``results.json`` (``task: image-classification``).

The run folder is the VQA task's: ``config.yaml`` (a resume must use the same options), the
folder lock, ``checkpoints/`` (:mod:`.train`), ``trained_state.pt`` with ``fit.json`` recording
its sha256 (written after it: a finished training is reused only when both verify),
``predictions/<split>.jsonl`` (one row per image: id, label, prediction; reused on resume when
it covers the split) and ``results.json``. Top-1 sits in each split's ``exact_match``; averages
and ΔID / ΔOOD are computed from it as for the paper's tables.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .. import __version__, distributed, numerics
from ..config import RunConfig, dump_config
from ..data.suite import Suite, get_suite
from ..errors import ConfigError
from ..io import atomic_torch_save, atomic_write_json, atomic_write_text, digest_problem, file_digest
from ..numerics import fixed_cpu_numerics
from ..report.intervals import fill_intervals
from ..report.schema import ModelInfo, RunResults, SplitResult, compute_averages
from . import TASK, is_classification_suite
from . import methods as M
from .suites import class_names, label_of
from .train import fit, load_trained_state, trained_state

Log = Callable[[str], None]
METRIC = "exact_match"  # top-1, where the leaderboard's classification entries keep it
VARIANT = "top-1"
TRAINED, FIT = "trained_state.pt", "fit.json"


def check(config: RunConfig) -> M.Plan:
    """The run's method plan, after the checks that need no data or model."""
    if not is_classification_suite(config.suite):
        raise ConfigError(f"suite {config.suite!r} is not an image-classification suite")
    if config.adapter != "full":
        raise ConfigError(f"image classification fine-tunes all weights (adapter full), not {config.adapter!r}; "
                          "linear-probe trains the head alone")
    return M.make_plan(config.method, config.method_params)


def run_classification(config: RunConfig, out_dir: str | Path | None = None, *, log: Log = lambda s: None,
                       show_progress: bool = True) -> RunResults:
    """Fine-tune, predict, score; everything into ``out_dir`` (resumable, one run per folder)."""
    from ..runner import locked_run_folder

    check(config)
    with locked_run_folder(out_dir, config.method) as run_dir, fixed_cpu_numerics(config.cpu_threads):
        return _run(config, run_dir, log=log, show_progress=show_progress)


def _items(records, source: str):
    return [(r.image, label_of(r, source)) for r in records]


def _run(config: RunConfig, run_dir: Path, *, log: Log, show_progress: bool) -> RunResults:
    from ..runner import publish_results, record_config

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    plan = check(config)
    suite: Suite = get_suite(config.suite)
    main = distributed.is_main()
    record_config(run_dir, dump_config(config))

    t = time.perf_counter()
    log(f"suite {suite.name} v{suite.version}: loading splits")
    with distributed.main_first():  # rank 0 builds the embedded suite's cache alone
        train_records = suite.load(suite.train, config.data_root, limit=config.limit)
        val_records = suite.load(suite.validation, config.data_root, limit=config.train.validation_size or None)
        evals = {s.name: suite.load(s, config.data_root, limit=config.limit) for s in suite.evaluation}
    classes = class_names(suite, train_records)
    train_items = _items(train_records, f"{suite.name}/{suite.train.name}")
    val_items = _items(val_records, f"{suite.name}/{suite.validation.name}")
    eval_items = {name: _items(recs, f"{suite.name}/{name}") for name, recs in evals.items()}
    for name, items in [(suite.train.name, train_items), (suite.validation.name, val_items), *eval_items.items()]:
        over = next((i for i, (_, y) in enumerate(items) if y >= len(classes)), None)
        if over is not None:
            recs = train_records if name == suite.train.name else val_records if name == suite.validation.name else evals[name]
            raise ConfigError(f"{suite.name}/{name} [record {recs[over].question_id}]: label {items[over][1]} is not one of the "
                              f"{len(classes)} classes the training split defines")
    timings["data_s"] = time.perf_counter() - t

    t = time.perf_counter()
    torch.manual_seed(config.seed)
    from .backbones import load_backbone

    with distributed.main_first():
        backbone = load_backbone(config.model)
    model = M.Classifier(backbone, len(classes))
    torch.manual_seed(config.seed)  # the head's draw must not depend on what loading drew
    head_init = M.init_head(model, plan, classes)
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    M.prepare(model, plan)
    pretrained = {n: p.detach().clone() for n, p in model.named_parameters()}
    timings["model_s"] = time.perf_counter() - t

    fit_info: dict = {}
    trained = run_dir / TRAINED
    finished = _finished(model, run_dir, log) if plan.trains else None
    if finished is not None:
        fit_info = {**finished, "resumed": True}
        log(f"resumed: loaded the fine-tuned weights from {trained}")
    elif plan.trains:
        t = time.perf_counter()
        fit_info = _train(model, plan, train_items, val_items, config, run_dir, log=log, show_progress=show_progress)
        timings["train_s"] = time.perf_counter() - t
        if main:
            atomic_torch_save(trained_state(model), trained)
            atomic_write_json(run_dir / FIT, {**fit_info, "trained_state": file_digest(trained)})
    model = M.finalize(model, plan, pretrained, head_init)

    t = time.perf_counter()
    splits: dict[str, SplitResult] = {}
    scores: dict[str, np.ndarray] = {}
    for spec in suite.evaluation:
        records, items = evals[spec.name], eval_items[spec.name]
        rel = f"predictions/{spec.name}.jsonl"
        preds = _predict(model, records, items, run_dir / rel, config.eval_batch_size)
        correct = (preds == np.array([y for _, y in items])).astype(float)
        scores[spec.name] = correct
        splits[spec.name] = SplitResult(role=spec.role, shift_type=spec.shift_type, n=len(items),
                                        exact_match=round(float(correct.mean() * 100), 4) if len(items) else None,
                                        stands_in_for=spec.stands_in_for, predictions_file=rel)
    timings["predict_s"] = time.perf_counter() - t
    splits, averages_ci = fill_intervals(splits, scores, metric=METRIC)
    timings["total_s"] = time.perf_counter() - t_start
    results = RunResults(
        run_id=run_dir.name,
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        task=TASK,
        method=plan.name,
        method_params={**plan.describe(), "adapter": config.adapter, "head_init_used": head_init, **({"fit": fit_info} if fit_info else {})},
        model=ModelInfo(name_or_path=config.model, revision=config.model_revision, content_hash=backbone.content_hash,
                        parameters=sum(p.numel() for p in model.parameters()),
                        trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad) if plan.trains else 0),
        suite=suite.name,
        suite_version=suite.version,
        seed=config.seed,
        dtype=config.dtype,
        batch_size=config.train.batch_size * config.train.grad_accum,
        scoring_variant=VARIANT,
        package_version=__version__,
        git_commit=_git_commit(),
        config=config.model_dump(mode="json"),
        splits=splits,
        averages=compute_averages(splits, metric=METRIC),
        averages_ci=averages_ci,
        timings={k: round(v, 2) for k, v in timings.items()},
        environment=numerics.describe(config.cpu_threads),
        notes=[f"classes: {len(classes)}; top-1 accuracy in exact_match"],
    )
    return publish_results(results, run_dir)


def _git_commit() -> Optional[str]:
    from ..runner import git_commit

    return git_commit()


def _train(model, plan: M.Plan, train_items, val_items, config: RunConfig, run_dir: Path, *, log: Log, show_progress: bool) -> dict:
    per_step = config.train.batch_size * config.train.grad_accum

    def ready(optimizer, resumed: bool):
        hooks = []
        omega = M.omega_logger(plan, optimizer, run_dir if distributed.is_main() else None, resumed=resumed,
                               epoch_of=lambda s: s * per_step / len(train_items))
        if omega is not None:
            hooks.append(omega)
        if plan.name == "tpgm":
            hooks.append(_tpgm_hook(optimizer, model, val_items or train_items,
                                    int(plan.params["val_batch_size"]) or config.train.batch_size, config.seed))
        return hooks

    result = fit(model, plan, train_items, val_items, config.train, seed=config.seed, checkpoint_dir=run_dir / "checkpoints",
                 eval_batch_size=config.eval_batch_size, optimizer_ready=ready, log=log, show_progress=show_progress,
                 description=f"fine-tuning ({plan.name}, {config.model})")
    if distributed.is_main():
        atomic_write_json(run_dir / "train_history.json", result.history)
    return {"steps": result.steps, "seconds": round(result.seconds, 1), "final_loss": result.final_loss,
            "best_validation": result.best_validation, "best_step": result.best_step, "train_records": len(train_items)}


def _tpgm_hook(optimizer, model, items, batch_size: int, seed: int):
    """TPGM's projection: radii learned on the next batch of the validation split, in eval mode
    (as the TPGM authors evaluate the radius loss on the deterministic network)."""
    from torch import nn

    state = {"pos": 0}

    def closure():
        n = len(items)
        take = [items[(state["pos"] + i) % n] for i in range(min(batch_size, n))]
        state["pos"] = (state["pos"] + len(take)) % n
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            device = next(model.parameters()).device
            pixels = model.backbone.preprocess([x for x, _ in take]).to(device)
            loss = nn.functional.cross_entropy(model(pixels), torch.tensor([y for _, y in take], device=device))
            loss.backward()
        finally:
            for m, training in modes:
                m.training = training
        return loss

    def hook(_model, step: int) -> None:
        if optimizer.due():
            optimizer.project(closure)

    return hook


def _finished(model, run_dir: Path, log: Log) -> Optional[dict]:
    """fit.json's record with trained_state.pt loaded, when both exist and verify; else None."""
    trained, fit_path = run_dir / TRAINED, run_dir / FIT
    if not trained.exists() and not fit_path.exists():
        return None
    try:
        info = json.loads(fit_path.read_text())
        problem = digest_problem(trained, info.pop("trained_state", None))
    except (OSError, ValueError, AttributeError):
        info, problem = {}, "fit.json is missing or unreadable"
    if problem is None:
        try:
            load_trained_state(model, torch.load(trained, map_location="cpu", weights_only=True), str(trained))
            return info
        except ConfigError:
            raise
        except Exception as exc:
            problem = f"{TRAINED} cannot be read ({type(exc).__name__})"
    log(f"warning: {run_dir}: the finished training's files cannot be used ({problem}); training again")
    return None


def _predict(model, records, items, path: Path, batch_size: int) -> np.ndarray:
    """Predicted classes of a split, from ``path`` when it already covers the split (resume)."""
    from .train import evaluate

    ids = [r.question_id for r in records]
    if path.is_file():
        try:
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            if [r["question_id"] for r in rows] == ids:
                return np.array([int(r["prediction"]) for r in rows])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged file is predicted again and replaced
    preds = evaluate(model, items, batch_size)
    if distributed.is_main():
        lines = [json.dumps({"question_id": q, "label": int(y), "prediction": int(p)}) for q, (_, y), p in zip(ids, items, preds)]
        atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
    distributed.barrier()
    return preds
