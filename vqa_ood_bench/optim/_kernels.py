"""Element kernels shared by the anchored optimizers (DiGraP, FTP).

Every kernel works on ``(n, ...)`` blocks: ``n`` tensors of one shape, each viewed as its
rows (see :mod:`._common`); ``red`` is the dimension that runs along a row (2 for the usual
``(n, rows, cols)`` layout, 1 for the transposed ``(n, cols, rows)`` layout used for short
rows). Per-tensor scalars come in as named tuples of ``(n,)`` vectors (the ``*Coef`` classes
below), and per-tensor reductions come back as named tuples of ``(n,)`` vectors, so one call
serves one large tensor or a few hundred LoRA factors. ``torch.compile`` takes the named
tuples as they are (as pytrees: one graph input per field).

The functions are plain eager PyTorch. :func:`compiled` returns a ``torch.compile``-d version
in which a statistics kernel reads each input once and an update kernel reads each input once
and writes the parameter and its moment buffers in place. (Inductor's CPU backend does not put
a reduction and tensor-sized stores into one loop, so a kernel that does both, such as FTP's
candidate step, sweeps twice.) Eager and compiled versions agree up to float rounding.

Arithmetic is done in float32 for (b)float16/float32 tensors and in float64 for float64.
"""

from __future__ import annotations

import contextlib
import inspect
import subprocess
import threading
import warnings
from typing import Callable, Iterator, NamedTuple, Sequence, TypeVar

import torch
from torch import Tensor

__all__ = [
    "DiGraPAdamStatsCoef",
    "DiGraPAdamUpdateCoef",
    "DiGraPSgdStatsCoef",
    "DiGraPSgdUpdateCoef",
    "DiGraPStats",
    "FTPAdamCoef",
    "FTPSgdCoef",
    "FTPStats",
    "compiled",
    "compute_dtype",
    "digrap_adam_stats",
    "digrap_adam_update",
    "digrap_sgd_stats",
    "digrap_sgd_update",
    "fields_at",
    "fields_cat",
    "fields_to",
    "ftp_adam_candidate",
    "ftp_adam_stats",
    "ftp_adam_update",
    "ftp_project",
    "ftp_sgd_candidate",
    "ftp_sgd_stats",
    "ftp_sgd_update",
    "recompile_scope",
]

#: eps of the row-wise L2 normalisation in DiGraP's hyper-gradient (``F.normalize``'s default)
NORMALIZE_EPS = 1e-12


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels compute in for tensors of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------
# named per-tensor vectors
# --------------------------------------------------------------------------------------------

F = TypeVar("F", bound=tuple)


def fields_to(fields: F, dtype: torch.dtype) -> F:
    """Every ``(n,)`` field of a named tuple as ``dtype``."""
    return type(fields)(*[t.to(dtype) for t in fields])


def fields_at(fields: F, sl: slice) -> F:
    """Members ``sl`` of every field of a named tuple."""
    return type(fields)(*[t[sl] for t in fields])


def fields_cat(parts: Sequence[F]) -> F:
    """Named tuples of consecutive members joined field by field."""
    return type(parts[0])(*[torch.cat(ts, 0) for ts in zip(*parts)])


def _col(x: Tensor, block: Tensor) -> Tensor:
    """A per-tensor ``(n,)`` vector broadcastable against an ``(n, ...)`` block."""
    return x.view(-1, *([1] * (block.dim() - 1)))


def _total(x: Tensor) -> Tensor:
    """Per-tensor sum of an ``(n, ...)`` block of row results."""
    return x.sum(tuple(range(1, x.dim())))


class DiGraPAdamStatsCoef(NamedTuple):
    """DiGraP's statistics pass on an Adam(W) base: what rebuilds ``P_{t-1}``."""

    prev_lr_bc1: Tensor  # lr_{t-1} / (1 - beta1^(t-1)); 0 when the tensor has no previous step
    prev_inv_bc2: Tensor  # 1 / (1 - beta2^(t-1))
    prev_inv_decay: Tensor  # 1 / (1 - lr_{t-1} * wd) with decoupled decay, else 1
    c_prev: Tensor  # P_{t-1} = c_{t-1} * (theta_{t-1} - theta0)


