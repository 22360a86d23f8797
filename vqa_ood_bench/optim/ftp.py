"""FTP: Fast Trainable Projection (Tian et al., NeurIPS 2023), as a torch optimizer.

Per step and per tensor with a gradient ``g``::

    c     = (theta - d) - theta0            # d: the base step (SGD or Adam(W)); theta0: anchor
    n_r   = |c_row|_1 + 1e-8                # rows along dim 0, the rest flattened (as the
                                            # authors' code, conv kernels too); 1-D: one row
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

from typing import Any, NamedTuple, Sequence

import torch
from torch import Tensor

from ..errors import ConfigError
from . import _kernels as K
from ._bucketed import BucketedBase, base_hparams, rows
from ._common import Bucket, Gathered, Layout, bias_correction, scalar_adam

__all__ = ["FTP"]

#: radius at a tensor's first step (pulls the first step almost fully back) and lower clamp
GAMMA_MIN = 1e-8


class _Scalars(NamedTuple):
    """FTP's per-tensor scalar state, ``(n,)`` each; the names are the keys in
    ``optimizer.state[p]``."""

    step: Tensor  # the tensor's own step count
    gamma: Tensor  # the radius
    gamma_exp_avg: Tensor  # Adam on the radius
    gamma_exp_avg_sq: Tensor


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

    Scalars = _Scalars
    scalar_names = _Scalars._fields

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
        super().__init__(params, defaults, compile=compile, base=base, exclude=exclude, foreach=foreach,
                         fused=fused)

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

    def _config(self, group: dict[str, Any]) -> _Config:
        return _Config(
            base=self.base,
            k=float(group["k"]),
            mu=float(group["mu"]),
            gamma_betas=(float(group["gamma_betas"][0]), float(group["gamma_betas"][1])),
            gamma_eps=float(group["gamma_eps"]),
            **base_hparams(self.base, group),
        )

    def _step_layout(self, group: dict[str, Any], lay: Layout, step: Gathered) -> None:
        cfg = self._config(group)
        dev, sdt = lay.device, lay.sdtype
        sc, act_f, lr = self._step_inputs(group, lay, step)
        # Once for the whole layout, outside the compiled kernels: computed inside one, inductor
        # inlined the bias corrections (double-precision powers) into the loop over the elements.
        coef = _candidate_coef(sc, act_f, lr, cfg)
        if self._compile:
            # Per bucket: statistics and radius in one compiled graph, then the pass that writes,
            # back to back, so that the second pass finds the bucket's tensors still in cache
            # where they fit. Large (direct) tensors take the read-only statistics pass and one
            # update pass (the candidate kernel compiles to two sweeps); bucketed small tensors
            # take the candidate step and the projection (the dynamic-shape update kernel
            # compiles to two loops). benchmarks/bench_optim.py measured both choices.
            stats_fn, cand_fn = self._kernel(_stats_and_radius), self._kernel(_candidate_and_radius)
            upd_fn = self._kernel(K.ftp_sgd_update if cfg.base == "sgd" else K.ftp_adam_update)
            proj_fn = self._kernel(K.ftp_project)

            def run(b: Bucket, gat: tuple[Tensor, Tensor, list[int]], sl: slice) -> _Scalars:
                g, p, act = gat
                masked = len(act) < b.n
                fn = stats_fn(b) if b.direct else cand_fn(b)
                cs, gamma, new, rn = fn(g, p, *_bufs(b), K.fields_at(sc, sl), K.fields_at(coef, sl), cfg, b.red_dim,
                                        masked)
                if b.direct:
                    _update(upd_fn(b), g, p, b, rn, cs, gamma, cfg, masked)
                else:
                    proj_fn(b)(p, b.bufs.get("anchor"), b.bufs["prev_c"], rn, gamma, cs.active, b.red_dim, masked)
                lay.scatter(b, act)
                return new

            new = self._per_bucket(lay, step, sc, run)
        else:
            # Eager: the candidate step writes the moments and c once, then the projection.
            totals, rownorms = [], []
            for b, gat in zip(lay.buckets, step.blocks):
                if gat is None:
                    totals.append(K.FTPStats(*torch.zeros((2, b.n), dtype=sdt, device=dev)))
                    rownorms.append(None)
                    continue
                tot, rn = self._bucket_candidate(b, gat, K.fields_at(coef, slice(b.slots.start, b.slots.stop)), cfg)
                totals.append(K.fields_to(tot, sdt))
                rownorms.append(rn)
            gamma, new = _radius(K.fields_cat(totals), sc, cfg)
            for b, gat, rn in zip(lay.buckets, step.blocks, rownorms):
                if gat is None:
                    continue
                g, p, act = gat
                cdt = K.compute_dtype(p.dtype)
                members = slice(b.slots.start, b.slots.stop)
                gam, active = gamma[members].to(cdt), coef.active[members].to(cdt)
                for sl in self._row_blocks(b):
                    K.ftp_project(rows(p, sl), rows(b.bufs.get("anchor"), sl), rows(b.bufs["prev_c"], sl),
                                  rows(rn, sl), gam, active, b.red_dim, len(act) < b.n)
                lay.scatter(b, act)
        self._commit(lay, step, new)

    def _bucket_candidate(self, b: Bucket, gat: tuple[Tensor, Tensor, list[int]], coef: Any,
                          cfg: _Config) -> tuple[K.FTPStats, Tensor]:
        """Eager candidate step of bucket ``b`` over its row blocks: the statistics and the
        ``(n, rows)`` row norms."""
        g, p, act = gat
        cs = K.fields_to(coef, K.compute_dtype(p.dtype))
        masked = len(act) < b.n
        parts = [_candidate(rows(g, sl), rows(p, sl), *(rows(t, sl) for t in _bufs(b)), cs, cfg, b.red_dim, masked)
                 for sl in self._row_blocks(b)]
        if len(parts) == 1:
            return parts[0]
        # row blocks: the hyper-gradient adds up, the largest row norm is the max
        hyper = torch.stack([t.hyper for t, _ in parts]).sum(0)
        max_norm = torch.stack([t.max_norm for t, _ in parts]).amax(0)
        return K.FTPStats(hyper, max_norm), torch.cat([r for _, r in parts], 1)


# ---- per-tensor scalar math (shared by the eager and the compiled step) ---------------------


class _Config(NamedTuple):
    """A group's hyper-parameters as the step functions take them (constants to a compiled graph)."""

    base: str
    k: float
    mu: float
    gamma_betas: tuple[float, float]
    gamma_eps: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    momentum: float
    dampening: float
    nesterov: bool


