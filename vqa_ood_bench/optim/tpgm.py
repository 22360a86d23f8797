"""TPGM: Trainable Projected Gradient Method (Tian et al., CVPR 2023), as a torch optimizer.

Training steps are plain Adam / AdamW / SGD steps (:meth:`TPGM.step`). Every
``project_every`` steps the training loop calls :meth:`TPGM.project` with a *validation
closure*; TPGM then learns one radius ``gamma`` per tensor on that held-out batch (bi-level)
and projects the weights onto the ball around the anchor::

    D     = theta - theta0                       (fixed during the projection: detached)
    n     = |D|_2 (norm="l2")  or  |D_row|_1 per row (norm="mars")
    theta = theta0 + clamp(gamma / n, 0, 1) * D
    dL_val/dgamma = sum over rows with gamma < n of <grad_row, D_row / n_row>

``gamma`` starts at half the smallest current distance, is clamped to [1e-8, max distance]
and trained with Adam (``gamma_lr``, betas (0.9, 0.999)) for ``max_iters`` updates per
projection, each evaluating the validation loss at the projected weights.

Usage::

    opt = TPGM(model.named_parameters(), lr=1e-3, norm="l2", project_every=10)
    for batch in train:
        loss_fn(model, batch).backward(); opt.step(); opt.zero_grad()
        if opt.due():
            opt.project(lambda: loss_fn(model, next(val_iter)).backward())  # may return the loss

The closure follows torch's convention: it computes the validation loss on the model's
*current* weights and calls ``backward()``; gradients are cleared before each call and left
cleared (``None``) afterwards, so nothing leaks into the next training step.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..errors import ConfigError
from ._anchored import AnchoredBase, mars_row_norms, row_view

__all__ = ["TPGM"]

NORMS = ("l2", "mars")
GAMMA_MIN = 1e-8


class TPGM(AnchoredBase):
    """Plain base steps plus a learned per-tensor projection onto a ball around the anchor.

    Args:
        params: tensors, ``(name, tensor)`` pairs or group dicts (``names``, ``anchor``).
        lr, base, betas, eps, weight_decay, momentum, dampening, nesterov: the base
            optimizer's (``"adam"``, ``"adamw"`` or ``"sgd"``).
        norm: ``"l2"`` (Frobenius norm of the whole tensor) or ``"mars"`` (per-row L1).
        gamma_lr: Adam learning rate of the radii (authors: 1e-2).
        max_iters: radius updates per :meth:`project` call.
        project_every: how often :meth:`due` says a projection is due (in steps).
        anchor, exclude: see :mod:`vqa_ood_bench.optim`.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        *,
        norm: str = "l2",
        gamma_lr: float = 1e-2,
        max_iters: int = 1,
        project_every: int = 1,
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
        if norm not in NORMS:
            raise ConfigError(f"norm must be one of {NORMS}, got {norm!r}")
        if max_iters < 1 or project_every < 1:
            raise ConfigError("max_iters and project_every must be >= 1")
        if gamma_lr < 0:
            raise ConfigError(f"gamma_lr must be >= 0, got {gamma_lr!r}")
        self.norm = norm
        self.gamma_lr = float(gamma_lr)
        self.max_iters = int(max_iters)
        self.project_every = int(project_every)
        self.steps_taken = 0
        defaults = dict(lr=lr, anchor=anchor, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        momentum=momentum, dampening=dampening, nesterov=nesterov)
        super().__init__(params, defaults, base=base, exclude=exclude, foreach=foreach, fused=fused)

    # training steps ---------------------------------------------------------------------

    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = super().step(closure)
        self.steps_taken += 1
        return loss

    def due(self) -> bool:
        """Whether a projection is due after the step just taken."""
        return self.steps_taken > 0 and self.steps_taken % self.project_every == 0

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["tpgm_steps_taken"] = self.steps_taken
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        self.steps_taken = int(state_dict.pop("tpgm_steps_taken", 0))
        super().load_state_dict(state_dict)

    # projection -------------------------------------------------------------------------

    def radii(self) -> dict[str | int, float]:
        """Learned radius of every anchored tensor (NaN before its first projection)."""
        return {name: float(self.state[p].get("gamma", math.nan)) for _, name, p in self.anchored()}

    def _norms(self, delta: Tensor) -> Tensor:
        """Distances ``n``, one per row (``mars``) or one per tensor (``l2``), as ``(rows,)``."""
        if self.norm == "mars":
            return mars_row_norms(delta)
        return torch.linalg.vector_norm(delta).reshape(1)

    def _rows(self, t: Tensor) -> Tensor:
        return row_view(t) if self.norm == "mars" else t.reshape(1, -1)

    @torch.no_grad()
    def _apply(self, items: list[dict[str, Any]]) -> None:
        for it in items:
            scale = torch.clamp(it["gamma"] / it["n"], max=1.0)
            new = self._rows(it["delta"]) * scale.unsqueeze(1)
            if it["p0"] is not None:
                new = new + self._rows(it["p0"])
            it["p"].copy_(new.view_as(it["p"]))

    def project(self, closure: Callable[[], Any]) -> float | None:
        """Learn the radii on the validation closure (``max_iters`` Adam updates), then
        project. Returns the last validation loss the closure returned (as a float), if any."""
        items = []
        with torch.no_grad():
            for group, _name, p in self.anchored():
                delta = self.distance(group, p)
                n = self._norms(delta).to(torch.float64)
                n_max = float(n.max())
                if n_max == 0.0:  # never moved: nothing to project
                    continue
                st = self.state[p]
                if "gamma" not in st:
                    st.update(gamma=max(float(n.min()) / 2, GAMMA_MIN), gamma_exp_avg=0.0, gamma_exp_avg_sq=0.0, gamma_step=0)
                st["gamma"] = min(max(st["gamma"], GAMMA_MIN), n_max)
                items.append(dict(p=p, p0=self.anchor_of(group, p), delta=delta, n=n.to(delta.dtype), n64=n, n_max=n_max, st=st))
        last = None
        for _ in range(self.max_iters):
            for it in items:
                it["gamma"] = it["st"]["gamma"]
            self._apply(items)
            self._zero_grads()
            with torch.enable_grad():
                out = closure()
            if out is not None:
                last = float(out.detach()) if isinstance(out, torch.Tensor) else float(out)
            for it in items:
                self._update_gamma(it)
        for it in items:
            it["gamma"] = it["st"]["gamma"]
        self._apply(items)
        self._zero_grads()
        return last

    def _update_gamma(self, it: dict[str, Any]) -> None:
        p, st = it["p"], it["st"]
        if p.grad is None:
            return
        inside = it["n64"] > st["gamma"]  # rows that the projection moves: d theta/d gamma = D_row/n_row
        per_row = (self._rows(p.grad).to(torch.float64) * self._rows(it["delta"]).to(torch.float64)).sum(1) / it["n64"]
        hg = float(per_row[inside].sum())
        b1, b2 = 0.9, 0.999
        st["gamma_step"] += 1
        t = st["gamma_step"]
        st["gamma_exp_avg"] = b1 * st["gamma_exp_avg"] + (1 - b1) * hg
        st["gamma_exp_avg_sq"] = b2 * st["gamma_exp_avg_sq"] + (1 - b2) * hg * hg
        mhat = st["gamma_exp_avg"] / (1 - b1**t)
        vhat = st["gamma_exp_avg_sq"] / (1 - b2**t)
        gamma = st["gamma"] - self.gamma_lr * mhat / (math.sqrt(vhat) + 1e-8)
        st["gamma"] = min(max(gamma, GAMMA_MIN), it["n_max"])

    def _zero_grads(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None