class DiGraPSgdStatsCoef(NamedTuple):
    """DiGraP's statistics pass on an SGD base."""

    prev_lr: Tensor  # lr_{t-1}; 0 when the tensor has no previous step
    c_prev: Tensor


class DiGraPAdamUpdateCoef(NamedTuple):
    """DiGraP's Adam(W) update; the applied gradient is ``a*g + b*(theta - theta0) + wdc*theta``."""

    a: Tensor
    b: Tensor
    lr_bc1: Tensor  # lr / (1 - beta1^t)
    inv_bc2: Tensor  # 1 / (1 - beta2^t)
    decay: Tensor  # 1 - lr*wd with decoupled decay, else 1
    wdc: Tensor  # coupled L2 (Adam), else 0
    active: Tensor  # 1: the tensor has a gradient this step; 0: it keeps weights and state


class DiGraPSgdUpdateCoef(NamedTuple):
    """DiGraP's SGD update (applied gradient as for Adam, coupled L2)."""

    a: Tensor
    b: Tensor
    lr: Tensor
    wdc: Tensor
    first: Tensor  # 1: the momentum buffer is not set yet and starts as the applied gradient
    active: Tensor


class DiGraPStats(NamedTuple):
    """DiGraP's per-tensor statistics (``D = theta - theta0``)."""

    gd: Tensor  # <g, D>
    dd: Tensor  # |D|^2
    gg: Tensor  # |g|^2
    h: Tensor  # sum over rows of cos(g_row, P_{t-1,row}); 0 without a previous step


class FTPAdamCoef(NamedTuple):
    """FTP's Adam(W) candidate step."""

    lr_bc1: Tensor  # lr / (1 - beta1^t)
    inv_bc2: Tensor  # 1 / (1 - beta2^t)
    decay: Tensor  # 1 - lr*wd with decoupled decay, else 1
    wdc: Tensor  # coupled L2 (Adam), else 0
    active: Tensor


class FTPSgdCoef(NamedTuple):
    """FTP's SGD candidate step."""

    lr: Tensor
    wdc: Tensor
    active: Tensor
    first: Tensor


class FTPStats(NamedTuple):
    """FTP's per-tensor statistics of the candidate step ``c_t``."""

    hyper: Tensor  # sum_rows <g_row, c_{t-1,row}> / (|c_{t-1,row}|_1 + 1e-8)
    max_norm: Tensor  # max_rows |c_{t,row}|_1 + 1e-8


# --------------------------------------------------------------------------------------------
# pieces shared by the kernels
# --------------------------------------------------------------------------------------------


def _delta(pf: Tensor, p0: Tensor | None, cdt: torch.dtype) -> Tensor:
    return pf - p0.to(cdt) if p0 is not None else pf


def _adam_moments(gp: Tensor, mf: Tensor, vf: Tensor, beta1: float, beta2: float) -> tuple[Tensor, Tensor]:
    """Adam's new first and second moments for the applied gradient ``gp``."""
    return mf + (gp - mf) * (1.0 - beta1), vf * beta2 + gp * gp * (1.0 - beta2)


def _adam_weights(pf: Tensor, mn: Tensor, vn: Tensor, decay: Tensor, lr_bc1: Tensor, bc2: Tensor, eps: float) -> Tensor:
    """Adam(W)'s new weights: ``theta * decay - lr/(1-b1^t) * m / (sqrt(v/(1-b2^t)) + eps)``."""
    return pf * decay - lr_bc1 * mn / (torch.sqrt(vn * bc2) + eps)


def _sgd_direction(
    gp: Tensor,
    buf: Tensor | None,
    first: Tensor,
    act: Tensor,
    momentum: float,
    dampening: float,
    nesterov: bool,
    masked: bool,
    cdt: torch.dtype,
) -> tuple[Tensor, Tensor | None]:
    """torch.optim.SGD's update direction for ``gp`` and the new momentum buffer (``None``
    without one; ``first``: the buffer is not set yet and starts as ``gp``; members that are
    not ``act``-ive keep theirs when ``masked``). Nothing is written."""
    if buf is None:
        return gp, None
    bf = buf.to(cdt)
    nb = torch.where(first, gp, bf * momentum + gp * (1.0 - dampening))
    upd = gp + nb * momentum if nesterov else nb
    return upd, torch.where(act, nb, bf) if masked else nb


