"""DiGraP: Directional Gradient Projection (Huang et al., ICLR 2025), as a torch optimizer.

Per step and per tensor with a gradient ``g1`` (after accumulation and the data-parallel
all-reduce: the optimizer only reads ``p.grad``)::

    D  = theta - theta0                    # theta0: pre-trained copy, or 0 for adapters
    d  = <g1, D>,   c = d / (|D|^2 + 1e-8), P = c * D
    omega = 0                                              at the tensor's first step
            clamp(Adam_mu(omega; h), 0, 1)                 afterwards (trainable)
            the fixed value                                (fixed-omega variant)
        h = sum over rows of cos(g1_row, P_prev_row)       (rows: below)
    g  = g1 - omega * P      if d < 0 (conflict), else g1
    base step (Adam, AdamW or SGD) with g

The rows of ``h`` are the vectors that the authors' code normalises with
``F.normalize(t, dim=1)``: the rows of a matrix; for a tensor of three or more dimensions the
vectors along dim 1, one per index of the other dimensions (a conv kernel ``(out, in, kh, kw)``
gives one vector over the input channels per output channel and kernel position, not one
flattened row per output channel). A 1-D or 0-d tensor (a bias, a norm weight) is one vector;
there the authors' ``dim=1`` does not exist.

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

from typing import Any, Callable, NamedTuple, Sequence

import torch
from torch import Tensor

from ..errors import ConfigError
from . import _kernels as K
from ._bucketed import BucketedBase, base_hparams, rows
from ._common import Bucket, Gathered, Layout, bias_correction, scalar_adam

__all__ = ["DiGraP"]



class _Scalars(NamedTuple):
    """DiGraP's per-tensor scalar state, ``(n,)`` each; the names are the keys in
    ``optimizer.state[p]``."""

    step: Tensor  # the tensor's own step count
    omega: Tensor  # the projection strength
    omega_exp_avg: Tensor  # Adam on omega
    omega_exp_avg_sq: Tensor
    proj_coef: Tensor  # c of the last step: P = c * (theta - theta0)
    prev_lr: Tensor  # the last step's learning rate
    prev_decay: Tensor  # the last step's decoupled decay factor 1 - lr*wd (else 1)


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
        compile: run the fused ``torch.compile`` kernels (the fast path, CPU and GPU; the
            first step compiles). ``False`` runs the same kernels eagerly.
        foreach, fused: passed to torch's implementation for groups that take the plain step.

    Logging: :meth:`omegas` gives ``{name: omega}`` per projected tensor, :meth:`omega_mean`
    their mean (the paper's Fig. 4 and 5).

    With ``omega=0`` (or ``mu=0``) and no two-sided term, a group takes exactly
    ``torch.optim.Adam/AdamW/SGD``'s step (same kernels, same numbers).
    """

    Scalars = _Scalars
    scalar_names = _Scalars._fields
    split_dim1 = True  # the hyper-gradient's rows (module docstring)

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
        super().__init__(params, defaults, compile=compile, base=base, exclude=exclude, foreach=foreach,
                         fused=fused)

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

    def _config(self, group: dict[str, Any], lay: Layout) -> _Config:
        om, lam = group["omega"], group["two_sided"]
        return _Config(
            base=self.base,
            with_prev=om is None and lay.steps_taken > 0,
            omega=None if om is None else float(om),
            two_sided=None if lam is None else float(lam),
            mu=float(group["mu"]),
            omega_betas=(float(group["omega_betas"][0]), float(group["omega_betas"][1])),
            omega_eps=float(group["omega_eps"]),
            **base_hparams(self.base, group),
        )

    def _step_layout(self, group: dict[str, Any], lay: Layout, step: Gathered) -> None:
        cfg = self._config(group, lay)
        dev, sdt = lay.device, lay.sdtype
        sc, act_f, lr = self._step_inputs(group, lay, step)
        # Members whose b is 0 (no conflict, or omega = 0) do not need the anchor; a bucket
        # whose members all have b = 0 skips reading it in the update (1 of 8 memory streams
        # of the Adam update). Only on the CPU: on a GPU the check would be a host sync.
        check_b = dev.type == "cpu"
        upd_fn = self._kernel(K.digrap_sgd_update if cfg.base == "sgd" else K.digrap_adam_update)
        # The statistics coefficients are computed here, once for the whole layout, and enter
        # the compiled kernels as inputs: computed inside a kernel, inductor inlined them (two
        # double-precision powers for the bias corrections) into the loop over the elements,
        # which made the statistics pass of a large tensor about twice as slow.
        cstats = _stats_coef(sc, cfg)
        if self._compile:
            # Per bucket: statistics and per-tensor scalars (one compiled graph), then the
            # update, back to back, so that the update finds the bucket's tensors still in
            # cache where they fit.
            fused = self._kernel(_stats_and_scalars)

            def run(b: Bucket, gat: tuple[Tensor, Tensor, list[int]], sl: slice) -> _Scalars:
                g, p, _ = gat
                cupd, new, projects = fused(b)(
                    g, p, b.bufs.get("anchor"), b.bufs.get("exp_avg"), b.bufs.get("exp_avg_sq"), _prev_update(b),
                    K.fields_at(sc, sl), K.fields_at(cstats, sl), act_f[sl], lr, cfg, b.red_dim,
                )
                self._update(lay, b, gat, upd_fn(b), cupd, cfg, not check_b or bool(projects))
                return new

            new = self._per_bucket(lay, step, sc, run)
        else:
            outs = []
            for b, gat in zip(lay.buckets, step.blocks):
                if gat is None:
                    outs.append(K.DiGraPStats(*torch.zeros((4, b.n), dtype=sdt, device=dev)))
                else:
                    members = slice(b.slots.start, b.slots.stop)
                    outs.append(self._bucket_stats(b, gat, K.fields_at(cstats, members), cfg))
            cupd, new = _scalars(K.fields_cat(outs), sc, act_f, lr, cfg)
            projects = cupd.b.ne(0).tolist() if check_b else None
            for b, gat in zip(lay.buckets, step.blocks):
                if gat is not None:
                    sl = slice(b.slots.start, b.slots.stop)
                    reads_anchor = projects is None or any(projects[sl])
                    self._update(lay, b, gat, upd_fn(b), K.fields_at(cupd, sl), cfg, reads_anchor)
        self._commit(lay, step, new)

    def _bucket_stats(self, b: Bucket, gat: tuple[Tensor, Tensor, list[int]], cstats: Any,
                      cfg: _Config) -> K.DiGraPStats:
        """Eager statistics of bucket ``b`` (``cstats``: its members' statistics
        coefficients), summed over its row blocks."""
        g, p, _ = gat
        cs = K.fields_to(cstats, K.compute_dtype(p.dtype))
        bufs = [b.bufs.get("anchor"), b.bufs.get("exp_avg"), b.bufs.get("exp_avg_sq"), _prev_update(b)]
        out = None
        for sl in self._row_blocks(b):  # per-tensor sums add up over row blocks
            o = _stats(rows(g, sl), rows(p, sl), *(rows(t, sl) for t in bufs), cs, cfg, b.red_dim)
            out = o if out is None else K.DiGraPStats(*[x + y for x, y in zip(out, o)])
        assert out is not None
        return K.fields_to(out, cstats.c_prev.dtype)

    def _update(self, lay: Layout, b: Bucket, gat: tuple[Tensor, Tensor, list[int]], fn: Callable, cupd: Any,
                cfg: _Config, reads_anchor: bool) -> None:
        """Base step of bucket ``b`` with the projected gradient (update coefficients ``cupd``)."""
        g, p, act = gat
        p0 = b.bufs.get("anchor") if reads_anchor else None
        cu = K.fields_to(cupd, K.compute_dtype(p.dtype))
        masked = len(act) < b.n
        for sl in self._row_blocks(b):
            R = lambda t: rows(t, sl)  # noqa: E731
            if cfg.base == "sgd":
                fn(R(g), R(p), R(p0), R(b.bufs.get("momentum_buffer")), R(b.bufs.get("last_update")), cu,
                   cfg.momentum, cfg.dampening, cfg.nesterov, masked)
            else:
                fn(R(g), R(p), R(p0), R(b.bufs["exp_avg"]), R(b.bufs["exp_avg_sq"]), cu,
                   cfg.beta1, cfg.beta2, cfg.eps, masked)
        lay.scatter(b, act)


