"""FTP against a straightforward float64 per-tensor reference written from the spec."""

from __future__ import annotations

import math

import pytest
import torch

from fixtures.optim_reference import RefOptimizer, resumed_twin, rows
from vqa_ood_bench.errors import ConfigError
from vqa_ood_bench.optim import FTP

SHAPES = [(6, 5), (6, 5), (32, 4), (32, 4), (4, 32), (5,), (3, 2, 2, 2), (300, 256)]
BASES = {
    "sgd": dict(base="sgd", momentum=0.9, weight_decay=0.01),
    "sgd-nesterov": dict(base="sgd", momentum=0.9, nesterov=True),
    "adam": dict(base="adam", weight_decay=0.01),
    "adamw": dict(base="adamw", weight_decay=0.1),
}


class RefFTP(RefOptimizer):
    def __init__(self, params, anchors, *, k=1.0, mu=1e-2, base="adamw", **options):
        super().__init__(params, anchors, k=k, mu=mu, base=base, **options)

    def initial_state(self, x):
        return dict(gam=0.0, gm=0.0, gv=0.0, cprev=torch.zeros_like(x))

    def tensor_step(self, i, s, p, g, t):
        k = self.kw
        new = self.base_update(p, g, s, t)
        c = new - self.p0[i] if self.p0[i] is not None else new
        n = rows(c).abs().sum(1) + 1e-8
        if t == 1:
            gam = 1e-8
        else:
            nprev = rows(s["cprev"]).abs().sum(1) + 1e-8
            gg = float(((rows(g) * rows(s["cprev"])).sum(1) / nprev).sum())
            if gg > 0:
                gg *= k["k"]
            s["gm"] = 0.9 * s["gm"] + 0.1 * gg
            s["gv"] = 0.999 * s["gv"] + 0.001 * gg * gg
            gam = s["gam"] - k["mu"] * (s["gm"] / (1 - 0.9**t)) / (math.sqrt(s["gv"] / (1 - 0.999**t)) + 1e-8)
            gam = min(max(gam, 1e-8), float(n.max()))
        s["gam"] = gam
        scale = torch.clamp(gam / n, 0, 1).unsqueeze(1)
        proj = (rows(c) * scale).view_as(p)
        p.copy_(proj + self.p0[i] if self.p0[i] is not None else proj)
        s["cprev"] = c


def make_params(dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in SHAPES]


def run_pair(opt_kw, *, steps=15, skip_at=None, check_radius=False, compile=False):
    params = make_params()
    origin = [1, 4]
    anchors = [None if i in origin else p.detach().clone() for i, p in enumerate(params)]
    groups = [{"params": [p for i, p in enumerate(params) if i not in origin]},
              {"params": [p for i, p in enumerate(params) if i in origin], "anchor": "origin"}]
    opt = FTP(groups, compile=compile, **opt_kw)
    ref = RefFTP(params, anchors, **opt_kw)
    gen = torch.Generator().manual_seed(1)
    order = [i for i in range(len(params)) if i not in origin] + origin
    for step in range(steps):
        skip = skip_at(step) if skip_at else ()
        grads = [None if i in skip else torch.randn(p.shape, generator=gen, dtype=p.dtype) for i, p in enumerate(params)]
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.clone()
        opt.step()
        ref.step(grads)
        if check_radius:
            radii = list(opt.radii().values())
            for j, i in enumerate(order):
                D = params[i].detach() - (anchors[i] if anchors[i] is not None else 0)
                assert float(rows(D).abs().sum(1).max()) <= radii[j] * (1 + 1e-9) + 1e-12
    return params, ref, opt, order


@pytest.mark.parametrize("base", list(BASES))
@pytest.mark.parametrize("k", [1.0, 0.3])
def test_matches_float64_reference(base, k):
    params, ref, opt, order = run_pair(dict(lr=0.05, k=k, mu=0.05, **BASES[base]))
    for p, r in zip(params, ref.p):
        torch.testing.assert_close(p.detach(), r, rtol=1e-10, atol=1e-12)
    assert list(opt.radii().values()) == pytest.approx([ref.st[i]["gam"] for i in order], rel=1e-9)
    assert max(opt.radii().values()) > 1e-3  # the radii did grow from 1e-8


@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_every_row_stays_within_its_radius(base):
    run_pair(dict(lr=0.1, mu=0.05, **BASES[base]), check_radius=True)


def test_first_step_is_pulled_almost_fully_back():
    p = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4)))
    p0 = p.detach().clone()
    opt = FTP([p], lr=0.5)
    p.grad = torch.randn_like(p)
    opt.step()
    # gamma = 1e-8 at the first step; 1e-14 allows for rounding theta0 + c (|theta0| ~ 1)
    assert float((p.detach() - p0).abs().sum(1).max()) <= 1e-8 + 1e-14


