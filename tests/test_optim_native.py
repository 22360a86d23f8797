"""DiGraP's and FTP's C++ steps for large float32 CPU tensors (vqa_ood_bench/optim/_native.py)
against the eager steps, which stay the reference.

The C++ source is built once per machine into torch's extension cache (~20-40 s the first
time). Where no C++ compiler exists the tests skip; where one exists, a failed build fails
them (a broken source must not pass as "skipped").
"""

from __future__ import annotations

import copy
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from vqa_ood_bench.optim import FTP, DiGraP, _kernels, _native

# three tensors large enough to be stepped in place (>= 65,536 elements: one of them 1-D), and
# small ones that share buckets and keep taking the compiled kernels
SHAPES = [(300, 256), (6, 8), (70_000,), (5,), (256, 300), (6, 8)]
DIRECT = {0, 2, 4}

CASES = [
    dict(base="adamw", mu=1.0, weight_decay=0.1),
    dict(base="adam", omega=0.7, two_sided=0.3, weight_decay=0.01),
    dict(base="adam", mu=2.0, anchor="origin"),
    dict(base="adam", omega=1.0),
]
IDS = ["adamw-trainable", "adam-fixed-two-sided-l2", "adam-origin", "adam-omega1"]


@pytest.fixture(scope="module")
def ext():
    if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        pytest.skip("no C++ compiler: the optimizers run the compiled kernels instead")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed build warns: make it fail the test
        module = _native.load()
    assert module is not None, "the C++ kernels did not build although a compiler exists"
    return module


@pytest.fixture
def counted(ext, monkeypatch):
    """Counts the C++ steps taken; the inductor kernels run uncompiled (fast to start)."""
    calls = {"n": 0}

    class Counting:
        def __getattr__(self, name):
            def call(*args):
                calls["n"] += 1
                return getattr(ext, name)(*args)

            return call

    monkeypatch.setattr(_native, "load", lambda: Counting())
    monkeypatch.setattr(_kernels, "compiled", lambda fn, static=False: fn)
    return calls


def make_params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(0.1 * torch.randn(s, generator=gen)) for s in SHAPES]


def set_grads(pairs, anchors, gen, skip=()):
    """Noise plus a pull toward or away from the anchor: conflicting and agreeing steps."""
    for i, ps in enumerate(pairs):
        if i in skip:
            for p in ps:
                p.grad = None
            continue
        D = ps[0].detach() - (anchors[i] if anchors is not None else 0)
        sign = 1.0 if torch.rand((), generator=gen) < 0.5 else -1.0
        g = 0.3 * torch.randn(ps[0].shape, generator=gen, dtype=D.dtype) + sign * 2.0 * D
        for p in ps:
            p.grad = g.to(p.dtype, copy=True)


FTP_CASES = [
    dict(base="adamw", k=1.0, mu=0.1, weight_decay=0.1),
    dict(base="adam", k=0.5, mu=0.1, weight_decay=0.01),
    dict(base="adamw", mu=0.1, anchor="origin"),
]
FTP_IDS = ["adamw", "adam-l2-k0.5", "adamw-origin"]


@pytest.mark.parametrize("kw", CASES, ids=IDS)
def test_native_step_matches_eager_step(kw, counted):
    """Three runs on the same gradients: the eager step in float64 (the reference), the eager
    step in float32 and the C++ step in float32. The C++ step must be as close to float64 as
    the eager float32 step is (the two round differently, so they are not bit-equal)."""
    ref, a, b = make_params(), make_params(), make_params()
    ref64 = [torch.nn.Parameter(p.detach().double()) for p in ref]
    opts = [DiGraP(ref64, lr=0.05, **kw), DiGraP(a, lr=0.05, **kw), DiGraP(b, lr=0.05, compile=True, **kw)]
    anchors = None if kw.get("anchor") == "origin" else [p.detach().clone() for p in ref64]
    gen = torch.Generator().manual_seed(3)
    projected = 0
    for step in range(7):
        # (the float32 runs take the float64 gradients, rounded)
        set_grads(list(zip(ref64, a, b)), anchors, gen, skip=(0, 1) if step % 3 == 2 else ())
        for opt in opts:
            opt.step()
        # a large tensor projected this step when its omega is > 0 and it conflicted
        st = opts[0].state
        projected += sum(1 for i in DIRECT if st[ref64[i]]["omega"] > 0 and st[ref64[i]]["proj_coef"] < 0)
    assert counted["n"] == 3 * 7 - 2  # tensor 0 was idle on two steps
    assert projected > 0, "no large tensor projected: the anchor read went untested"
    for i, (r, pa, pb) in enumerate(zip(ref64, a, b)):
        err_eager = (pa.double() - r).abs().max().item()
        err_native = (pb.double() - r).abs().max().item()
        assert err_native <= 2 * err_eager + 1e-7, (i, err_native, err_eager)
        assert err_native < 1e-4, (i, err_native)
    om_ref = opts[0].omegas()
    for key, om in opts[2].omegas().items():
        assert abs(om - om_ref[key]) <= 2 * abs(opts[1].omegas()[key] - om_ref[key]) + 1e-6, key


