"""Shift features: masking semantics, batching, caching, and the processor path.

The reference for each feature kind is an independent computation: the model run on one
sample at a time, without padding or attention masking, on the kept modality alone (image
tokens only for ``vision``; BOS + question tokens only for ``question``; the whole prompt for
``joint``). The extractor instead masks the other modality inside a padded batch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vqa_ood_bench.data.records import VQARecord
from vqa_ood_bench.errors import DataError
from vqa_ood_bench.shift.features import FEATURE_KINDS, extract_features, model_fingerprint, pooled_features

IMAGE_TOKEN = 299
BOS, EOS, PAD = 2, 1, 0
N_IMAGE_TOKENS = 16  # (32 / 8) ** 2


def tiny_model(attn: str = "sdpa", seed: int = 0):
    from transformers import GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration, SiglipVisionConfig

    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=32, patch_size=8, vision_use_head=False)
    text = GemmaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, head_dim=16, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
    config = PaliGemmaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_id=IMAGE_TOKEN,
                             projection_dim=32)
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(config).eval()
    model.set_attn_implementation(attn)
    return model


def rand_image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8))


def pixels(img: Image.Image) -> torch.Tensor:
    a = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0)
    return a.permute(2, 0, 1)


def question_tokens(question: str) -> list[int]:
    """A toy tokenizer: one id per word (10..200), then the newline token (5)."""
    return [10 + (sum(map(ord, w)) % 190) for w in ("answer en " + question).split()] + [5]


def records(n: int, seed: int = 0) -> list[VQARecord]:
    qs = ["what color is it", "how many", "is there a red circle in the image", "which shape", "what is left of the square"]
    return [
        VQARecord(question_id=f"q{seed}-{i}", image=rand_image(seed * 100 + i), question=qs[(i + seed) % len(qs)], answers=["x"])
        for i in range(n)
    ]


def encode(recs) -> dict[str, torch.Tensor]:
    """PaliGemma's layout by hand, left-padded like the real processor."""
    seqs = [[IMAGE_TOKEN] * N_IMAGE_TOKENS + [BOS] + question_tokens(r.question) for r in recs]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), PAD)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s)
        attn[i, width - len(s):] = 1
    return {
        "input_ids": ids,
        "attention_mask": attn,
        "token_type_ids": torch.zeros_like(ids),
        "pixel_values": torch.stack([pixels(r.image) for r in recs]),
    }


@torch.no_grad()
def reference(model, rec: VQARecord) -> dict[str, np.ndarray]:
    """One sample, no padding, no masking: each modality run on its own."""
    q = torch.tensor([[BOS] + question_tokens(rec.question)])
    img = torch.tensor([[IMAGE_TOKEN] * N_IMAGE_TOKENS])
    pv = pixels(rec.image)[None]
    full = torch.cat([img, q], 1)

    def last(ids, pv=None):
        return model.model(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids),
                           pixel_values=pv).last_hidden_state[0]

    vision = last(img, pv).mean(0)
    question = last(q)[1:].mean(0)  # without BOS
    h = last(full, pv)
    joint = 0.5 * (h[:N_IMAGE_TOKENS].mean(0) + h[N_IMAGE_TOKENS + 1:].mean(0))
    image_part_of_joint = h[:N_IMAGE_TOKENS].mean(0)
    return {"vision": vision.numpy(), "question": question.numpy(), "joint": joint.numpy(), "_image_in_joint": image_part_of_joint.numpy()}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_masking_equals_single_modality_runs(attn: str) -> None:
    model = tiny_model(attn)
    recs = records(4)
    feats = pooled_features(model, encode(recs), special_ids={BOS, EOS, PAD})
    assert set(feats) == set(FEATURE_KINDS)
    for i, rec in enumerate(recs):
        ref = reference(model, rec)
        for kind in FEATURE_KINDS:
            np.testing.assert_allclose(feats[kind][i].numpy(), ref[kind], rtol=1e-4, atol=1e-5, err_msg=f"{kind} of record {i}")
        # masking matters: the image tokens' states change when the question is visible
        assert np.abs(ref["vision"] - ref["_image_in_joint"]).max() > 1e-3


def test_batch_composition_does_not_matter() -> None:
    model = tiny_model()
    recs = records(5, seed=1)
    whole = extract_features(model, None, recs, encode=encode, batch_size=5)
    single = extract_features(model, None, recs, encode=encode, batch_size=1)
    for kind in FEATURE_KINDS:
        assert whole.arrays[kind].shape == (5, 32) and whole.arrays[kind].dtype == np.float32
        np.testing.assert_allclose(whole.arrays[kind], single.arrays[kind], rtol=1e-4, atol=1e-5)
    assert whole.question_ids == [r.question_id for r in recs]
    # the three kinds are different features
    assert np.abs(whole.arrays["vision"] - whole.arrays["joint"]).max() > 1e-3
    assert np.abs(whole.arrays["question"] - whole.arrays["joint"]).max() > 1e-3


class CountingEncoder:
    def __init__(self, fail_after: int | None = None):
        self.calls = 0
        self.fail_after = fail_after

    def __call__(self, recs):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        return encode(recs)


