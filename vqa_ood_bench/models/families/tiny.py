"""Pieces of the tiny test models the families build offline: a word-level tokenizer and the sizes.

Nothing here downloads: the tokenizer is trained here with the ``tokenizers`` library on a word
list (as :func:`vqa_ood_bench.models.paligemma.build_tiny_processor` does for PaliGemma), image
processors are built from constructor arguments, and models are random-initialised from configs.
The tiny models exist for tests: they check that the family's plumbing is right (labels,
generation, token positions, LoRA placement), not what a model of that family answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence


@dataclass(frozen=True)
class TinySizes:
    """Sizes shared by the tiny models of the chat families (small enough for a CPU test)."""

    image_size: int = 64  # the embedded suite's images: no resizing, so both image backends agree
    patch_size: int = 16
    hidden: int = 32
    intermediate: int = 64
    layers: int = 2
    heads: int = 2
    kv_heads: int = 1
    vocab: int = 600
    # A random decoder's logits are nearly flat; a wider initialisation spreads them, so that a
    # greedy answer is a clear argmax and float noise between batch sizes cannot flip it.
    initializer_range: float = 0.5


def word_corpus(words: Iterable[str], template_words: Sequence[str] = ()) -> list[str]:
    """Training texts for a tokenizer that keeps every word whole.

    Each word alone, with and without a leading space, so BPE learns whole words and never
    merges across words (a sentence corpus would merge whole questions into one token).
    """
    vocab = sorted({w for w in [*words, *template_words] if w})
    corpus: list[str] = []
    for w in vocab:
        corpus += [w, " " + w]
    corpus += ["\n", "?\n", ".\n", "?", ".", ":", " ", "\n"] + list("abcdefghijklmnopqrstuvwxyz0123456789")
    return corpus


def llama_word_tokenizer(words: Iterable[str], *, template_words: Sequence[str] = (), special: Sequence[str] = (),
                         vocab_size: int = TinySizes.vocab):
    """A Llama tokenizer (BOS added, left padding) that knows ``words`` as whole tokens, with
    ``<pad>`` and the ``special`` tokens (image placeholders, turn markers) added as special."""
    from transformers import LlamaTokenizer

    tokenizer = LlamaTokenizer().train_new_from_iterator(word_corpus(words, template_words), vocab_size=vocab_size)
    tokenizer.add_bos_token = True  # as LLaVA's and Idefics3's own tokenizers (training a new one drops it)
    tokenizer.add_special_tokens({"pad_token": "<pad>", "additional_special_tokens": list(special)})
    tokenizer.padding_side = "left"
    return tokenizer


def llama_text_config(tokenizer, sizes: TinySizes = TinySizes()):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=sizes.hidden,
        intermediate_size=sizes.intermediate,
        num_hidden_layers=sizes.layers,
        num_attention_heads=sizes.heads,
        num_key_value_heads=sizes.kv_heads,
        max_position_embeddings=256,
        initializer_range=sizes.initializer_range,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def set_generation_tokens(model, tokenizer, eos_ids: Sequence[int]) -> None:
    """Generation stops at any of ``eos_ids`` and pads with the tokenizer's pad token."""
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = list(eos_ids) if len(eos_ids) > 1 else eos_ids[0]
