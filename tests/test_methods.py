"""Every registered method builds and runs end to end on the tiny model; LP and LP-FT touch only
what they should; MARS-SP keeps its ball; the Δ columns follow the paper's definition."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vqa_ood_bench.config import RunConfig, TrainConfig
from vqa_ood_bench.errors import ConfigError
from vqa_ood_bench.methods.base import PAPER_ORDER, get_method, method_names, sweep_order
from vqa_ood_bench.report.schema import read_results
from vqa_ood_bench.report.table import deltas, find_baseline, relative_change, results_table
from vqa_ood_bench.runner import run_benchmark

MAX_STEPS = 3
TINY_TRAIN = dict(max_steps=MAX_STEPS, batch_size=4, validation_size=4, learning_rate=1e-3)


def tiny_config(method: str, adapter: str = "lora", **params) -> RunConfig:
    return RunConfig(method=method, adapter=adapter, method_params=params, limit=8, train=TrainConfig(**TINY_TRAIN))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run folders made on demand, once per (method, adapter, params) for the whole module."""
    made: dict[tuple, Path] = {}
    base = tmp_path_factory.mktemp("method-runs")

    def get(method: str, adapter: str = "lora", train: dict | None = None, **params) -> Path:
        key = (method, adapter, tuple(sorted(params.items())), tuple(sorted((train or {}).items())))
        if key not in made:
            folder = base / f"{method}-{adapter}-{len(made)}"
            cfg = tiny_config(method, adapter, **params)
            cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update=train or {})})
            run_benchmark(cfg, folder, show_progress=False)
            made[key] = folder
        return made[key]

    return get


def pretrained_tiny() -> dict[str, torch.Tensor]:
    from vqa_ood_bench.models.pretrain import load_tiny

    model, _, _ = load_tiny(show_progress=False)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- registry ----------------------------------------------------------------------------------------


def test_every_paper_method_is_registered_and_builds() -> None:
    assert set(PAPER_ORDER) <= set(method_names())
    assert sweep_order()[:2] == ["zeroshot", "vanilla"] and sweep_order()[-1] == "digrap"
    for name in method_names():
        method = get_method(name)
        assert method.describe()["name"] == name
        for adapter in ("lora", "full"):
            method.check(RunConfig(method=name, adapter=adapter))
        with pytest.raises(ConfigError, match="has no parameter"):
            get_method(name, no_such_param=1)


@pytest.mark.parametrize(
    "name, params, fragment",
    [
        ("wise-ft", {"alpha": 1.5}, "alpha must lie in"),
        ("linear-probe", {"head": "both"}, "head must be one of"),
        ("lp-ft", {"lp_fraction": -0.1}, "lp_fraction"),
        ("lp-ft", {"ft_lr_scale": 0}, "ft_lr_scale"),
        ("digrap", {"log_every": -1}, "log_every"),
    ],
)
def test_bad_method_parameters_are_config_errors(name, params, fragment) -> None:
    with pytest.raises(ConfigError, match=fragment):
        get_method(name, **params)


# --- end to end ------------------------------------------------------------------------------------------

# full fine-tuning of mars-sp runs in test_mars_sp_keeps_every_row_within_the_radius
CASES = [(m, "lora") for m in PAPER_ORDER] + [(m, "full") for m in ("lp-ft", "tpgm", "ftp", "digrap")]


@pytest.mark.parametrize("method, adapter", CASES)
def test_each_method_runs_end_to_end(runs, method, adapter) -> None:
    folder = runs(method, adapter)
    results = read_results(folder / "results.json")
    assert results.method == method and results.method_params["adapter"] == adapter
    assert results.averages.ood is not None and len(results.splits) > 2
    if method == "zeroshot":
        assert not (folder / "trained_state.pt").exists() and results.model.trainable_parameters == 0
        return
    assert results.method_params["fit"]["steps"] == MAX_STEPS
    state = torch.load(folder / "trained_state.pt", weights_only=True)
    assert sum(v.numel() for v in state.values()) == results.model.trainable_parameters
    assert all(torch.isfinite(v).all() for v in state.values())
    if method != "lp-ft":
        assert not any(k.endswith("lm_head.weight") for k in state) or method == "linear-probe"
    if adapter == "lora" and method != "linear-probe":
        # every method trained its adapters away from B = 0 (the LoRA initialisation)
        assert any(v.abs().max() > 0 for k, v in state.items() if ".lora_B." in k)


def test_linear_probe_changes_only_the_head(runs) -> None:
    from vqa_ood_bench.runner import load_run_model

    model, _, _ = load_run_model(runs("linear-probe"), show_progress=False)
    after = model.state_dict()
    before = pretrained_tiny()
    assert set(after) == set(before)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == ["lm_head.weight"]
    # the head was untied: the input embeddings it started from are still the pre-trained ones
    emb = "model.language_model.embed_tokens.weight"
    assert torch.equal(after[emb], before[emb]) and not torch.equal(after["lm_head.weight"], after[emb])
    assert model.lm_head.weight is not model.model.language_model.embed_tokens.weight


