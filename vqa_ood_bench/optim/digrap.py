"""DiGraP: Directional Gradient Projection (Huang et al., ICLR 2025), as a torch optimizer.

Per step and per tensor with a gradient ``g1`` (after accumulation and the data-parallel
all-reduce: the optimizer only reads ``p.grad``)::

    D  = theta - theta0                    # theta0: pre-trained copy, or 0 for adapters
    d  = <g1, D>,   c = d / (|D|^2 + 1e-8), P = c * D
    omega = 0                                              at the tensor's first step
            clamp(Adam_mu(omega; h), 0, 1)                 afterwards (trainable)
            the fixed value                                (fixed-omega variant)
        h = sum over rows of cos(g1_row, P_prev_row)       (rows: dim 0; 1-D: whole tensor)
    g  = g1 - omega * P      if d < 0 (conflict), else g1
    base step (Adam, AdamW or SGD) with g

Two-sided (PCGrad) variant, ``two_sided=lam``: the regulariser gradient ``lam * D`` is added
and projected against ``g1`` as well::

    g = g1 + lam*D                                           if d >= 0
    g = (g1 - omega*P) + (lam*D - omega*lam*d/(|g1|^2+1e-8) * g1)   if d < 0

Weight decay is the base optimizer's and acts after the projection, on the weights, not on
``theta - theta0``: ``base="adam"`` adds ``wd * theta`` to the projected gradient (coupled
L2, as torch.optim.Adam), ``"adamw"`` multiplies ``theta`` by ``1 - lr*wd`` (decoupled, as
torch.optim.AdamW), ``"sgd"`` adds ``wd * theta`` before momentum (as torch.optim.SGD). The
default is 0. It never enters the projection or the hyper-gradient.

Memory: the state is the base optimizer's (Adam: two moment buffers; SGD: the momentum
buffer, plus one last-update buffer for plain or Nesterov SGD with trainable omega) plus the
anchor copy for ``anchor="pretrained"`` (none for ``"origin"``), plus a few scalars per
tensor. ``P_prev`` is never stored: ``P_prev = c_prev * (theta_{t-1} - theta0)`` and
``theta_{t-1}`` is recomputed from ``theta_t`` and the moment buffers before they are
updated. This assumes only this optimizer changes the weights between its steps.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from ..errors import ConfigError
from . import _kernels as K
from ._bucketed import BucketedBase, adam_weight_decay, rows
from ._common import Gathered, Layout, scalar_adam

__all__ = ["DiGraP"]

_SCALARS = (
    "step",
    "omega",
    "omega_exp_avg",
    "omega_exp_avg_sq",
    "proj_coef",
    "prev_lr",
    "prev_decay",
)


class DiGraP(BucketedBase):
    """Directional gradient projection on top of Adam, AdamW or SGD.

    Args:
        params: tensors, ``(name, tensor)`` pairs (``model.named_parameters()``) or group
            dicts; groups may set any option below except ``base``, ``exclude``, ``compile``.
        lr: learning rate of the base optimizer.
        base: ``"adam"`` (Algorithm 1 of the paper), ``"adamw"`` or ``"sgd"``.
        mu: learning rate of the per-tensor projection strength omega (the paper's
            hyper-parameter; "DiGraP (0.5)" is ``mu=0.5``).
        omega: ``None`` (trainable, starts at 0) or a fixed strength in [0, 1].
        two_sided: ``None`` (the paper's one-sided projection) or ``lam`` for the two-sided
            PCGrad form that also adds ``lam * (theta - theta0)``.
        anchor: ``"pretrained"`` (copy taken now), ``"origin"`` (LoRA / adapters) or ``None``
            (plain base step, e.g. a new head).
        exclude: regexes on parameter names whose tensors take the plain base step.
        betas, eps: Adam's; ``momentum``, ``dampening``, ``nesterov``: SGD's.
        weight_decay: the base optimizer's weight decay (see the module docstring).
        omega_betas, omega_eps: Adam on omega (authors: (0.9, 0.999), 1e-8).
        compile: run the fused ``torch.compile`` kernels (the fast path; the first step
            compiles, ~10-60 s on CPU). ``False`` runs the same kernels eagerly.
        foreach, fused: passed to torch's implementation for groups that take the plain step.

    Logging: :meth:`omegas` gives ``{name: omega}`` per projected tensor, :meth:`omega_mean`
    their mean (the paper's Fig. 4 and 5).

    With ``omega=0`` (or ``mu=0``) and no two-sided term, a group takes exactly
    ``torch.optim.Adam/AdamW/SGD``'s step (same kernels, same numbers).
    """

    scalar_names = _SCALARS

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        *,
        base: str = "adam",
        mu: float = 0.5,
        omega: float | None = None,
        two_sided: float | None = None,
        anchor: str | None = "pretrained",
        exclude: Sequence[str] = (),
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        omega_betas: tuple[float, float] = (0.9, 0.999),
        omega_eps: float = 1e-8,
        compile: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
    ):
        defaults = dict(
            lr=lr, mu=mu, omega=omega, two_sided=two_sided, anchor=anchor, betas=tuple(betas), eps=eps,
            weight_decay=weight_decay, momentum=momentum, dampening=dampening, nesterov=nesterov,
            omega_betas=tuple(omega_betas), omega_eps=omega_eps,
        )
        super().__init__(params, defaults, compile=compile, base=base, exclude=exclude, foreach=foreach, fused=fused)

    def _check_group(self, group: dict[str, Any]) -> None:
        _check_digrap_hparams(group)

    # ---- layout -------------------------------------------------------------------------

    def _projects(self, group: dict[str, Any]) -> bool:
        if group["anchor"] is None:
            return False
        if group["two_sided"] is not None:
            return True
        if group["omega"] is not None:
            return group["omega"] != 0.0
        return group["mu"] != 0.0

    def _buf_names(self, group: dict[str, Any]) -> list[str]:
        if self.base == "sgd":
            names = []
            if group["momentum"] != 0:
                names.append("momentum_buffer")
            trainable = group["omega"] is None
            if trainable and (group["momentum"] == 0 or group["nesterov"]):
                names.append("last_update")
        else:
            names = ["exp_avg", "exp_avg_sq"]
        if group["anchor"] == "pretrained":
            names.append("anchor")
        return names

    def _new_layout(self, group: dict[str, Any], params: list[Tensor]) -> Layout:
        lay = super()._new_layout(group, params)
        if group["omega"] is not None:
            lay.scalars["omega"].fill_(group["omega"])
        return lay

    # ---- public helpers -----------------------------------------------------------------

    def omegas(self) -> dict[str | int, float]:
        """Current projection strength of every projected tensor: ``{name or index: omega}``.

        Keys are parameter names when the optimizer was given named parameters, else the
        tensor's position across all groups (as in ``state_dict()``). Tensors of groups
        with ``anchor=None`` are not listed; groups with the projection switched off
        (``omega=0``/``mu=0``) report 0.0.
        """
        return self._scalar_readout("omega")

    def omega_mean(self) -> float:
        """Mean projection strength over the projected tensors (the paper's Fig. 4 curve)."""
        values = list(self.omegas().values())
        return sum(values) / len(values) if values else 0.0

    # ---- step ---------------------------------------------------------------------------

    def _step_layout(self, group: dict[str, Any], lay: Layout, step: Gathered) -> None:
        sgd = self.base == "sgd"
        S = lay.scalars
        dev, sdt = lay.device, lay.sdtype
        trainable = group["omega"] is None
        with_prev = trainable and lay.steps_taken > 0
        lr = float(group["lr"])
        wd = float(group["weight_decay"])
        t = S["step"]
        tn = t + 1
        has_prev = t > 0

        # --- pass 1: per-tensor <g,D>, |D|^2, |g|^2, h --------------------------------
        zero = torch.zeros((), dtype=sdt, device=dev)
        one = torch.ones((), dtype=sdt, device=dev)
        if sgd:
            k1 = torch.where(has_prev, S["prev_lr"], zero)
            cstats = torch.stack([k1, zero.expand_as(k1), zero.expand_as(k1), S["proj_coef"]], 1)
        else:
            b1, b2 = group["betas"]
            k1 = torch.where(has_prev, S["prev_lr"] / (1.0 - torch.pow(b1, t)), zero)
            k2 = torch.where(has_prev, 1.0 / (1.0 - torch.pow(b2, t)), one)
            k3 = torch.where(has_prev, 1.0 / S["prev_decay"], one)
            cstats = torch.stack([k1, k2, k3, S["proj_coef"]], 1)
        stats_fn = self._kernel(K.digrap_sgd_stats if sgd else K.digrap_adam_stats)
        outs = []
        for b, gat in zip(lay.buckets, step.blocks):
            if gat is None:
                outs.append(torch.zeros((b.n, 4), dtype=sdt, device=dev))
                continue
            g, p, _ = gat
            p0 = b.bufs.get("anchor")
            cs = b.rows_of(cstats, K.compute_dtype(p.dtype))
            fn = stats_fn(b)
            prev = b.bufs.get("last_update", b.bufs.get("momentum_buffer"))  # (SGD base)
            out = None
            for sl in self._row_blocks(b):  # per-tensor sums add up over row blocks
                R = lambda t: rows(t, sl)  # noqa: E731
                if sgd:
                    o = fn(R(g), R(p), R(p0), R(prev), cs, with_prev, b.red_dim)
                else:
                    o = fn(R(g), R(p), R(p0), R(b.bufs["exp_avg"]), R(b.bufs["exp_avg_sq"]), cs, with_prev,
                           float(group["eps"]), b.red_dim)
                out = o if out is None else out + o
            outs.append(out.to(sdt))
        stats = torch.cat(outs, 0)
        d, dd, gg, h = stats.unbind(1)

        # --- per-tensor scalars: omega, projection coefficients --------------------------
        if trainable:
            om, om_m, om_v = scalar_adam(
                S["omega"], S["omega_exp_avg"], S["omega_exp_avg_sq"], h, tn,
                float(group["mu"]), group["omega_betas"], float(group["omega_eps"]),
            )
            first = tn == 1
            om = torch.where(first, zero, torch.clamp(om, 0.0, 1.0))
            om_m = torch.where(first, S["omega_exp_avg"], om_m)
            om_v = torch.where(first, S["omega_exp_avg_sq"], om_v)
        else:
            om = torch.full_like(d, float(group["omega"]))
            om_m, om_v = S["omega_exp_avg"], S["omega_exp_avg_sq"]
        c = d / (dd + 1e-8)
        conflict = d < 0
        lam = group["two_sided"]
        if lam is None:
            a = torch.ones_like(d)
            bcoef = torch.where(conflict, -om * c, zero)
        else:
            lam = float(lam)
            a = torch.where(conflict, 1.0 - om * lam * d / (gg + 1e-8), one)
            bcoef = lam - torch.where(conflict, om * c, zero)
        act_f = step.active.to(sdt)
        if sgd:
            first_buf = (t == 0).to(sdt)
            cupd = torch.stack([a, bcoef, torch.full_like(d, lr), torch.full_like(d, wd), first_buf, act_f], 1)
            decay = torch.ones_like(d)
        else:
            b1, b2 = group["betas"]
            decay_factor, wdc = adam_weight_decay(self.base, lr, wd)
            decay = torch.full_like(d, decay_factor)
            cupd = torch.stack(
                [a, bcoef, lr / (1.0 - torch.pow(b1, tn)), 1.0 / (1.0 - torch.pow(b2, tn)),
                 decay, torch.full_like(d, wdc), act_f], 1,
            )

        # --- pass 2: base step with the projected gradient ----------------------------
        upd_fn = self._kernel(K.digrap_sgd_update if sgd else K.digrap_adam_update)
        # Members whose b is 0 (no conflict, or omega = 0) do not need the anchor; a bucket
        # whose members all have b = 0 skips reading it (1 of 8 memory streams of the Adam
        # update). Only on the CPU: on a GPU the check would be a host sync per step.
        no_proj = (bcoef == 0).tolist() if dev.type == "cpu" else None
        for b, gat in zip(lay.buckets, step.blocks):
            if gat is None:
                continue
            g, p, act = gat
            p0 = b.bufs.get("anchor")
            if no_proj is not None and all(no_proj[b.slots.start : b.slots.stop]):
                p0 = None
            cu = b.rows_of(cupd, K.compute_dtype(p.dtype))
            masked = len(act) < b.n
            fn = upd_fn(b)
            for sl in self._row_blocks(b):
                R = lambda t: rows(t, sl)  # noqa: E731
                if sgd:
                    fn(R(g), R(p), R(p0), R(b.bufs.get("momentum_buffer")), R(b.bufs.get("last_update")), cu,
                       float(group["momentum"]), float(group["dampening"]), bool(group["nesterov"]), masked)
                else:
                    b1, b2 = group["betas"]
                    fn(R(g), R(p), R(p0), R(b.bufs["exp_avg"]), R(b.bufs["exp_avg_sq"]), cu,
                       float(b1), float(b2), float(group["eps"]), masked)
            lay.scatter(b, act)

        # --- commit per-tensor state (only tensors that stepped) ----------------------
        lay.commit(
            step,
            {
                "step": tn,
                "omega": om,
                "omega_exp_avg": om_m,
                "omega_exp_avg_sq": om_v,
                "proj_coef": c,
                "prev_lr": torch.full_like(d, lr),
                "prev_decay": decay,
            },
        )


def _check_digrap_hparams(group: dict[str, Any]) -> None:
    if group["mu"] < 0:
        raise ConfigError(f"mu must be >= 0, got {group['mu']!r}")
    om = group["omega"]
    if om is not None and not (0.0 <= om <= 1.0):
        raise ConfigError(f"a fixed omega must lie in [0, 1], got {om!r}")
    lam = group["two_sided"]
    if lam is not None and lam < 0:
        raise ConfigError(f"two_sided (lambda) must be >= 0, got {lam!r}")
    b1, b2 = group["omega_betas"]
    if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
        raise ConfigError(f"invalid omega_betas {group['omega_betas']!r}")
