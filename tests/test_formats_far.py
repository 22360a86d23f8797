"""TextVQA, VizWiz, DomainNet, the LAVIS layout and the (optional) hub path."""

from __future__ import annotations

import shutil
import sys
import types
from pathlib import Path

import pytest
from PIL import Image

from fixtures.make_fixtures import make_all, make_lavis
from vqa_ood_bench.data.formats._common import LoadReport
from vqa_ood_bench.data.registry import get_dataset
from vqa_ood_bench.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_all(tmp_path_factory.mktemp("released"))


def load(name: str, root: Path | None, **opts):
    report = LoadReport()
    recs = list(get_dataset(name).load(root, report=report, **opts))
    return {r.question_id: r for r in recs}, [r.question_id for r in recs], report


# ------------------------------------------------------------------ TextVQA


def test_textvqa_val_reads_the_data_wrapper_and_train_images(root: Path) -> None:
    recs, order, _ = load("textvqa", root)
    assert order == ["34602", "34603"]
    r = recs["34602"]
    assert r.question == "what is the brand of this camera?"
    assert r.answers[0] == "nous les gosses" and r.answers.count("dakota") == 6 and len(r.answers) == 10
    assert r.image_path == root / "textvqa" / "train_images" / "003a8ae2ef43b901.jpg"
    assert r.meta["image_id"] == "003a8ae2ef43b901" and r.meta["set_name"] == "val"
    assert r.meta["image_width"] == 1024 and r.meta["image_classes"] == ["Camera", "Poster"]


def test_textvqa_test_has_no_answers_and_test_images(root: Path) -> None:
    recs, _, _ = load("textvqa", root, split="test")
    r = recs["40000"]
    assert r.answers == []
    assert r.image_path == root / "textvqa" / "test_images" / "00a0a0a0a0a0a0a0.jpg"


# ------------------------------------------------------------------ VizWiz


def test_vizwiz_bare_list_no_answer_id_and_empty_answers(root: Path) -> None:
    recs, order, report = load("vizwiz", root)
    assert order == ["VizWiz_val_00000000", "VizWiz_val_00000001"]
    r0 = recs["VizWiz_val_00000000"]
    assert r0.answers == ["unanswerable"] * 8 + ["no", "unanswerable"]
    assert r0.answer_type == "unanswerable" and r0.meta["answerable"] == 0
    assert r0.image_path == root / "vizwiz" / "val" / "VizWiz_val_00000000.jpg"
    r1 = recs["VizWiz_val_00000001"]
    # the two empty strings are kept in place, as the official VizWiz evaluation scores all ten
    # answers (docs/vqa-accuracy.md), and counted in meta; nothing is dropped
    assert r1.answers == ["left", "blue", "", "left", "left", "", "left one", "left", "left", "left"]
    assert r1.meta["empty_answers"] == 2 and r1.meta["answerable"] == 1
    assert r0.meta["empty_answers"] == 0
    # the question whose ten answers are all empty is skipped, counted, with its reason
    assert [(s.record, s.known) for s in report.skipped] == [("VizWiz_val_00000002", True)]
    assert "all answers empty" in report.skipped[0].reason


def test_vizwiz_annotations_folder_as_unzipped(tmp_path: Path) -> None:
    root = make_all(tmp_path)
    (root / "vizwiz" / "Annotations").mkdir()
    shutil.move(root / "vizwiz" / "val.json", root / "vizwiz" / "Annotations" / "val.json")
    recs, _, _ = load("vizwiz", root)
    assert recs["VizWiz_val_00000001"].image_path == root / "vizwiz" / "val" / "VizWiz_val_00000001.jpg"


# ------------------------------------------------------------------ DomainNet


def test_domainnet_lines_become_what_is_in_the_image(root: Path) -> None:
    recs, order, _ = load("domainnet-real", root, split="train")
    assert order == [
        "real/aircraft_carrier/real_001_000001.jpg",
        "real/aircraft_carrier/real_001_000002.jpg",
        "real/zebra/real_345_000001.jpg",
    ]
    r = recs["real/aircraft_carrier/real_001_000002.jpg"]
    assert r.question == "What is in the image?"
    assert r.answers == ["aircraft carrier"]  # "_" -> space
    assert r.meta == {"label": 0, "class_name": "aircraft_carrier", "domain": "real"}
    assert r.image_path == root / "domainnet" / "real" / "aircraft_carrier" / "real_001_000002.jpg"
    assert r.load_image().size == (4, 4)


def test_domainnet_every_domain_test_split(root: Path) -> None:
    for domain in ("clipart", "infograph", "painting", "quickdraw", "sketch"):
        recs, order, _ = load(f"domainnet-{domain}", root)
        assert order == [f"{domain}/aircraft_carrier/{domain}_001_000004.jpg", f"{domain}/zebra/{domain}_345_000002.jpg"]
        assert [recs[q].answers for q in order] == [["aircraft carrier"], ["zebra"]]
        assert get_dataset(f"domainnet-{domain}").role == "near"
    recs, _, _ = load("domainnet-real", root)
    assert [r.meta["label"] for r in recs.values()] == [2, 344]
    assert get_dataset("domainnet-real").role == "id"


