"""DiGraP against a straightforward float64 per-tensor reference written from the spec."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from fixtures.optim_reference import RefOptimizer, resumed_twin, sum_of_row_cosines
from vqa_ood_bench.errors import ConfigError
from vqa_ood_bench.optim import DiGraP, param_groups_from_model, state_bytes

# bucketed small tensors (several of one shape, short-row LoRA-B shapes), 1-D, 0-d, 4-D, and
# one tensor large enough to be processed in place
SHAPES = [(6, 5), (6, 5), (6, 5), (32, 4), (32, 4), (4, 32), (5,), (5,), (), (3, 2, 2, 2), (300, 256)]
BASES = {
    "adam": dict(base="adam", weight_decay=0.01),
    "adamw": dict(base="adamw", weight_decay=0.1),
    "sgd": dict(base="sgd", momentum=0.9, weight_decay=0.01),
    "sgd-nesterov": dict(base="sgd", momentum=0.9, nesterov=True),
    "sgd-plain": dict(base="sgd"),
}


class RefDiGraP(RefOptimizer):
    """The spec's per-step algorithm, one tensor at a time, in float64, storing P_prev."""

    def __init__(self, params, anchors, *, omega=None, two_sided=None, cosines=sum_of_row_cosines, **options):
        super().__init__(params, anchors, omega=omega, lam=two_sided, **options)
        self.cosines = cosines  # the hyper-gradient's rows (the authors': sum_of_row_cosines)

    def initial_state(self, x):
        return dict(om=0.0, om_m=0.0, om_v=0.0, P=None)

    def tensor_step(self, i, s, p, g, t):
        k = self.kw
        D = p - self.p0[i] if self.p0[i] is not None else p.clone()
        d = float((g * D).sum())
        P = d / (float((D * D).sum()) + 1e-8) * D
        if k["omega"] is not None:
            om = k["omega"]
        elif t == 1:
            om = 0.0
        else:
            h = float(self.cosines(g, s["P"]))
            s["om_m"] = 0.9 * s["om_m"] + 0.1 * h
            s["om_v"] = 0.999 * s["om_v"] + 0.001 * h * h
            mhat, vhat = s["om_m"] / (1 - 0.9**t), s["om_v"] / (1 - 0.999**t)
            om = min(1.0, max(0.0, s["om"] - k["mu"] * mhat / (math.sqrt(vhat) + 1e-8)))
        s["om"] = om
        conflict = d < 0
        ga = g - om * P if conflict else g.clone()
        if k["lam"] is not None:
            reg = k["lam"] * D
            if conflict:
                reg = reg - om * k["lam"] * d / (float((g * g).sum()) + 1e-8) * g
            ga = ga + reg
        s["P"] = P
        p.copy_(self.base_update(p, ga, s, t))


def make_params(dtype=torch.float64, seed=0, shapes=SHAPES):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in shapes]


def grads_for(params, anchors, gen, skip=()):
    """Noise plus a pull toward or away from the anchor, so that both conflicting and
    agreeing steps occur."""
    out = []
    for i, (p, a) in enumerate(zip(params, anchors)):
        if i in skip:
            out.append(None)
            continue
        D = p.detach() - (a if a is not None else 0)
        sign = 1.0 if torch.rand((), generator=gen) < 0.5 else -1.0
        out.append(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype) + sign * 2.0 * D)
    return out


def run_pair(opt_kw, *, steps=12, origin_every=3, dtype=torch.float64, skip_at=None):
    """Run DiGraP (two groups: pretrained anchors and origin anchors) next to the reference."""
    params = make_params(dtype)
    origin = [i for i in range(len(params)) if i % origin_every == 1]
    anchors = [None if i in origin else p.detach().clone() for i, p in enumerate(params)]
    groups = [{"params": [p for i, p in enumerate(params) if i not in origin], "anchor": "pretrained"},
              {"params": [p for i, p in enumerate(params) if i in origin], "anchor": "origin"}]
    opt = DiGraP(groups, **opt_kw)
    ref = RefDiGraP(params, anchors, **opt_kw)
    gen = torch.Generator().manual_seed(1)
    for k in range(steps):
        skip = skip_at(k) if skip_at else ()
        grads = grads_for(params, anchors, gen, skip)
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.clone()
        opt.step()
        ref.step(grads)
    return params, ref, opt, origin


