"""Greedy answers do not depend on the batch: the same for batch sizes 1, 7 and 64.

Users of other harnesses see accuracy move with the batch size when shorter prompts are padded
on the wrong side or the padding is attended to. Here prompts of many lengths share batches, and
every answer, raw generation and prompt as sent must equal those of the question alone.
"""

from __future__ import annotations

import json

import pytest
import torch
from fixtures.mini_suite import records as mini_records

from vqa_ood_bench.data.embedded.broad import make_example
from vqa_ood_bench.models.tiny_artifact import load_shipped
from vqa_ood_bench.numerics import fixed_cpu_numerics
from vqa_ood_bench.predict.generate import generate_answers, predict_records

BATCH_SIZES = (1, 7, 64)


@pytest.fixture(scope="module")
def shipped():
    model, processor, _ = load_shipped()
    return model.eval(), processor


@pytest.fixture(scope="module")
def examples():
    # 40 questions of the pre-training mixture's tasks: prompts from 3 to over 10 tokens
    exs = [make_example(5, i) for i in range(40)]
    return [e.image for e in exs], [e.prompt for e in exs]


@pytest.fixture(scope="module")
def alone(shipped, examples):
    """Every question answered on its own: the reference."""
    with fixed_cpu_numerics(2):
        return _batched(*shipped, *examples, 1)


def _batched(model, processor, images, prompts, batch_size):
    out = []
    for i in range(0, len(prompts), batch_size):
        out += generate_answers(model, processor, images[i:i + batch_size], prompts[i:i + batch_size], max_new_tokens=4, details=True)
    return out


def test_greedy_answers_are_the_same_for_batch_sizes_1_7_and_64(shipped, examples, alone) -> None:
    model, processor = shipped
    images, prompts = examples
    lengths = {len(processor.tokenizer(p)["input_ids"]) for p in prompts}
    assert len(lengths) >= 4  # batches really mix prompt lengths, so padding is exercised
    with fixed_cpu_numerics(2):
        runs = {bs: _batched(model, processor, images, prompts, bs) for bs in BATCH_SIZES[1:]}
    assert len({g.prediction for g in alone}) >= 4  # the model answers, not a constant
    for bs in BATCH_SIZES[1:]:
        assert [g.prediction for g in runs[bs]] == [g.prediction for g in alone], bs
        assert runs[bs] == alone, bs  # raw generations, token ids and prompts as sent too
    # the prompt as sent is the unpadded prompt: BOS, the text, the separator
    assert all(g.prompt_sent == f"<bos>{p}\n" and g.image_tokens == 64 for g, p in zip(alone, prompts))


def test_left_padding_even_when_the_tokenizer_pads_on_the_right(shipped, examples, alone, monkeypatch) -> None:
    """A saved processor may carry right padding; generation asks for left padding regardless."""
    model, processor = shipped
    images, prompts = examples
    monkeypatch.setattr(processor.tokenizer, "padding_side", "right")
    with fixed_cpu_numerics(2):
        together = _batched(model, processor, images, prompts, 64)
    assert together == alone


def test_right_padding_would_change_the_answers(shipped, examples, alone) -> None:
    """What the invariance test guards against is real for this model: padded on the right, a
    batch answers differently than its questions alone."""
    model, processor = shipped
    images, prompts = examples
    inputs = processor(text=["<image>" + p for p in prompts], images=images, return_tensors="pt", padding="longest", padding_side="right")
    inputs = {k: v for k, v in inputs.items() if k != "labels"}
    with torch.no_grad(), fixed_cpu_numerics(2):
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    right = [t.strip() for t in processor.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)]
    assert sum(a != g.prediction for a, g in zip(right, alone)) >= 5


def test_predictions_files_are_the_same_bytes_for_every_batch_size(shipped, tmp_path) -> None:
    model, processor = shipped
    records = mini_records("test") + mini_records("far")
    files = {}
    with fixed_cpu_numerics(2):
        for bs in BATCH_SIZES:
            predict_records(model, processor, records, tmp_path / f"p{bs}.jsonl", batch_size=bs, samples_path=tmp_path / f"s{bs}.jsonl")
            samples = [json.loads(line) for line in (tmp_path / f"s{bs}.jsonl").read_text().splitlines()]
            files[bs] = ((tmp_path / f"p{bs}.jsonl").read_bytes(), [{k: v for k, v in s.items() if k != "seconds"} for s in samples])
    assert files[1][0].count(b"\n") == len(records)
    for bs in BATCH_SIZES[1:]:
        assert files[bs] == files[1], bs
