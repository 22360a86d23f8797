"""vqa_ood_bench/configs/paper/: the DiGraP paper's recipes (Tab. 2 DomainNet-oVQA, Tab. 3 VQAv2 → 9 OOD).

Every file must load as a RunConfig, name a known method with valid parameters, carry the
recipe of docs/methods.md ("The paper's training recipe"), written out below by hand from that
text, not read from the files, and cite that section in its header comment.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from vqa_ood_bench.config import TrainConfig, load_config
from vqa_ood_bench.methods.base import PAPER_ORDER, get_method

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "vqa_ood_bench" / "configs" / "paper"
RECIPE_DOC, RECIPE_SECTION = "docs/methods.md", "The paper's training recipe"
SUITES = {"vqa": ("paper-vqa", "Question: {question} Answer:"), "domainnet": ("domainnet-ovqa", "Question: {question} Short answer:")}
# The VQA accuracy variant the paper's numbers use: Tab. 3 is the LAVIS variant (vqa_ood_bench/leaderboards/README.md);
# DomainNet-oVQA's headline metric is ClipMatch, its configs keep the official variant.
VARIANTS = {"vqa": "lavis", "domainnet": "official"}

# methods.md: PaliGemma-3B-pt-224, bf16, LoRA r=8 α=16 dropout 0.05; AdamW lr 1e-3, wd 1e-4; warm-up from
# 1e-4 over 1000 steps, cosine to 1e-4; 10 epochs; 128 per step with accumulation 2; beam size 5.
RECIPE = {
    "model": "google/paligemma-3b-pt-224", "dtype": "bfloat16", "adapter": "lora", "lora_r": 8, "lora_alpha": 16,
    "lora_dropout": 0.05, "num_beams": 5,
}
TRAIN = {"learning_rate": 1e-3, "weight_decay": 1e-4, "warmup_steps": 1000, "warmup_start_lr": 1e-4,
         "min_learning_rate": 1e-4, "scheduler": "cosine", "epochs": 10, "grad_accum": 2}
# methods.md: "DiGraP (0.5)" means mu = 0.5; FTP k = 1, mu = 1e-2; TPGM radius learning rate 1e-2.
METHOD_FACTS = {"digrap": {"mu": 0.5}, "ftp": {"k": 1.0, "mu": 1e-2}, "tpgm": {"gamma_lr": 1e-2}}


def _files():
    return sorted(PAPER.glob("*.yaml"))


def test_every_method_has_a_recipe_for_both_tables():
    expected = {f"{s}-{m}.yaml" for s in SUITES for m in PAPER_ORDER}
    assert {f.name for f in _files()} == expected


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.stem)
def test_recipe_is_valid_and_says_what_the_paper_says(path):
    cfg = load_config(path)
    table, method = path.stem.split("-", 1)
    assert cfg.method == method
    assert (cfg.suite, cfg.prompt) == SUITES[table]
    assert cfg.scoring_variant == VARIANTS[table]
    assert {k: getattr(cfg, k) for k in RECIPE} == RECIPE
    assert {k: getattr(cfg.train, k) for k in TRAIN} == TRAIN
    assert cfg.train.batch_size * cfg.train.grad_accum == 128  # the global batch per optimizer step
    assert cfg.train.eval_epochs > 0  # best checkpoint by ID validation
    m = get_method(cfg.method, **cfg.method_params)  # unknown parameters raise
    m.check(cfg)
    for key, value in METHOD_FACTS.get(method, {}).items():
        assert m.params[key] == value, key
    header = path.read_text().split("\nmethod:")[0]
    assert f'{RECIPE_DOC} "{RECIPE_SECTION}"' in header  # the source is cited in a comment, repository-relative


def test_the_cited_recipe_section_exists():
    """The configs' header comments cite a section of a file in this repository."""
    headings = [line.lstrip("#").strip() for line in (ROOT / RECIPE_DOC).read_text(encoding="utf-8").splitlines() if line.startswith("#")]
    assert RECIPE_SECTION in headings


def test_paper_schedule_matches_hand_worked_values():
    """Linear 1e-4 → 1e-3 over 1000 steps, then cosine 1e-3 → 1e-4 (factors of the peak 1e-3)."""
    from vqa_ood_bench.train.engine import _warmup_cosine

    cfg = TrainConfig(learning_rate=1e-3, warmup_steps=1000, warmup_start_lr=1e-4, min_learning_rate=1e-4)
    lr = lambda step, total=3000: 1e-3 * _warmup_cosine(cfg, 1000)(step, total)  # noqa: E731
    assert lr(0) == pytest.approx(1e-4)
    assert lr(500) == pytest.approx(5.5e-4)  # halfway up the warm-up
    assert lr(1000) == pytest.approx(1e-3)
    assert lr(2000) == pytest.approx(5.5e-4)  # halfway down the cosine: (1e-3 + 1e-4) / 2
    assert lr(1500) == pytest.approx(1e-4 + 0.9e-3 * (1 + math.cos(math.pi / 4)) / 2)
    assert lr(3000) == pytest.approx(1e-4)


def test_the_trainer_follows_the_paper_schedule(tmp_path):
    """The schedule reaches the optimizer: the Trainer's scheduler is ours, not its own cosine."""
    import torch
    from transformers import TrainingArguments

    from vqa_ood_bench.train.engine import _make_trainer, _warmup_cosine

    cfg = TrainConfig(learning_rate=1e-3, warmup_steps=10, warmup_start_lr=1e-4, min_learning_rate=1e-4)
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, max_steps=30, warmup_steps=10,
                             report_to="none", use_cpu=True)
    trainer = _make_trainer(schedule=_warmup_cosine(cfg, 10), model=torch.nn.Linear(2, 2), args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=30)
    lrs = []
    for _ in range(31):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert lrs[0] == pytest.approx(1e-4) and lrs[5] == pytest.approx(5.5e-4) and lrs[10] == pytest.approx(1e-3)
    assert lrs[20] == pytest.approx(5.5e-4) and lrs[30] == pytest.approx(1e-4)  # HF's own cosine would end at 0


def test_cli_accepts_a_paper_recipe(capsys, tmp_path):
    """`run --config FILE` parses the recipe; without --data-root the paper suite says so, in one line."""
    from vqa_ood_bench.cli import main

    assert main(["run", "--config", str(PAPER / "vqa-digrap.yaml"), "--out", str(tmp_path / "run"), "--json"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and "pass --data-root" in err
    assert load_config(tmp_path / "run" / "config.yaml") == load_config(PAPER / "vqa-digrap.yaml")
