"""What every optimizer of vqa_ood_bench.optim promises beyond its own method."""

from __future__ import annotations

import pytest
import torch

from vqa_ood_bench.errors import BenchError
from vqa_ood_bench.optim import FTP, L2SP, MARSSP, TPGM, DiGraP


def _params():
    gen = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(4, 3, generator=gen)), torch.nn.Parameter(torch.randn(3, generator=gen))]


BAD = [
    (DiGraP, dict(omega=1.5)),
    (DiGraP, dict(mu=-1.0)),
    (DiGraP, dict(two_sided=-0.1)),
    (DiGraP, dict(omega_betas=(1.0, 0.9))),
    (FTP, dict(k=1.5)),
    (FTP, dict(mu=-1.0)),
    (TPGM, dict(norm="l1")),
    (TPGM, dict(max_iters=0)),
    (L2SP, dict(lam=-1.0)),
    (MARSSP, dict(radius=0.0)),
    # the base optimizer's checks, shared by all five
    (DiGraP, dict(lr=-1.0)),
    (FTP, dict(betas=(0.9, 1.0))),
    (TPGM, dict(base="lion")),
    (L2SP, dict(anchor="zero")),
    (MARSSP, dict(base="sgd", nesterov=True)),
]


@pytest.mark.parametrize("cls,bad", BAD, ids=[f"{c.__name__}-{next(iter(b))}" for c, b in BAD])
def test_bad_arguments_raise_value_error(cls, bad):
    """Bad arguments raise what torch's optimizers raise for them (ValueError), and the
    package's own error (BenchError: one line on the command line)."""
    with pytest.raises(ValueError) as info:
        cls(_params(), **bad)
    assert isinstance(info.value, BenchError)


def test_empty_parameter_list_is_a_value_error():
    for cls in (DiGraP, FTP, TPGM, L2SP, MARSSP):
        with pytest.raises(ValueError):
            cls([])


# ---- torch.compile: no process-wide settings, failures fall back to eager ---------------------


def _dynamo_settings():
    import torch._dynamo

    cfg = torch._dynamo.config
    return {k: getattr(cfg, k) for k in ("recompile_limit", "accumulated_recompile_limit", "cache_size_limit")}


def _step_twice(opt, params):
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        opt.step()


@pytest.mark.parametrize("cls", [DiGraP, FTP])
def test_compiled_step_asks_for_its_recompile_limit_without_changing_torch(cls, monkeypatch):
    """Each compiled kernel gets its recompile limit from torch.compile itself (per compiled
    function, torch >= 2.14); torch's own settings stay as they were. torch.compile is
    replaced by a recorder here (compiling takes minutes on this CPU; the slow test below
    compiles for real)."""
    from vqa_ood_bench.optim import _kernels

    if not _kernels._LIMIT_PER_FUNCTION:
        pytest.skip("torch.compile has no per-function recompile limit in this torch")
    calls = []

    def recorder(fn, **kw):
        calls.append(kw)
        return fn

    monkeypatch.setattr(torch, "compile", recorder)
    monkeypatch.setattr(_kernels, "_cache", {})
    before = _dynamo_settings()
    params = _params()
    _step_twice(cls(params, lr=0.01, compile=True), params)
    assert calls and all(kw.get("recompile_limit") == _kernels.RECOMPILE_LIMIT for kw in calls)
    assert _dynamo_settings() == before


def test_older_torch_raises_the_limit_only_while_the_optimizer_steps(monkeypatch):
    """Without a per-function limit (torch 2.13) the process-wide one is raised for the
    compiled step and put back after it, also when the step fails."""
    import torch._dynamo

    from vqa_ood_bench.optim import _kernels

    cfg = torch._dynamo.config
    seen = []
    fail = {"now": False}

    def kernel_recording_the_limit(fn, static=False):
        def run(*args, **kwargs):
            seen.append(cfg.recompile_limit)
            if fail["now"]:
                raise RuntimeError("kernel failed")
            return fn(*args, **kwargs)

        return run

    monkeypatch.setattr(_kernels, "_LIMIT_PER_FUNCTION", False)
    monkeypatch.setattr(_kernels, "compiled", kernel_recording_the_limit)
    before = _dynamo_settings()
    params = _params()
    opt = DiGraP(params, lr=0.01, compile=True)
    _step_twice(opt, params)
    assert seen and set(seen) == {max(before["recompile_limit"], _kernels.RECOMPILE_LIMIT)}
    assert _dynamo_settings() == before
    fail["now"] = True
    with pytest.raises(RuntimeError, match="kernel failed"):
        opt.step()
    assert _dynamo_settings() == before


@pytest.mark.slow
@pytest.mark.parametrize("cls", [DiGraP, FTP])
def test_really_compiled_step_leaves_torch_settings_alone(cls):
    before = _dynamo_settings()
    a, b = _params(), _params()
    eager, comp = cls(a, lr=0.01), cls(b, lr=0.01, compile=True)
    _step_twice(eager, a)
    _step_twice(comp, b)
    assert _dynamo_settings() == before
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_failed_compile_warns_once_and_runs_eagerly():
    from torch._inductor.exc import InvalidCxxCompiler

    from vqa_ood_bench.optim import _kernels

    calls = {"compiled": 0}

    def broken(*args):
        calls["compiled"] += 1
        raise InvalidCxxCompiler()

    def kernel(x):
        return x + 1

    run = _kernels._with_eager_fallback(kernel, broken)
    with pytest.warns(UserWarning, match="torch.compile of kernel failed.*InvalidCxxCompiler"):
        assert run(1) == 2
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, no second compile attempt
        assert run(2) == 3
    assert calls["compiled"] == 1


def test_errors_of_the_kernel_itself_are_not_swallowed():
    """A compiled kernel that fails at run time (out of memory, a bad shape) raises; it is
    not silently replaced by the eager kernel."""
    from vqa_ood_bench.optim import _kernels

    def oom(*args):
        raise torch.OutOfMemoryError("out of memory")

    run = _kernels._with_eager_fallback(lambda x: x, oom)
    with pytest.raises(torch.OutOfMemoryError):
        run(1)
