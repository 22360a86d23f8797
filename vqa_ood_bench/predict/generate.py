"""Batched generation: answers for records, streamed to a resumable predictions file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import torch

from ..data.records import VQARecord
from .jsonl import PredictionWriter


@torch.no_grad()
def generate_answers(
    model,
    processor,
    images: Sequence,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 4,
    num_beams: int = 1,
) -> list[str]:
    """Greedy (or beam) decoding of one batch; returns the decoded, stripped answers."""
    image_token = getattr(processor, "image_token", "<image>")
    inputs = processor(text=[image_token + p for p in prompts], images=list(images), return_tensors="pt", padding="longest")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    inputs = {k: (v.to(device, dtype) if k == "pixel_values" else v.to(device)) for k, v in inputs.items()}
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=num_beams)
    new_tokens = out[:, inputs["input_ids"].shape[1]:]
    texts = processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return [t.strip() for t in texts]


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
) -> dict[str, str]:
    """Predict every record not yet in ``out_path``; return question_id → prediction for all.

    The file is appended batch by batch, so an interrupted run resumes where it stopped.
    ``shard=(rank, world)`` predicts every world-th record (data-parallel prediction).
    """
    model.eval()
    rank, world = shard
    mine = [r for k, r in enumerate(records) if k % world == rank]
    with PredictionWriter(out_path) as writer:
        todo = [r for r in mine if r.question_id not in writer.done]
        if progress is not None and task is not None:
            progress.update(task, total=len(mine), completed=len(mine) - len(todo))
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            images = [r.load_image() for r in batch]
            prompts = [prompt.format(question=r.question) for r in batch]
            t0 = time.perf_counter()
            answers = generate_answers(model, processor, images, prompts, max_new_tokens=max_new_tokens, num_beams=num_beams)
            writer.write(
                {"question_id": r.question_id, "prediction": a, "seconds": round((time.perf_counter() - t0) / len(batch), 6)}
                for r, a in zip(batch, answers)
            )
            if progress is not None and task is not None:
                progress.advance(task, len(batch))
        return {qid: row["prediction"] for qid, row in writer.done.items()}
