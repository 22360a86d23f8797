"""Paper scale on the CPU: PaliGemma-3B and LLaVA-1.5-7B at their real widths, cut to two layers per tower.

The paper fine-tunes PaliGemma-3B (Tab. 2/3) and LLaVA-7B (Tab. 6/7) with LoRA; their weights cannot
be downloaded here, and the embedded suite's tiny model is far narrower. What the real checkpoints'
shapes decide can still be checked on a CPU: each model is built from a transformers config with the
checkpoint's hidden, head, intermediate and vocabulary sizes, image size and number of image tokens,
but with two layers in the vision tower and two in the language model, random weights, bfloat16.
On it: two training steps of LoRA (r=8 on the language model's attention projections, the paper's
setting) + DiGraP (anchor at the origin, the package's setting for adapters) on two synthetic
(image, question, answer) examples with labels on the answer tokens only, then one beam-5 generation.
LoRA placement, training batches and generation inputs come from the package's model families
(vqa_ood_bench/models/families/), as in a run, with the paper configs' prompt.

Two steps, not one: LoRA's B factor starts at zero, so the first step moves B only (A's gradient is
B^T times something) and DiGraP's projection strength starts at zero; the second step moves A and
runs the projection with a learned strength.

Each model runs in a child process, so the peak resident memory it reports (``ru_maxrss``) is that
model's alone. Slow: ``pytest -m slow tests/test_paper_scale.py -s`` prints the measurements.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
RESULT = "PAPER_SCALE_RESULT "  # the child's one line of measurements on stdout
LAYERS = 2  # per tower: layer 0 and one more, so that "every layer" and "the first layer" differ
PROMPT = "Question: {question} Answer:"  # configs/paper/vqa-*.yaml and configs/paper-llava/vqa-*.yaml
EXAMPLES = [("What color is the bus?", "red"), ("How many dogs are in the picture?", "2")]
NUM_BEAMS, MAX_NEW_TOKENS = 5, 3
LORA_R = 8  # the paper's rank


@dataclass(frozen=True)
class Real:
    """A checkpoint's sizes, written by hand from its config.json on the hub (not read from
    transformers' defaults, which the model under test is built from)."""

    checkpoint: str
    image_size: int
    patch: int
    image_tokens: int  # placeholder tokens per image in the language model's input
    vision_cls: int  # 1: the vision tower adds a CLS position that the projector does not get
    vision_hidden: int
    vision_intermediate: int
    vision_heads: int
    text_hidden: int
    text_heads: int
    text_kv_heads: int
    head_dim: int
    text_intermediate: int
    vocab: int
    mu: float  # DiGraP's strength in the paper's table for this model


PALIGEMMA = Real("google/paligemma-3b-pt-224", image_size=224, patch=14, image_tokens=256, vision_cls=0,
                 vision_hidden=1152, vision_intermediate=4304, vision_heads=16,
                 text_hidden=2048, text_heads=8, text_kv_heads=1, head_dim=256, text_intermediate=16384, vocab=257216,
                 mu=0.5)  # Tab. 3: DiGraP (0.5)
LLAVA = Real("llava-hf/llava-1.5-7b-hf", image_size=336, patch=14, image_tokens=576, vision_cls=1,
             vision_hidden=1024, vision_intermediate=4096, vision_heads=16,
             text_hidden=4096, text_heads=32, text_kv_heads=32, head_dim=128, text_intermediate=11008, vocab=32064,
             mu=0.01)  # Tab. 6: DiGraP (0.01)
MODELS = {"paligemma": PALIGEMMA, "llava": LLAVA}