@pytest.mark.parametrize("base", list(BASES))
@pytest.mark.parametrize("variant", ["trainable", "fixed", "two_sided"])
def test_matches_float64_reference(base, variant):
    kw = dict(lr=0.05, mu=0.5, **BASES[base])
    if variant == "fixed":
        kw["omega"] = 0.6
    if variant == "two_sided":
        kw["two_sided"] = 0.5
    params, ref, opt, origin = run_pair(kw)
    for p, r in zip(params, ref.p):
        torch.testing.assert_close(p.detach(), r, rtol=1e-10, atol=1e-12)
    oms = list(opt.omegas().values())
    # omegas() lists group 0 then group 1
    order = [i for i in range(len(params)) if i not in origin] + origin
    assert oms == pytest.approx([ref.st[i]["om"] for i in order], abs=1e-10)
    if variant == "trainable":
        assert any(0 < o < 1 for o in oms)  # the test exercises the learned strength


def test_float32_close_to_reference():
    params, ref, _, _ = run_pair(dict(lr=0.05, mu=0.5, base="adam"), dtype=torch.float32)
    for p, r in zip(params, ref.p):
        torch.testing.assert_close(p.detach().double(), r, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("base", ["adam", "adamw", "sgd"])
@pytest.mark.parametrize("how", [dict(omega=0.0), dict(mu=0.0)])
def test_zero_strength_is_exactly_the_base_optimizer(base, how):
    kw = dict(BASES[base])
    base_name = kw.pop("base")
    torch_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[base_name]
    a, b = make_params(), make_params()
    opt = DiGraP(a, lr=0.05, base=base_name, **kw, **how)
    ref = torch_cls(b, lr=0.05, **kw)
    gen = torch.Generator().manual_seed(2)
    for _ in range(8):
        for pa, pb in zip(a, b):
            g = torch.randn(pa.shape, generator=gen, dtype=pa.dtype) - pa.detach()
            pa.grad, pb.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    for pa, pb in zip(a, b):
        assert torch.equal(pa, pb)


def test_zero_strength_through_the_projection_kernels_matches_torch_adam():
    # two_sided=0 forces the bucketed projection path; with omega 0 it must still be Adam
    a, b = make_params(), make_params()
    opt = DiGraP(a, lr=0.05, base="adam", omega=0.0, two_sided=0.0)
    ref = torch.optim.Adam(b, lr=0.05)
    gen = torch.Generator().manual_seed(3)
    for _ in range(8):
        for pa, pb in zip(a, b):
            g = torch.randn(pa.shape, generator=gen, dtype=pa.dtype)
            pa.grad, pb.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pa.detach(), pb.detach(), rtol=1e-13, atol=1e-14)


def _one_sgd_step(theta0, theta, g, omega=1.0):
    p = torch.nn.Parameter(theta0.clone())
    opt = DiGraP([p], lr=1.0, base="sgd", omega=omega)
    with torch.no_grad():
        p.copy_(theta)
    p.grad = g.clone()
    opt.step()
    return p.detach().clone()


def test_full_projection_is_orthogonal_to_the_distance_when_conflicting():
    gen = torch.Generator().manual_seed(4)
    theta0 = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    D = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    g = torch.randn(7, 5, generator=gen, dtype=torch.float64) - 2 * D
    assert float((g * D).sum()) < 0
    step = _one_sgd_step(theta0, theta0 + D, g) - (theta0 + D)  # -g_applied
    # orthogonal up to the spec's 1e-8 in the projection's denominator
    assert abs(float((step * D).sum())) < 1e-7 * float(step.norm() * D.norm())
    # and it is exactly g minus its component along D
    expected = -(g - float((g * D).sum()) / (float((D * D).sum()) + 1e-8) * D)
    torch.testing.assert_close(step, expected, rtol=1e-12, atol=1e-12)
    # half strength removes half the component
    half = _one_sgd_step(theta0, theta0 + D, g, omega=0.5) - (theta0 + D)
    assert float((half * D).sum()) == pytest.approx(-0.5 * float((g * D).sum()), rel=1e-9)


