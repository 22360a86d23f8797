"""Element kernels shared by the anchored optimizers (DiGraP, FTP).

Every kernel works on ``(n, X, Y)`` blocks: ``n`` tensors of one shape, each viewed as its
rows (see :mod:`._common`); ``red`` is the dimension that runs along a row (2 for the usual
``(n, rows, cols)`` layout, 1 for the transposed ``(n, cols, rows)`` layout used for short
rows). Per-tensor scalars come in as an ``(n, K)`` coefficient table, and per-tensor
reductions come back as ``(n, S)`` tables, so one call serves one large tensor or a few
hundred LoRA factors.

The functions are plain eager PyTorch. :func:`compiled` returns a ``torch.compile``-d version
in which a statistics kernel reads each input once and an update kernel reads each input once
and writes the parameter and its moment buffers in place. (Inductor's CPU backend does not put
a reduction and tensor-sized stores into one loop, so a kernel that does both, such as FTP's
candidate step, sweeps twice.) Eager and compiled versions agree up to float rounding.

Arithmetic is done in float32 for (b)float16/float32 tensors and in float64 for float64.
"""

from __future__ import annotations

import threading
from typing import Callable

import torch
from torch import Tensor

__all__ = [
    "compiled",
    "compute_dtype",
    "digrap_adam_stats",
    "digrap_adam_update",
    "digrap_sgd_stats",
    "digrap_sgd_update",
    "ftp_adam_candidate",
    "ftp_adam_stats",
    "ftp_adam_update",
    "ftp_project",
    "ftp_sgd_candidate",
    "ftp_sgd_stats",
    "ftp_sgd_update",
]

#: eps of the row-wise L2 normalisation in DiGraP's hyper-gradient (``F.normalize``'s default)
NORMALIZE_EPS = 1e-12


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels compute in for tensors of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _k(coef: Tensor, k: int) -> Tensor:
    """Column ``k`` of the coefficient table, broadcastable against ``(n, X, Y)``."""
    return coef[:, k].view(-1, 1, 1)


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


def _digrap_sums(gf: Tensor, d: Tensor, dp: Tensor | None, cprev: Tensor, red: int) -> Tensor:
    """Per-tensor ``<g,D>, |D|^2, |g|^2`` and the hyper-gradient
    ``h = sum_rows cos(g_row, c_prev * D'_row)`` (0 when ``dp`` is None)."""
    gg = (gf * gf).sum(red)
    out = [(gf * d).sum(red).sum(1), (d * d).sum(red).sum(1), gg.sum(1)]
    if dp is None:
        out.append(torch.zeros_like(out[0]))
    else:
        e = (gf * dp).sum(red)
        q = (dp * dp).sum(red)
        cp = cprev.view(-1, 1)
        gnorm = torch.clamp_min(torch.sqrt(gg), NORMALIZE_EPS)
        pnorm = torch.clamp_min(cp.abs() * torch.sqrt(q), NORMALIZE_EPS)
        out.append((cp * e / (gnorm * pnorm)).sum(1))
    return torch.stack(out, 1)


# --------------------------------------------------------------------------------------------
# DiGraP, Adam / AdamW base
# --------------------------------------------------------------------------------------------
#
# stats table:  0: lr_{t-1} / (1 - beta1^(t-1))  (0 when the tensor has no previous step)
#               1: 1 / (1 - beta2^(t-1))         2: 1 / (1 - lr_{t-1} * wd) (decoupled, else 1)
#               3: c_{t-1} (P_{t-1} = c_{t-1} * (theta_{t-1} - theta0))
# update table: 0: a  1: b   -> applied gradient a*g + b*(theta - theta0) + wdc*theta
#               2: lr / (1 - beta1^t)  3: 1 / (1 - beta2^t)  4: 1 - lr*wd (decoupled, else 1)
#               5: wdc (coupled L2, else 0)  6: active (1/0)


