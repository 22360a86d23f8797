"""FTP: Fast Trainable Projection (Tian et al., NeurIPS 2023), as a torch optimizer.

Per step and per tensor with a gradient ``g``::

    c     = (theta - d) - theta0            # d: the base step (SGD or Adam(W)); theta0: anchor
    n_r   = |c_row|_1 + 1e-8                # rows along dim 0; 1-D: one row
    gamma = 1e-8                                             at the tensor's first step
            clamp(Adam_mu(gamma; gg), 1e-8, max_r n_r)       afterwards, with
        gg = sum_r <g_row, c_prev_row> / n_prev_row,  gg *= k if gg > 0
    theta = theta0 + clamp(gamma / n_r, 0, 1) * c

``gg`` is the derivative of the loss with respect to the previous step's radius (the
previous projected weights are ``theta0 + gamma/n_prev * c_prev``); ``k`` in [0, 1]
damps the shrinking of the radius ("positive-gradient annealing", 1 = strongest).

State: the base optimizer's, the anchor copy (``anchor="pretrained"``), ``c_prev`` (one
tensor-sized buffer, as in the authors' method) and a few scalars per tensor. Read the
learned radii with :meth:`FTP.radii`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..errors import ConfigError
from . import _kernels as K
from ._bucketed import BucketedBase, adam_weight_decay, rows
from ._common import Gathered, Layout, scalar_adam

__all__ = ["FTP"]

_SCALARS = ("step", "gamma", "gamma_exp_avg", "gamma_exp_avg_sq")
#: radius at a tensor's first step (pulls the first step almost fully back) and lower clamp
GAMMA_MIN = 1e-8


class FTP(BucketedBase):
    """Trainable per-tensor projection toward the anchor on top of SGD or Adam(W).

    Args:
        params: tensors, ``(name, tensor)`` pairs or group dicts (groups may carry ``names``
            and ``anchor`` and override any option except ``base``, ``exclude``, ``compile``).
        lr: learning rate of the base optimizer.
        base: ``"sgd"`` (momentum/Nesterov, coupled L2 ``weight_decay``), ``"adam"`` (coupled)
            or ``"adamw"`` (decoupled decay: the authors' Adam form).
        k: positive-gradient annealing factor in [0, 1] (authors' default 1).
        mu: learning rate of the radius (authors' default 1e-2).
        anchor: ``"pretrained"`` (copy taken now), ``"origin"`` (LoRA / adapters) or ``None``
            (plain base step, e.g. a new classification head).
        exclude: regexes on parameter names whose tensors take the plain base step.
        betas, eps, weight_decay, momentum, dampening, nesterov: the base optimizer's.
        gamma_betas, gamma_eps: Adam on the radius.
        compile: use the ``torch.compile``-d one-sweep kernels (first step compiles).
        foreach, fused: passed to torch for groups that take the plain step.
    """

    scalar_names = _SCALARS

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        *,
        base: str = "adamw",
        k: float = 1.0,
        mu: float = 1e-2,
        anchor: str | None = "pretrained",
        exclude: Sequence[str] = (),
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        gamma_betas: tuple[float, float] = (0.9, 0.999),
        gamma_eps: float = 1e-8,
        compile: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
    ):
        defaults = dict(
            lr=lr, k=k, mu=mu, anchor=anchor, betas=tuple(betas), eps=eps,
            weight_decay=weight_decay, momentum=momentum, dampening=dampening, nesterov=nesterov,
            gamma_betas=tuple(gamma_betas), gamma_eps=gamma_eps,
        )
        super().__init__(params, defaults, compile=compile, base=base, exclude=exclude, foreach=foreach, fused=fused)

    def _check_group(self, group: dict[str, Any]) -> None:
        if not 0.0 <= group["k"] <= 1.0:
            raise ConfigError(f"k must lie in [0, 1], got {group['k']!r}")
        if group["mu"] < 0:
            raise ConfigError(f"mu must be >= 0, got {group['mu']!r}")

    # ---- layout -------------------------------------------------------------------------

    def _buf_names(self, group: dict[str, Any]) -> list[str]:
        if self.base == "sgd":
            names = ["momentum_buffer"] if group["momentum"] != 0 else []
        else:
            names = ["exp_avg", "exp_avg_sq"]
        names.append("prev_c")
        if group["anchor"] == "pretrained":
            names.append("anchor")
        return names

    # ---- public helpers -----------------------------------------------------------------

    def radii(self) -> dict[str | int, float]:
        """Current learned radius ``gamma`` of every projected tensor, keyed like
        :meth:`DiGraP.omegas` (names when given, else the flat position)."""
        return self._scalar_readout("gamma")

    # ---- step ---------------------------------------------------------------------------

    def _step_layout(self, group: dict[str, Any], lay: Layout, step: Gathered) -> None:
        sgd = self.base == "sgd"
        S = lay.scalars
        dev, sdt = lay.device, lay.sdtype
        act_f = step.active.to(sdt)
        lr = float(group["lr"])
        wd = float(group["weight_decay"])
        t = S["step"]
        tn = t + 1
        if sgd:
            first_buf = (t == 0).to(sdt)
            full = lambda x: torch.full_like(t, x)  # noqa: E731
            coef = torch.stack([full(lr), full(0.0), full(0.0), full(wd), act_f, first_buf], 1)
        else:
            b1, b2 = group["betas"]
            decay, wdc = adam_weight_decay(self.base, lr, wd)
            coef = torch.stack(
                [lr / (1.0 - torch.pow(b1, tn)), 1.0 / (1.0 - torch.pow(b2, tn)),
                 torch.full_like(t, decay), torch.full_like(t, wdc), act_f], 1,
            )

        # --- pass 1: base step to the unconstrained weights, hyper-gradient, row norms ----
        cand_fn = self._kernel(K.ftp_sgd_candidate if sgd else K.ftp_adam_candidate)
        totals, rownorms = [], []
        for b, gat in zip(lay.buckets, step.blocks):
            if gat is None:
                totals.append(torch.zeros((b.n, 2), dtype=sdt, device=dev))
                rownorms.append(None)
                continue
            g, p, act = gat
            p0 = b.bufs.get("anchor")
            cs = b.rows_of(coef, K.compute_dtype(p.dtype))
            masked = len(act) < b.n
            fn = cand_fn(b)
            parts = []
            for sl in self._row_blocks(b):
                R = lambda t: rows(t, sl)  # noqa: E731
                if sgd:
                    parts.append(fn(R(g), R(p), R(p0), R(b.bufs.get("momentum_buffer")), R(b.bufs["prev_c"]), cs,
                                    float(group["momentum"]), float(group["dampening"]), bool(group["nesterov"]),
                                    b.red_dim, masked))
                else:
                    b1, b2 = group["betas"]
                    parts.append(fn(R(g), R(p), R(p0), R(b.bufs["exp_avg"]), R(b.bufs["exp_avg_sq"]), R(b.bufs["prev_c"]), cs,
                                    float(b1), float(b2), float(group["eps"]), b.red_dim, masked))
            if len(parts) == 1:
                tot, rn = parts[0]
            else:  # row blocks: the hyper-gradient adds up, the largest row norm is the max
                tots = torch.stack([t for t, _ in parts])
                tot = torch.stack([tots[:, :, 0].sum(0), tots[:, :, 1].amax(0)], 1)
                rn = torch.cat([r for _, r in parts], 1)
            totals.append(tot.to(sdt))
            rownorms.append(rn)
        gg, max_norm = torch.cat(totals, 0).unbind(1)

        # --- per-tensor radius ---------------------------------------------------------
        gg = torch.where(gg > 0, gg * float(group["k"]), gg)
        gam, gm, gv = scalar_adam(
            S["gamma"], S["gamma_exp_avg"], S["gamma_exp_avg_sq"], gg, tn,
            float(group["mu"]), group["gamma_betas"], float(group["gamma_eps"]),
        )
        first = tn == 1
        gam = torch.where(first, torch.full_like(gam, GAMMA_MIN), torch.minimum(torch.clamp_min(gam, GAMMA_MIN), max_norm))
        # a radius below GAMMA_MIN would come from max_norm of an all-zero row set: keep GAMMA_MIN
        gam = torch.clamp_min(gam, GAMMA_MIN)
        gm = torch.where(first, S["gamma_exp_avg"], gm)
        gv = torch.where(first, S["gamma_exp_avg_sq"], gv)

        # --- pass 2: project --------------------------------------------------------------
        proj_fn = self._kernel(K.ftp_project)
        pcoef = torch.stack([gam, act_f], 1)
        for b, gat, rn in zip(lay.buckets, step.blocks, rownorms):
            if gat is None:
                continue
            g, p, act = gat
            cs = b.rows_of(pcoef, K.compute_dtype(p.dtype))
            fn = proj_fn(b)
            for sl in self._row_blocks(b):
                fn(rows(p, sl), rows(b.bufs.get("anchor"), sl), rows(b.bufs["prev_c"], sl),
                   rows(rn, sl), cs, b.red_dim, len(act) < b.n)
            lay.scatter(b, act)

        lay.commit(step, {"step": tn, "gamma": gam, "gamma_exp_avg": gm, "gamma_exp_avg_sq": gv})