def test_no_projection_when_gradients_agree():
    gen = torch.Generator().manual_seed(5)
    theta0 = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    D = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    g = torch.randn(7, 5, generator=gen, dtype=torch.float64) + 2 * D
    assert float((g * D).sum()) > 0
    assert torch.equal(_one_sgd_step(theta0, theta0 + D, g), (theta0 + D) - g)


def _omega_after(grads, mu):
    """omega after each step of a 1-D tensor under plain SGD (lr tiny) fed ``grads``."""
    theta0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    p = torch.nn.Parameter(theta0.clone())
    opt = DiGraP([p], lr=1e-3, base="sgd", mu=mu)
    with torch.no_grad():
        p.add_(torch.tensor([0.3, 0.1, -0.2], dtype=torch.float64))  # theta - theta0 = D
    out = []
    for g in grads:
        p.grad = g.clone()
        opt.step()
        out.append(opt.omegas()[0])
    return out


def test_omega_hypergradient_sign():
    # P_prev is the previous gradient's component along D (= theta - theta0). The spec:
    # theta_t depends on omega through +lr*omega*P_prev, so dL/domega ~ <g_t, P_prev>, and
    # h = sum_rows cos(g_t, P_prev) > 0 lowers omega, h < 0 raises it.
    D = torch.tensor([0.3, 0.1, -0.2], dtype=torch.float64)
    mu = 0.1
    up = _omega_after([D.clone(), -D.clone()], mu)  # P_1 along +D, g_2 = -D: h = -1
    assert up[0] == 0.0
    # the spec's scalar Adam at t = 2 with h = -1 (first moment update of omega)
    m, v = 0.1 * -1.0, 0.001 * 1.0
    expected = min(1.0, max(0.0, 0 - mu * (m / (1 - 0.9**2)) / (math.sqrt(v / (1 - 0.999**2)) + 1e-8)))
    assert up[1] == pytest.approx(expected, rel=1e-4) and up[1] > 0
    # raise omega, then a gradient aligned with P_prev (h > 0) lowers it again
    # alternating gradients keep h = -1 (omega rises); a repeated one gives h = +1, which
    # (Adam's momentum aside) ends lower than continuing to alternate
    seq = _omega_after([D, -D, D, -D, -D], mu)
    alt = _omega_after([D, -D, D, -D, D], mu)
    assert 0 < seq[1] < seq[2] < seq[3]
    assert seq[:4] == alt[:4] and seq[4] < alt[4]


def test_omega_is_clamped_to_unit_interval():
    D = torch.tensor([0.3, 0.1, -0.2], dtype=torch.float64)
    seq = _omega_after([D, -D, D, -D, -D, -D, -D], mu=100.0)
    assert seq[1] == seq[2] == seq[3] == 1.0  # pushed far above 1: clamped
    assert seq[-1] == 0.0  # pushed far below 0: clamped
    assert all(0.0 <= o <= 1.0 for o in seq)


def test_tensor_without_gradient_keeps_its_state_and_shifts_nobody():
    # tensor 1 (bucketed with 0 and 2) and tensor 7 (1-D) have no gradient at steps 2 and 5
    missing = lambda k: (1, 7) if k in (2, 5) else ()  # noqa: E731
    params, ref, opt, _ = run_pair(dict(lr=0.05, mu=0.5, base="adam"), skip_at=missing, origin_every=100)
    for p, r in zip(params, ref.p):
        torch.testing.assert_close(p.detach(), r, rtol=1e-10, atol=1e-12)
    assert int(opt.state[params[1]]["step"]) == ref.st[1]["t"] == 10
    assert int(opt.state[params[0]]["step"]) == 12


