"""PaliGemma: the real model from a hub id or folder, or a tiny one built offline.

The tiny model is a genuine ``PaliGemmaForConditionalGeneration`` (SigLIP vision tower without
its pooling head, Gemma decoder) at a size that trains on a laptop CPU. Its processor is a
``PaliGemmaProcessor`` around a Gemma tokenizer trained here on the embedded suite's words (one
token per word, so every answer is a single token) and a SigLIP image processor at 64 px.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import torch

TINY = "tiny"
# Prompt templates; PaliGemma's own task prefix is "answer en".
DEFAULT_PROMPT = "answer en {question}"
LORA_TARGET_REGEX = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)"


@dataclass(frozen=True)
class TinySpec:
    """Architecture of the tiny model; part of the pre-training cache key."""

    image_size: int = 64
    patch_size: int = 8
    vision_hidden: int = 128
    vision_layers: int = 3
    vision_heads: int = 4
    vision_intermediate: int = 384
    text_hidden: int = 128
    text_layers: int = 3
    text_heads: int = 4
    text_kv_heads: int = 1
    text_head_dim: int = 32
    text_intermediate: int = 384
    tokenizer_vocab: int = 800

    @property
    def image_seq_length(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def build_tiny_processor(words: Iterable[str], spec: TinySpec = TinySpec()):
    """A PaliGemmaProcessor whose tokenizer knows ``words`` as whole tokens."""
    from transformers import GemmaTokenizer, PaliGemmaProcessor, SiglipImageProcessor

    vocab = sorted({w for w in words if w})
    # Each word alone, with and without the leading-space marker, so BPE learns whole words and
    # never merges across words (a sentence corpus would merge whole questions into one token).
    corpus = []
    for w in vocab:
        corpus += [w, " " + w]
    corpus += ["\n", "?\n", ".\n", "?", ".", " ", "\n"] + list("abcdefghijklmnopqrstuvwxyz0123456789")
    tokenizer = GemmaTokenizer().train_new_from_iterator(corpus, vocab_size=spec.tokenizer_vocab)
    image_processor = SiglipImageProcessor(
        size={"height": spec.image_size, "width": spec.image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        resample=3,
    )
    image_processor.image_seq_length = spec.image_seq_length
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return processor


def build_tiny_model(processor, spec: TinySpec = TinySpec(), seed: int = 0):
    """A randomly initialised tiny PaliGemma matching ``processor``'s vocabulary."""
    from transformers import GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration, SiglipVisionConfig

    tok = processor.tokenizer
    vision = SiglipVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_intermediate,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        vision_use_head=False,
    )
    text = GemmaConfig(
        vocab_size=len(tok),
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_intermediate,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_kv_heads,
        head_dim=spec.text_head_dim,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    config = PaliGemmaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_id=processor.image_token_id,
        projection_dim=spec.text_hidden,
        vocab_size=len(tok),
    )
    config.text_config.vocab_size = len(tok)
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    return model


def load_pretrained(name_or_path: str, *, dtype: torch.dtype = torch.float32, device: str | None = None, revision: str | None = None):
    """Load a real PaliGemma and its processor (hub id or local folder)."""
    from transformers import PaliGemmaForConditionalGeneration, PaliGemmaProcessor

    from ..errors import ConfigError

    try:
        processor = PaliGemmaProcessor.from_pretrained(name_or_path, revision=revision)
        model = PaliGemmaForConditionalGeneration.from_pretrained(name_or_path, dtype=dtype, revision=revision)
    except OSError as exc:
        raise ConfigError(f"cannot load model {name_or_path!r}: {str(exc).splitlines()[0]}") from None
    if device:
        model.to(device)
    return model, processor


def save(model, processor, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def apply_lora(model, *, r: int = 8, alpha: int = 16, dropout: float = 0.05, target_modules: str = LORA_TARGET_REGEX):
    """Wrap ``model`` with peft LoRA adapters on the language model's attention projections."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, bias="none")
    return get_peft_model(model, config)


def count_parameters(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