def digrap_adam_stats(
    g: Tensor,
    p: Tensor,
    p0: Tensor | None,
    m: Tensor,
    v: Tensor,
    coef: Tensor,
    with_prev: bool,
    eps: float,
    red: int,
) -> Tensor:
    """``(n, 4)``: ``<g,D>, |D|^2, |g|^2, h`` with ``D = theta - theta0``.

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
        u = m.to(cdt) / (torch.sqrt(v.to(cdt) * _k(coef, 1)) + eps)
        dp = _delta((pf + _k(coef, 0) * u) * _k(coef, 2), p0, cdt)
    return _digrap_sums(gf, d, dp, coef[:, 3], red)


def digrap_adam_update(
    g: Tensor,
    p: Tensor,
    p0: Tensor | None,
    m: Tensor,
    v: Tensor,
    coef: Tensor,
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
    gp = _k(coef, 0) * g.to(cdt) + _k(coef, 1) * _delta(pf, p0, cdt) + _k(coef, 5) * pf
    mn, vn = _adam_moments(gp, mf, vf, beta1, beta2)
    pn = _adam_weights(pf, mn, vn, _k(coef, 4), _k(coef, 2), _k(coef, 3), eps)
    if masked:
        act = _k(coef, 6) > 0
        mn = torch.where(act, mn, mf)
        vn = torch.where(act, vn, vf)
        pn = torch.where(act, pn, pf)
    m.copy_(mn)
    v.copy_(vn)
    p.copy_(pn)


# --------------------------------------------------------------------------------------------
# DiGraP, SGD base (momentum, Nesterov or plain; coupled L2)
# --------------------------------------------------------------------------------------------
#
# stats table:  0: lr_{t-1} (0 when none)  1, 2: unused  3: c_{t-1}
# update table: 0: a  1: b  2: lr  3: wdc  4: first (1: momentum buffer not yet set)  5: active


def digrap_sgd_stats(
    g: Tensor,
    p: Tensor,
    p0: Tensor | None,
    prev_update: Tensor | None,
    coef: Tensor,
    with_prev: bool,
    red: int,
) -> Tensor:
    """As :func:`digrap_adam_stats`, with ``theta_{t-1} = theta_t + lr_{t-1} * update_{t-1}``."""
    cdt = compute_dtype(p.dtype)
    gf = g.to(cdt)
    d = _delta(p.to(cdt), p0, cdt)
    dp = None
    if with_prev and prev_update is not None:
        dp = d + _k(coef, 0) * prev_update.to(cdt)
    return _digrap_sums(gf, d, dp, coef[:, 3], red)


def digrap_sgd_update(
    g: Tensor,
    p: Tensor,
    p0: Tensor | None,
    buf: Tensor | None,
    last: Tensor | None,
    coef: Tensor,
    momentum: float,
    dampening: float,
    nesterov: bool,
    masked: bool,
) -> None:
    """torch.optim.SGD's step, in place, with the applied gradient
    ``a*g + b*(theta - theta0) + wdc*theta``; ``last`` receives the update direction."""
    cdt = compute_dtype(p.dtype)
    pf = p.to(cdt)
    gp = _k(coef, 0) * g.to(cdt) + _k(coef, 1) * _delta(pf, p0, cdt) + _k(coef, 3) * pf
    act = _k(coef, 5) > 0
    upd, nb = _sgd_direction(gp, buf, _k(coef, 4) > 0, act, momentum, dampening, nesterov, masked, cdt)
    if buf is not None:
        buf.copy_(nb)
    if last is not None:
        lf = last.to(cdt)
        last.copy_(torch.where(act, upd, lf) if masked else upd)
    pn = pf - _k(coef, 2) * upd
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
#
# table (Adam): 0: lr / (1 - beta1^t)  1: 1 / (1 - beta2^t)  2: 1 - lr*wd (decoupled)
#               3: wdc (coupled)  4: active  [5: gamma, update pass only]
# table (SGD):  0: lr  1: unused  2: unused  3: wdc (coupled)  4: active  5: first
#               [6: gamma, update pass only]


def _ftp_sums(gf: Tensor, cn: Tensor, cprev: Tensor, red: int) -> tuple[Tensor, Tensor]:
    rownorm = cn.abs().sum(red) + 1e-8  # (n, rows)
    prevnorm = cprev.abs().sum(red) + 1e-8
    gg = ((gf * cprev).sum(red) / prevnorm).sum(1)
    return torch.stack([gg, rownorm.amax(1)], 1), rownorm


def _ftp_adam_candidate(g, p, p0, m, v, coef, beta1, beta2, eps, masked, cdt):  # noqa: ANN001, ANN202
    """Adam(W)'s candidate step: ``(g, theta, m_new, v_new, c = theta_new - theta0)`` in ``cdt``
    (members that are not active keep their moments when ``masked``; ``c`` is not masked)."""
    gf = g.to(cdt)
    pf = p.to(cdt)
    mf, vf = m.to(cdt), v.to(cdt)
    gp = gf + _k(coef, 3) * pf
    mn, vn = _adam_moments(gp, mf, vf, beta1, beta2)
    cn = _delta(_adam_weights(pf, mn, vn, _k(coef, 2), _k(coef, 0), _k(coef, 1), eps), p0, cdt)
    if masked:
        act = _k(coef, 4) > 0
        mn = torch.where(act, mn, mf)
        vn = torch.where(act, vn, vf)
    return gf, pf, mn, vn, cn


def _ftp_sgd_candidate(g, p, p0, buf, coef, momentum, dampening, nesterov, masked, cdt):  # noqa: ANN001, ANN202
    """SGD's candidate step: ``(g, theta, new momentum buffer or None, c = theta_new - theta0)``."""
    gf = g.to(cdt)
    pf = p.to(cdt)
    gp = gf + _k(coef, 3) * pf
    upd, nb = _sgd_direction(gp, buf, _k(coef, 5) > 0, _k(coef, 4) > 0, momentum, dampening, nesterov, masked, cdt)
    return gf, pf, nb, _delta(pf - _k(coef, 0) * upd, p0, cdt)