# ---- per-tensor scalar math (shared by the eager and the compiled step) ---------------------


class _Config(NamedTuple):
    """A group's hyper-parameters as the step functions take them (constants to a compiled graph)."""

    base: str
    with_prev: bool  # omega is trainable and the layout has stepped before: compute h
    omega: float | None
    two_sided: float | None
    mu: float
    omega_betas: tuple[float, float]
    omega_eps: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    momentum: float
    dampening: float
    nesterov: bool


def _prev_update(b: Bucket) -> Tensor | None:
    """SGD base: the buffer holding the previous update direction (None for Adam)."""
    return b.bufs.get("last_update", b.bufs.get("momentum_buffer"))


def _stats_coef(sc: _Scalars, cfg: _Config) -> K.DiGraPAdamStatsCoef | K.DiGraPSgdStatsCoef:
    """The statistics kernels' coefficients from the per-tensor scalars."""
    t = sc.step
    has_prev = t > 0
    zero, one = torch.zeros_like(t), torch.ones_like(t)
    if cfg.base == "sgd":
        return K.DiGraPSgdStatsCoef(prev_lr=torch.where(has_prev, sc.prev_lr, zero), c_prev=sc.proj_coef)
    return K.DiGraPAdamStatsCoef(
        prev_lr_bc1=torch.where(has_prev, sc.prev_lr / bias_correction(cfg.beta1, t), zero),
        prev_inv_bc2=torch.where(has_prev, 1.0 / bias_correction(cfg.beta2, t), one),
        prev_inv_decay=torch.where(has_prev, 1.0 / sc.prev_decay, one),
        c_prev=sc.proj_coef,
    )