@pytest.mark.parametrize("base", ["adam", "sgd-nesterov"])
def test_state_dict_round_trip_resumes_bit_identically(base):
    kw = dict(lr=0.05, mu=0.5, **BASES[base])
    params = make_params()
    anchors = [p.detach().clone() for p in params]
    opt, params2, opt2 = resumed_twin(
        lambda ps: DiGraP(ps, **kw), params, lambda ps, g: grads_for(ps, anchors, g), steps=5, seed=6
    )
    for p, p2 in zip(params, params2):
        assert torch.equal(p, p2)
    assert opt.omegas() == opt2.omegas()


def test_exclusion_by_name_and_names_key():
    gen = torch.Generator().manual_seed(7)
    a = {n: torch.nn.Parameter(torch.randn(4, 3, generator=gen, dtype=torch.float64)) for n in ["enc.w", "head.w", "enc.b"]}
    head_ref = torch.nn.Parameter(a["head.w"].detach().clone())
    opt = DiGraP([{"params": list(a.values()), "names": list(a)}], lr=0.1, base="adam", mu=1.0, exclude=[r"^head\."])
    ref = torch.optim.Adam([head_ref], lr=0.1)
    for _ in range(6):
        for p in a.values():
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype) - 3 * p.detach()
        head_ref.grad = a["head.w"].grad.clone()
        opt.step()
        ref.step()
    assert torch.equal(a["head.w"], head_ref)
    assert set(opt.omegas()) == {"enc.w", "enc.b"}
    assert 0.0 <= opt.omega_mean() <= 1.0


def test_state_is_adamw_plus_anchor():
    params = make_params(torch.float32)
    other = make_params(torch.float32)
    opt = DiGraP(params, lr=0.01)
    adamw = torch.optim.AdamW(other, lr=0.01)
    for ps, o in ((params, opt), (other, adamw)):
        for p in ps:
            p.grad = torch.randn_like(p)
        o.step()
    anchor = sum(p.numel() * p.element_size() for p in params)
    scalar_allowance = 64 * len(params)  # a few float per-tensor scalars
    assert state_bytes(opt) <= state_bytes(adamw) + anchor + scalar_allowance
    origin = DiGraP(make_params(torch.float32), lr=0.01, anchor="origin")
    for p in origin.param_groups[0]["params"]:
        p.grad = torch.randn_like(p)
    origin.step()
    assert state_bytes(origin) <= state_bytes(adamw) + scalar_allowance


@pytest.mark.parametrize("bad", [dict(omega=1.5), dict(mu=-1.0), dict(base="lion"), dict(anchor="zero"), dict(two_sided=-1.0)])
def test_invalid_options_raise_config_error(bad):
    with pytest.raises(ConfigError):
        DiGraP(make_params(), lr=0.1, **bad)


COMPILED_CASES = [
    dict(base="adamw", mu=0.5, weight_decay=0.1),
    dict(base="sgd", mu=0.5, momentum=0.9, nesterov=True, weight_decay=0.01),
    dict(base="adam", omega=0.7, two_sided=0.3),
]
COMPILED_IDS = ["adamw-trainable", "sgd-nesterov", "adam-fixed-two-sided"]


def _eager_vs_compiled(kw, steps=6):
    a, b = make_params(torch.float64), make_params(torch.float64)
    eager, comp = DiGraP(a, lr=0.05, **kw), DiGraP(b, lr=0.05, compile=True, **kw)
    anchors = [p.detach().clone() for p in a]
    gen = torch.Generator().manual_seed(8)
    for step in range(steps):
        skip = (1, 6, 10) if step % 3 == 1 else ()
        for pa, pb, g in zip(a, b, grads_for(a, anchors, gen, skip=skip)):
            pa.grad = None if g is None else g.clone()
            pb.grad = None if g is None else g.clone()
        eager.step()
        comp.step()
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pa, pb, rtol=1e-10, atol=1e-12)
    assert comp.omegas() == pytest.approx(eager.omegas(), abs=1e-10)
    assert any(om > 0 for om in eager.omegas().values()) or kw.get("omega")