def _ftp_stats(gf: Tensor, cn: Tensor, cbuf: Tensor, coef: Tensor, red: int, masked: bool) -> tuple[Tensor, Tensor]:
    cp = cbuf.to(cn.dtype)
    if masked:  # idle members: their (unused) row norms come from c_prev
        cn = torch.where(_k(coef, 4) > 0, cn, cp)
    return _ftp_sums(gf, cn, cp, red)


def _ftp_write(p: Tensor, p0: Tensor | None, pf: Tensor, cbuf: Tensor, cn: Tensor, rownorm: Tensor, coef: Tensor,
               red: int, masked: bool) -> None:
    """``theta = theta0 + clamp(gamma / (|c_row|_1 + 1e-8), 0, 1) * c`` and ``c_prev = c``, in
    place (idle members keep both when ``masked``)."""
    scale = torch.clamp(coef[:, -1:] / rownorm, 0.0, 1.0).unsqueeze(red)
    new = scale * cn
    if p0 is not None:
        new = p0.to(cn.dtype) + new
    if masked:
        new = torch.where(_k(coef, 4) > 0, new, pf)
    _ftp_keep_c(cbuf, cn, coef, masked)
    p.copy_(new)


def _ftp_keep_c(cbuf: Tensor, cn: Tensor, coef: Tensor, masked: bool) -> None:
    """``c_prev = c`` (idle members keep theirs when ``masked``)."""
    cbuf.copy_(torch.where(_k(coef, 4) > 0, cn, cbuf.to(cn.dtype)) if masked else cn)


def ftp_adam_candidate(
    g: Tensor,
    p: Tensor,
    p0: Tensor | None,
    m: Tensor,
    v: Tensor,
    cbuf: Tensor,
    coef: Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    red: int,
    masked: bool,
) -> tuple[Tensor, Tensor]:
    """Adam(W) step to the unconstrained weights (eager pair): writes the moments and ``c``
    (``c_{t-1} -> c_t``), not the weights; returns :func:`ftp_adam_stats`'s statistics."""
    cdt = compute_dtype(p.dtype)
    gf, _, mn, vn, cn = _ftp_adam_candidate(g, p, p0, m, v, coef, beta1, beta2, eps, masked, cdt)
    out = _ftp_stats(gf, cn, cbuf, coef, red, masked)
    m.copy_(mn)
    v.copy_(vn)
    _ftp_keep_c(cbuf, cn, coef, masked)
    return out


def ftp_sgd_candidate(
    g: Tensor,
    p: Tensor,
    p0: Tensor | None,
    buf: Tensor | None,
    cbuf: Tensor,
    coef: Tensor,
    momentum: float,
    dampening: float,
    nesterov: bool,
    red: int,
    masked: bool,
) -> tuple[Tensor, Tensor]:
    """As :func:`ftp_adam_candidate` for the SGD candidate step."""
    cdt = compute_dtype(p.dtype)
    gf, _, nb, cn = _ftp_sgd_candidate(g, p, p0, buf, coef, momentum, dampening, nesterov, masked, cdt)
    out = _ftp_stats(gf, cn, cbuf, coef, red, masked)
    if buf is not None:
        buf.copy_(nb)
    _ftp_keep_c(cbuf, cn, coef, masked)
    return out


