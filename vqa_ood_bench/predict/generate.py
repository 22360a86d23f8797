"""Batched generation: answers for records, streamed to a resumable predictions file.

Predictions files hold ``question_id`` and ``prediction`` only, so the same model, prompt and
decoding give the same bytes (time per question, a measurement, goes to the sample log). Each
batch's details (prompt as sent, raw generation, token ids, seconds) are appended to a
resumable side file when ``samples_path`` is given; :mod:`.samples` completes it into the
per-sample log once the split is scored.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Literal, Sequence, overload

import torch

from ..data.records import VQARecord
from ..models.families import Generation, family_of
from .jsonl import PredictionWriter


@overload
def generate_answers(model, processor, images: Sequence, prompts: Sequence[str], *, max_new_tokens: int = ..., num_beams: int = ...,
                     details: Literal[False] = ...) -> list[str]: ...
@overload
def generate_answers(model, processor, images: Sequence, prompts: Sequence[str], *, max_new_tokens: int = ..., num_beams: int = ...,
                     details: Literal[True]) -> list[Generation]: ...


@torch.no_grad()
def generate_answers(
    model,
    processor,
    images: Sequence,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 4,
    num_beams: int = 1,
    details: bool = False,
):
    """Greedy (or beam) decoding of one batch: the decoded, stripped answers, or with
    ``details`` one :class:`~vqa_ood_bench.models.families.base.Generation` per prompt.

    The answers do not depend on the batch's size or company (left padding and attention
    masks, see :mod:`vqa_ood_bench.models.families.base`).
    """
    family = family_of(model)
    inputs = family.generation_inputs(processor, images, prompts)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    inputs = {k: (v.to(device, dtype) if k == "pixel_values" else v.to(device)) for k, v in inputs.items()}
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=num_beams)
    generations = family.decode(model, processor, inputs, out)
    return generations if details else [g.prediction for g in generations]


def predict_records(
    model,
    processor,
    records: Sequence[VQARecord],
    out_path: str | Path,
    *,
    prompt: str = "answer en {question}",
    batch_size: int = 128,
    max_new_tokens: int = 4,
    num_beams: int = 1,
    progress=None,
    task=None,
    shard: tuple[int, int] = (0, 1),
    samples_path: str | Path | None = None,
) -> dict[str, str]:
    """Predict every record not yet in ``out_path``; return question_id → prediction for all.

    The file is appended batch by batch, so an interrupted run resumes where it stopped.
    ``shard=(rank, world)`` predicts every world-th record (data-parallel prediction).
    ``samples_path``: where each batch's generation details are appended (before its
    predictions, so a question with a prediction always has its details written).
    """
    model.eval()
    rank, world = shard
    mine = [r for k, r in enumerate(records) if k % world == rank]
    with contextlib.ExitStack() as stack:
        writer = stack.enter_context(PredictionWriter(out_path))
        details = stack.enter_context(PredictionWriter(samples_path)) if samples_path is not None else None
        todo = [r for r in mine if r.question_id not in writer.done]
        if progress is not None and task is not None:
            progress.update(task, total=len(mine), completed=len(mine) - len(todo))
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            images = [r.load_image() for r in batch]
            prompts = [prompt.format(question=r.question) for r in batch]
            t0 = time.perf_counter()
            generations = generate_answers(model, processor, images, prompts, max_new_tokens=max_new_tokens, num_beams=num_beams, details=True)
            seconds = round((time.perf_counter() - t0) / len(batch), 6)
            if details is not None:
                # Details first: a kill between the two writes leaves details without a prediction,
                # and the resumed run predicts that question again and keeps the details it has
                # (the log trusts them only where their prediction is the predictions file's).
                details.write(
                    {"question_id": r.question_id, "prediction": g.prediction, "prompt": p, "prompt_sent": g.prompt_sent,
                     "image_tokens": g.image_tokens, "generation": g.generation, "generated_token_ids": g.token_ids, "seconds": seconds}
                    for r, p, g in zip(batch, prompts, generations) if r.question_id not in details.done
                )
            writer.write({"question_id": r.question_id, "prediction": g.prediction} for r, g in zip(batch, generations))
            if progress is not None and task is not None:
                progress.advance(task, len(batch))
        return {qid: row["prediction"] for qid, row in writer.done.items()}
