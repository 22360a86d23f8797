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
from ..errors import TrainingError


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
) -> FitResult:
    """Train ``model`` in place. ``validate(model) -> accuracy`` enables best-model selection.

    ``optimizer_factory(model, total_steps)`` lets a method hand in its own optimizer (the
    Trainer still builds the learning-rate schedule around it); ``step_hooks`` run after every
    optimizer step (projections such as MARS-SP's).
    """
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    world = max(1, int(torch.distributed.get_world_size()) if torch.distributed.is_available() and torch.distributed.is_initialized() else 1)
    per_step = config.batch_size * config.grad_accum * world
    total_steps = config.max_steps if config.max_steps > 0 else max(1, math.ceil(len(train) * config.epochs / per_step))
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        max_steps=total_steps,
        warmup_steps=int(round(config.warmup_ratio * total_steps)),
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
            if config.eval_steps and tstate.global_step % config.eval_steps == 0 and tstate.global_step < total_steps:
                run_validation(tstate.global_step)

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

    trainer = Trainer(
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
        trainer.train(resume_from_checkpoint=True if resume and _has_checkpoint(output_dir) else None)
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
    return any(Path(folder).glob("checkpoint-*"))
