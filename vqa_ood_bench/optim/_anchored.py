"""A plain base optimizer (torch's Adam / AdamW / SGD) that knows each tensor's anchor.

The base of L2-SP, MARS-SP and TPGM: these change the gradient before, or the weights after,
an unmodified torch step, so they need no fused kernels of their own. The anchor of a tensor
is a copy taken at construction (``anchor="pretrained"``), zero (``"origin"``: adapters), or
absent (``None``: the tensor takes the plain base step and is never regularised).
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import Tensor

from ._base import RobustOptimizer
from ._common import anchored_params, collect_grads, run_closure


class AnchoredBase(RobustOptimizer):
    """Torch's Adam / AdamW / SGD step plus per-tensor anchors (see the module docstring)."""

    def _setup(self) -> None:
        for group in self.param_groups:
            if group["anchor"] == "pretrained":
                for p in group["params"]:
                    self.state[p]["anchor"] = p.detach().clone(memory_format=torch.contiguous_format)

    def anchor_of(self, group: dict[str, Any], p: Tensor) -> Tensor | None:
        """``theta0`` of ``p`` (``None`` for the origin: callers use ``theta`` itself)."""
        return self.state[p]["anchor"] if group["anchor"] == "pretrained" else None

    def distance(self, group: dict[str, Any], p: Tensor) -> Tensor:
        """``theta - theta0``."""
        p0 = self.anchor_of(group, p)
        return p.detach() - p0 if p0 is not None else p.detach().clone()

    def anchored(self) -> Iterator[tuple[dict[str, Any], str | int, Tensor]]:
        """``(group, name or flat index, tensor)`` of every tensor that has an anchor."""
        return anchored_params(self.param_groups)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = run_closure(closure)
        for group in self.param_groups:
            params, grads = collect_grads(group["params"])
            if not params:
                continue
            if group["anchor"] is not None:
                grads = self.adjust_grads(group, params, grads)
            self.base_step(group, params, grads)
            if group["anchor"] is not None:
                self.after_step(group, params)
        return loss

    # hooks for subclasses
    def adjust_grads(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
        return grads

    def after_step(self, group: dict[str, Any], params: list[Tensor]) -> None:
        return None


def row_view(t: Tensor) -> Tensor:
    """``t`` as ``(rows, cols)``: rows along dim 0; a 0-/1-D tensor is one row."""
    return t.reshape(1, -1) if t.dim() <= 1 else t.reshape(t.shape[0], -1)


def mars_row_norms(delta: Tensor) -> Tensor:
    """L1 norm of each row of ``delta`` (the rows whose maximum is the MARS norm)."""
    return row_view(delta).abs().sum(1)