@pytest.mark.parametrize("kw", FTP_CASES, ids=FTP_IDS)
def test_native_ftp_step_matches_eager_step(kw, counted):
    """As for DiGraP: float64 eager reference, float32 eager and float32 C++ runs; the radii
    must keep every large tensor's rows inside them (the projection is active)."""
    ref, a, b = make_params(), make_params(), make_params()
    ref64 = [torch.nn.Parameter(p.detach().double()) for p in ref]
    opts = [FTP(ref64, lr=0.02, **kw), FTP(a, lr=0.02, **kw), FTP(b, lr=0.02, compile=True, **kw)]
    anchors = None if kw.get("anchor") == "origin" else [p.detach().clone() for p in ref64]
    gen = torch.Generator().manual_seed(4)
    # a steady direction per tensor plus noise: the steps keep pointing away from the anchor,
    # so the radii grow (with pure noise they may stay at their minimum)
    steady = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in ref64]
    for step in range(7):
        for i, ps in enumerate(zip(ref64, a, b)):
            g = None if (i in (0, 1) and step % 3 == 2) else steady[i] + 0.3 * torch.randn(ps[0].shape, generator=gen,
                                                                                             dtype=torch.float64)
            for p in ps:
                p.grad = None if g is None else g.to(p.dtype, copy=True)
        for opt in opts:
            opt.step()
    assert counted["n"] == 3 * 7 - 2
    radii = opts[2].radii()
    for i, (r, pa, pb) in enumerate(zip(ref64, a, b)):
        err_eager = (pa.double() - r).abs().max().item()
        err_native = (pb.double() - r).abs().max().item()
        assert err_native <= 2 * err_eager + 1e-8, (i, err_native, err_eager)
        if i in DIRECT:  # every row of (theta - theta0) within the learned radius (L1)
            d = pb.detach() - (0 if anchors is None else anchors[i].float())
            rownorms = d.reshape(d.shape[0] if d.dim() > 1 else 1, -1).abs().sum(1)
            assert float(rownorms.max()) <= radii[i] * (1 + 1e-4) + 1e-6
            assert radii[i] > 1e-4 and float(rownorms.max()) >= 0.5 * radii[i]  # it projected, to a radius it learned
    om_ref = opts[0].radii()
    ulp = torch.finfo(torch.float32).eps
    for key, gam in radii.items():
        # a radius is one float32 scalar: the two float32 paths may round it a couple of ulps apart
        assert abs(gam - om_ref[key]) <= 2 * abs(opts[1].radii()[key] - om_ref[key]) + 2 * ulp * abs(gam) + 1e-8, key


def test_native_resume_is_bit_identical(counted):
    """A state_dict round trip in the middle of a run gives the same weights, bit for bit."""
    a, b = make_params(), make_params()
    opt_a = DiGraP(a, lr=0.05, compile=True, base="adamw", mu=1.0)
    opt_b = DiGraP(b, lr=0.05, compile=True, base="adamw", mu=1.0)
    anchors = [p.detach().clone() for p in a]
    gen = torch.Generator().manual_seed(5)
    for step in range(6):
        set_grads(list(zip(a, b)), anchors, gen)
        opt_a.step()
        opt_b.step()
        if step == 2:
            opt_b = DiGraP(b, lr=0.05, compile=True, base="adamw", mu=1.0)
            opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    assert counted["n"] == 2 * 3 * 6
    for pa, pb in zip(a, b):
        assert torch.equal(pa, pb)


