"""Per model family: how a batch of (image, prompt) pairs becomes ``generate`` inputs, and back.

Greedy answers must not depend on which questions share a batch. For a decoder that means:
prompts padded on the left (so every row's last prompt token sits at the end, where generation
continues), an attention mask that hides the padding, and position ids that start at each
row's first real token. A family states how its processor and model do each of these; the
batch-size invariance test (``tests/test_batch_invariance.py``) guards the result.

Only PaliGemma is implemented. Another family (a different processor call, other special
tokens) subclasses :class:`GenerationFamily` and adds itself to ``FAMILIES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class Generation:
    """One answer and what it was made from.

    ``prediction``: the answer as scored (special tokens dropped, whitespace stripped).
    ``generation``: the generated tokens decoded as they are (special tokens kept), up to and
    including the first end-of-sequence token: the padding a batch adds after it is not part
    of the answer. ``token_ids``: those tokens. ``prompt_sent``: the text tokens the model got
    for this row, decoded with their special tokens (image placeholders and padding left out).
    ``image_tokens``: how many image placeholder tokens preceded them.
    """

    prediction: str
    generation: str
    token_ids: list[int]
    prompt_sent: str
    image_tokens: int


class GenerationFamily:
    """Encoding and decoding of one model family; subclasses set ``name`` and ``model_types``."""

    name: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()

    def encode(self, processor, images: Sequence, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def decode(self, model, processor, inputs: dict[str, torch.Tensor], output: torch.Tensor) -> list[Generation]:
        raise NotImplementedError


def _eos_ids(model, tokenizer) -> set[int]:
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return set(eos) if isinstance(eos, (list, tuple)) else ({int(eos)} if eos is not None else set())


class PaliGemmaFamily(GenerationFamily):
    """PaliGemma: ``<image>`` × N, ``<bos>``, the prompt, ``\\n``; the answer follows.

    The processor is asked for left padding whatever its tokenizer's default (a saved processor
    may carry right padding, which moves every shorter row's answer position). ``generate``
    derives position ids from the attention mask (cumulative sum, so each row counts from its
    first real token; PaliGemma adds its own offset of one), and ``token_type_ids`` mark the
    prefix that attends bidirectionally. The processor's ``labels`` are left out: generation
    does not use them.
    """

    name = "paligemma"
    model_types = ("paligemma",)
    INPUTS: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")

    def encode(self, processor, images, prompts):
        image_token = getattr(processor, "image_token", "<image>")
        inputs = processor(text=[image_token + p for p in prompts], images=list(images), return_tensors="pt",
                           padding="longest", padding_side="left")
        return {k: inputs[k] for k in self.INPUTS if k in inputs}

    def decode(self, model, processor, inputs, output):
        tokenizer = processor.tokenizer
        image_token_id = getattr(processor, "image_token_id", None)
        if image_token_id is None:
            image_token_id = tokenizer.convert_tokens_to_ids(getattr(processor, "image_token", "<image>"))
        eos = _eos_ids(model, tokenizer)
        prompt_len = inputs["input_ids"].shape[1]
        out: list[Generation] = []
        for row in range(output.shape[0]):
            ids = output[row, prompt_len:].tolist()
            cut = next((k + 1 for k, t in enumerate(ids) if t in eos), len(ids))
            ids = ids[:cut]
            sent = inputs["input_ids"][row][inputs["attention_mask"][row].bool()]
            is_image = sent == image_token_id
            out.append(Generation(
                prediction=tokenizer.decode(ids, skip_special_tokens=True).strip(),
                generation=tokenizer.decode(ids, skip_special_tokens=False),
                token_ids=ids,
                prompt_sent=tokenizer.decode(sent[~is_image].tolist(), skip_special_tokens=False),
                image_tokens=int(is_image.sum()),
            ))
        return out


FAMILIES: dict[str, GenerationFamily] = {t: fam for fam in (PaliGemmaFamily(),) for t in fam.model_types}


def family_of(model: Any) -> GenerationFamily:
    """The family of ``model`` (a transformers model, possibly inside a PEFT wrapper), by its
    config's ``model_type``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in FAMILIES:
        raise ConfigError(f"no generation support for model type {model_type!r}; supported: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[model_type]
