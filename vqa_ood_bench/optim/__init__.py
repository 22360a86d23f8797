"""Robust fine-tuning optimizers: plain ``torch.optim.Optimizer`` subclasses.

- :class:`DiGraP` -- directional gradient projection (trainable or fixed omega, two-sided form).
- :class:`FTP` -- fast trainable projection (SGD or Adam(W) base).
- :class:`TPGM` -- trainable projected gradient method (validation-closure radii, L2 / MARS).
- :class:`L2SP`, :class:`MARSSP` -- the L2-SP penalty and the MARS-norm ball projection.

All take what torch optimizers take (tensors, ``model.named_parameters()``, or group dicts)
and per group ``anchor``: ``"pretrained"`` (a copy of the tensor at construction: full
fine-tuning), ``"origin"`` (zero: adapter weights such as LoRA A/B) or ``None`` (plain base
step, e.g. a new head); groups may carry ``names`` (one per tensor). ``exclude=[regex, ...]``
moves matching named tensors into an ``anchor=None`` group. :func:`param_groups_from_model`
builds such groups from a module. Nothing here depends on the rest of the package except
:mod:`vqa_ood_bench.errors`.
"""

from ._common import param_groups_from_model, state_bytes
from .digrap import DiGraP
from .ftp import FTP
from .sp import L2SP, MARSSP
from .tpgm import TPGM

__all__ = ["DiGraP", "FTP", "L2SP", "MARSSP", "TPGM", "param_groups_from_model", "state_bytes"]