def ftp_project(p: Tensor, p0: Tensor | None, cbuf: Tensor, rownorm: Tensor, coef: Tensor, red: int, masked: bool) -> None:
    """Eager pair: ``theta = theta0 + clamp(gamma / (|c_row|_1 + 1e-8), 0, 1) * c``, in place."""
    cdt = compute_dtype(p.dtype)
    scale = torch.clamp(coef[:, -1:] / rownorm, 0.0, 1.0).unsqueeze(red)
    new = scale * cbuf.to(cdt)
    if p0 is not None:
        new = p0.to(cdt) + new
    if masked:
        new = torch.where(_k(coef, 4) > 0, new, p.to(cdt))
    p.copy_(new)


def ftp_adam_stats(
    g: Tensor,
    p: Tensor,
    p0: Tensor | None,
    m: Tensor,
    v: Tensor,
    cbuf: Tensor,
    coef: Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    red: int,
    masked: bool,
) -> tuple[Tensor, Tensor]:
    """Statistics of the Adam(W) candidate step ``c_t`` (nothing is written).

    Returns ``(n, 2)``: ``sum_rows <g_row, c_{t-1,row}> / (|c_{t-1,row}|_1 + 1e-8)`` and
    ``max_rows |c_t,row|_1 + 1e-8``; and the row norms ``|c_t,row|_1 + 1e-8`` ``(n, rows)``.
    """
    cdt = compute_dtype(p.dtype)
    gf, _, _, _, cn = _ftp_adam_candidate(g, p, p0, m, v, coef, beta1, beta2, eps, masked, cdt)
    return _ftp_stats(gf, cn, cbuf, coef, red, masked)


def ftp_adam_update(
    g: Tensor,
    p: Tensor,
    p0: Tensor | None,
    m: Tensor,
    v: Tensor,
    cbuf: Tensor,
    rownorm: Tensor,
    coef: Tensor,
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
    _ftp_write(p, p0, pf, cbuf, cn, rownorm, coef, red, masked)


def ftp_sgd_stats(
    g: Tensor,
    p: Tensor,
    p0: Tensor | None,
    buf: Tensor | None,
    cbuf: Tensor,
    coef: Tensor,
    momentum: float,
    dampening: float,
    nesterov: bool,
    red: int,
    masked: bool,
) -> tuple[Tensor, Tensor]:
    """As :func:`ftp_adam_stats` for the SGD (coupled L2, momentum / Nesterov) candidate step."""
    cdt = compute_dtype(p.dtype)
    gf, _, _, cn = _ftp_sgd_candidate(g, p, p0, buf, coef, momentum, dampening, nesterov, masked, cdt)
    return _ftp_stats(gf, cn, cbuf, coef, red, masked)


def ftp_sgd_update(
    g: Tensor,
    p: Tensor,
    p0: Tensor | None,
    buf: Tensor | None,
    cbuf: Tensor,
    rownorm: Tensor,
    coef: Tensor,
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
    _ftp_write(p, p0, pf, cbuf, cn, rownorm, coef, red, masked)


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


def compiled(fn: Callable, *, static: bool = False) -> Callable:
    """``torch.compile(fn)``, cached per kernel and mode (shared by all optimizers).

    ``static=False`` compiles for dynamic shapes (one compiled kernel serves every bucket);
    ``static=True`` specialises on each shape, which lets the C++ code drop tail loops and
    index arithmetic (~10% faster on large tensors, one compile per distinct shape): used for
    the large tensors that are processed in place. Each kernel also specialises on its flags
    (reduction dim, masked, with_prev, anchor or not) and on size-1 dimensions, so the
    recompile limit is raised to fit them. If compiling fails (no C compiler, an unsupported
    build), the kernel falls back to eager for the rest of the process, with one warning:
    same results, only slower.
    """
    with _lock:
        out = _cache.get((fn, static))
        if out is None:
            import torch._dynamo

            cfg = torch._dynamo.config
            for key in ("recompile_limit", "cache_size_limit"):
                if hasattr(cfg, key):
                    setattr(cfg, key, max(getattr(cfg, key), RECOMPILE_LIMIT))
            comp = torch.compile(fn, dynamic=not static, options=dict(_INDUCTOR_OPTIONS))
            out = _with_eager_fallback(fn, comp)
            _cache[(fn, static)] = out
        return out


def _with_eager_fallback(eager: Callable, comp: Callable) -> Callable:
    state = {"failed": False}

    def run(*args, **kwargs):
        if not state["failed"]:
            try:
                return comp(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - any compiler failure: run eagerly instead
                import warnings

                state["failed"] = True
                warnings.warn(f"torch.compile of {eager.__name__} failed ({type(exc).__name__}); running eagerly", stacklevel=2)
        return eager(*args, **kwargs)

    return run
