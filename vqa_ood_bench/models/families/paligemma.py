"""PaliGemma (1 and 2, both ``model_type`` "paligemma"): SigLIP vision tower, Gemma decoder.

The layout is ``<image>`` x N, ``<bos>``, the prompt, ``\\n``; the answer follows. The processor
builds it from ``<image>`` + prompt, and with ``suffix`` it appends the answer and ``<eos>`` and
marks them with ``token_type_ids = 1``: those are the labels, and the ``token_type_ids`` also
give PaliGemma its prefix-LM attention (the prefix attends bidirectionally). ``generate`` takes
the position ids from the attention mask (PaliGemma adds its own offset of one).

The tiny model the benchmark ships and its builders live in :mod:`vqa_ood_bench.models.paligemma`.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..paligemma import LORA_TARGET_REGEX
from .base import ModelFamily


class PaliGemmaFamily(ModelFamily):
    name = "paligemma"
    model_types = ("paligemma",)
    processor_class_names = ("PaliGemmaProcessor",)
    backbone_class_names = ("PaliGemmaModel",)
    lora_target_modules = LORA_TARGET_REGEX
    parts = {"vision": ("vision_tower",), "connector": ("multi_modal_projector",), "language": ("language_model", "lm_head")}
    short_names = {"language_model.": "lm.", "vision_tower.": "vis."}
    suggested_prompt = "answer en {question}"
    INPUTS: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")
    FEATURE_INPUTS: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask", "pixel_values", "token_type_ids")

    def model_class(self):
        from transformers import PaliGemmaForConditionalGeneration

        return PaliGemmaForConditionalGeneration

    def processor_class(self):
        from transformers import PaliGemmaProcessor

        return PaliGemmaProcessor

    def prompt_text(self, processor, prompt: str) -> str:
        return self.image_token(processor) + prompt  # the processor adds <bos> and the newline

    def training_batch(self, processor, images, prompts, answers):
        batch = processor(text=[self.prompt_text(processor, p) for p in prompts], images=list(images), suffix=list(answers),
                          return_tensors="pt", padding="longest")
        return dict(batch)

    def generation_inputs(self, processor, images, prompts):
        # The processor's labels are left out: generation does not use them.
        inputs = self._encode_prompts(processor, images, prompts)
        return {k: inputs[k] for k in self.INPUTS if k in inputs}

    def feature_inputs(self, processor, images, prompts):
        # The tokenizer's own padding side, as the shift features were always extracted (their
        # cached values must keep their meaning); the relative rotary positions make either side give
        # the same features.
        enc = processor(text=[self.prompt_text(processor, p) for p in prompts], images=list(images), return_tensors="pt",
                        padding="longest")
        return {k: enc[k] for k in self.FEATURE_INPUTS if k in enc}

    def text_only_inputs(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        # token_type_ids = 0: the whole sequence is prefix, attended bidirectionally, as in generation
        return {"token_type_ids": torch.zeros_like(input_ids)}