@pytest.mark.parametrize("kw", COMPILED_CASES, ids=COMPILED_IDS)
def test_compiled_path_run_eagerly_matches_eager_step(kw, monkeypatch):
    """The compiled step's own structure (per bucket: statistics and scalar math, then the
    update) with its functions run uncompiled, against the eager step (layout-wide scalar
    math between two passes), so that the default suite covers it."""
    from vqa_ood_bench.optim import _kernels

    monkeypatch.setattr(_kernels, "compiled", lambda fn, static=False: fn)
    _eager_vs_compiled(kw)


@pytest.mark.slow
@pytest.mark.parametrize("kw", COMPILED_CASES, ids=COMPILED_IDS)
def test_compiled_step_matches_eager(kw):
    """The compiled step (per bucket: statistics and scalar math in one graph, then the
    update) against the eager step, in float64, with tensors idle on some steps."""
    _eager_vs_compiled(kw)


@pytest.mark.parametrize("kwargs", [{"exclude": [r"^1\."]}, {"omega": 0.0}])
def test_resume_with_plain_step_tensors(kwargs):
    """Excluded tensors (and omega=0) take torch's own Adam step; their step counter must
    survive a state_dict round trip (it used to come back as a float and crash the next step)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    twin = copy.deepcopy(model)
    groups = lambda m: param_groups_from_model(m, exclude=kwargs.get("exclude", ()), lr=1e-2)
    extra = {k: v for k, v in kwargs.items() if k != "exclude"}
    opt, opt2 = DiGraP(groups(model), **extra), DiGraP(groups(twin), **extra)
    x = torch.randn(8, 3)
    for step in range(4):
        for m, o in ((model, opt), (twin, opt2)):
            m(x).pow(2).mean().backward()
            o.step()
            o.zero_grad()
        if step == 1:
            opt2 = DiGraP(groups(twin), **extra)
            opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def _row_block_pair(make_opt, monkeypatch, steps: int = 6):
    """The same optimizer run with eager row blocks and without them, in float64, on a large
    (directly processed) tensor beside buckets (a bucket of three tensors, a transposed
    bucket, a vector; buckets are not cut), some tensors idle on some steps. Returns both
    parameter sets, the block count per bucket of the blocked run (keyed by shape) and the
    initial values."""
    from vqa_ood_bench.optim import _bucketed

    gen = torch.Generator().manual_seed(3)
    shapes = [(300, 250), (250,), (40, 30), (40, 30), (40, 30), (400, 4), (400, 4)]
    init = [torch.randn(s, generator=gen, dtype=torch.float64) * 0.1 for s in shapes]
    grads = [[None if (k % 3 == 1 and i in (3, 5)) else torch.randn(t.shape, generator=gen, dtype=torch.float64) * 0.05
              for i, t in enumerate(init)] for k in range(steps)]
    out, blocks = [], []
    for block in (1000, 1 << 40):
        monkeypatch.setattr(_bucketed, "EAGER_BLOCK_NUMEL", block)
        ps = [torch.nn.Parameter(t.clone()) for t in init]
        opt = make_opt(ps)
        for gs in grads:
            for p, g in zip(ps, gs):
                p.grad = None if g is None else g.clone()
            opt.step()
        lay = next(iter(opt._layouts[0].values()))
        blocks.append({tuple(b.shape): len(opt._row_blocks(b)) for b in lay.buckets})
        out.append(ps)
    return out, blocks[0], init


@pytest.mark.parametrize("base", ["adamw", "sgd"])
def test_eager_row_blocks_match_whole_tensor(base, monkeypatch):
    """On the CPU the eager kernels run large tensors in row blocks (cache-sized temporaries);
    per-tensor sums add up over blocks, so the trajectory is the whole-tensor one."""
    kw = dict(lr=0.05, mu=0.5, base=base, weight_decay=0.01, **({"momentum": 0.9} if base == "sgd" else {}))
    (blocked, whole), blocks, init = _row_block_pair(lambda ps: DiGraP(ps, **kw), monkeypatch)
    assert blocks[(300, 250)] > 10 and blocks[(40, 30)] == 1 and blocks[(400, 4)] == 1
    for a, b, a0 in zip(blocked, whole, init):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        assert not torch.equal(a.detach(), a0)  # (every tensor moved)


# large tensors processed in place (one of them 1-D) beside small bucketed ones
F32_SHAPES = [(300, 256), (6, 8), (70_000,), (5,), (256, 300), (6, 8)]


def _float32_adam_vs_torch(compile: bool) -> None:
    gen0 = torch.Generator().manual_seed(0)
    init = [0.1 * torch.randn(s, generator=gen0) for s in F32_SHAPES]
    p64 = [torch.nn.Parameter(t.double()) for t in init]
    p_torch = [torch.nn.Parameter(t.clone()) for t in init]
    p_ours = [torch.nn.Parameter(t.clone()) for t in init]
    ref = torch.optim.Adam(p64, lr=0.05)
    torch32 = torch.optim.Adam(p_torch, lr=0.05, foreach=False)
    # two_sided=0 keeps every tensor on the projection kernels, omega=0 makes the step Adam's
    ours = DiGraP(p_ours, lr=0.05, base="adam", omega=0.0, two_sided=0.0, compile=compile)
    gen = torch.Generator().manual_seed(5)
    for _ in range(6):
        for r, a, b in zip(p64, p_torch, p_ours):
            g = torch.randn(r.shape, generator=gen, dtype=torch.float64)
            r.grad, a.grad, b.grad = g, g.float(), g.float()
        for opt in (ref, torch32, ours):
            opt.step()
    for i, (r, a, b) in enumerate(zip(p64, p_torch, p_ours)):
        err_torch = (a.double() - r).abs().max().item()
        err_ours = (b.double() - r).abs().max().item()
        assert err_ours <= 2 * err_torch + 1e-9, (i, err_ours, err_torch)


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled-path-uncompiled"])
def test_float32_adam_step_is_as_close_to_float64_as_torch_adam(compile, monkeypatch):
    """With no projection, DiGraP's float32 step is Adam's: as close to Adam in float64 as
    torch's own float32 Adam is. Bias corrections and 1 - beta computed in float32 (as they
    once were) put the step 1e-5 (relative) off, some 50 times torch's rounding error here.
    The compiled step's structure runs with its functions uncompiled (fast to start)."""
    from vqa_ood_bench.optim import _kernels

    monkeypatch.setattr(_kernels, "compiled", lambda fn, static=False: fn)
    _float32_adam_vs_torch(compile)


