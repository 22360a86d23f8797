"""Fine-tuning on transformers' ``Trainer``: the one training loop every method goes through.

Methods differ in the model they prepare (LoRA or full, frozen parts), the optimizer they hand
in, and hooks after each step; the loop itself, its data-parallelism (``torchrun`` /
``accelerate launch``), mixed precision, gradient accumulation and checkpointing are the
Trainer's. Model selection keeps the weights with the best validation accuracy.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import Dataset

from ..config import TrainConfig
from ..distributed import barrier
from ..errors import ConfigError, TrainingError
from ..io import atomic_torch_save


@dataclass(frozen=True)
class TrainExample:
    image: Any  # PIL image or path
    prompt: str  # the text before the answer, without the image tokens
    answer: str


class ExampleDataset(Dataset):
    """Indexable examples: a list, or a function index → TrainExample with a length."""

    def __init__(self, source: Sequence[TrainExample] | Callable[[int], TrainExample], length: int | None = None):
        self.source = source
        self.length = len(source) if length is None else length  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> TrainExample:
        return self.source(i) if callable(self.source) else self.source[i]


class VQACollator:
    """Turns examples into the model family's training inputs: the image, the prompt in the
    family's layout, the answer and its end token, with labels on the answer and end token only
    (see :meth:`vqa_ood_bench.models.families.base.ModelFamily.training_batch`).

    ``family``: the model's family; by default the one the processor belongs to.
    """

    def __init__(self, processor, family=None):
        self.processor = processor
        self.family = family

    def __call__(self, examples: Sequence[TrainExample]) -> dict[str, torch.Tensor]:
        from PIL import Image

        from ..data.records import open_image
        from ..models.families import family_of_processor

        # a missing or oversized training image: a DataError naming the file, not a PIL traceback
        images = [ex.image if isinstance(ex.image, Image.Image) else open_image(ex.image) for ex in examples]
        family = self.family or family_of_processor(self.processor)
        return family.training_batch(self.processor, images, [ex.prompt for ex in examples], [ex.answer for ex in examples])


@dataclass
class FitResult:
    steps: int
    seconds: float
    final_loss: float | None
    best_validation: float | None = None
    best_step: int | None = None
    history: list[dict[str, float]] = field(default_factory=list)


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the trainable weights in host memory: model selection's best weights would
    otherwise double their footprint on the accelerator under full fine-tuning."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def fit(
    model: torch.nn.Module,
    processor,
    train: ExampleDataset,
    config: TrainConfig,
    *,
    output_dir: str | Path,
    seed: int = 0,
    optimizer_factory: Callable[[torch.nn.Module, int], torch.optim.Optimizer] | None = None,
    step_hooks: Sequence[Callable[[torch.nn.Module, int], None]] = (),
    validate: Callable[[torch.nn.Module], float] | None = None,
    description: str = "training",
    show_progress: bool = True,
    bf16: bool = False,
    resume: bool = False,
    method_name: str = "",
    log: Callable[[str], None] | None = None,
) -> FitResult:
    """Train ``model`` in place. ``validate(model) -> accuracy`` enables best-model selection.

    ``optimizer_factory(model, total_steps)`` lets a method hand in its own optimizer (the
    Trainer still builds the learning-rate schedule around it); ``step_hooks`` run after every
    optimizer step (projections such as MARS-SP's).

    ``config.batch_size`` is the global micro-batch: on N processes each takes batch_size / N, so
    the optimizer sees the same batches whatever N is. With ``config.save_steps`` the Trainer
    checkpoints (weights, optimizer ``state_dict``, scheduler, RNG) and so does model selection
    (best weights so far, history); ``resume=True`` continues from the last checkpoint whose
    ``manifest.json`` verifies (see :func:`_last_checkpoint`). ``log`` gets one-line warnings
    (a damaged checkpoint skipped); by default they go to this module's logger.
    """
    from transformers import TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from ..distributed import check_sharding, per_device_batch, sharding_from_env, world_size
    from ..models.families import family_of

    sharding = config.sharding if config.sharding != "none" else sharding_from_env()
    check_sharding(method_name, sharding)
    per_step = config.batch_size * config.grad_accum  # global: the same on any number of processes
    total_steps = config.max_steps if config.max_steps > 0 else max(1, math.ceil(len(train) * config.epochs / per_step))
    eval_steps = max(1, round(config.eval_epochs * len(train) / per_step)) if config.eval_epochs > 0 else config.eval_steps
    warmup_steps = config.warmup_steps or int(round(config.warmup_ratio * total_steps))
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=per_device_batch(config.batch_size, world_size()),
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        max_steps=total_steps,
        warmup_steps=warmup_steps,
        lr_scheduler_type=config.scheduler,
        max_grad_norm=config.max_grad_norm,
        logging_steps=max(1, min(50, total_steps // 20)),
        save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500,
        save_total_limit=config.save_total_limit or None,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        seed=seed,
        data_seed=seed,
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
        **_sharding_args(config.sharding),
    )

    history: list[dict[str, float]] = []
    state: dict[str, Any] = {"best": None, "best_acc": None, "best_step": None, "last_loss": None}

    def run_validation(step: int) -> None:
        if validate is None:
            return
        was_training = model.training
        model.eval()
        acc = float(validate(model))
        model.train(was_training)
        history.append({"step": float(step), "validation_accuracy": acc})
        if state["best_acc"] is None or acc > state["best_acc"]:
            state.update(best=_trainable_state(model), best_acc=acc, best_step=step)

    class Hooks(TrainerCallback):
        def __init__(self) -> None:
            self.progress = None
            self.task = None

        def on_train_begin(self, args, tstate, control, **kw):
            if show_progress:
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

                self.progress = Progress(
                    TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(), transient=True,
                )
                self.progress.start()
                self.task = self.progress.add_task(description, total=total_steps, loss="-")

        def on_step_end(self, args, tstate, control, **kw):
            for hook in step_hooks:
                hook(model, tstate.global_step)
            if self.progress is not None:
                self.progress.update(self.task, completed=tstate.global_step)
            if eval_steps and tstate.global_step % eval_steps == 0 and tstate.global_step < total_steps:
                run_validation(tstate.global_step)

        def on_save(self, args, tstate, control, **kw):
            # Model selection is ours, not the Trainer's: checkpoint it with the Trainer's files,
            # then the manifest, last. Every process first finishes its part (its RNG state file).
            barrier()
            folder = Path(args.output_dir) / f"checkpoint-{tstate.global_step}"
            if folder.is_dir() and args.process_index == 0:
                atomic_torch_save({**state, "history": history}, folder / SELECTION_FILE)
                _write_manifest(folder)

        def on_log(self, args, tstate, control, logs=None, **kw):
            if logs and "loss" in logs:
                loss = float(logs["loss"])
                state["last_loss"] = loss
                history.append({"step": float(tstate.global_step), "loss": loss})
                if not math.isfinite(loss):
                    raise TrainingError(f"{description}: loss is {loss} at step {tstate.global_step}; lower the learning rate")
                if self.progress is not None:
                    self.progress.update(self.task, loss=f"{loss:.3f}")

        def on_train_end(self, args, tstate, control, **kw):
            if self.progress is not None:
                self.progress.stop()

    optimizers = (None, None)
    if optimizer_factory is not None:
        optimizers = (optimizer_factory(model, total_steps), None)

    # Sharded weights load only inside trainer.train(), which takes one step past a final
    # checkpoint: under FSDP / DeepSpeed a finished training resumes from the checkpoint before.
    below = total_steps if sharding != "none" else None
    resume_from = _resume_point(output_dir, log or _logger.warning, below=below) if resume else None
    if resume_from is not None:
        saved = torch.load(resume_from / SELECTION_FILE, map_location="cpu", weights_only=True)
        history.extend(saved.pop("history"))
        state.update(saved)

    trainer = _make_trainer(
        schedule=_warmup_cosine(config, warmup_steps) if (config.warmup_start_lr or config.min_learning_rate) else None,
        model=model,
        args=args,
        train_dataset=train,
        data_collator=VQACollator(processor, family_of(model)),
        optimizers=optimizers,
        callbacks=[Hooks()],
    )
    # Our rich progress bar replaces the Trainer's printing of every log dict to stdout.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    start = time.perf_counter()
    try:
        if resume_from is not None and _step_of(resume_from) >= total_steps:
            # Training had finished (the Trainer checkpoints the last step too): load its weights.
            # trainer.train() would take one more step when max_steps is not at an epoch's end.
            trainer._load_from_checkpoint(str(resume_from))
        else:
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)
    finally:
        hooks = [c for c in trainer.callback_handler.callbacks if isinstance(c, Hooks)]
        if hooks and hooks[0].progress is not None:
            hooks[0].progress.stop()
    seconds = time.perf_counter() - start
    run_validation(total_steps)
    if state["best"] is not None:
        with torch.no_grad():
            params = dict(model.named_parameters())
            for name, value in state["best"].items():
                params[name].copy_(value)
    return FitResult(
        steps=total_steps,
        seconds=seconds,
        final_loss=state["last_loss"],
        best_validation=state["best_acc"],
        best_step=state["best_step"],
        history=history,
    )


def _has_checkpoint(folder: str | Path) -> bool:
    return _last_checkpoint(folder) is not None


SELECTION_FILE = "model_selection.pt"


def _last_checkpoint(folder: str | Path, warn: Callable[[str], None] | None = None, *, below: int | None = None) -> Path | None:
    """The Trainer checkpoint with the highest step (under ``below`` if given) whose
    ``manifest.json`` verifies.

    ``on_save`` writes the manifest (every file's size and sha256) after the Trainer's files and
    our model-selection file, atomically, so a checkpoint a kill interrupted while saving, or
    one whose files were truncated or changed later, does not verify: it is skipped (``warn``
    says which and why) and the next-highest good one is taken.
    """
    return _scan_checkpoints(folder, warn, below)[0]


def _scan_checkpoints(folder: str | Path, warn: Callable[[str], None] | None, below: int | None) -> tuple[Path | None, list[Path]]:
    """(the checkpoint to resume from or None, the damaged ones above it)."""
    damaged = []
    for step, sub in _checkpoints(folder):
        if below is not None and step >= below:
            continue
        problem = _checkpoint_problem(sub)
        if problem is None:
            return sub, damaged
        damaged.append(sub)
        if warn is not None:
            warn(f"warning: skipping training checkpoint {sub}: {problem}")
    return None, damaged


def _step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[-1])


def _checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every ``checkpoint-N`` under ``folder``, highest step first."""
    found = []
    for sub in Path(folder).glob("checkpoint-*") if Path(folder).is_dir() else []:
        step = sub.name.rsplit("-", 1)[-1]
        if step.isdigit() and sub.is_dir():
            found.append((int(step), sub))
    return sorted(found, reverse=True)


MANIFEST_FILE = "manifest.json"
_logger = logging.getLogger(__name__)


def _write_manifest(folder: Path) -> None:
    """``folder/manifest.json``: size and sha256 of every file in the checkpoint, written atomically."""
    from ..io import atomic_write_json, file_digest

    files = {p.relative_to(folder).as_posix(): file_digest(p) for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != MANIFEST_FILE and not p.name.endswith(".tmp")}
    atomic_write_json(folder / MANIFEST_FILE, {"format": 1, "files": files})


def _checkpoint_problem(folder: Path) -> str | None:
    """Why the checkpoint ``folder`` cannot be resumed from; None when its manifest verifies."""
    from ..errors import DataError
    from ..io import digest_problem, safe_join

    manifest = folder / MANIFEST_FILE
    if not manifest.is_file():
        return f"no {MANIFEST_FILE} (interrupted while saving, or written by an older version)"
    try:
        files = json.loads(manifest.read_text())["files"]
        if not isinstance(files, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST_FILE} is unreadable"
    for required in ("trainer_state.json", SELECTION_FILE):
        if required not in files:
            return f"{MANIFEST_FILE} does not list {required}"
    paths = {}
    for rel in files:
        try:
            paths[rel] = safe_join(folder, rel)
        except DataError:
            return f"{MANIFEST_FILE} names a file outside the checkpoint ({rel!r})"
    # sizes of all files first (cheap, and what a truncation changes), then the checksums
    for rel, want in files.items():
        if not isinstance(want, dict) or not paths[rel].is_file() or paths[rel].stat().st_size != want.get("bytes"):
            return digest_problem(paths[rel], want) or f"{rel} does not match {MANIFEST_FILE}"
    for rel, want in files.items():
        problem = digest_problem(paths[rel], want)
        if problem:
            return problem
    return None


def _resume_point(output_dir: str | Path, warn: Callable[[str], None], *, below: int | None = None) -> Path | None:
    """The checkpoint ``fit(resume=True)`` continues from, the same on every process.

    Rank 0 verifies the checkpoints (:func:`_last_checkpoint`) and removes the damaged ones above
    the one it takes: they cannot be resumed from, and left in place the Trainer's rotation
    (``save_total_limit``) could count them and delete the good one before a new one verifies.
    """
    from ..distributed import broadcast, is_main

    chosen = None
    if is_main():
        found, damaged = _scan_checkpoints(output_dir, warn, below)
        for sub in damaged:
            shutil.rmtree(sub, ignore_errors=True)
        chosen = str(found) if found is not None else None
    chosen = broadcast(chosen)
    return Path(chosen) if chosen is not None else None


def _warmup_cosine(config: TrainConfig, warmup_steps: int) -> Callable[[int, int], float]:
    """The paper's (LAVIS) schedule as a factor of the peak rate: linear warm-up from
    ``warmup_start_lr``, then cosine from the peak down to ``min_learning_rate``."""
    if config.scheduler != "cosine":
        raise ConfigError(f"train.warmup_start_lr / train.min_learning_rate need scheduler 'cosine', not {config.scheduler!r}")
    peak, start, floor = config.learning_rate, config.warmup_start_lr, config.min_learning_rate

    def factor(step: int, total: int) -> float:
        if step < warmup_steps:
            return (start + (peak - start) * step / warmup_steps) / peak
        progress = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
        return (floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))) / peak

    return factor