def _digrap_sums(gf: Tensor, d: Tensor, dp: Tensor | None, cprev: Tensor, red: int) -> DiGraPStats:
    """Per-tensor ``<g,D>, |D|^2, |g|^2`` and the hyper-gradient
    ``h = sum_rows cos(g_row, c_prev * D'_row)`` (0 when ``dp`` is None)."""
    gg = (gf * gf).sum(red)
    gd, dd = _total((gf * d).sum(red)), _total((d * d).sum(red))
    if dp is None:
        return DiGraPStats(gd, dd, _total(gg), torch.zeros_like(gd))
    e = (gf * dp).sum(red)
    q = (dp * dp).sum(red)
    cp = _col(cprev, gg)
    gnorm = torch.clamp_min(torch.sqrt(gg), NORMALIZE_EPS)
    pnorm = torch.clamp_min(cp.abs() * torch.sqrt(q), NORMALIZE_EPS)
    return DiGraPStats(gd, dd, _total(gg), _total(cp * e / (gnorm * pnorm)))


# --------------------------------------------------------------------------------------------
# DiGraP, Adam / AdamW base
# --------------------------------------------------------------------------------------------


def digrap_adam_stats(
    g: Tensor,
    p: Tensor,
    p0: Tensor | None,
    m: Tensor,
    v: Tensor,
    coef: DiGraPAdamStatsCoef,
    with_prev: bool,
    eps: float,
    red: int,
) -> DiGraPStats:
    """``<g,D>, |D|^2, |g|^2, h`` with ``D = theta - theta0``.

    The previous weights are recomputed from the current ones and the not-yet-updated Adam
    moments, ``theta_{t-1} = (theta_t + lr_{t-1} m_hat / (sqrt(v_hat) + eps)) / (1 - lr_{t-1} wd)``,
    so no copy of them is kept.
    """
    cdt = compute_dtype(p.dtype)
    gf = g.to(cdt)
    pf = p.to(cdt)
    d = _delta(pf, p0, cdt)
    dp = None
    if with_prev:
        u = m.to(cdt) / (torch.sqrt(v.to(cdt) * _col(coef.prev_inv_bc2, pf)) + eps)
        dp = _delta((pf + _col(coef.prev_lr_bc1, pf) * u) * _col(coef.prev_inv_decay, pf), p0, cdt)
    return _digrap_sums(gf, d, dp, coef.c_prev, red)


def digrap_adam_update(
    g: Tensor,
    p: Tensor,
    p0: Tensor | None,
    m: Tensor,
    v: Tensor,
    coef: DiGraPAdamUpdateCoef,
    beta1: float,
    beta2: float,
    eps: float,
    masked: bool,
) -> None:
    """Adam(W) step, in place, with the applied gradient ``a*g + b*(theta - theta0) + wdc*theta``."""
    cdt = compute_dtype(p.dtype)
    pf = p.to(cdt)
    mf = m.to(cdt)
    vf = v.to(cdt)
    c = type(coef)(*[_col(x, pf) for x in coef])
    gp = c.a * g.to(cdt) + c.b * _delta(pf, p0, cdt) + c.wdc * pf
    mn, vn = _adam_moments(gp, mf, vf, beta1, beta2)
    pn = _adam_weights(pf, mn, vn, c.decay, c.lr_bc1, c.inv_bc2, eps)
    if masked:
        act = c.active > 0
        mn = torch.where(act, mn, mf)
        vn = torch.where(act, vn, vf)
        pn = torch.where(act, pn, pf)
    m.copy_(mn)
    v.copy_(vn)
    p.copy_(pn)


# --------------------------------------------------------------------------------------------
# DiGraP, SGD base (momentum, Nesterov or plain; coupled L2)
# --------------------------------------------------------------------------------------------