@pytest.mark.slow
def test_compiled_float32_adam_step_is_as_close_to_float64_as_torch_adam():
    """As above with the kernels compiled (inductor rounds and fuses differently)."""
    _float32_adam_vs_torch(True)


# ---- tensors of three or more dimensions: the hyper-gradient's rows run along dim 1 ----------

# conv kernels (out, in, kh, kw): two that share a bucket, one large enough to be processed in
# place, a 1x1 kernel; a 3-D tensor; a bias
CONV_SHAPES = [(8, 3, 3, 3), (8, 3, 3, 3), (128, 64, 3, 3), (16, 8, 1, 1), (4, 6, 5), (8,)]


def _flattened_row_cosines(a, b):
    """The hyper-gradient with rows along dim 0 and the rest flattened (not the authors')."""
    a, b = a.reshape(a.shape[0] if a.dim() > 1 else 1, -1), b.reshape(b.shape[0] if b.dim() > 1 else 1, -1)
    return (F.normalize(a, dim=1, eps=1e-12) * F.normalize(b, dim=1, eps=1e-12)).sum()


def _conv_run(kw, *, compile=False, steps=10):
    params = make_params(shapes=CONV_SHAPES)
    anchors = [p.detach().clone() for p in params]
    opt = DiGraP(params, compile=compile, **kw)
    refs = [RefDiGraP(params, anchors, **kw), RefDiGraP(params, anchors, cosines=_flattened_row_cosines, **kw)]
    gen = torch.Generator().manual_seed(9)
    for k in range(steps):
        grads = grads_for(params, anchors, gen, skip=(1,) if k % 4 == 2 else ())
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.clone()
        opt.step()
        for ref in refs:
            ref.step(grads)
    return params, opt, refs


