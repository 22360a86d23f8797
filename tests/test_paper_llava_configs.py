"""vqa_ood_bench/configs/paper-llava/: the DiGraP paper's LLaVA-7B recipes (Tab. 6 VQA, Tab. 7 DomainNet-oVQA).

Which methods each table has, and DiGraP's strength in it, are read from the paper's leaderboard
entries (vqa_ood_bench/leaderboards/paper/paper-tab6-*.json, paper-tab7-*.json; their numbers and
labels are checked against the paper text by tests/test_leaderboard_paper.py), not from the
configs. The rest of the recipe is the paper's one recipe (App. 7.2, docs/methods.md "The paper's
training recipe"), so each LLaVA file must equal its PaliGemma twin in configs/paper/ except for
the model, the evaluation batch and the method's strength.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from vqa_ood_bench import configs
from vqa_ood_bench.config import load_config
from vqa_ood_bench.methods.base import get_method

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "vqa_ood_bench" / "configs" / "paper-llava"
ENTRIES = ROOT / "vqa_ood_bench" / "leaderboards" / "paper"
MODEL = "llava-hf/llava-1.5-7b-hf"
TABLES = {"vqa": "tab6", "domainnet": "tab7"}
# leaderboard entry ids name the methods as the paper's rows do
ENTRY_TO_METHOD = {"zero-shot": "zeroshot", "vanilla-ft": "vanilla"}
# the fields that may differ from the PaliGemma twin: the model, its evaluation batch (a 7B model
# with 576 image tokens per beam), and DiGraP's strength (Tab. 6: 0.01, Tab. 7: 0.1; Tab. 2/3: 0.5)
MAY_DIFFER = {"model", "eval_batch_size", "method_params"}


def _entries(table: str) -> dict[str, dict]:
    out = {}
    for path in sorted(ENTRIES.glob(f"paper-{TABLES[table]}-*.json")):
        entry = json.loads(path.read_text(encoding="utf-8"))
        name = path.stem.split("-", 2)[2]
        out[ENTRY_TO_METHOD.get(name, name)] = entry
    return out


def _files():
    return sorted(FOLDER.glob("*.yaml"))


def test_one_recipe_per_row_of_tab6_and_tab7():
    expected = {f"{table}-{method}.yaml" for table in TABLES for method in _entries(table)}
    assert len(expected) == 12  # 6 rows in each table
    assert {f.name for f in _files()} == expected
    for table in TABLES:
        assert {e["backbone"] for e in _entries(table).values()} == {"LLaVA-7B"}


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.stem)
def test_llava_recipe_is_its_paligemma_twin_with_the_llava_model(path):
    table, method = path.stem.split("-", 1)
    cfg = load_config(f"paper-llava/{path.stem}")  # by packaged name, as `run --config paper-llava/...`
    assert configs.path(f"paper-llava/{path.stem}") == path
    twin = load_config(f"paper/{path.stem}")
    assert cfg.method == method and cfg.model == MODEL and cfg.adapter == "lora"
    ours, theirs = cfg.model_dump(), twin.model_dump()
    assert {k for k in ours if ours[k] != theirs[k]} <= MAY_DIFFER
    assert cfg.train.batch_size * cfg.train.grad_accum == 128
    entry = _entries(table)[method]
    assert cfg.suite == entry["suite"]  # (the entries' adapter says "none" / "head" for zero-shot and linear probing;
    # the config keeps adapter: lora, which those methods ignore, as their PaliGemma twins do)
    m = get_method(cfg.method, **cfg.method_params)  # unknown parameters raise
    m.check(cfg)
    if method == "digrap":  # "DiGraP (0.01)" in Tab. 6, "DiGraP (0.1)" in Tab. 7
        assert m.params["mu"] == entry["method_params"]["hyper_parameter"]
    else:
        assert cfg.method_params == twin.method_params


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.stem)
def test_llava_recipe_header_cites_its_table_and_lists_our_choices(path):
    table, method = path.stem.split("-", 1)
    text = path.read_text(encoding="utf-8")
    header = text.split("\nmethod:")[0]
    tab = {"vqa": "Tab. 6", "domainnet": "Tab. 7"}[table]
    assert header.startswith(f"# DiGraP (ICLR 2025) {tab}: LLaVA-7B") and f"the DiGraP paper, {tab}" in header
    assert 'docs/methods.md "The paper\'s training recipe"' in header  # the recipe's source, repository-relative
    assert f"--config paper-llava/{path.stem} " in header  # the run line names this file
    choices = [line for line in header.splitlines() if "our choices" in line.lower()]
    assert len(choices) == 1
    cfg = load_config(path)
    # clipping is set in the file itself and said not to be the paper's, as in configs/paper/
    assert yaml.safe_load(text)["train"]["max_grad_norm"] == cfg.train.max_grad_norm
    assert f"max_grad_norm {cfg.train.max_grad_norm}" in choices[0] and MODEL in choices[0]
    assert f"eval_batch_size {cfg.eval_batch_size}" in choices[0]


def test_cli_accepts_a_llava_recipe(capsys, tmp_path):
    """`run --config paper-llava/vqa-digrap` parses; without --data-root the paper suite says so, in one line."""
    from vqa_ood_bench.cli import main

    assert main(["run", "--config", "paper-llava/vqa-digrap", "--out", str(tmp_path / "run"), "--json"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and "pass --data-root" in err
