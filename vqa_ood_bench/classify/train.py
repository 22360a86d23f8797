"""The classification training loop: cross-entropy, one optimizer step per global batch.

A plain loop rather than transformers' Trainer (which the VQA task uses): the Trainer's batches
are the VQA collator's, and the classification methods need what a loop of their own gives
simply (a probing phase with a frozen, eval-mode backbone; TPGM's projection on validation
batches).

Determinism and resume: the data order of epoch ``e`` is a permutation drawn from
``(seed, e)`` and the augmentation of step ``s`` from ``(seed, s)``, so a step is a function of
its index. A checkpoint (``checkpoints/last.pt``: trained weights and buffers, optimizer,
schedule, model selection) is written atomically every ``save_steps`` and its size and
sha256 recorded after it in ``checkpoints/last.json``; a resume continues from it when both
verify, and starts afresh with a warning when they do not.

Several processes (``torchrun``): ``batch_size`` is the global batch; each rank takes every
world-th example of it, and gradients are summed over ranks before the step, so the update is
the one a single process would make. Only rank 0 writes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .. import distributed
from ..config import TrainConfig
from ..errors import ConfigError, TrainingError
from ..io import atomic_torch_save, atomic_write_json, digest_problem, file_digest
from . import methods as M

Item = tuple[Any, int]  # (image path or PIL image, label)
Log = Callable[[str], None]
CHECKPOINT, CHECKPOINT_RECORD = "last.pt", "last.json"


@dataclass
class FitResult:
    steps: int
    seconds: float
    final_loss: Optional[float]
    best_validation: Optional[float] = None
    best_step: Optional[int] = None
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: Optional[int] = None


def total_steps(config: TrainConfig, n: int) -> int:
    per_step = config.batch_size * config.grad_accum
    return config.max_steps if config.max_steps > 0 else max(1, math.ceil(n * config.epochs / per_step))


def stream_indices(n: int, seed: int, start: int, count: int) -> list[int]:
    """Positions ``start .. start+count`` of the endless data order (one permutation per epoch)."""
    out, cache = [], {}
    for pos in range(start, start + count):
        epoch = pos // n
        if epoch not in cache:
            cache[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
        out.append(int(cache[epoch][pos % n]))
    return out


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors training changes: trainable parameters and every buffer (batch-norm statistics)."""
    state = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}
    state.update({n: b.detach().to("cpu", copy=True) for n, b in model.named_buffers()})
    return state