def test_linear_probe_tied_head_trains_the_shared_matrix(runs) -> None:
    state = torch.load(runs("linear-probe", head="tied") / "trained_state.pt", weights_only=True)
    before = pretrained_tiny()
    (name,) = state  # one tensor: the embedding matrix shared with the head
    assert name.endswith("embed_tokens.weight") and not torch.equal(state[name], before["model.language_model.embed_tokens.weight"])


def test_lp_ft_probing_phase_trains_the_head_alone(runs) -> None:
    """With the whole budget in the probing phase, LP-FT must reproduce linear probing: the LoRA
    factors never step (B stays 0) and the head follows LP's trajectory."""
    lpft = torch.load(runs("lp-ft", lp_fraction=1.0) / "trained_state.pt", weights_only=True)
    lp = torch.load(runs("linear-probe") / "trained_state.pt", weights_only=True)
    assert all(torch.count_nonzero(v) == 0 for k, v in lpft.items() if ".lora_B." in k)
    (head_key,) = [k for k in lpft if k.endswith("lm_head.weight")]
    torch.testing.assert_close(lpft[head_key], lp["lm_head.weight"], rtol=1e-5, atol=1e-6)
    # and with the default split the adapters do train in the second phase
    default = torch.load(runs("lp-ft") / "trained_state.pt", weights_only=True)
    assert any(torch.count_nonzero(v) > 0 for k, v in default.items() if ".lora_B." in k)


def test_mars_sp_keeps_every_row_within_the_radius(runs) -> None:
    radius = 0.05  # small enough that the projection is active on the tiny model
    state = torch.load(runs("mars-sp", "full", radius=radius) / "trained_state.pt", weights_only=True)
    before = pretrained_tiny()
    worst = 0.0
    for name, value in state.items():
        delta = (value.double() - before[name].double())
        rows = delta.reshape(1, -1) if delta.dim() <= 1 else delta.reshape(delta.shape[0], -1)
        worst = max(worst, float(rows.abs().sum(1).max()))
    assert radius * 0.5 < worst <= radius * (1 + 1e-4)  # active, and never outside


# --- the Δ columns -------------------------------------------------------------------------------------


def test_relative_change_matches_the_paper_table() -> None:
    # DiGraP paper, Tab. 1: linear probing vs vanilla FT, ID (real) and OOD average
    assert relative_change(73.01, 81.99) == pytest.approx(-10.96, abs=0.02)
    assert relative_change(26.58, 34.47) == pytest.approx(-22.90, abs=0.02)
    assert relative_change(1.0, 0.0) is None and relative_change(None, 2.0) is None


def test_delta_columns_against_vanilla(runs) -> None:
    from rich.console import Console

    results = [read_results(runs(m, "full" if m == "digrap" else "lora") / "results.json") for m in ("zeroshot", "vanilla", "digrap")]
    vanilla = results[1]
    digrap_full = results[2]
    assert find_baseline(results, "vanilla", "full") is vanilla  # no full vanilla: fall back to the one there is
    d_id, d_ood = deltas(digrap_full, vanilla)
    for d, x, ref in ((d_id, digrap_full.averages.id, vanilla.averages.id), (d_ood, digrap_full.averages.ood, vanilla.averages.ood)):
        if ref:
            assert d == pytest.approx((x - ref) / ref * 100)
        else:
            assert d is None
    assert deltas(results[0], vanilla) == (None, None)  # zero-shot: "–" as in the paper
    assert deltas(vanilla, vanilla) == ((0.0 if vanilla.averages.id else None), (0.0 if vanilla.averages.ood else None))
    console = Console(record=True, width=250)
    console.print(results_table(results, delta_baseline="vanilla"))
    text = console.export_text()
    assert "ID Δ %" in text and "OOD Δ %" in text
    plain = Console(record=True, width=250)
    plain.print(results_table(results))
    assert "Δ" not in plain.export_text()