def test_native_step_counts_as_an_in_place_change(counted):
    ps = make_params()
    opt = DiGraP(ps, lr=0.05, compile=True)
    for p in ps:
        p.grad = torch.ones_like(p)
    before = [p._version for p in ps]
    opt.step()
    assert all(p._version > v for p, v in zip(ps, before))
    assert counted["n"] == 3


def test_native_off_by_argument_or_environment(counted, monkeypatch):
    for opt_kw, env in (({"native": False}, "1"), ({}, "0")):
        monkeypatch.setenv("VQA_OOD_BENCH_NATIVE", env)
        monkeypatch.setattr(_native, "load", lambda: None if not _native.enabled() else pytest.fail("built"))
        ps = make_params()
        opt = DiGraP(ps, lr=0.05, compile=True, **opt_kw)
        for p in ps:
            p.grad = torch.ones_like(p)
        if opt_kw:  # native=False never asks for the extension
            monkeypatch.setattr(_native, "load", lambda: pytest.fail("native=False loaded the extension"))
        opt.step()
    assert counted["n"] == 0


def test_failed_build_warns_once_and_keeps_the_compiled_path(monkeypatch):
    """Without a working compiler the step still runs (the compiled kernels), with one warning."""
    import torch.utils.cpp_extension as cpp

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(cpp, "load", broken)
    monkeypatch.setitem(_native._state, "tried", False)
    monkeypatch.setitem(_native._state, "module", None)
    monkeypatch.setattr(_kernels, "compiled", lambda fn, static=False: fn)
    a, b = make_params(), make_params()
    eager, comp = DiGraP(a, lr=0.05), DiGraP(b, lr=0.05, compile=True)
    with pytest.warns(UserWarning, match="C\\+\\+ kernels of DiGraP and FTP failed.*no compiler here"):
        for p, q in zip(a, b):
            p.grad = torch.ones_like(p)
            q.grad = torch.ones_like(q)
        eager.step()
        comp.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        comp.step()
        eager.step()
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pb, pa, rtol=1e-6, atol=1e-7)


def test_ninja_from_the_wheel_is_put_on_path(monkeypatch):
    """torch's builder runs `ninja` from PATH; an environment that is not activated has the
    wheel's ninja only in its bin folder, which the loader adds."""
    ninja = pytest.importorskip("ninja")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("PATH", "/nonexistent")
    _native._ninja_on_path()
    first = os.environ["PATH"].split(os.pathsep)[0]
    assert first == ninja.BIN_DIR
    assert (Path(first) / "ninja").exists()


@pytest.mark.parametrize("native", [False, True], ids=["eager", "c++"])
def test_float32_adam_step_is_as_close_to_float64_as_torch_adam(native, counted):
    """With no projection, DiGraP's float32 step is Adam's: as close to Adam in float64 as
    torch's own float32 Adam is. Bias corrections and 1 - beta computed in float32 (as they
    were) put the step 1e-5 (relative) off, some 50 times torch's rounding error here."""
    p64 = [torch.nn.Parameter(p.detach().double()) for p in make_params()]
    p_torch, p_ours = make_params(), make_params()
    ref = torch.optim.Adam(p64, lr=0.05)
    torch32 = torch.optim.Adam(p_torch, lr=0.05, foreach=False)
    ours = DiGraP(p_ours, lr=0.05, base="adam", omega=0.0, two_sided=0.0, compile=True, native=native)
    gen = torch.Generator().manual_seed(5)
    for _ in range(6):
        for r, a, b in zip(p64, p_torch, p_ours):
            g = torch.randn(r.shape, generator=gen, dtype=torch.float64)
            r.grad, a.grad, b.grad = g, g.float(), g.float()
        for opt in (ref, torch32, ours):
            opt.step()
    assert (counted["n"] > 0) == native  # the C++ step ran exactly when asked
    for i, (r, a, b) in enumerate(zip(p64, p_torch, p_ours)):
        err_torch = (a.double() - r).abs().max().item()
        err_ours = (b.double() - r).abs().max().item()
        assert err_ours <= 2 * err_torch + 1e-9, (i, err_ours, err_torch)