def _stats(g, p, p0, m, v, prev, cs, cfg: _Config, red: int) -> K.DiGraPStats:  # noqa: ANN001
    if cfg.base == "sgd":
        return K.digrap_sgd_stats(g, p, p0, prev, cs, cfg.with_prev, red)
    return K.digrap_adam_stats(g, p, p0, m, v, cs, cfg.with_prev, cfg.eps, red)


def _scalars(stats: K.DiGraPStats, sc: _Scalars, act: Tensor, lr: Tensor,
             cfg: _Config) -> tuple[K.DiGraPAdamUpdateCoef | K.DiGraPSgdUpdateCoef, _Scalars]:
    """From the statistics of ``n`` tensors and their scalars ``sc``: the update kernels'
    coefficients and the new scalars."""
    d, dd, gg, h = stats
    t = sc.step
    tn = t + 1
    zero, one = torch.zeros_like(d), torch.ones_like(d)
    om_m, om_v = sc.omega_exp_avg, sc.omega_exp_avg_sq
    if cfg.omega is None:
        om, m_new, v_new = scalar_adam(sc.omega, om_m, om_v, h, tn, cfg.mu, cfg.omega_betas, cfg.omega_eps)
        first = tn == 1  # omega starts at 0 and learns from the tensor's second step on
        om = torch.where(first, zero, torch.clamp(om, 0.0, 1.0))
        om_m = torch.where(first, om_m, m_new)
        om_v = torch.where(first, om_v, v_new)
    else:
        om = torch.full_like(d, cfg.omega)
    c = d / (dd + 1e-8)
    conflict = d < 0
    if cfg.two_sided is None:
        a = one
        bcoef = torch.where(conflict, -om * c, zero)
    else:
        lam = cfg.two_sided
        a = torch.where(conflict, 1.0 - om * lam * d / (gg + 1e-8), one)
        bcoef = lam - torch.where(conflict, om * c, zero)
    lr_v = lr.expand_as(d)
    wd = cfg.weight_decay
    cupd: K.DiGraPAdamUpdateCoef | K.DiGraPSgdUpdateCoef
    if cfg.base == "sgd":
        decay = one
        cupd = K.DiGraPSgdUpdateCoef(a=a, b=bcoef, lr=lr_v, wdc=torch.full_like(d, wd), first=(t == 0).to(d.dtype),
                                     active=act)
    else:
        decay = 1.0 - lr_v * wd if cfg.base == "adamw" else one
        cupd = K.DiGraPAdamUpdateCoef(
            a=a, b=bcoef, lr_bc1=lr_v / bias_correction(cfg.beta1, tn), inv_bc2=1.0 / bias_correction(cfg.beta2, tn),
            decay=decay, wdc=torch.full_like(d, wd if cfg.base == "adam" else 0.0), active=act,
        )
    new = _Scalars(step=tn, omega=om, omega_exp_avg=om_m, omega_exp_avg_sq=om_v, proj_coef=c, prev_lr=lr_v,
                   prev_decay=decay)
    return cupd, new


def _stats_and_scalars(g, p, p0, m, v, prev, sc: _Scalars, cs, act, lr, cfg: _Config, red: int):  # noqa: ANN001, ANN201
    """One bucket's statistics pass (``cs``: its members' statistics coefficients) and scalar
    math (compiled as one graph): returns the update coefficients in the kernels' dtype, the
    new scalars, and whether any member projects."""
    cdt = K.compute_dtype(p.dtype)
    stats = _stats(g, p, p0, m, v, prev, K.fields_to(cs, cdt), cfg, red)
    cupd, new = _scalars(K.fields_to(stats, sc.step.dtype), sc, act, lr, cfg)
    return K.fields_to(cupd, cdt), new, cupd.b.ne(0).any()


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
