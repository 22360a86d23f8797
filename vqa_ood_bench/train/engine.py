"""Fine-tuning on transformers' ``Trainer``: the one training loop every method goes through.

Methods differ in the model they prepare (LoRA or full, frozen parts), the optimizer they hand
in, and hooks after each step; the loop itself, its data-parallelism (``torchrun`` /
``accelerate launch``), mixed precision, gradient accumulation and checkpointing are the
Trainer's. Model selection keeps the weights with the best validation accuracy.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch.utils.data import Dataset

from ..config import TrainConfig
from ..errors import ConfigError, TrainingError


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
    """Turns examples into PaliGemma inputs: image tokens, BOS, prompt, "\\n", answer, EOS.

    Labels cover the answer and EOS only (the processor marks them with token_type_ids = 1);
    token_type_ids also give PaliGemma its prefix-LM attention (full attention on the prefix).
    """

    def __init__(self, processor):
        self.processor = processor
        self.image_token = getattr(processor, "image_token", "<image>")

    def __call__(self, examples: Sequence[TrainExample]) -> dict[str, torch.Tensor]:
        from PIL import Image

        images = [ex.image if isinstance(ex.image, Image.Image) else Image.open(ex.image).convert("RGB") for ex in examples]
        batch = self.processor(
            text=[self.image_token + ex.prompt for ex in examples],
            images=images,
            suffix=[ex.answer for ex in examples],
            return_tensors="pt",
            padding="longest",
        )
        return dict(batch)


@dataclass
class FitResult:
    steps: int
    seconds: float
    final_loss: float | None
    best_validation: float | None = None
    best_step: int | None = None
    history: list[dict[str, float]] = field(default_factory=list)


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


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
) -> FitResult:
    """Train ``model`` in place. ``validate(model) -> accuracy`` enables best-model selection.

    ``optimizer_factory(model, total_steps)`` lets a method hand in its own optimizer (the
    Trainer still builds the learning-rate schedule around it); ``step_hooks`` run after every
    optimizer step (projections such as MARS-SP's).

    ``config.batch_size`` is the global micro-batch: on N processes each takes batch_size / N, so
    the optimizer sees the same batches whatever N is. With ``config.save_steps`` the Trainer
    checkpoints (weights, optimizer ``state_dict``, scheduler, RNG) and so does model selection
    (best weights so far, history); ``resume=True`` continues from the last checkpoint.
    """
    from transformers import TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from ..distributed import check_sharding, per_device_batch, sharding_from_env, world_size

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
            # Model selection is ours, not the Trainer's: checkpoint it with the Trainer's files.
            folder = Path(args.output_dir) / f"checkpoint-{tstate.global_step}"
            if folder.is_dir() and args.process_index == 0:
                torch.save({**state, "history": history}, folder / SELECTION_FILE)

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

    resume_from = _last_checkpoint(output_dir) if resume else None
    if resume_from is not None and (resume_from / SELECTION_FILE).is_file():
        saved = torch.load(resume_from / SELECTION_FILE, map_location="cpu", weights_only=True)
        history.extend(saved.pop("history"))
        state.update(saved)

    trainer = _make_trainer(
        schedule=_warmup_cosine(config, warmup_steps) if (config.warmup_start_lr or config.min_learning_rate) else None,
        model=model,
        args=args,
        train_dataset=train,
        data_collator=VQACollator(processor),
        optimizers=optimizers,
        callbacks=[Hooks()],
    )
    # Our rich progress bar replaces the Trainer's printing of every log dict to stdout.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    start = time.perf_counter()
    try:
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


def _last_checkpoint(folder: str | Path) -> Path | None:
    """The complete Trainer checkpoint with the highest step.

    Complete: the Trainer writes trainer_state.json after weights, optimizer and RNG, and our
    model-selection file comes after that, so a kill while saving leaves a folder skipped here.
    """
    found = []
    for sub in Path(folder).glob("checkpoint-*") if Path(folder).is_dir() else []:
        step = sub.name.rsplit("-", 1)[-1]
        if step.isdigit() and (sub / "trainer_state.json").is_file() and (sub / SELECTION_FILE).is_file():
            found.append((int(step), sub))
    return max(found)[1] if found else None


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