def digrap_sgd_stats(
    g: Tensor,
    p: Tensor,
    p0: Tensor | None,
    prev_update: Tensor | None,
    coef: DiGraPSgdStatsCoef,
    with_prev: bool,
    red: int,
) -> DiGraPStats:
    """As :func:`digrap_adam_stats`, with ``theta_{t-1} = theta_t + lr_{t-1} * update_{t-1}``."""
    cdt = compute_dtype(p.dtype)
    gf = g.to(cdt)
    d = _delta(p.to(cdt), p0, cdt)
    dp = None
    if with_prev and prev_update is not None:
        dp = d + _col(coef.prev_lr, d) * prev_update.to(cdt)
    return _digrap_sums(gf, d, dp, coef.c_prev, red)


def digrap_sgd_update(
    g: Tensor,
    p: Tensor,
    p0: Tensor | None,
    buf: Tensor | None,
    last: Tensor | None,
    coef: DiGraPSgdUpdateCoef,
    momentum: float,
    dampening: float,
    nesterov: bool,
    masked: bool,
) -> None:
    """torch.optim.SGD's step, in place, with the applied gradient
    ``a*g + b*(theta - theta0) + wdc*theta``; ``last`` receives the update direction."""
    cdt = compute_dtype(p.dtype)
    pf = p.to(cdt)
    c = type(coef)(*[_col(x, pf) for x in coef])
    gp = c.a * g.to(cdt) + c.b * _delta(pf, p0, cdt) + c.wdc * pf
    act = c.active > 0
    upd, nb = _sgd_direction(gp, buf, c.first > 0, act, momentum, dampening, nesterov, masked, cdt)
    if buf is not None:
        buf.copy_(nb)
    if last is not None:
        lf = last.to(cdt)
        last.copy_(torch.where(act, upd, lf) if masked else upd)
    pn = pf - c.lr * upd
    p.copy_(torch.where(act, pn, pf) if masked else pn)


# --------------------------------------------------------------------------------------------
# FTP
# --------------------------------------------------------------------------------------------
#
# Two kernel pairs, one result:
# - eager (``*_candidate`` + ``ftp_project``): the candidate (unconstrained) step writes the
#   moments and ``c`` and returns the statistics; the projection then writes the weights. Each
#   tensor op is computed once.
# - compiled (``*_stats`` + ``*_update``): a read-only statistics pass over the candidate step,
#   then one pass that takes the candidate step again and projects it. Inductor's CPU backend
#   puts a reduction and tensor-sized stores into separate loops, so the eager pair compiled
#   would read its inputs three times; this pair reads them twice.
# ``gamma`` (the radius, ``(n,)``) comes in separately: the candidate step does not need it.


def _ftp_sums(gf: Tensor, cn: Tensor, cprev: Tensor, red: int) -> tuple[FTPStats, Tensor]:
    rownorm = cn.abs().sum(red) + 1e-8  # (n, rows)
    prevnorm = cprev.abs().sum(red) + 1e-8
    hyper = _total((gf * cprev).sum(red) / prevnorm)
    return FTPStats(hyper, rownorm.amax(tuple(range(1, rownorm.dim())))), rownorm


def _ftp_adam_candidate(g, p, p0, m, v, coef: FTPAdamCoef, beta1, beta2, eps, masked, cdt):  # noqa: ANN001, ANN202
    """Adam(W)'s candidate step: ``(g, theta, m_new, v_new, c = theta_new - theta0)`` in ``cdt``
    (members that are not active keep their moments when ``masked``; ``c`` is not masked)."""
    gf = g.to(cdt)
    pf = p.to(cdt)
    mf, vf = m.to(cdt), v.to(cdt)
    c = type(coef)(*[_col(x, pf) for x in coef])
    gp = gf + c.wdc * pf
    mn, vn = _adam_moments(gp, mf, vf, beta1, beta2)
    cn = _delta(_adam_weights(pf, mn, vn, c.decay, c.lr_bc1, c.inv_bc2, eps), p0, cdt)
    if masked:
        act = c.active > 0
        mn = torch.where(act, mn, mf)
        vn = torch.where(act, vn, vf)
    return gf, pf, mn, vn, cn