def _sharding_args(sharding: str) -> dict[str, Any]:
    """TrainingArguments for parameter sharding asked for in the config (untested here: no GPUs)."""
    if sharding == "fsdp":
        return {"fsdp": "full_shard auto_wrap"}
    if sharding == "deepspeed":
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise TrainingError("train.sharding 'deepspeed' needs the deepspeed package, which is not installed") from None
        return {"deepspeed": {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto",
                              "gradient_accumulation_steps": "auto", "bf16": {"enabled": "auto"}}}
    return {}


def _scheduled_trainer_class():
    from transformers import Trainer

    class ScheduledTrainer(Trainer):
        """The Trainer with an optional schedule of our own (a LambdaLR, so it checkpoints too)."""

        def __init__(self, *a, schedule: Callable[[int, int], float] | None = None, **kw):
            self._schedule = schedule
            super().__init__(*a, **kw)

        def create_scheduler(self, num_training_steps: int, optimizer=None):
            if self._schedule is None or self.lr_scheduler is not None:
                return super().create_scheduler(num_training_steps, optimizer)
            optimizer = optimizer if optimizer is not None else self.optimizer
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: self._schedule(s, num_training_steps))
            return self.lr_scheduler

    return ScheduledTrainer


def _make_trainer(**kw):
    return _scheduled_trainer_class()(**kw)
