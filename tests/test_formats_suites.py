"""The paper suites are valid Suite objects that read the released layout."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fixtures.make_fixtures import VQAV2_TRAIN_N, make_all
from vqa_ood_bench.data.suite import get_suite, suite_names
from vqa_ood_bench.data.suites import domainnet_ovqa_suite, paper_vqa_suite
from vqa_ood_bench.errors import ConfigError


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_all(tmp_path_factory.mktemp("released"))


def _u(text: str) -> float:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") / 2**64


def test_paper_vqa_matches_table_3() -> None:
    assert {"paper-vqa", "domainnet-ovqa"} <= set(suite_names())
    s = get_suite("paper-vqa")
    assert s.needs_data_root
    assert (s.train.dataset, s.train.options["split"], s.train.options["fraction"]) == ("vqav2", "train", 0.1)
    assert (s.validation.dataset, s.validation.options["split"]) == ("vqav2", "val")
    roles = [(e.dataset, e.role, e.shift_type) for e in s.evaluation]
    assert roles == [
        ("vqav2", "id", "none"),
        ("iv-vqa", "near", "vision"),
        ("cv-vqa", "near", "vision"),
        ("vqa-rephrasings", "near", "question"),
        ("vqa-cp-v2", "near", "answer"),
        ("vqa-ce", "near", "multimodal"),
        ("advqa", "near", "adversarial"),
        ("textvqa", "far", "far"),
        ("vizwiz", "far", "far"),
        ("ok-vqa", "far", "far"),
    ]
    assert len({e.name for e in s.evaluation}) == 10


def test_paper_vqa_reads_every_split_of_the_fixture(root: Path) -> None:
    s = get_suite("paper-vqa")
    counts = {spec.name: len(s.load(spec, root)) for spec in s.evaluation}
    assert counts["iv-vqa"] == 3 and counts["cv-vqa"] == 2 and counts["vqa-rephrasings"] == 4
    assert counts["vqa-cp-v2"] == 2 and counts["vqa-ce"] == 2 and counts["advqa"] == 2
    assert counts["textvqa"] == 2 and counts["vizwiz"] == 2 and counts["ok-vqa"] == 1
    val_ids = ["393225000", "393225001", "262148000", "262148001", "262148002"]
    select = {r.question_id for r in s.load(s.validation, root)}
    id_eval = {r.question_id for r in s.load(s.evaluation[0], root)}
    assert select == {q for q in val_ids if _u(f"vqav2/val:{q}") < 0.1}
    assert id_eval == {q for q in val_ids if 0.1 <= _u(f"vqav2/val:{q}") < 0.2}
    train = {r.question_id for r in s.load(s.train, root)}
    assert train == {str(458752000 + k) for k in range(VQAV2_TRAIN_N) if _u(f"vqav2/train:{458752000 + k}") < 0.1}


def test_train_fraction_is_an_option(root: Path) -> None:
    s = paper_vqa_suite(train_fraction=1.0)
    assert len(s.load(s.train, root)) == VQAV2_TRAIN_N
    # the smoke-run limit still applies on top
    assert len(s.load(s.train, root, limit=7)) == 7
    with pytest.raises(ConfigError):
        paper_vqa_suite(train_fraction=0)
    with pytest.raises(ConfigError):
        paper_vqa_suite(val_fraction=0.5, id_eval_fraction=0.6)


def test_suites_need_a_data_root() -> None:
    s = get_suite("paper-vqa")
    with pytest.raises(ConfigError, match="--data-root"):
        s.load(s.train, None)


def test_domainnet_ovqa(root: Path) -> None:
    s = get_suite("domainnet-ovqa")
    assert s.needs_data_root
    assert [(e.dataset, e.role) for e in s.evaluation] == [
        ("domainnet-real", "id"),
        ("domainnet-clipart", "near"),
        ("domainnet-infograph", "near"),
        ("domainnet-painting", "near"),
        ("domainnet-quickdraw", "near"),
        ("domainnet-sketch", "near"),
    ]
    assert all(e.shift_type == "vision" for e in s.evaluation[1:])
    train = {r.question_id for r in s.load(s.train, root)}
    select = {r.question_id for r in s.load(s.validation, root)}
    lines = ["real/aircraft_carrier/real_001_000001.jpg", "real/aircraft_carrier/real_001_000002.jpg", "real/zebra/real_345_000001.jpg"]
    assert train == {q for q in lines if _u(f"domainnet-real/train:{q}") < 0.9}
    assert select == {q for q in lines if _u(f"domainnet-real/train:{q}") >= 0.9}
    ood = s.load(s.evaluation[3], root)
    assert [r.answers for r in ood] == [["aircraft carrier"], ["zebra"]]
    assert all(r.question == "What is in the image?" for r in ood)
    assert domainnet_ovqa_suite(question="What is this?").evaluation[0].options["question"] == "What is this?"