def _ftp_sgd_candidate(g, p, p0, buf, coef: FTPSgdCoef, momentum, dampening, nesterov, masked,  # noqa: ANN001, ANN202
                       cdt):  # noqa: ANN001
    """SGD's candidate step: ``(g, theta, new momentum buffer or None, c = theta_new - theta0)``."""
    gf = g.to(cdt)
    pf = p.to(cdt)
    c = type(coef)(*[_col(x, pf) for x in coef])
    gp = gf + c.wdc * pf
    upd, nb = _sgd_direction(gp, buf, c.first > 0, c.active > 0, momentum, dampening, nesterov, masked, cdt)
    return gf, pf, nb, _delta(pf - c.lr * upd, p0, cdt)


def _ftp_stats(gf: Tensor, cn: Tensor, cbuf: Tensor, active: Tensor, red: int, masked: bool) -> tuple[FTPStats, Tensor]:
    cp = cbuf.to(cn.dtype)
    if masked:  # idle members: their (unused) row norms come from c_prev
        cn = torch.where(_col(active, cn) > 0, cn, cp)
    return _ftp_sums(gf, cn, cp, red)


def _ftp_projected(p0: Tensor | None, cn: Tensor, rownorm: Tensor, gamma: Tensor, red: int) -> Tensor:
    """``theta0 + clamp(gamma / (|c_row|_1 + 1e-8), 0, 1) * c``."""
    scale = torch.clamp(_col(gamma, rownorm) / rownorm, 0.0, 1.0).unsqueeze(red)
    new = scale * cn
    return p0.to(cn.dtype) + new if p0 is not None else new


def _ftp_write(p: Tensor, p0: Tensor | None, pf: Tensor, cbuf: Tensor, cn: Tensor, rownorm: Tensor, gamma: Tensor,
               active: Tensor, red: int, masked: bool) -> None:
    """The projected weights and ``c_prev = c``, in place (idle members keep both when ``masked``)."""
    new = _ftp_projected(p0, cn, rownorm, gamma, red)
    if masked:
        new = torch.where(_col(active, new) > 0, new, pf)
    _ftp_keep_c(cbuf, cn, active, masked)
    p.copy_(new)


def _ftp_keep_c(cbuf: Tensor, cn: Tensor, active: Tensor, masked: bool) -> None:
    """``c_prev = c`` (idle members keep theirs when ``masked``)."""
    cbuf.copy_(torch.where(_col(active, cn) > 0, cn, cbuf.to(cn.dtype)) if masked else cn)


def ftp_adam_candidate(
    g: Tensor,
    p: Tensor,
    p0: Tensor | None,
    m: Tensor,
    v: Tensor,
    cbuf: Tensor,
    coef: FTPAdamCoef,
    beta1: float,
    beta2: float,
    eps: float,
    red: int,
    masked: bool,
) -> tuple[FTPStats, Tensor]:
    """Adam(W) step to the unconstrained weights (eager pair): writes the moments and ``c``
    (``c_{t-1} -> c_t``), not the weights; returns :func:`ftp_adam_stats`'s statistics."""
    cdt = compute_dtype(p.dtype)
    gf, _, mn, vn, cn = _ftp_adam_candidate(g, p, p0, m, v, coef, beta1, beta2, eps, masked, cdt)
    out = _ftp_stats(gf, cn, cbuf, coef.active, red, masked)
    m.copy_(mn)
    v.copy_(vn)
    _ftp_keep_c(cbuf, cn, coef.active, masked)
    return out


def ftp_sgd_candidate(
    g: Tensor,
    p: Tensor,
    p0: Tensor | None,
    buf: Tensor | None,
    cbuf: Tensor,
    coef: FTPSgdCoef,
    momentum: float,
    dampening: float,
    nesterov: bool,
    red: int,
    masked: bool,
) -> tuple[FTPStats, Tensor]:
    """As :func:`ftp_adam_candidate` for the SGD candidate step."""
    cdt = compute_dtype(p.dtype)
    gf, _, nb, cn = _ftp_sgd_candidate(g, p, p0, buf, coef, momentum, dampening, nesterov, masked, cdt)
    out = _ftp_stats(gf, cn, cbuf, coef.active, red, masked)
    if buf is not None:
        buf.copy_(nb)
    _ftp_keep_c(cbuf, cn, coef.active, masked)
    return out


