"""Idefics3 (``Idefics3ForConditionalGeneration``, ``model_type`` "idefics3"): a SigLIP-style
vision tower, a pixel-shuffle connector, a Llama decoder. SmolVLM is built on the same design.

Why this family as the third: of the current families the brief allowed (SmolVLM / Idefics3,
Qwen2-VL), it is the one whose tiny model builds offline from the installed libraries alone.
SmolVLM's processor refuses to start without the ``num2words`` package (it spells out video
frame counts), which is not a dependency here; Idefics3's processor has the same image layout
and no such import. Qwen2-VL needs three-axis rotary positions (``mm_token_type_ids``, image
grids) and a resolution-dependent token count: more moving parts to get right and keep
batch-invariant. Idefics3 keeps one-axis positions, a fixed image token count per image and a
plain Llama decoder, so the shared chat-family recipe in :mod:`.base` applies unchanged.

The processor expands ``<image>`` (without image splitting) to ``<fake_token_around_image>
<global-img>``, one ``<image>`` per connector output, ``<fake_token_around_image>``. The family
puts ``<image>`` before the prompt unless the prompt places it itself, as Idefics3's chat format
does (:data:`CHAT_PROMPT`, the family's ``suggested_prompt``); the tokenizer adds ``<s>``. The
answer follows and ends with ``<end_of_utterance>``, where the chat models stop generating.
The fake and global tokens frame the image: for the shift features they are neither image nor
question.

:func:`build_tiny` makes a tiny random Idefics3 with a word-level tokenizer, offline, for tests.
"""

from __future__ import annotations

from typing import Iterable

from .base import ModelFamily
from .tiny import TinySizes, llama_text_config, llama_word_tokenizer, set_generation_tokens

END_OF_UTTERANCE = "<end_of_utterance>"
# Idefics3's (and SmolVLM's) chat format, one user turn
CHAT_PROMPT = "User:<image>{question}" + END_OF_UTTERANCE + "\nAssistant:"
FRAME_TOKENS = ("<fake_token_around_image>", "<global-img>")


class Idefics3Family(ModelFamily):
    name = "idefics3"
    model_types = ("idefics3",)
    processor_class_names = ("Idefics3Processor",)
    backbone_class_names = ("Idefics3Model",)
    lora_target_modules = r".*text_model.*\.(q_proj|k_proj|v_proj|o_proj)"
    parts = {"vision": ("vision_model",), "connector": ("connector",), "language": ("text_model", "lm_head")}
    short_names = {"text_model.": "lm.", "vision_model.": "vis."}
    image_input_names = ("pixel_values", "pixel_attention_mask")
    suggested_prompt = CHAT_PROMPT

    def model_class(self):
        from transformers import Idefics3ForConditionalGeneration

        return Idefics3ForConditionalGeneration

    def processor_class(self):
        from transformers import Idefics3Processor

        return Idefics3Processor

    def answer_end_id(self, processor) -> int:
        return int(processor.tokenizer.convert_tokens_to_ids(END_OF_UTTERANCE))

    def structural_token_ids(self, processor) -> set[int]:
        tokenizer = processor.tokenizer
        ids = {tokenizer.convert_tokens_to_ids(t) for t in (*FRAME_TOKENS, END_OF_UTTERANCE)}
        return {int(i) for i in ids if i is not None and i != tokenizer.unk_token_id}


def build_tiny(words: Iterable[str], sizes: TinySizes = TinySizes(), seed: int = 0):
    """``(model, processor)``: a random tiny Idefics3 whose tokenizer knows ``words`` whole."""
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor, Idefics3VisionConfig
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    scale_factor = 2
    tokenizer = llama_word_tokenizer(words, template_words=["User", "Assistant"],
                                     special=["<image>", *FRAME_TOKENS, END_OF_UTTERANCE], vocab_size=sizes.vocab)
    # One image, no splitting into tiles: resized to the vision tower's input size.
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False,
        size={"longest_edge": sizes.image_size},
        max_image_size={"longest_edge": sizes.image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    image_seq_len = (sizes.image_size // sizes.patch_size) ** 2 // scale_factor**2  # the connector's output tokens
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=image_seq_len)
    vision = Idefics3VisionConfig(hidden_size=sizes.hidden, intermediate_size=sizes.intermediate, num_hidden_layers=sizes.layers,
                                  num_attention_heads=sizes.heads, image_size=sizes.image_size, patch_size=sizes.patch_size)
    config = Idefics3Config(
        vision_config=vision.to_dict(),
        text_config=llama_text_config(tokenizer, sizes).to_dict(),
        image_token_id=processor.image_token_id,
        scale_factor=scale_factor,
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    set_generation_tokens(model, tokenizer, [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(END_OF_UTTERANCE)])
    return model, processor
