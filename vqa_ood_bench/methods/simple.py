"""Zero-shot and vanilla fine-tuning."""

from __future__ import annotations

from .base import Method, register_method


@register_method
class ZeroShot(Method):
    name = "zeroshot"
    trains = False
    description = "the pre-trained model, evaluated as is"

    def prepare(self, model, ctx):
        for p in model.parameters():
            p.requires_grad_(False)
        return model


@register_method
class Vanilla(Method):
    name = "vanilla"
    description = "plain fine-tuning with AdamW (LoRA or all weights); under LoRA this equals L2-SP (weight decay pulls the adapter to 0)"