def ftp_project(p: Tensor, p0: Tensor | None, cbuf: Tensor, rownorm: Tensor, gamma: Tensor, active: Tensor, red: int,
                masked: bool) -> None:
    """Eager pair: ``theta = theta0 + clamp(gamma / (|c_row|_1 + 1e-8), 0, 1) * c``, in place."""
    cdt = compute_dtype(p.dtype)
    new = _ftp_projected(p0, cbuf.to(cdt), rownorm, gamma, red)
    if masked:
        new = torch.where(_col(active, new) > 0, new, p.to(cdt))
    p.copy_(new)


def ftp_adam_stats(
    g: Tensor,
    p: Tensor,
    p0: Tensor | None,
    m: Tensor,
    v: Tensor,
    cbuf: Tensor,
    coef: FTPAdamCoef,
    beta1: float,
    beta2: float,
    eps: float,
    red: int,
    masked: bool,
) -> tuple[FTPStats, Tensor]:
    """Statistics of the Adam(W) candidate step ``c_t`` (nothing is written), and the row
    norms ``|c_t,row|_1 + 1e-8`` ``(n, rows)``."""
    cdt = compute_dtype(p.dtype)
    gf, _, _, _, cn = _ftp_adam_candidate(g, p, p0, m, v, coef, beta1, beta2, eps, masked, cdt)
    return _ftp_stats(gf, cn, cbuf, coef.active, red, masked)


def ftp_adam_update(
    g: Tensor,
    p: Tensor,
    p0: Tensor | None,
    m: Tensor,
    v: Tensor,
    cbuf: Tensor,
    rownorm: Tensor,
    coef: FTPAdamCoef,
    gamma: Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    red: int,
    masked: bool,
) -> None:
    """The Adam(W) candidate step again, projected: writes the moments, ``c_prev`` and the weights."""
    cdt = compute_dtype(p.dtype)
    _, pf, mn, vn, cn = _ftp_adam_candidate(g, p, p0, m, v, coef, beta1, beta2, eps, masked, cdt)
    m.copy_(mn)
    v.copy_(vn)
    _ftp_write(p, p0, pf, cbuf, cn, rownorm, gamma, coef.active, red, masked)


def ftp_sgd_stats(
    g: Tensor,
    p: Tensor,
    p0: Tensor | None,
    buf: Tensor | None,
    cbuf: Tensor,
    coef: FTPSgdCoef,
    momentum: float,
    dampening: float,
    nesterov: bool,
    red: int,
    masked: bool,
) -> tuple[FTPStats, Tensor]:
    """As :func:`ftp_adam_stats` for the SGD (coupled L2, momentum / Nesterov) candidate step."""
    cdt = compute_dtype(p.dtype)
    gf, _, _, cn = _ftp_sgd_candidate(g, p, p0, buf, coef, momentum, dampening, nesterov, masked, cdt)
    return _ftp_stats(gf, cn, cbuf, coef.active, red, masked)


def ftp_sgd_update(
    g: Tensor,
    p: Tensor,
    p0: Tensor | None,
    buf: Tensor | None,
    cbuf: Tensor,
    rownorm: Tensor,
    coef: FTPSgdCoef,
    gamma: Tensor,
    momentum: float,
    dampening: float,
    nesterov: bool,
    red: int,
    masked: bool,
) -> None:
    """As :func:`ftp_adam_update` for the SGD candidate step."""
    cdt = compute_dtype(p.dtype)
    _, pf, nb, cn = _ftp_sgd_candidate(g, p, p0, buf, coef, momentum, dampening, nesterov, masked, cdt)
    if buf is not None:
        buf.copy_(nb)
    _ftp_write(p, p0, pf, cbuf, cn, rownorm, gamma, coef.active, red, masked)