def _bufs(b: Bucket) -> tuple[Tensor | None, ...]:
    """``(anchor, exp_avg, exp_avg_sq, momentum_buffer, prev_c)`` of bucket ``b`` (None where absent)."""
    return tuple(b.bufs.get(name) for name in ("anchor", "exp_avg", "exp_avg_sq", "momentum_buffer", "prev_c"))


def _candidate_coef(sc: _Scalars, act: Tensor, lr: Tensor, cfg: _Config) -> K.FTPAdamCoef | K.FTPSgdCoef:
    """The candidate kernels' coefficients."""
    t = sc.step
    tn = t + 1
    lr_v = lr.expand_as(t)
    wd = cfg.weight_decay
    if cfg.base == "sgd":
        return K.FTPSgdCoef(lr=lr_v, wdc=torch.full_like(t, wd), active=act, first=(t == 0).to(t.dtype))
    decay = 1.0 - lr_v * wd if cfg.base == "adamw" else torch.ones_like(t)
    return K.FTPAdamCoef(
        lr_bc1=lr_v / bias_correction(cfg.beta1, tn), inv_bc2=1.0 / bias_correction(cfg.beta2, tn), decay=decay,
        wdc=torch.full_like(t, wd if cfg.base == "adam" else 0.0), active=act,
    )


def _stats(g, p, p0, m, v, buf, cbuf, cs, cfg: _Config, red: int, masked: bool):  # noqa: ANN001, ANN202
    """Read-only statistics of the candidate step."""
    if cfg.base == "sgd":
        return K.ftp_sgd_stats(g, p, p0, buf, cbuf, cs, cfg.momentum, cfg.dampening, cfg.nesterov, red, masked)
    return K.ftp_adam_stats(g, p, p0, m, v, cbuf, cs, cfg.beta1, cfg.beta2, cfg.eps, red, masked)


