"""L2-SP, MARS-SP and TPGM against hand-written float64 references."""

from __future__ import annotations

import copy

import pytest
import torch

from fixtures.optim_reference import base_step, rows
from vqa_ood_bench.errors import ConfigError
from vqa_ood_bench.optim import L2SP, MARSSP, TPGM

SHAPES = [(6, 5), (5,), (3, 2, 2), (40, 4)]


def make_params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64)) for s in SHAPES]


@pytest.mark.parametrize("anchor", ["pretrained", "origin"])
def test_l2sp_matches_reference(anchor):
    params = make_params()
    p0 = [p.detach().clone() if anchor == "pretrained" else torch.zeros_like(p) for p in params]
    ref = [p.detach().clone() for p in params]
    opt = L2SP(params, lr=0.05, lam=0.7, base="adam", anchor=anchor)
    st = [dict() for _ in params]
    gen = torch.Generator().manual_seed(1)
    for t in range(1, 9):
        for i, p in enumerate(params):
            g = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            p.grad = g.clone()
            ref[i] = base_step(ref[i], g + 0.7 * (ref[i] - p0[i]), st[i], t, {"lr": 0.05, "base": "adam"})
        opt.step()
    for p, r in zip(params, ref):
        torch.testing.assert_close(p.detach(), r, rtol=1e-12, atol=1e-13)


def test_l2sp_with_zero_strength_is_torch_adamw():
    a, b = make_params(), make_params()
    opt, ref = L2SP(a, lr=0.05, lam=0.0, weight_decay=0.1), torch.optim.AdamW(b, lr=0.05, weight_decay=0.1)
    gen = torch.Generator().manual_seed(2)
    for _ in range(5):
        for pa, pb in zip(a, b):
            pa.grad = torch.randn(pa.shape, generator=gen, dtype=pa.dtype)
            pb.grad = pa.grad.clone()
        opt.step()
        ref.step()
    assert all(torch.equal(pa, pb) for pa, pb in zip(a, b))


def test_marssp_keeps_rows_in_the_ball_and_matches_reference():
    params = make_params()
    p0 = [p.detach().clone() for p in params]
    ref = [p.detach().clone() for p in params]
    radius = 0.3
    opt = MARSSP(params, lr=0.1, radius=radius, base="sgd", momentum=0.0)
    gen = torch.Generator().manual_seed(3)
    moved_inside = False
    for _ in range(10):
        for i, p in enumerate(params):
            g = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            p.grad = g.clone()
            c = rows(ref[i] - 0.1 * g - p0[i])
            n = c.abs().sum(1, keepdim=True)
            ref[i] = (rows(p0[i]) + torch.where(n > radius, c * radius / n, c)).view_as(p)
        opt.step()
        for i, p in enumerate(params):
            n = rows(p.detach() - p0[i]).abs().sum(1)
            assert float(n.max()) <= radius * (1 + 1e-12)
            moved_inside |= bool((n < radius * 0.999).any())
    for p, r in zip(params, ref):
        torch.testing.assert_close(p.detach(), r, rtol=1e-12, atol=1e-13)
    assert moved_inside  # both projected and unprojected rows occurred


# ---- TPGM ----------------------------------------------------------------------------------

def _regression(seed=0):
    """A linear model whose training optimum is far from the anchor and whose validation
    optimum lies between them, at a known fraction of the way."""
    gen = torch.Generator().manual_seed(seed)
    w0 = torch.randn(8, 6, generator=gen, dtype=torch.float64)
    w_train = w0 + torch.randn(8, 6, generator=gen, dtype=torch.float64)
    w_val = w0 + 0.35 * (w_train - w0)
    x_tr = torch.randn(256, 6, generator=gen, dtype=torch.float64)
    x_val = torch.randn(256, 6, generator=gen, dtype=torch.float64)
    return w0, x_tr, x_tr @ w_train.T, x_val, x_val @ w_val.T


def test_tpgm_learns_a_radius_that_lowers_the_validation_loss():
    w0, x_tr, y_tr, x_val, y_val = _regression()
    model = torch.nn.Linear(6, 8, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(w0)
    opt = TPGM(model.named_parameters(), lr=0.05, norm="l2", gamma_lr=0.05, max_iters=200, base="adam")
    for _ in range(150):
        torch.nn.functional.mse_loss(model(x_tr), y_tr).backward()
        opt.step()
        opt.zero_grad()

    def val_loss():
        return torch.nn.functional.mse_loss(model(x_val), y_val)

    D = model.weight.detach() - w0
    with torch.no_grad():
        before = float(val_loss())
        # independent optimum over the segment theta0 + s*D (a 1-D quadratic in s)
        s = torch.linspace(0, 1, 2001, dtype=torch.float64)
        losses = [float(torch.nn.functional.mse_loss(x_val @ (w0 + si * D).T, y_val)) for si in s]
        s_best = float(s[int(torch.tensor(losses).argmin())])
    assert opt.due()

    def closure():
        loss = val_loss()
        loss.backward()
        return loss

    opt.project(closure)
    after = float(val_loss().detach())
    assert after < 0.5 * before
    gamma = opt.radii()["weight"]
    assert gamma / float(D.norm()) == pytest.approx(s_best, abs=0.02)
    assert model.weight.grad is None  # nothing left for the next training step


def test_tpgm_mars_projects_every_row_into_its_ball():
    w0, x_tr, y_tr, x_val, y_val = _regression(1)
    model = torch.nn.Linear(6, 8, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(w0)
    opt = TPGM(model.parameters(), lr=0.05, norm="mars", max_iters=3, project_every=5)
    for step in range(20):
        torch.nn.functional.mse_loss(model(x_tr), y_tr).backward()
        opt.step()
        opt.zero_grad()
        if opt.due():
            opt.project(lambda: torch.nn.functional.mse_loss(model(x_val), y_val).backward())
            gamma = opt.radii()[0]
            n = (model.weight.detach() - w0).abs().sum(1)
            assert float(n.max()) <= gamma * (1 + 1e-9)
    assert opt.state[model.weight]["gamma_step"] == 12  # 4 projections x 3 updates


def test_tpgm_state_dict_round_trip():
    model = torch.nn.Linear(3, 2).double()
    opt = TPGM(model.parameters(), lr=0.1, project_every=2)
    x = torch.randn(5, 3, dtype=torch.float64)
    for _ in range(2):
        model(x).sum().backward()
        opt.step()
    opt.project(lambda: model(x).pow(2).sum().backward())
    sd = copy.deepcopy(opt.state_dict())
    opt2 = TPGM(model.parameters(), lr=0.1, project_every=2)
    opt2.load_state_dict(sd)
    assert opt2.radii() == opt.radii() and opt2.steps_taken == 2 and opt2.due()


@pytest.mark.parametrize("cls,bad", [(TPGM, dict(norm="l1")), (TPGM, dict(max_iters=0)), (MARSSP, dict(radius=0.0)),
                                     (L2SP, dict(lam=-1.0))])
def test_invalid_options_raise_config_error(cls, bad):
    with pytest.raises(ConfigError):
        cls(make_params(), **bad)
