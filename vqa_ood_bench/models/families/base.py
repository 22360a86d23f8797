"""What the benchmark needs to know about one model family, and the parts every family shares.

A family is a vision-language architecture that transformers implements (one ``model_type`` or
a few that share a layout). Training, prediction, shift features and the methods never look at
the architecture themselves: they ask the model's family

* how to load a checkpoint (:meth:`ModelFamily.load`);
* how a prompt and an answer become a training batch, labels on the answer tokens only
  (:meth:`ModelFamily.training_batch`);
* how a batch of prompts becomes ``generate`` inputs and how the output reads back
  (:meth:`ModelFamily.generation_inputs`, :meth:`ModelFamily.decode`);
* which positions hold image tokens and which question tokens (:meth:`ModelFamily.token_masks`);
* where LoRA goes, which module linear probing trains, which weights are vision and which language.

Greedy answers must not depend on which questions share a batch. For a decoder that means
prompts padded on the left (every row's last prompt token sits at the end, where generation
continues), an attention mask that hides the padding, and position ids that start at each row's
first real token (``generate`` derives them from the attention mask). ``tests/test_families.py``
and ``tests/test_batch_invariance.py`` guard it per family.

The prompt is the user's template (``--prompt``): a family adds only what its architecture
needs, the image placeholder (in front, unless the template places it, as a chat template
does). LLaVA and Idefics3 share one recipe, written here: a training row is the encoded
prompt followed by the answer's tokens and the family's end-of-answer token, right-padded,
with labels -100 everywhere but the answer and its end token. A family whose processor does this itself
(PaliGemma's ``suffix``) overrides :meth:`ModelFamily.training_batch`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Sequence

import torch

from ...errors import ConfigError

IGNORE_INDEX = -100  # the label value transformers' loss skips
Part = Literal["vision", "connector", "language", "other"]


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


def _eos_ids(model, tokenizer) -> set[int]:
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return set(eos) if isinstance(eos, (list, tuple)) else ({int(eos)} if eos is not None else set())


def _base_model(model):
    """The transformers model under a peft wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


