"""Shared pieces of the methods: which tensors decay, the anchored parameter groups, the head.

Every method that brings its own optimizer builds it with the run's learning rate and weight
decay and the same decay rule as the Trainer's default AdamW (no decay on biases and norms),
so that methods differ from vanilla fine-tuning only where their papers say they do.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .base import MethodContext

# The Trainer's own rule (``Trainer.get_decay_parameter_names``): biases and norms do not decay.
NO_DECAY_PATTERNS = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")
# peft's LoRA factors: their anchor is the origin (the adapter *is* the distance to the pre-trained model).
ADAPTER_PATTERN = re.compile(r"\.lora_(A|B|embedding_A|embedding_B)\.")


def decay_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters weight decay applies to, by the Trainer's rule."""
    from transformers.trainer_pt_utils import get_parameter_names

    return set(get_parameter_names(model, [nn.LayerNorm], list(NO_DECAY_PATTERNS)))


def trainable(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ConfigError("the prepared model has no trainable parameters")
    return named


def anchor_of(name: str, adapter: str) -> str:
    """``origin`` for adapter factors (LoRA A/B), ``pretrained`` for everything else."""
    return "origin" if adapter == "lora" and ADAPTER_PATTERN.search(name) else "pretrained"


def anchored_param_groups(model: nn.Module, ctx: MethodContext, **options: Any) -> list[dict[str, Any]]:
    """Named groups for the optimizers of :mod:`vqa_ood_bench.optim`, one per (anchor, decay).

    Each group carries ``names`` (for per-tensor logs such as DiGraP's omega), its ``anchor``
    and the run's weight decay (0 for biases and norms); ``options`` go into every group.
    """
    decay = decay_parameter_names(model)
    wd = ctx.config.train.weight_decay
    buckets: dict[tuple[str, bool], list[tuple[str, torch.Tensor]]] = {}
    for name, p in trainable(model):
        buckets.setdefault((anchor_of(name, ctx.config.adapter), name in decay), []).append((name, p))
    groups = []
    for (anchor, decays), items in buckets.items():
        groups.append({
            "params": [p for _, p in items], "names": [n for n, _ in items], "anchor": anchor,
            "weight_decay": wd if decays else 0.0, **options,
        })
    return groups


def plain_param_groups(params: list[tuple[str, torch.Tensor]], model: nn.Module, weight_decay: float, **options: Any) -> list[dict[str, Any]]:
    """torch.optim groups of ``params`` split by the decay rule (empty groups dropped)."""
    decay = decay_parameter_names(model)
    with_decay = [p for n, p in params if n in decay]
    without = [p for n, p in params if n not in decay]
    groups = []
    if with_decay:
        groups.append({"params": with_decay, "weight_decay": weight_decay, **options})
    if without:
        groups.append({"params": without, "weight_decay": 0.0, **options})
    return groups


def is_main_process() -> bool:
    """Rank 0 (or no process group): the process that writes logs."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


# --- the output head of a generative VLM -------------------------------------------------------

HEAD_CHOICES = ("untied", "tied")


def _base_model(model: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def output_head(model: nn.Module) -> nn.Module:
    """The module linear probing trains, as the model's family names it (the LM head)."""
    from ..models.families import family_of

    return family_of(model).probe_head(model)


def untie_head(model: nn.Module) -> nn.Module:
    """Give the output head its own copy of the (tied) input embeddings.

    Some decoders (Gemma among them) tie ``lm_head`` to the input token embeddings; training the
    tied matrix would also move every input embedding, i.e. the features a linear probe must keep
    fixed. After untying, the head is a separate tensor and the embeddings stay as they are.
    The config is updated so that nothing re-ties them. An untied head is left as it is.
    """
    base = _base_model(model)
    head = base.get_output_embeddings()
    emb = base.get_input_embeddings()
    if head is None or emb is None or head.weight is not emb.weight:
        return model
    head.weight = nn.Parameter(emb.weight.detach().clone(), requires_grad=emb.weight.requires_grad)
    for cfg in (base.config, getattr(base.config, "text_config", None)):
        if cfg is not None and hasattr(cfg, "tie_word_embeddings"):
            cfg.tie_word_embeddings = False
    return model


def head_parameters(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of the output head's weights, as ``model.named_parameters()`` names them."""
    ids = {id(p) for p in output_head(model).parameters()}
    named = [(n, p) for n, p in model.named_parameters() if id(p) in ids]
    if not named:
        raise ConfigError("cannot find the output head's weights among the model's parameters")
    return named