@pytest.mark.parametrize("base", list(BASES))
def test_compiled_path_run_eagerly_matches_float64_reference(base, monkeypatch):
    """The compiled step's own structure (statistics and radius per bucket, then one update
    pass) with its functions run uncompiled, so that the default suite covers it."""
    from vqa_ood_bench.optim import _kernels

    monkeypatch.setattr(_kernels, "compiled", lambda fn, static=False: fn)
    missing = lambda k: (0, 5, 7) if k % 4 == 2 else ()  # noqa: E731
    params, ref, opt, order = run_pair(dict(lr=0.05, k=0.5, mu=0.05, **BASES[base]), steps=8, skip_at=missing, compile=True)
    for p, r in zip(params, ref.p):
        torch.testing.assert_close(p.detach(), r, rtol=1e-10, atol=1e-12)
    assert list(opt.radii().values()) == pytest.approx([ref.st[i]["gam"] for i in order], rel=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("base", list(BASES))
def test_compiled_step_matches_float64_reference(base):
    """The compiled step (per bucket: candidate step and radius in one graph, then the
    projection), with tensors idle on some steps."""
    missing = lambda k: (0, 5, 7) if k % 4 == 2 else ()  # noqa: E731
    params, ref, opt, order = run_pair(dict(lr=0.05, k=0.5, mu=0.05, **BASES[base]), steps=8, skip_at=missing, compile=True)
    for p, r in zip(params, ref.p):
        torch.testing.assert_close(p.detach(), r, rtol=1e-10, atol=1e-12)
    assert list(opt.radii().values()) == pytest.approx([ref.st[i]["gam"] for i in order], rel=1e-9)


def test_tensor_without_gradient_keeps_its_state():
    missing = lambda k: (0, 5) if k in (3, 7) else ()  # noqa: E731
    params, ref, opt, _ = run_pair(dict(lr=0.05, mu=0.05, base="adamw"), skip_at=missing)
    for p, r in zip(params, ref.p):
        torch.testing.assert_close(p.detach(), r, rtol=1e-10, atol=1e-12)
    assert int(opt.state[params[0]]["step"]) == 13


def test_excluded_head_takes_the_plain_step():
    gen = torch.Generator().manual_seed(2)
    named = [(n, torch.nn.Parameter(torch.randn(4, 3, generator=gen, dtype=torch.float64))) for n in ("body", "head")]
    head_ref = torch.nn.Parameter(named[1][1].detach().clone())
    opt = FTP(named, lr=0.1, base="sgd", momentum=0.9, exclude=["^head$"])
    ref = torch.optim.SGD([head_ref], lr=0.1, momentum=0.9)
    for _ in range(5):
        for _, p in named:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        head_ref.grad = named[1][1].grad.clone()
        opt.step()
        ref.step()
    assert torch.equal(named[1][1], head_ref)
    assert set(opt.radii()) == {"body"}


def test_state_dict_round_trip_resumes_bit_identically():
    kw = dict(lr=0.05, mu=0.05, base="adamw", weight_decay=0.1)
    params = make_params()
    _, params2, _ = resumed_twin(
        lambda ps: FTP(ps, **kw), params,
        lambda ps, g: [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in ps], steps=4, seed=3,
    )
    for p, p2 in zip(params, params2):
        assert torch.equal(p, p2)


@pytest.mark.parametrize("bad", [dict(k=1.5), dict(mu=-1.0), dict(base="rmsprop")])
def test_invalid_options_raise_config_error(bad):
    with pytest.raises(ConfigError):
        FTP(make_params(), **bad)


@pytest.mark.parametrize("base", ["adamw", "sgd"])
def test_eager_row_blocks_match_whole_tensor(base, monkeypatch):
    """Row-blocked eager kernels (large tensors on the CPU): the hyper-gradient adds up over
    blocks, the largest row norm is their max, the projection is row-local."""
    from test_optim_digrap import _row_block_pair

    kw = dict(lr=0.05, base=base, **({"momentum": 0.9} if base == "sgd" else {}))
    (blocked, whole), blocks, init = _row_block_pair(lambda ps: FTP(ps, **kw), monkeypatch)
    assert blocks[(300, 250)] > 10 and blocks[(40, 30)] == 1 and blocks[(400, 4)] == 1
    for a, b, a0 in zip(blocked, whole, init):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        assert not torch.equal(a.detach(), a0)  # (every tensor moved)
