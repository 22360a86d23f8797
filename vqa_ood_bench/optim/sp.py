"""The simple anchored baselines: L2-SP (Li et al. 2018) and MARS-SP (Gouk et al. 2021)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from ..errors import ConfigError
from ._anchored import AnchoredBase, mars_row_norms, row_view

__all__ = ["L2SP", "MARSSP"]


class L2SP(AnchoredBase):
    """Adam / AdamW / SGD on ``L + (lam/2) * |theta - theta0|^2``: ``g += lam * (theta - theta0)``.

    Args:
        params: tensors, ``(name, tensor)`` pairs or group dicts (``names``, ``anchor``,
            ``lam`` and the base options may be set per group).
        lr, base, betas, eps, weight_decay, momentum, dampening, nesterov: the base
            optimizer's (``base`` is ``"adam"``, ``"adamw"`` or ``"sgd"``).
        lam: strength of the pull toward the anchor.
        anchor: ``"pretrained"`` / ``"origin"`` / ``None`` (see :mod:`vqa_ood_bench.optim`).
        exclude: regexes on parameter names whose tensors take the plain base step.
    With ``lam=0`` the step is exactly torch's.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        *,
        lam: float = 1e-2,
        base: str = "adamw",
        anchor: str | None = "pretrained",
        exclude: Sequence[str] = (),
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
    ):
        if lam < 0:
            raise ConfigError(f"lam must be >= 0, got {lam!r}")
        defaults = dict(lr=lr, lam=lam, anchor=anchor, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        momentum=momentum, dampening=dampening, nesterov=nesterov)
        super().__init__(params, defaults, base=base, exclude=exclude, foreach=foreach, fused=fused)

    def adjust_grads(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
        lam = float(group["lam"])
        if lam == 0.0:
            return grads
        if group["anchor"] == "pretrained":
            deltas = torch._foreach_sub([p.detach() for p in params], [self.state[p]["anchor"] for p in params])
        else:
            deltas = [p.detach() for p in params]
        return torch._foreach_add(grads, deltas, alpha=lam)


class MARSSP(AnchoredBase):
    """The base step, then every row of ``theta - theta0`` whose L1 norm exceeds ``radius``
    is scaled radially onto the ball: the MARS norm (maximum absolute row sum) of each
    tensor's distance to its anchor stays within ``radius``.

    Args: as :class:`L2SP`, with ``radius`` (per group) instead of ``lam``.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        *,
        radius: float = 1.0,
        base: str = "adamw",
        anchor: str | None = "pretrained",
        exclude: Sequence[str] = (),
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
    ):
        if not radius > 0:
            raise ConfigError(f"radius must be > 0, got {radius!r}")
        defaults = dict(lr=lr, radius=radius, anchor=anchor, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        momentum=momentum, dampening=dampening, nesterov=nesterov)
        super().__init__(params, defaults, base=base, exclude=exclude, foreach=foreach, fused=fused)

    def after_step(self, group: dict[str, Any], params: list[Tensor]) -> None:
        radius = float(group["radius"])
        for p in params:
            delta = self.distance(group, p)
            norms = mars_row_norms(delta)
            outside = norms > radius
            if not bool(outside.any()):
                continue
            # only rows outside the ball move (rows inside keep their exact bits)
            scale = torch.where(outside, radius / norms, torch.ones_like(norms))
            new = row_view(delta) * scale.unsqueeze(1)
            p0 = self.anchor_of(group, p)
            if p0 is not None:
                new = new + row_view(p0)
            p.copy_(torch.where(outside.unsqueeze(1), new, row_view(p)).view_as(p))