# --------------------------------------------------------------------------------------------
# torch.compile cache
# --------------------------------------------------------------------------------------------

# Keep loop-invariant per-tensor scalars and the recomputed previous weights fused into the
# single sweep instead of materialising tensor-sized temporaries.
_INDUCTOR_OPTIONS = {
    "realize_opcount_threshold": 10_000,
    "realize_reads_threshold": 10_000,
    "realize_acc_reads_threshold": 10_000,
}

_lock = threading.Lock()
_cache: dict[tuple[Callable, bool], Callable] = {}

#: recompiles allowed per kernel: flags x size-1 dimensions x (static) distinct large shapes
RECOMPILE_LIMIT = 256
#: torch.compile takes a recompile limit of its own per compiled function from torch 2.14 on;
#: before, there is only the process-wide one (see :func:`recompile_scope`)
_LIMIT_PER_FUNCTION = "recompile_limit" in inspect.signature(torch.compile).parameters


def compiled(fn: Callable, *, static: bool = False) -> Callable:
    """``torch.compile(fn)``, cached per kernel and mode (shared by all optimizers).

    ``static=False`` compiles for dynamic shapes (one compiled kernel serves every bucket);
    ``static=True`` specialises on each shape, which lets the generated code drop tail loops and
    index arithmetic (faster on large tensors, one compile per distinct shape): used for
    the large tensors that are processed in place. Each kernel also specialises on its flags
    (reduction dim, masked, with_prev, anchor or not) and on size-1 dimensions, more than
    torch's default of 8 recompiles, so each kernel gets a limit of :data:`RECOMPILE_LIMIT`
    of its own (torch's setting is left alone). If compiling fails (no C compiler, an
    unsupported build), the kernel falls back to eager for the rest of the process, with
    one warning: same results, only slower.
    """
    with _lock:
        out = _cache.get((fn, static))
        if out is None:
            limit = {"recompile_limit": RECOMPILE_LIMIT} if _LIMIT_PER_FUNCTION else {}
            comp = torch.compile(fn, dynamic=not static, options=dict(_INDUCTOR_OPTIONS), **limit)
            out = _with_eager_fallback(fn, comp)
            _cache[(fn, static)] = out
        return out


@contextlib.contextmanager
def recompile_scope() -> Iterator[None]:
    """Around a compiled optimizer step: where torch has no recompile limit per compiled
    function (torch 2.13), raise the process-wide one to :data:`RECOMPILE_LIMIT` while the
    step runs and put it back afterwards. Once per step, not per kernel call: changing torch's
    config costs microseconds, and a step makes a few hundred kernel calls. With torch 2.14
    on, nothing."""
    if _LIMIT_PER_FUNCTION:
        yield
        return
    import torch._dynamo

    cfg = torch._dynamo.config
    old = cfg.recompile_limit
    cfg.recompile_limit = max(old, RECOMPILE_LIMIT)
    try:
        yield
    finally:
        cfg.recompile_limit = old


def _compile_errors() -> tuple[type[BaseException], ...]:
    """What a failed compile raises: dynamo wraps backend failures (inductor's lowering and
    C++ compile errors, a missing compiler) into its own exceptions, and the code cache can
    raise the C++ compile errors or a file-system error itself at the first call. Errors of
    the kernel's own (a bad shape, out of memory) are none of these and propagate."""
    from torch._dynamo.exc import TorchDynamoException
    from torch._inductor.exc import CppCompileError, InvalidCxxCompiler

    return (TorchDynamoException, CppCompileError, InvalidCxxCompiler, subprocess.CalledProcessError, OSError)


def _with_eager_fallback(eager: Callable, comp: Callable) -> Callable:
    state = {"failed": False}

    def run(*args, **kwargs):
        if not state["failed"]:
            try:
                return comp(*args, **kwargs)
            except _compile_errors() as exc:
                state["failed"] = True
                warnings.warn(f"torch.compile of {eager.__name__} failed ({type(exc).__name__}); running eagerly",
                              stacklevel=2)
        return eager(*args, **kwargs)

    return run
