"""WiSE-FT (Wortsman et al. 2022): fine-tune as vanilla, then move back toward the pre-trained model.

Full fine-tuning: θ = (1 − α)·θ0 + α·θ_ft for every trained tensor. LoRA: the fine-tuned model
is W0 + s·B·A, so the interpolation is W0 + α·s·B·A: the adapter's *delta* is scaled by α by
scaling B alone. (Averaging A and B with their initial values separately would give about
α²·s·B·A plus a cross term, not the interpolation.) α = 0.5 is Wortsman et al.'s default mixing
coefficient (the DiGraP paper gives none).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from ._common import ADAPTER_PATTERN
from .base import Method, register_method


@register_method
class WiSEFT(Method):
    name = "wise-ft"
    defaults = {"alpha": 0.5}
    description = "vanilla fine-tuning, then weight-space interpolation toward the pre-trained model (LoRA: the adapter delta scaled by alpha)"

    def __init__(self, **params: Any):
        super().__init__(**params)
        if not 0.0 <= float(self.params["alpha"]) <= 1.0:
            raise ConfigError(f"method {self.name!r}: alpha must lie in [0, 1], got {self.params['alpha']!r}")

    def finalize(self, model, ctx):
        alpha = float(self.params["alpha"])
        with torch.no_grad():
            for name, p in model.named_parameters():
                if not p.requires_grad:
                    continue
                adapter = ctx.config.adapter == "lora" and ADAPTER_PATTERN.search(name)
                if adapter:
                    if ".lora_B." in name or ".lora_embedding_B." in name:
                        p.mul_(alpha)  # B·A scales with B: the whole delta scales by alpha
                    continue  # A stays as trained
                if name not in ctx.pretrained_state:
                    raise ConfigError(f"wise-ft: no pre-trained value for {name}; cannot interpolate")
                theta0 = ctx.pretrained_state[name].to(device=p.device, dtype=p.dtype)
                p.copy_(torch.lerp(theta0, p, alpha))
        return model