@pytest.mark.parametrize("base", ["adamw", "sgd"])
@pytest.mark.parametrize("path", ["eager", "eager-row-blocks", "compiled-path-uncompiled",
                                  pytest.param("compiled", marks=pytest.mark.slow)])
def test_conv_kernels_follow_the_authors_rows(base, path, monkeypatch):
    """A conv kernel's hyper-gradient sums cosines of the vectors along the input channels
    (``F.normalize(t, dim=1)``, as the authors' code), not of flattened output-channel rows:
    DiGraP matches the float64 reference that does so, and not the one with flattened rows."""
    from vqa_ood_bench.optim import _bucketed, _kernels

    if path == "eager-row-blocks":  # the large kernel in blocks of output channels
        monkeypatch.setattr(_bucketed, "EAGER_BLOCK_NUMEL", 2000)
    if path == "compiled-path-uncompiled":
        monkeypatch.setattr(_kernels, "compiled", lambda fn, static=False: fn)
    kw = dict(lr=0.05, mu=0.5, **BASES[base])
    params, opt, (ref, flat) = _conv_run(kw, compile=path.startswith("compiled"))
    for i, (p, r) in enumerate(zip(params, ref.p)):
        torch.testing.assert_close(p.detach(), r, rtol=1e-10, atol=1e-12, msg=lambda m: f"tensor {i}: {m}")
    oms = opt.omegas()
    assert list(oms.values()) == pytest.approx([s["om"] for s in ref.st], abs=1e-10)
    assert any(0 < oms[i] < 1 for i in (0, 2, 4))  # the strengths of 3-D and 4-D tensors learned
    for i in (0, 2, 4):  # the rows make a difference here: flattened rows give other strengths
        assert abs(flat.st[i]["om"] - ref.st[i]["om"]) > 1e-6, i
    # 1x1 kernels and vectors have one layout only
    assert flat.st[3]["om"] == pytest.approx(ref.st[3]["om"], abs=1e-12)


def test_conv_module_trains_like_the_reference():
    """An nn.Conv2d (weight and bias) stepped from its own gradients, against the reference."""
    torch.manual_seed(3)
    conv = torch.nn.Conv2d(3, 6, 3).double()
    anchors = [p.detach().clone() for p in conv.parameters()]
    opt = DiGraP(conv.parameters(), lr=0.05, mu=1.0, base="adam")
    ref = RefDiGraP(list(conv.parameters()), anchors, lr=0.05, mu=1.0, base="adam")
    x = torch.randn(4, 3, 7, 7, dtype=torch.float64)
    target = torch.randn(4, 6, 5, 5, dtype=torch.float64)
    for k in range(8):
        conv.zero_grad()
        # alternate targets: the gradient turns against the distance moved, so omega learns
        (conv(x) - (target if k % 2 else -target)).pow(2).mean().backward()
        grads = [p.grad.clone() for p in conv.parameters()]
        opt.step()
        ref.step(grads)
        with torch.no_grad():  # the reference steps on its own copy: keep the module on it
            for p, r in zip(conv.parameters(), ref.p):
                torch.testing.assert_close(p, r, rtol=1e-10, atol=1e-12)
    assert 0 < opt.omegas()[0] <= 1
