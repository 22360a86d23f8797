"""The tiny PaliGemma, its processor, LoRA placement and the pre-training cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vqa_ood_bench.data.embedded.broad import OCR_NUMBERS, OCR_WORDS, all_words, make_example
from vqa_ood_bench.data.embedded.questions import ALL_COLORS, ALL_SHAPES, UNANSWERABLE
from vqa_ood_bench.models.paligemma import TinySpec, apply_lora, build_tiny_model, build_tiny_processor, count_parameters
from vqa_ood_bench.models.pretrain import PretrainRecipe, load_tiny, pretrained_dir
from vqa_ood_bench.predict.generate import generate_answers
from vqa_ood_bench.train.engine import TrainExample, VQACollator

SMALL = TinySpec(vision_layers=1, text_layers=1, vision_hidden=32, text_hidden=32, vision_intermediate=64, text_intermediate=64,
                 vision_heads=2, text_heads=2, text_head_dim=16)


@pytest.fixture(scope="module")
def processor():
    return build_tiny_processor(all_words(), SMALL)


def test_every_answer_is_one_token_and_words_stay_whole(processor) -> None:
    tok = processor.tokenizer
    answers = list(ALL_COLORS) + list(ALL_SHAPES) + ["yes", "no", UNANSWERABLE] + list(OCR_WORDS) + list(OCR_NUMBERS) + [str(n) for n in range(13)]
    multi = [a for a in answers if len(tok(a, add_special_tokens=False)["input_ids"]) != 1]
    assert not multi
    pieces = tok.tokenize("answer en is there not a teal shape in the image?\n")
    assert len(pieces) == 12  # one token per word, "?\n" one more: nothing merged across words


def test_collator_labels_only_the_answer(processor) -> None:
    ex = make_example(0, 3)
    batch = VQACollator(processor)([TrainExample(ex.image, ex.prompt, ex.answer)])
    labels = batch["labels"][0]
    kept = labels[labels != -100].tolist()
    assert processor.tokenizer.decode(kept, skip_special_tokens=True).strip() == ex.answer
    assert kept[-1] == processor.tokenizer.eos_token_id
    n_image = int((batch["input_ids"][0] == processor.image_token_id).sum())
    assert n_image == SMALL.image_seq_length


def test_tiny_model_trains_a_step_and_generates(processor) -> None:
    model = build_tiny_model(processor, SMALL)
    ex = [make_example(0, i) for i in range(4)]
    batch = VQACollator(processor)([TrainExample(e.image, e.prompt, e.answer) for e in ex])
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "vision_tower" in n and "weight" in n and "embeddings" in n)
    out = generate_answers(model.eval(), processor, [e.image for e in ex], [e.prompt for e in ex], max_new_tokens=2)
    assert len(out) == 4 and all(isinstance(o, str) for o in out)


def test_lora_only_on_language_model_attention(processor) -> None:
    model = apply_lora(build_tiny_model(processor, SMALL), r=4, alpha=8)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    assert {n.split(".lora_")[0].rsplit(".", 1)[1] for n in trainable} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    total, n_train = count_parameters(model)
    assert 0 < n_train < total


def test_pretraining_is_cached_by_content(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("VQA_OOD_BENCH_CACHE", str(tmp_path))
    recipe = PretrainRecipe(steps=2, batch_size=4)
    m1, p1, info1 = load_tiny(SMALL, recipe, show_progress=False)
    folder = pretrained_dir(SMALL, recipe)
    stamp = (folder / "pretrain.json").stat().st_mtime_ns
    m2, _, info2 = load_tiny(SMALL, recipe, show_progress=False)
    assert (folder / "pretrain.json").stat().st_mtime_ns == stamp  # loaded, not trained again
    assert info1 == info2
    for (n, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), n
    assert pretrained_dir(SMALL, PretrainRecipe(steps=3, batch_size=4)) != folder  # the recipe is in the key
