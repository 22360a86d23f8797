"""LLaVA-1.5 (``LlavaForConditionalGeneration``, ``model_type`` "llava"): CLIP vision tower, a
two-layer projector, a Llama (Vicuna) decoder.

The processor expands ``<image>`` to one placeholder per vision patch. The family puts
``<image>\\n`` before the prompt unless the prompt places ``<image>`` itself, as LLaVA-1.5's
conversation template does (:data:`CHAT_PROMPT`, the family's ``suggested_prompt``); the
tokenizer adds ``<s>``. The answer follows and ends with ``</s>``. Attention is causal throughout
(no prefix marks), and ``generate`` takes the position ids from the attention mask, so left
padding keeps answers independent of the batch.

:func:`build_tiny` makes a tiny random LLaVA with a word-level tokenizer, offline, for tests.
"""

from __future__ import annotations

from typing import Iterable

from .base import ModelFamily
from .tiny import TinySizes, llama_text_config, llama_word_tokenizer, set_generation_tokens

# LLaVA-1.5's conversation format with its short-answer instruction for VQA
CHAT_PROMPT = "USER: <image>\n{question}\nAnswer the question using a single word or phrase. ASSISTANT:"


class LlavaFamily(ModelFamily):
    name = "llava"
    model_types = ("llava",)
    processor_class_names = ("LlavaProcessor",)
    backbone_class_names = ("LlavaModel",)
    lora_target_modules = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)"
    parts = {"vision": ("vision_tower",), "connector": ("multi_modal_projector",), "language": ("language_model", "lm_head")}
    short_names = {"language_model.": "lm.", "vision_tower.": "vis."}
    suggested_prompt = CHAT_PROMPT
    image_separator = "\n"

    def model_class(self):
        from transformers import LlavaForConditionalGeneration

        return LlavaForConditionalGeneration

    def processor_class(self):
        from transformers import LlavaProcessor

        return LlavaProcessor


def build_tiny(words: Iterable[str], sizes: TinySizes = TinySizes(), seed: int = 0):
    """``(model, processor)``: a random tiny LLaVA whose tokenizer knows ``words`` whole."""
    import torch
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = llama_word_tokenizer(words, template_words=["USER", "ASSISTANT", "Answer", "the", "question", "using", "a",
                                                            "single", "word", "or", "phrase"],
                                     special=["<image>"], vocab_size=sizes.vocab)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": sizes.image_size},
        crop_size={"height": sizes.image_size, "width": sizes.image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    # LLaVA-1.5 drops the CLS token ("default" feature selection), so one token per patch
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=sizes.patch_size,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    vision = CLIPVisionConfig(hidden_size=sizes.hidden, intermediate_size=sizes.intermediate, num_hidden_layers=sizes.layers,
                              num_attention_heads=sizes.heads, image_size=sizes.image_size, patch_size=sizes.patch_size,
                              projection_dim=sizes.hidden)
    config = LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=llama_text_config(tokenizer, sizes).to_dict(),
        image_token_index=processor.image_token_id,
        image_seq_length=(sizes.image_size // sizes.patch_size) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    set_generation_tokens(model, tokenizer, [tokenizer.eos_token_id])
    return model, processor