def expected_shapes(family: str, r: Real) -> dict[str, tuple[int, ...]]:
    """Parameter name suffix -> shape, from the sizes above (layer 0 of each tower)."""
    lm, vt = "language_model.layers.0.", "vision_tower."
    q, kv = r.text_heads * r.head_dim, r.text_kv_heads * r.head_dim
    shapes = {
        "language_model.embed_tokens.weight": (r.vocab, r.text_hidden),
        lm + "self_attn.q_proj.weight": (q, r.text_hidden),
        lm + "self_attn.k_proj.weight": (kv, r.text_hidden),
        lm + "self_attn.v_proj.weight": (kv, r.text_hidden),
        lm + "self_attn.o_proj.weight": (r.text_hidden, q),
        lm + "mlp.gate_proj.weight": (r.text_intermediate, r.text_hidden),
        lm + "mlp.down_proj.weight": (r.text_hidden, r.text_intermediate),
        vt + "embeddings.patch_embedding.weight": (r.vision_hidden, 3, r.patch, r.patch),
        vt + "embeddings.position_embedding.weight": ((r.image_size // r.patch) ** 2 + r.vision_cls, r.vision_hidden),
        vt + "encoder.layers.0.self_attn.q_proj.weight": (r.vision_hidden, r.vision_hidden),
        vt + "encoder.layers.0.mlp.fc1.weight": (r.vision_intermediate, r.vision_hidden),
    }
    if family == "paligemma":  # one linear projector; the output head is tied to the input embeddings
        shapes["multi_modal_projector.linear.weight"] = (r.text_hidden, r.vision_hidden)
    else:  # LLaVA-1.5's mlp2x_gelu projector and its own output head
        shapes["multi_modal_projector.linear_1.weight"] = (r.text_hidden, r.vision_hidden)
        shapes["multi_modal_projector.linear_2.weight"] = (r.text_hidden, r.text_hidden)
        shapes["lm_head.weight"] = (r.vocab, r.text_hidden)
    return shapes


# ---- the child process ---------------------------------------------------------------------------


def _words() -> list[str]:
    text = " ".join([PROMPT.format(question=q) + " " + a for q, a in EXAMPLES])
    return sorted(set(text.split()) | set(re.findall(r"[A-Za-z]+", text)))


def _images(n: int, seed: int = 0):
    """Random RGB images, not square and not at the model's size: the processors resize (and crop)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (240, 300, 3), dtype=np.uint8)) for _ in range(n)]


def _build_paligemma(r: Real):
    import torch
    from transformers import GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration, SiglipVisionConfig

    from vqa_ood_bench.models.paligemma import TinySpec, build_tiny_processor

    # The package's offline processor (a Gemma tokenizer trained on a few words, SigLIP image
    # preprocessing) at the real image size; it expands <image> to (224 / 14)^2 placeholders.
    processor = build_tiny_processor(_words(), TinySpec(image_size=r.image_size, patch_size=r.patch))
    tok = processor.tokenizer
    vision = SiglipVisionConfig(hidden_size=r.vision_hidden, intermediate_size=r.vision_intermediate,
                                num_hidden_layers=LAYERS, num_attention_heads=r.vision_heads,
                                image_size=r.image_size, patch_size=r.patch, vision_use_head=False)
    text = GemmaConfig(vocab_size=r.vocab, hidden_size=r.text_hidden, intermediate_size=r.text_intermediate,
                       num_hidden_layers=LAYERS, num_attention_heads=r.text_heads, num_key_value_heads=r.text_kv_heads,
                       head_dim=r.head_dim, max_position_embeddings=8192, pad_token_id=tok.pad_token_id,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    config = PaliGemmaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_id=processor.image_token_id,
                             projection_dim=r.text_hidden, hidden_size=r.text_hidden, vocab_size=r.vocab)
    config.text_config.vocab_size = r.vocab  # the tokenizer knows ~2k tokens; the model keeps the real vocabulary
    model = PaliGemmaForConditionalGeneration._from_config(config, dtype=torch.bfloat16)  # bf16 from the start
    return model, processor


def _build_llava(r: Real):
    import torch
    from tokenizers import AddedToken
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlamaTokenizer, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    corpus = []
    for w in _words():
        corpus += [w, " " + w]
    corpus += list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789?:.,\n ")
    tok = LlamaTokenizer().train_new_from_iterator(corpus, vocab_size=300)
    tok.add_special_tokens({"additional_special_tokens": [AddedToken("<image>", normalized=False, special=True)],
                            "pad_token": "<pad>"})
    # llava-hf/llava-1.5-7b-hf's preprocessing: CLIP resize to 336 on the short side, centre crop 336,
    # 24 x 24 patches + CLS, and the "default" feature strategy drops the CLS: 576 placeholders
    image_processor = CLIPImageProcessor(size={"shortest_edge": r.image_size}, crop_size={"height": r.image_size, "width": r.image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=r.patch,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    vision = CLIPVisionConfig(hidden_size=r.vision_hidden, intermediate_size=r.vision_intermediate, num_hidden_layers=LAYERS,
                              num_attention_heads=r.vision_heads, image_size=r.image_size, patch_size=r.patch,
                              projection_dim=768, hidden_act="quick_gelu")
    text = LlamaConfig(vocab_size=r.vocab, hidden_size=r.text_hidden, intermediate_size=r.text_intermediate,
                       num_hidden_layers=LAYERS, num_attention_heads=r.text_heads, num_key_value_heads=r.text_kv_heads,
                       max_position_embeddings=4096, rms_norm_eps=1e-5, pad_token_id=tok.pad_token_id,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    # vision_feature_layer -2 (the penultimate CLIP layer, LLaVA-1.5's choice): with two layers, layer 0's output
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=processor.image_token_id,
                         image_seq_length=r.image_tokens, projector_hidden_act="gelu",
                         vision_feature_select_strategy="default", vision_feature_layer=-2)
    model = LlavaForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    return model, processor


BUILD = {"paligemma": _build_paligemma, "llava": _build_llava}


def _digests(model, skip: set[str]) -> dict[str, str]:
    """A hash of every tensor's bytes, without copying it (a copy would double the peak memory)."""
    import torch

    out = {}
    for name, p in model.named_parameters():
        if name not in skip:
            raw = p.detach().contiguous().view(-1).view(torch.uint8).numpy()
            out[name] = hashlib.blake2b(raw, digest_size=16).hexdigest()
    return out


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(family: str) -> None:
    """Build, check, train two steps, generate; print one line of measurements. Any failed
    check raises, so the process exits non-zero with the traceback on stderr."""
    t0 = time.perf_counter()
    import torch

    from vqa_ood_bench.models.families import family_of
    from vqa_ood_bench.optim import DiGraP, param_groups_from_model

    rss_imports = _rss_mib()
    r = MODELS[family]
    torch.manual_seed(0)
    model, processor = BUILD[family](r)
    # the package's model family, found from the config as in a run: LoRA placement, training
    # batches (prompt + answer + end token, labels on the answer) and generation inputs are its
    fam = family_of(model)
    assert fam.name == family
    tok = processor.tokenizer
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    t_build = time.perf_counter() - t0

    # -- the real sizes: parameter shapes, layer count, dtype, tying --------------------------
    named = dict(model.named_parameters())
    # transformers 4 kept the vision tower's weights under "vision_tower.vision_model.", 5 under "vision_tower."
    short = {n.replace("vision_tower.vision_model.", "vision_tower."): n for n in named}
    for suffix, shape in expected_shapes(family, r).items():
        hits = [n for s, n in short.items() if s == suffix or s.endswith("." + suffix)]
        assert len(hits) == 1, (suffix, hits)
        assert tuple(named[hits[0]].shape) == shape, (suffix, tuple(named[hits[0]].shape), shape)
    for tower in ("language_model.layers", "vision_tower.encoder.layers"):
        layers = {int(m.group(1)) for n in short if (m := re.search(re.escape(tower) + r"\.(\d+)\.", n))}
        assert layers == set(range(LAYERS)), (tower, layers)
    assert {p.dtype for p in named.values()} == {torch.bfloat16}
    head, emb = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    assert (head is emb) == (family == "paligemma")  # Gemma ties them, Llama does not
    weight_mib = sum(p.numel() * p.element_size() for p in named.values()) / 2**20

    # the projector's input and output per image: (image tokens, vision width) -> (image tokens, LM width)
    projected: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    projector = next(m for n, m in model.named_modules() if n.endswith("multi_modal_projector"))
    hook = projector.register_forward_hook(lambda mod, inp, out: projected.append((tuple(inp[0].shape), tuple(out.shape))))

    # -- LoRA + DiGraP: two steps on two synthetic examples -----------------------------------
    model = fam.apply_lora(model, r=LORA_R, alpha=16, dropout=0.05)  # as runs: q/k/v/o of the language model
    lora = {n for n, p in model.named_parameters() if p.requires_grad}
    pattern = re.compile(r"language_model\.layers\.\d+\.self_attn\.[qkvo]_proj\.lora_[AB]\.default\.weight$")
    assert len(lora) == 2 * 4 * LAYERS and all(pattern.search(n) for n in lora), sorted(lora)
    frozen_before = _digests(model, skip=lora)
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if n in lora}
    opt = DiGraP(param_groups_from_model(model, anchor="origin", weight_decay=1e-4), lr=1e-3, base="adamw", mu=r.mu)

    images = _images(len(EXAMPLES))
    prompts = [PROMPT.format(question=q) for q, _ in EXAMPLES]
    answers = [a for _, a in EXAMPLES]
    batch = fam.training_batch(processor, images, prompts, answers)
    ids, labels = batch["input_ids"], batch["labels"]
    assert tuple(batch["pixel_values"].shape) == (len(EXAMPLES), 3, r.image_size, r.image_size)
    image_id = processor.image_token_id
    assert (ids == image_id).sum(dim=1).tolist() == [r.image_tokens] * len(EXAMPLES)
    for row, answer in enumerate(answers):  # labels: the answer's tokens and EOS, nothing else
        want = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert labels[row][labels[row] != -100].tolist() == want, (row, labels[row][labels[row] != -100].tolist(), want)
    assert (labels[ids == image_id] == -100).all()
    assert (labels[batch["attention_mask"] == 0] == -100).all()

    model.train()
    t1 = time.perf_counter()
    losses = []
    for _ in range(2):
        out = model(**batch)
        assert tuple(out.logits.shape) == (*ids.shape, r.vocab)  # the real vocabulary reaches the logits
        losses.append(float(out.loss))
        assert torch.isfinite(out.loss), losses
        out.loss.backward()
        del out
        assert all((p.grad is None) != (n in lora) for n, p in model.named_parameters())  # gradients on LoRA only
        opt.step()
        opt.zero_grad(set_to_none=True)
    t_train = time.perf_counter() - t1
    assert projected[0] == ((len(EXAMPLES), r.image_tokens, r.vision_hidden), (len(EXAMPLES), r.image_tokens, r.text_hidden)), projected[0]
    after = dict(model.named_parameters())
    unchanged = [n for n in lora if torch.equal(after[n].detach(), lora_before[n])]
    assert not unchanged, unchanged  # every LoRA factor moved (B at the first step, A at the second)
    assert _digests(model, skip=lora) == frozen_before  # and no other weight did
    omegas = opt.omegas()
    assert set(omegas) == lora and all(0.0 <= w <= 1.0 for w in omegas.values()), omegas

    # -- one beam-5 generation -----------------------------------------------------------------
    model.eval()
    gen_inputs = fam.generation_inputs(processor, images[:1], prompts[:1])
    width = gen_inputs["input_ids"].shape[1]
    assert int((gen_inputs["input_ids"] == image_id).sum()) == r.image_tokens
    t2 = time.perf_counter()
    # min_new_tokens: a random model may pick EOS early; the shapes below are then exact
    gen = model.generate(**gen_inputs, num_beams=NUM_BEAMS, do_sample=False, max_new_tokens=MAX_NEW_TOKENS,
                         min_new_tokens=MAX_NEW_TOKENS, return_dict_in_generate=True, output_scores=True)
    t_generate = time.perf_counter() - t2
    hook.remove()
    assert tuple(gen.sequences.shape) == (1, width + MAX_NEW_TOKENS)
    assert torch.equal(gen.sequences[:, :width], gen_inputs["input_ids"])
    assert tuple(gen.sequences_scores.shape) == (1,) and torch.isfinite(gen.sequences_scores).all()
    assert len(gen.scores) == MAX_NEW_TOKENS and all(tuple(s.shape) == (NUM_BEAMS, r.vocab) for s in gen.scores)

    print(RESULT + json.dumps({
        "family": family, "checkpoint": r.checkpoint, "layers_per_tower": LAYERS, "parameters": sum(p.numel() for p in named.values()),
        "weights_mib": round(weight_mib), "rss_after_imports_mib": round(rss_imports), "peak_rss_mib": round(_rss_mib()),
        "sequence": ids.shape[1], "losses": losses, "build_s": round(t_build, 1), "train_2_steps_s": round(t_train, 1),
        "generate_s": round(t_generate, 1), "total_s": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads(),
    }), flush=True)


# ---- the tests -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("family", list(MODELS), ids=["paligemma-3b-pt-224", "llava-1.5-7b"])
def test_paper_scale_lora_digrap_step_and_beam_search(family):
    code = "import sys; sys.path.insert(0, sys.argv[1]); import test_paper_scale as t; t.child(sys.argv[2])"
    proc = subprocess.run([sys.executable, "-c", code, str(TESTS), family], capture_output=True, text=True,
                          timeout=1800, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-6000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    assert len(lines) == 1, proc.stdout[-2000:]
    result = json.loads(lines[0][len(RESULT):])
    print(f"\n{family} at paper scale ({result['layers_per_tower']} layers per tower): {result}")
    # the weights were really held in memory: the peak is above them plus what the imports took
    assert result["peak_rss_mib"] > result["weights_mib"] + result["rss_after_imports_mib"] / 2