class ModelFamily:
    """One model family. Subclasses set the class attributes and override what differs."""

    #: the name ``--family`` takes
    name: ClassVar[str] = ""
    #: the checkpoints' ``config.model_type`` values this family reads
    model_types: ClassVar[tuple[str, ...]] = ()
    #: class names of the family's processors (a processor alone tells its family, e.g. in TPGM's batches)
    processor_class_names: ClassVar[tuple[str, ...]] = ()
    #: class names of the inner model (vision tower + projector + decoder, no LM head) the shift
    #: features run, so that no (batch x length x vocabulary) logits are computed
    backbone_class_names: ClassVar[tuple[str, ...]] = ()
    #: peft ``target_modules``: the language model's attention projections
    lora_target_modules: ClassVar[str] = ""
    #: parameter-name components of each part (matched as whole dotted components)
    parts: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: readable short forms of the part prefixes, for per-tensor plot labels
    short_names: ClassVar[dict[str, str]] = {}
    #: the processor outputs that carry the image (all moved to the model's device)
    image_input_names: ClassVar[tuple[str, ...]] = ("pixel_values",)
    #: the family's own chat layout as a prompt template, for ``--prompt`` (the benchmark's
    #: default, PaliGemma's ``answer en {question}``, is read by other families as plain text)
    suggested_prompt: ClassVar[str] = "{question}"
    #: what goes between the image placeholder the family adds and the prompt
    image_separator: ClassVar[str] = ""

    # ------------------------------------------------------------------ loading
    def model_class(self):
        raise NotImplementedError

    def processor_class(self):
        raise NotImplementedError

    def load(self, name_or_path: str, *, revision: str | None = None, dtype: torch.dtype = torch.float32,
             device_map: str | dict | None = None):
        """``(model, processor)`` of a hub id or local folder; a ConfigError names what failed."""
        try:
            processor = self.processor_class().from_pretrained(name_or_path, revision=revision)
            extra = {"device_map": device_map} if device_map is not None else {}
            model = self.model_class().from_pretrained(name_or_path, dtype=dtype, revision=revision, **extra)
        except OSError as exc:
            raise ConfigError(f"cannot load model {name_or_path!r}: {str(exc).splitlines()[0]}") from None
        return model, processor

    # ------------------------------------------------------------------ prompts
    def image_token(self, processor) -> str:
        return getattr(processor, "image_token", "<image>")

    def image_token_id(self, processor) -> int:
        token_id = getattr(processor, "image_token_id", None)
        if token_id is None:
            token_id = processor.tokenizer.convert_tokens_to_ids(self.image_token(processor))
        return int(token_id)

    def prompt_text(self, processor, prompt: str) -> str:
        """The text the processor gets for one prompt: the prompt as the user wrote it, with the
        image placeholder in front (and ``image_separator``) unless the prompt places it itself,
        as a chat template does (``USER: <image>\\n{question} ASSISTANT:``)."""
        token = self.image_token(processor)
        return prompt if token in prompt else token + self.image_separator + prompt

    def answer_end_id(self, processor) -> int:
        """The token that ends an answer in training (the model learns to stop there)."""
        return int(processor.tokenizer.eos_token_id)

    def structural_token_ids(self, processor) -> set[int]:
        """Tokens of the layout that are neither image nor question (besides BOS / EOS / PAD)."""
        return set()

    # ------------------------------------------------------------------ encoding
    def _encode_prompts(self, processor, images: Sequence, prompts: Sequence[str]):
        """Left padding whatever the tokenizer's default: a saved processor may carry right
        padding, which moves every shorter row's answer position."""
        return processor(text=[self.prompt_text(processor, p) for p in prompts], images=list(images), return_tensors="pt",
                         padding="longest", padding_side="left")

    def _inputs(self, encoded) -> dict[str, torch.Tensor]:
        keys = ("input_ids", "attention_mask", *self.image_input_names)
        return {k: encoded[k] for k in keys if k in encoded}

    def generation_inputs(self, processor, images: Sequence, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``generate`` inputs for one batch, left-padded."""
        return self._inputs(self._encode_prompts(processor, images, prompts))

    def feature_inputs(self, processor, images: Sequence, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Model inputs for the shift features (the prompt as in generation)."""
        return self.generation_inputs(processor, images, prompts)

    def training_batch(self, processor, images: Sequence, prompts: Sequence[str], answers: Sequence[str]) -> dict[str, torch.Tensor]:
        """A training batch: each row the encoded prompt, the answer's tokens and the end token,
        padded on the right; labels -100 everywhere but the answer and its end token."""
        encoded = self._encode_prompts(processor, images, prompts)
        tokenizer = processor.tokenizer
        end = self.answer_end_id(processor)
        rows = []
        for i, answer in enumerate(answers):
            prompt_ids = encoded["input_ids"][i][encoded["attention_mask"][i].bool()].tolist()
            answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [end]
            rows.append((prompt_ids, answer_ids))
        width = max(len(p) + len(a) for p, a in rows)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for i, (prompt_ids, answer_ids) in enumerate(rows):
            n, m = len(prompt_ids), len(answer_ids)
            input_ids[i, : n + m] = torch.tensor(prompt_ids + answer_ids)
            attention_mask[i, : n + m] = 1
            labels[i, n : n + m] = torch.tensor(answer_ids)
        images_in = {k: encoded[k] for k in self.image_input_names if k in encoded}
        return {"input_ids": input_ids, "attention_mask": attention_mask, **images_in, "labels": labels}

    def text_only_inputs(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extra inputs a decoder pass over ``input_ids`` needs besides the attention mask
        (PaliGemma: its prefix marks). Used by the shift features' single-modality passes."""
        return {}

    # ------------------------------------------------------------------ decoding
    def decode(self, model, processor, inputs: dict[str, torch.Tensor], output: torch.Tensor) -> list[Generation]:
        tokenizer = processor.tokenizer
        image_token_id = self.image_token_id(processor)
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

    # ------------------------------------------------------------------ token roles
    def token_masks(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_token_id: int,
                    special_ids: set[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(is_image, is_text, is_question)`` boolean masks over ``input_ids``.

        Image: the attended image placeholders. Text: every other attended position. Question:
        the text positions that are not ``special_ids`` (BOS / EOS / PAD and the family's
        structural tokens): the prompt template's words count, as PaliGemma's task prefix does.
        """
        valid = attention_mask.bool()
        is_image = valid & (input_ids == image_token_id)
        is_text = valid & (input_ids != image_token_id)
        special = torch.tensor(sorted(set(special_ids) - {image_token_id}), dtype=input_ids.dtype, device=input_ids.device)
        is_question = is_text & ~torch.isin(input_ids, special) if special.numel() else is_text
        return is_image, is_text, is_question

    # ------------------------------------------------------------------ parameters
    def apply_lora(self, model, *, r: int = 8, alpha: int = 16, dropout: float = 0.05):
        """``model`` wrapped with peft LoRA adapters on the language model's attention projections."""
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=self.lora_target_modules, bias="none")
        return get_peft_model(model, config)

    def probe_head(self, model) -> torch.nn.Module:
        """The module linear probing trains: the language model's output projection."""
        head = _base_model(model).get_output_embeddings()
        if head is None:
            raise ConfigError(f"{type(model).__name__} has no output head (lm_head)")
        return head

    def part_of(self, parameter_name: str) -> Part:
        """Which part of the model a parameter belongs to: vision tower, connector, language model."""
        components = set(parameter_name.split("."))
        for part, names in self.parts.items():
            if components & set(names):
                return part  # type: ignore[return-value]
        return "other"

    def backbone(self, model):
        """The inner model without the LM head (also through peft wrappers), or None."""
        for m in model.modules():
            if type(m).__name__ in self.backbone_class_names:
                return m
        return None

    def __repr__(self) -> str:
        return f"<model family {self.name}>"