def test_domainnet_inconsistent_label_is_malformed(tmp_path: Path) -> None:
    root = make_all(tmp_path)
    p = root / "domainnet" / "real_test.txt"
    p.write_text("real/alarm_clock/real_003_000010.jpg 2\nreal/zebra/real_345_000007.jpg 2\n")
    with pytest.raises(DataError) as exc:
        list(get_dataset("domainnet-real").load(root))
    assert str(p) in str(exc.value) and "real/zebra/real_345_000007.jpg" in str(exc.value)
    recs, _, report = load("domainnet-real", root, strict=False)
    assert list(recs) == ["real/alarm_clock/real_003_000010.jpg"] and len(report.malformed) == 1


# ------------------------------------------------------------------ LAVIS layout


def test_lavis_layout(tmp_path: Path) -> None:
    root = make_lavis(tmp_path)
    recs, order, _ = load("lavis", root, file="vqav2/annotations/vqa_val_eval.json", dataset_name="vqav2", split="val")
    assert order == ["262148000", "393225001"]
    r = recs["262148000"]
    assert r.answers == ["2", "2", "2", "3", "2", "2", "2", "2", "2", "2"]
    assert r.image_path == root / "coco" / "images" / "val2014" / "COCO_val2014_000000262148.jpg"
    assert (r.dataset, r.split, r.meta["dataset"]) == ("vqav2", "val", "vqa")
    assert r.load_image().size == (4, 4)


def test_lavis_needs_the_file_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file=PATH"):
        get_dataset("lavis").load(make_lavis(tmp_path))


# ------------------------------------------------------------------ hub (never needs network)


def _fake_datasets(monkeypatch: pytest.MonkeyPatch, load_dataset) -> list:
    calls: list = []

    def wrapper(*args, **kwargs):
        calls.append((args, kwargs))
        return load_dataset(*args, **kwargs)

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=wrapper))
    return calls


def test_hub_rows_become_records(monkeypatch: pytest.MonkeyPatch) -> None:
    img = Image.new("RGB", (2, 2))
    rows = [
        {"question_id": "VizWiz_val_00000007", "question": "What colour?", "answers": ["red", "", "red"],
         "answer_type": "other", "image": img, "answerable": 1},
    ]
    calls = _fake_datasets(monkeypatch, lambda *a, **k: rows)
    recs, _, report = load("vizwiz", None, source="hub")
    assert calls[0][0] == ("lmms-lab/VizWiz-VQA",) and calls[0][1]["split"] == "val"
    r = recs["VizWiz_val_00000007"]
    # the empty answer is kept, as in the file loader
    assert r.answers == ["red", "", "red"] and r.image is img and r.meta["answerable"] == 1
    assert r.meta["empty_answers"] == 1


def test_hub_failure_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'lmms-lab/VQAv2' on the Hub (OfflineModeIsEnabled)")

    _fake_datasets(monkeypatch, offline)
    with pytest.raises(DataError) as exc:
        get_dataset("vqav2").load(None, source="hub")
    msg = str(exc.value)
    assert "hf://datasets/lmms-lab/VQAv2" in msg and "OfflineModeIsEnabled" in msg and "--data-root" in msg


def test_hub_without_datasets_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails
    with pytest.raises(ConfigError, match=r"pip install 'vqa-ood-bench\[hub\]'"):
        get_dataset("textvqa").load(None, source="hub")


def test_hub_real_package_offline_fails_cleanly() -> None:
    # conftest sets HF_HUB_OFFLINE / HF_DATASETS_OFFLINE: the real library must fail fast
    pytest.importorskip("datasets")
    with pytest.raises(DataError, match="hf://datasets/lmms-lab/OK-VQA"):
        get_dataset("ok-vqa").load(None, source="hub")


def test_hub_domainnet_keeps_only_its_domain(monkeypatch: pytest.MonkeyPatch) -> None:
    img = Image.new("RGB", (2, 2))

    class FakeDataset(list):
        features = {
            "label": types.SimpleNamespace(names=["aircraft_carrier", "airplane", "alarm_clock"]),
            "domain": types.SimpleNamespace(names=["clipart", "real"]),
        }

    rows = FakeDataset(
        [
            {"image": img, "label": 2, "domain": 1},
            {"image": img, "label": 0, "domain": 0},  # clipart: not this dataset
            {"image": img, "label": 0, "domain": 1},
        ]
    )
    _fake_datasets(monkeypatch, lambda *a, **k: rows)
    recs, order, report = load("domainnet-real", None, source="hub")
    assert [recs[q].answers for q in order] == [["alarm clock"], ["aircraft carrier"]]
    assert [recs[q].meta["label"] for q in order] == [2, 0]
    assert report.skipped == []