@pytest.mark.slow
def test_method_all_sweeps_every_method(tmp_path: Path, capsys) -> None:
    from vqa_ood_bench.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"method": "digrap", "method_params": {"mu": 0.1}, "limit": 8,
                               "train": {"max_steps": 2, "batch_size": 4, "validation_size": 4}}))
    out = tmp_path / "sweep"
    assert main(["run", "--method", "all", "--config", str(cfg), "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert list(printed["methods"]) == sweep_order()
    for name in sweep_order():
        results = read_results(out / name / "results.json")
        assert results.method == name
    assert read_results(out / "digrap" / "results.json").method_params["mu"] == 0.1  # the config's params go to its method only
    assert read_results(out / "ftp" / "results.json").method_params["mu"] == 0.01
    assert json.loads((out / "sweep.json").read_text())["methods"]["vanilla"]["results"] == "vanilla/results.json"
    # resumable: the same command again reuses every run folder
    assert main(["run", "--method", "all", "--config", str(cfg), "--out", str(out), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["methods"] == printed["methods"]


def test_phased_adamw_silences_the_body_while_probing() -> None:
    """During probing the body's gradients are zero as computed (so clipping sees the head alone)
    and the body takes no step, no decay and no Adam state; afterwards it trains normally."""
    from vqa_ood_bench.methods.probing import PhasedAdamW

    torch.manual_seed(0)
    body, head = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)
    opt = PhasedAdamW([{"params": head.parameters()}, {"params": body.parameters(), "after_probe": True}],
                      lr=0.1, weight_decay=0.5, probe_steps=2)
    opt.silence_during_probe()
    x = torch.randn(8, 4)
    start = [p.detach().clone() for p in body.parameters()]
    for step in range(3):
        head_before = head.weight.detach().clone()
        loss = head(torch.tanh(body(x))).square().mean()
        loss.backward()
        head_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in head.parameters()]))
        total = torch.nn.utils.clip_grad_norm_(list(head.parameters()) + list(body.parameters()), max_norm=1e9)
        if step < 2:
            assert all(torch.count_nonzero(p.grad) == 0 for p in body.parameters())
            torch.testing.assert_close(total, head_norm)
        else:
            assert all(torch.count_nonzero(p.grad) > 0 for p in body.parameters())
        opt.step()
        opt.zero_grad()
        assert not torch.equal(head.weight, head_before)
        moved = any(not torch.equal(p, s) for p, s in zip(body.parameters(), start))
        assert moved == (step >= 2)
        assert (len(opt.state[body.weight]) > 0) == (step >= 2)


def test_wise_ft_run_stores_the_fine_tuned_adapter_and_evaluates_the_scaled_one(runs) -> None:
    from vqa_ood_bench.runner import load_run_model

    folder = runs("wise-ft")
    saved = torch.load(folder / "trained_state.pt", weights_only=True)
    model, _, _ = load_run_model(folder, show_progress=False)
    loaded = dict(model.named_parameters())
    for name, value in saved.items():
        expected = value * 0.5 if ".lora_B." in name else value
        torch.testing.assert_close(loaded[name].detach(), expected, rtol=0, atol=0)


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_anchored_groups_anchor_adapters_at_the_origin(adapter) -> None:
    """LoRA factors are anchored at 0, everything else at its pre-trained value; biases and
    norms get no weight decay (the Trainer's rule); every trainable tensor is in exactly one group."""
    from vqa_ood_bench.methods._common import anchored_param_groups
    from vqa_ood_bench.methods.base import MethodContext
    from vqa_ood_bench.models.pretrain import load_tiny

    model, _, _ = load_tiny(show_progress=False)
    cfg = RunConfig(method="digrap", adapter=adapter, train=TrainConfig(weight_decay=0.1))
    ctx = MethodContext(config=cfg)
    model = get_method("digrap").prepare(model, ctx)
    groups = anchored_param_groups(model, ctx, mu=0.3)
    names = [n for g in groups for n in g["names"]]
    assert sorted(names) == sorted(n for n, p in model.named_parameters() if p.requires_grad)
    for g in groups:
        assert g["mu"] == 0.3 and len(g["params"]) == len(g["names"])
        for n in g["names"]:
            assert g["anchor"] == ("origin" if ".lora_" in n else "pretrained")
            no_decay = n.endswith(".bias") or "norm" in n.split(".")[-2]
            assert g["weight_decay"] == (0.0 if no_decay else 0.1), n
    assert {g["anchor"] for g in groups} == ({"origin"} if adapter == "lora" else {"pretrained"})


@pytest.mark.parametrize("name", ["digrap", "ftp"])
def test_compile_setting_auto_by_size_and_checked_early(name, monkeypatch):
    from vqa_ood_bench.methods import anchored

    groups = [{"params": [torch.nn.Parameter(torch.zeros(1000, 30))]}]
    auto = get_method(name)
    assert auto.params["compile"] == "auto"
    assert anchored.want_compile(auto, groups) is False  # 30,000 elements: eager
    monkeypatch.setattr(anchored, "AUTO_COMPILE_NUMEL", 30_000)
    assert anchored.want_compile(auto, groups) is True
    assert anchored.want_compile(get_method(name, compile=False), groups) is False
    assert anchored.want_compile(get_method(name, compile="true"), groups) is True
    with pytest.raises(ConfigError, match="compile must be"):
        get_method(name, compile="sometimes").check(RunConfig(method=name, adapter="lora"))