def load_trained_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``model``; a file made for another model is refused before any copy."""
    own = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    unknown = [n for n in state if n not in own]
    wrong = [n for n, v in state.items() if n in own and (not isinstance(v, torch.Tensor) or v.shape != own[n].shape)]
    missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in state]
    if unknown or wrong or missing:
        what = (f"{len(unknown)} unknown tensors, e.g. {unknown[0]}" if unknown else
                f"{wrong[0]} has another shape" if wrong else f"{len(missing)} trained tensors missing, e.g. {missing[0]}")
        raise ConfigError(f"{source} does not match this model ({what})")
    with torch.no_grad():
        for name, value in state.items():
            own[name].copy_(value)


def _schedule(optimizer, config: TrainConfig, steps: int):
    from transformers import get_scheduler

    warmup = config.warmup_steps or int(round(config.warmup_ratio * steps))
    if config.warmup_start_lr or config.min_learning_rate:
        from ..train.engine import _warmup_cosine

        factor = _warmup_cosine(config, warmup)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: factor(s, steps))
    return get_scheduler(config.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=steps)


def _all_reduce_(tensors: Sequence[torch.Tensor]) -> None:
    if distributed.world_size() > 1:
        for t in tensors:
            torch.distributed.all_reduce(t)


def evaluate(model: nn.Module, items: Sequence[Item], batch_size: int) -> np.ndarray:
    """Predicted class of every item (all ranks share the work and all get every prediction)."""
    world, rank = distributed.world_size(), distributed.rank()
    mine = list(range(rank, len(items), world))
    preds = torch.zeros(len(items), dtype=torch.long)  # class + 1 where this rank predicted, 0 elsewhere
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        for i in range(0, len(mine), batch_size):
            idx = mine[i : i + batch_size]
            pixels = model.backbone.preprocess([items[k][0] for k in idx]).to(device)
            preds[idx] = model(pixels).argmax(dim=-1).cpu() + 1
    model.train(was)
    if world > 1:  # the ranks filled disjoint entries: their sum is every prediction
        torch.distributed.all_reduce(preds)
    preds = preds - 1
    return preds.numpy()


def top1(model: nn.Module, items: Sequence[Item], batch_size: int) -> float:
    preds = evaluate(model, items, batch_size)
    labels = np.array([y for _, y in items])
    return float((preds == labels).mean() * 100) if len(items) else 0.0


def fit(
    model: M.Classifier,
    plan: M.Plan,
    train: Sequence[Item],
    validation: Sequence[Item],
    config: TrainConfig,
    *,
    seed: int,
    checkpoint_dir: Optional[Path],
    eval_batch_size: int = 128,
    step_hooks: Sequence[M.StepHook] = (),
    optimizer_ready: Optional[Callable[[torch.optim.Optimizer, bool], Sequence[M.StepHook]]] = None,
    log: Log = lambda s: None,
    show_progress: bool = False,
    description: str = "fine-tuning",
) -> FitResult:
    """Train ``model`` in place, keep the weights with the best validation top-1 (if any)."""
    if not train:
        raise ConfigError("the training split is empty")
    world = distributed.world_size()
    distributed.per_device_batch(config.batch_size, world)  # refuses a batch the ranks cannot share
    steps = total_steps(config, len(train))
    probe = plan.probe_steps(steps)
    optimizer = M.build_optimizer(model, plan, config.learning_rate, config.weight_decay)
    schedule = _schedule(optimizer, config, steps)
    eval_every = (max(1, round(config.eval_epochs * len(train) / (config.batch_size * config.grad_accum)))
                  if config.eval_epochs > 0 else config.eval_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    history: list[dict[str, float]] = []
    sel: dict[str, Any] = {"best": None, "best_acc": None, "best_step": None}
    start, last_loss = 0, None

    resumed = _resume(checkpoint_dir, log)
    if resumed is not None:
        load_trained_state(model, resumed["model"], str(checkpoint_dir / CHECKPOINT))
        optimizer.load_state_dict(resumed["optimizer"])
        schedule.load_state_dict(resumed["schedule"])
        sel.update(resumed["selection"])
        history = list(resumed["history"])
        start, last_loss = int(resumed["step"]), resumed.get("last_loss")
        log(f"resumed training at step {start} of {steps}")
    hooks = list(step_hooks) + list(optimizer_ready(optimizer, resumed is not None) if optimizer_ready else [])

    def validate(step: int) -> None:
        if not validation:
            return
        acc = top1(model, validation, eval_batch_size)
        history.append({"step": float(step), "validation_accuracy": acc})
        if sel["best_acc"] is None or acc > sel["best_acc"]:
            sel.update(best=trained_state(model), best_acc=acc, best_step=step)

    def checkpoint(step: int) -> None:
        if checkpoint_dir is None or not distributed.is_main():
            return
        path = checkpoint_dir / CHECKPOINT
        atomic_torch_save({"step": step, "model": trained_state(model), "optimizer": optimizer.state_dict(),
                           "schedule": schedule.state_dict(), "selection": sel, "history": history, "last_loss": last_loss}, path)
        atomic_write_json(checkpoint_dir / CHECKPOINT_RECORD, {"step": step, "file": file_digest(path)})

    progress = None
    if show_progress and distributed.is_main():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                            TimeRemainingColumn(), transient=True)
        progress.start()
        task = progress.add_task(description, total=steps, completed=start, loss="-")
    t0 = time.perf_counter()
    try:
        for step in range(start, steps):
            model.train()
            if not M.backbone_trains(plan, step, steps):
                model.backbone.eval()
            optimizer.zero_grad(set_to_none=True)
            gen = torch.Generator().manual_seed(int(np.random.default_rng([seed, 7, step]).integers(2**62)))
            total_loss = torch.zeros(1)
            for micro in range(config.grad_accum):
                pos = (step * config.grad_accum + micro) * config.batch_size
                idx = stream_indices(len(train), seed, pos, config.batch_size)[distributed.rank()::world]
                pixels = model.backbone.preprocess([train[k][0] for k in idx], train=True, generator=gen).to(device)
                labels = torch.tensor([train[k][1] for k in idx], device=device)
                # a sum over this rank's share / the global batch: after the all-reduce, the global mean
                loss = nn.functional.cross_entropy(model(pixels), labels, reduction="sum") / (config.batch_size * config.grad_accum)
                loss.backward()
                total_loss += loss.detach().cpu()
            _all_reduce_([p.grad for p in params if p.grad is not None] + [total_loss])
            last_loss = float(total_loss)
            if not math.isfinite(last_loss):
                raise TrainingError(f"{description}: loss is {last_loss} at step {step + 1}; lower the learning rate")
            if step < probe:
                M.silence_body_during_probe(optimizer)
            torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], config.max_grad_norm)
            optimizer.step()
            schedule.step()
            done = step + 1
            for hook in hooks:
                hook(model, done)
            if done % max(1, min(50, steps // 20)) == 0:
                history.append({"step": float(done), "loss": last_loss})
            if eval_every and done % eval_every == 0 and done < steps:
                validate(done)
            if config.save_steps and done % config.save_steps == 0 and done < steps:
                checkpoint(done)
            if progress is not None:
                progress.update(task, completed=done, loss=f"{last_loss:.3f}")
    finally:
        if progress is not None:
            progress.stop()
    seconds = time.perf_counter() - t0
    if start < steps or sel["best_acc"] is None:
        validate(steps)
        checkpoint(steps)
    if sel["best"] is not None:
        load_trained_state(model, sel["best"], "model selection")
    distributed.barrier()
    return FitResult(steps=steps, seconds=seconds, final_loss=last_loss, best_validation=sel["best_acc"], best_step=sel["best_step"],
                     history=history, resumed_from=start if resumed is not None else None)


def _resume(checkpoint_dir: Optional[Path], log: Log) -> Optional[dict[str, Any]]:
    """The last checkpoint when it verifies against its record; None (with a warning if damaged)."""
    if checkpoint_dir is None:
        return None
    path, record_path = checkpoint_dir / CHECKPOINT, checkpoint_dir / CHECKPOINT_RECORD
    if not path.exists() and not record_path.exists():
        return None
    try:
        record = json.loads(record_path.read_text())
        problem = digest_problem(path, record["file"])
    except (OSError, ValueError, KeyError, TypeError):
        problem = f"{CHECKPOINT_RECORD} is missing or unreadable"
    if problem is None:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # never unpickled beyond tensors and plain containers
            problem = f"{CHECKPOINT} cannot be read ({type(exc).__name__})"
    log(f"warning: {checkpoint_dir}: the training checkpoint cannot be used ({problem}); training from the start")
    return None