def _candidate(g, p, p0, m, v, buf, cbuf, cs, cfg: _Config, red: int, masked: bool):  # noqa: ANN001, ANN202
    """The candidate step (writes the moments and c) and its statistics."""
    if cfg.base == "sgd":
        return K.ftp_sgd_candidate(g, p, p0, buf, cbuf, cs, cfg.momentum, cfg.dampening, cfg.nesterov, red, masked)
    return K.ftp_adam_candidate(g, p, p0, m, v, cbuf, cs, cfg.beta1, cfg.beta2, cfg.eps, red, masked)


def _update(fn, g: Tensor, p: Tensor, b: Bucket, rn: Tensor, cs: Any, gamma: Tensor, cfg: _Config,  # noqa: ANN001
            masked: bool) -> None:
    """The compiled update kernel ``fn`` on bucket ``b``."""
    p0, m, v, buf, cbuf = _bufs(b)
    if cfg.base == "sgd":
        fn(g, p, p0, buf, cbuf, rn, cs, gamma, cfg.momentum, cfg.dampening, cfg.nesterov, b.red_dim, masked)
    else:
        fn(g, p, p0, m, v, cbuf, rn, cs, gamma, cfg.beta1, cfg.beta2, cfg.eps, b.red_dim, masked)


def _radius(totals: K.FTPStats, sc: _Scalars, cfg: _Config) -> tuple[Tensor, _Scalars]:
    """From the statistics: the new radius ``gamma`` and the new scalars."""
    gg, max_norm = totals
    tn = sc.step + 1
    gg = torch.where(gg > 0, gg * cfg.k, gg)
    gam, gm, gv = scalar_adam(sc.gamma, sc.gamma_exp_avg, sc.gamma_exp_avg_sq, gg, tn, cfg.mu, cfg.gamma_betas,
                              cfg.gamma_eps)
    first = tn == 1
    gam = torch.where(first, torch.full_like(gam, GAMMA_MIN), torch.minimum(torch.clamp_min(gam, GAMMA_MIN), max_norm))
    # a radius below GAMMA_MIN would come from max_norm of an all-zero row set: keep GAMMA_MIN
    gam = torch.clamp_min(gam, GAMMA_MIN)
    gm = torch.where(first, sc.gamma_exp_avg, gm)
    gv = torch.where(first, sc.gamma_exp_avg_sq, gv)
    return gam, _Scalars(step=tn, gamma=gam, gamma_exp_avg=gm, gamma_exp_avg_sq=gv)


def _stats_and_radius(g, p, p0, m, v, buf, cbuf, sc: _Scalars, coef, cfg: _Config, red: int, masked: bool):  # noqa: ANN001, ANN201
    """One bucket's statistics and radius (compiled as one graph; ``coef``: its members'
    candidate coefficients): returns the candidate coefficients and gamma in the kernels'
    dtype, the new scalars and the row norms."""
    cdt = K.compute_dtype(p.dtype)
    tot, rn = _stats(g, p, p0, m, v, buf, cbuf, K.fields_to(coef, cdt), cfg, red, masked)
    gamma, new = _radius(K.fields_to(tot, sc.step.dtype), sc, cfg)
    return K.fields_to(coef, cdt), gamma.to(cdt), new, rn


def _candidate_and_radius(g, p, p0, m, v, buf, cbuf, sc: _Scalars, coef, cfg: _Config, red: int, masked: bool):  # noqa: ANN001, ANN201
    """As :func:`_stats_and_radius`, with the candidate step (which writes the moments and c)
    in place of the read-only statistics: the projection follows."""
    cdt = K.compute_dtype(p.dtype)
    tot, rn = _candidate(g, p, p0, m, v, buf, cbuf, K.fields_to(coef, cdt), cfg, red, masked)
    gamma, new = _radius(K.fields_to(tot, sc.step.dtype), sc, cfg)
    return K.fields_to(coef, cdt), gamma.to(cdt), new, rn
