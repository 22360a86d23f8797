"""Linear probing (LP) and LP-FT (Kumar et al. 2022) for a generative VLM.

"Head" is the module the model's family names for probing: the language model's output
projection (``lm_head``). Some decoders (Gemma) tie it to the input token embeddings; the
``head`` parameter chooses:

* ``untied`` (default): the head gets its own copy of the embedding matrix and only that copy
  trains, so every feature below it (input embeddings included) stays exactly pre-trained: a
  linear probe in the proper sense.
* ``tied``: train the shared matrix, which also moves the input embeddings.

LP-FT runs in one training loop (one step budget, one learning-rate schedule): the first
``lp_fraction`` of the steps (default half: Kumar et al. give no split for a fixed budget) train
the head only; the remaining steps fine-tune the adapters (LoRA) or all weights (full) together
with the probed head. The fine-tuning phase therefore runs on the second half of the run's
cosine schedule, i.e. at a smaller learning rate than the peak, as LP-FT prescribes;
``ft_lr_scale`` scales it further (the DiGraP paper uses the same hyper-parameters for all
methods, so the default is 1).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from ._common import HEAD_CHOICES, head_parameters, plain_param_groups, trainable, untie_head
from .base import Method, register_method


def _check_head(params: dict[str, Any], name: str) -> None:
    if params["head"] not in HEAD_CHOICES:
        raise ConfigError(f"method {name!r}: head must be one of {', '.join(HEAD_CHOICES)}, got {params['head']!r}")


@register_method
class LinearProbe(Method):
    name = "linear-probe"
    defaults = {"head": "untied"}
    description = "train only the output head (lm_head; untied from the input embeddings by default); the adapter setting is ignored"

    def __init__(self, **params: Any):
        super().__init__(**params)
        _check_head(self.params, self.name)

    def prepare(self, model, ctx):
        if self.params["head"] == "untied":
            untie_head(model)
        for p in model.parameters():
            p.requires_grad_(False)
        for _, p in head_parameters(model):
            p.requires_grad_(True)
        return model


class PhasedAdamW(torch.optim.AdamW):
    """AdamW whose groups marked ``after_probe`` start stepping only after ``probe_steps`` steps.

    During the probing phase those tensors get no update, no weight decay and no Adam state:
    their gradients are dropped before the step (and zeroed as they are computed, see
    :meth:`silence_during_probe`, so gradient clipping sees the head's gradient alone).
    """

    def __init__(self, params, *, probe_steps: int, **kwargs: Any):
        super().__init__(params, **kwargs)
        self.probe_steps = int(probe_steps)
        self.steps_taken = 0

    @property
    def probing(self) -> bool:
        return self.steps_taken < self.probe_steps

    def silence_during_probe(self) -> None:
        """Zero the fine-tuning tensors' gradients during probing, as backward computes them.

        They keep ``requires_grad`` (so a data-parallel wrapper built later still all-reduces
        them in the second phase); a zero gradient adds nothing to the clipping norm.
        """
        for group in self.param_groups:
            if group.get("after_probe"):
                for p in group["params"]:
                    p.register_hook(lambda g: torch.zeros_like(g) if self.probing else g)

    def step(self, closure=None):  # type: ignore[override]
        if self.probing:
            for group in self.param_groups:
                if group.get("after_probe"):
                    for p in group["params"]:
                        p.grad = None
        self.steps_taken += 1
        return super().step(closure)

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["phased_steps_taken"] = self.steps_taken
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        self.steps_taken = int(state_dict.pop("phased_steps_taken", 0))
        super().load_state_dict(state_dict)


@register_method
class LPFT(Method):
    name = "lp-ft"
    defaults = {"head": "untied", "lp_fraction": 0.5, "ft_lr_scale": 1.0}
    description = "linear probing for the first half of the steps, then fine-tuning (LoRA or full) from the probed head"

    def __init__(self, **params: Any):
        super().__init__(**params)
        _check_head(self.params, self.name)
        if not 0.0 <= float(self.params["lp_fraction"]) <= 1.0:
            raise ConfigError(f"method {self.name!r}: lp_fraction must lie in [0, 1], got {self.params['lp_fraction']!r}")
        if not float(self.params["ft_lr_scale"]) > 0:
            raise ConfigError(f"method {self.name!r}: ft_lr_scale must be > 0, got {self.params['ft_lr_scale']!r}")

    def prepare(self, model, ctx):
        if self.params["head"] == "untied":
            untie_head(model)
        model = super().prepare(model, ctx)  # LoRA adapters, or every weight for full fine-tuning
        for _, p in head_parameters(model):
            p.requires_grad_(True)
        return model

    def probe_steps(self, total_steps: int) -> int:
        return min(total_steps, int(round(float(self.params["lp_fraction"]) * total_steps)))

    def optimizer_factory(self, ctx):
        train = ctx.config.train
        lr = train.learning_rate

        def build(model, total_steps: int) -> torch.optim.Optimizer:
            head_ids = {id(p) for _, p in head_parameters(model)}
            named = trainable(model)
            head = [(n, p) for n, p in named if id(p) in head_ids]
            body = [(n, p) for n, p in named if id(p) not in head_ids]
            groups = plain_param_groups(head, model, train.weight_decay, lr=lr)
            groups += plain_param_groups(body, model, train.weight_decay, lr=lr * float(self.params["ft_lr_scale"]), after_probe=True)
            opt = PhasedAdamW(groups, lr=lr, probe_steps=self.probe_steps(total_steps))
            opt.silence_during_probe()
            return opt

        return build