def test_cache_reuse_invalidation_and_resume(tmp_path) -> None:
    model = tiny_model()
    recs = records(10, seed=2)
    enc = CountingEncoder()
    first = extract_features(model, None, recs, split="val", cache_dir=tmp_path, encode=enc, batch_size=3)
    assert enc.calls == 4
    assert first.path is not None and (first.path / "meta.json").is_file()
    assert isinstance(first.arrays["vision"], np.memmap)

    again = CountingEncoder()
    second = extract_features(model, None, recs, split="val", cache_dir=tmp_path, encode=again, batch_size=3)
    assert again.calls == 0  # read from the cache, the model did not run
    for kind in FEATURE_KINDS:
        np.testing.assert_array_equal(np.asarray(second.arrays[kind]), np.asarray(first.arrays[kind]))

    # other records -> other features
    other = CountingEncoder()
    extract_features(model, None, recs[:7], split="val", cache_dir=tmp_path, encode=other, batch_size=3)
    assert other.calls == 3

    # changed weights -> other features
    model2 = tiny_model(seed=0)
    with torch.no_grad():
        model2.model.language_model.layers[0].mlp.down_proj.weight[0, 0] += 0.5
    assert model_fingerprint(model2) != model_fingerprint(model)
    enc2 = CountingEncoder()
    changed = extract_features(model2, None, recs, split="val", cache_dir=tmp_path, encode=enc2, batch_size=3)
    assert enc2.calls == 4
    assert np.abs(np.asarray(changed.arrays["joint"]) - np.asarray(first.arrays["joint"])).max() > 0

    # an interrupted extraction resumes after its last checkpoint (here: every batch)
    fresh = tmp_path / "resume"
    broken = CountingEncoder(fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        extract_features(model, None, recs, split="val", cache_dir=fresh, encode=broken, batch_size=3, checkpoint_rows=3)
    rest = CountingEncoder()
    resumed = extract_features(model, None, recs, split="val", cache_dir=fresh, encode=rest, batch_size=3, checkpoint_rows=3)
    assert rest.calls == 2  # rows 6-8 and 9; rows 0-5 came from the interrupted run
    assert len(resumed) == 10
    for kind in FEATURE_KINDS:
        np.testing.assert_allclose(np.asarray(resumed.arrays[kind]), np.asarray(first.arrays[kind]), rtol=1e-5, atol=1e-6)


def test_processor_path_with_lead_tiny_model() -> None:
    """records -> PaliGemmaProcessor -> features, with the package's own tiny model builder."""
    from vqa_ood_bench.models.paligemma import TinySpec, build_tiny_model, build_tiny_processor

    spec = TinySpec(image_size=32, patch_size=8, vision_hidden=32, vision_layers=1, vision_heads=2, vision_intermediate=64,
                    text_hidden=32, text_layers=1, text_heads=2, text_kv_heads=1, text_head_dim=16, text_intermediate=64,
                    tokenizer_vocab=300)
    recs = records(3, seed=4)
    words = {w for r in recs for w in ("answer en " + r.question).split()}
    processor = build_tiny_processor(words, spec)
    model = build_tiny_model(processor, spec).eval()
    fs = extract_features(model, processor, recs, batch_size=2)
    tok = processor.tokenizer
    for i, rec in enumerate(recs):
        # the same sample alone, question-only: BOS + prompt + newline, no image
        text_ids = tok("answer en " + rec.question + "\n", add_special_tokens=False)["input_ids"]
        ids = torch.tensor([[tok.bos_token_id] + text_ids])
        with torch.no_grad():
            h = model.model(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids)).last_hidden_state[0]
        np.testing.assert_allclose(fs.arrays["question"][i], h[1:].mean(0).numpy(), rtol=1e-4, atol=1e-5)
    assert all(np.isfinite(a).all() for a in fs.arrays.values())


def test_bad_inputs() -> None:
    model = tiny_model()
    batch = encode(records(2))
    no_image = dict(batch, input_ids=torch.where(batch["input_ids"] == IMAGE_TOKEN, 7, batch["input_ids"]))
    with pytest.raises(DataError, match="image tokens"):
        pooled_features(model, no_image)
    with pytest.raises(DataError, match="pixel_values"):
        pooled_features(model, {k: v for k, v in batch.items() if k != "pixel_values"})
    with pytest.raises(DataError, match="no records"):
        extract_features(model, None, [], encode=encode)


def test_peft_wrapped_model() -> None:
    """A LoRA-wrapped model (as fine-tuning runs produce) is read through its adapters."""
    from peft import LoraConfig, get_peft_model

    base = tiny_model()
    recs = records(3, seed=5)
    plain = pooled_features(base, encode(recs), special_ids={BOS, EOS, PAD})
    fp_plain = model_fingerprint(base)
    wrapped = get_peft_model(tiny_model(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"], lora_alpha=4))
    same = pooled_features(wrapped, encode(recs), special_ids={BOS, EOS, PAD})
    for kind in FEATURE_KINDS:  # LoRA starts as the identity (B = 0)
        np.testing.assert_allclose(same[kind].numpy(), plain[kind].numpy(), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    tuned = pooled_features(wrapped, encode(recs), special_ids={BOS, EOS, PAD})
    assert np.abs(tuned["joint"].numpy() - plain["joint"].numpy()).max() > 1e-3
    assert model_fingerprint(wrapped) != fp_plain
