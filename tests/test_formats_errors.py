"""Bad input gives one clear error naming the file and the record, or is skipped and counted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fixtures.make_fixtures import make_all, make_lavis
from vqa_ood_bench.data.formats._common import LoadReport
from vqa_ood_bench.data.registry import get_dataset
from vqa_ood_bench.errors import ConfigError, DataError

VAL_Q = "v2_OpenEnded_mscoco_val2014_questions.json"
VAL_A = "v2_mscoco_val2014_annotations.json"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_all(tmp_path / "data")


def edit_json(path: Path, fn) -> None:
    obj = json.loads(path.read_text())
    fn(obj)
    path.write_text(json.dumps(obj))


def test_malformed_json_names_the_file_and_position(root: Path) -> None:
    p = root / "vqav2" / VAL_A
    p.write_text(p.read_text()[:200])  # truncated download
    with pytest.raises(DataError) as exc:
        get_dataset("vqav2").load(root)
    assert str(p) in str(exc.value) and "malformed JSON at line 1" in str(exc.value)


def test_missing_annotation_file(root: Path) -> None:
    p = root / "vqav2" / VAL_A
    p.unlink()
    with pytest.raises(DataError) as exc:
        get_dataset("vqav2").load(root)
    assert str(exc.value) == f"{p}: file not found"


def test_missing_question_file_names_where_it_looked(root: Path) -> None:
    (root / "advqa" / "v1_OpenEnded_mscoco_val2017_advqa_questions.json").unlink()
    with pytest.raises(DataError) as exc:
        get_dataset("advqa").load(root)
    msg = str(exc.value)
    assert str(root / "advqa" / "v1_OpenEnded_mscoco_val2017_advqa_questions.json") in msg and "not found" in msg


def test_wrong_wrapper_is_explained(root: Path) -> None:
    # VQA-CP is released as bare lists; a wrapped file is not what the release looks like
    p = root / "vqa-cp-v2" / "vqacp_v2_test_questions.json"
    p.write_text(json.dumps({"questions": json.loads(p.read_text())}))
    with pytest.raises(DataError, match="expected a bare JSON list .* keys questions"):
        get_dataset("vqa-cp-v2").load(root)
    # and VQAv2's wrapper without its list
    edit_json(root / "vqav2" / VAL_Q, lambda o: o.pop("questions"))
    with pytest.raises(DataError, match="expected a 'questions' list"):
        get_dataset("vqav2").load(root)


def test_question_without_annotation(root: Path) -> None:
    edit_json(root / "vqav2" / VAL_A, lambda o: o["annotations"].pop(2))  # drops 262148000
    with pytest.raises(DataError) as exc:
        get_dataset("vqav2").load(root)
    msg = str(exc.value)
    assert str(root / "vqav2" / VAL_Q) in msg and "[record 262148000]" in msg and VAL_A in msg
    # skipped and counted when not strict: the other four are read
    report = LoadReport()
    recs = list(get_dataset("vqav2").load(root, strict=False, report=report))
    assert sorted(r.question_id for r in recs) == ["262148001", "262148002", "393225000", "393225001"]
    assert [(s.record, s.known) for s in report.skipped] == [("262148000", False)]


def test_annotation_without_question(root: Path) -> None:
    edit_json(root / "vqav2" / VAL_Q, lambda o: o["questions"].pop(0))  # drops 393225000
    with pytest.raises(DataError) as exc:
        get_dataset("vqav2").load(root)
    assert str(root / "vqav2" / VAL_A) in str(exc.value) and "[record 393225000]" in str(exc.value)


def test_duplicate_question_id(root: Path) -> None:
    edit_json(root / "vqav2" / VAL_Q, lambda o: o["questions"].append(dict(o["questions"][1])))
    with pytest.raises(DataError, match=r"\[record 393225001\]: question_id occurs twice"):
        get_dataset("vqav2").load(root)


def test_iv_vqa_integer_image_id_is_malformed(root: Path) -> None:
    def to_int(o):
        o["questions"][1]["image_id"] = 393225

    edit_json(root / "iv-vqa" / VAL_Q, to_int)
    with pytest.raises(DataError) as exc:
        get_dataset("iv-vqa").load(root)
    assert str(root / "iv-vqa" / VAL_Q) in str(exc.value) and "[record #1]" in str(exc.value)
    assert "image_id" in str(exc.value)


def test_vqace_id_not_in_vqav2_val(root: Path) -> None:
    p = root / "vqa-ce" / "hard.json"
    p.write_text(json.dumps([262148001, 123]))
    with pytest.raises(DataError) as exc:
        get_dataset("vqa-ce").load(root)
    assert str(p) in str(exc.value) and "[record 123]" in str(exc.value) and "not in VQAv2 val" in str(exc.value)
    report = LoadReport()
    recs = list(get_dataset("vqa-ce").load(root, split="hard", strict=False, report=report))
    assert [r.question_id for r in recs] == ["262148001"] and report.malformed[0].record == "123"


def test_empty_question_is_an_error_outside_rephrasings(root: Path) -> None:
    edit_json(root / "vqav2" / VAL_Q, lambda o: o["questions"][3].update(question="  "))
    with pytest.raises(DataError) as exc:
        list(get_dataset("vqav2").load(root))
    assert str(root / "vqav2" / VAL_Q) in str(exc.value) and "[record 262148001]: empty question" in str(exc.value)


def test_malformed_answers(root: Path) -> None:
    edit_json(root / "okvqa" / "mscoco_val2014_annotations.json", lambda o: o["annotations"][0].update(answers="race"))
    with pytest.raises(DataError, match=r"\[record 2971475\]: 'answers' must be a list"):
        list(get_dataset("ok-vqa").load(root))


def test_missing_image_is_found_by_verify_not_by_the_lazy_loader(root: Path) -> None:
    from vqa_ood_bench.data.verify import verify_dataset

    img = root / "coco" / "val2014" / "COCO_val2014_000000262148.jpg"
    img.unlink()
    recs = {r.question_id: r for r in get_dataset("vqav2").load(root)}
    assert len(recs) == 5  # lazy: no image is opened while reading
    with pytest.raises(DataError) as exc:
        recs["262148001"].load_image()
    assert str(img) in str(exc.value) and "262148001" in str(exc.value)
    result = verify_dataset("vqav2", root)
    assert result.images == 2 and result.images_present == 1
    assert result.images_missing == [{"image": str(img), "record": "262148000"}]
    assert not result.ok


@pytest.mark.parametrize("bad", ["../../../../etc/passwd", "/etc/passwd", "val/../../../../outside.jpg"])
def test_image_path_escaping_the_root(root: Path, bad: str) -> None:
    p = root / "vizwiz" / "val.json"
    edit_json(p, lambda o: o[1].update(image=bad))
    with pytest.raises(DataError) as exc:
        list(get_dataset("vizwiz").load(root))
    msg = str(exc.value)
    assert str(p) in msg and "escapes the data root" in msg and repr(bad) in msg
    report = LoadReport()
    recs = list(get_dataset("vizwiz").load(root, strict=False, report=report))
    assert [r.question_id for r in recs] == ["VizWiz_val_00000000"]
    assert any("escapes" in s.reason for s in report.malformed)


def test_dotdot_inside_the_root_is_allowed(root: Path) -> None:
    edit_json(root / "vizwiz" / "val.json", lambda o: o[1].update(image="../val/VizWiz_val_00000001.jpg"))
    recs = {r.question_id: r for r in get_dataset("vizwiz").load(root)}
    assert recs["VizWiz_val_00000001"].image_path.is_file()


def test_lavis_absolute_image_outside_root(tmp_path: Path) -> None:
    root = make_lavis(tmp_path / "lavis")
    p = root / "vqav2" / "annotations" / "vqa_val_eval.json"
    obj = json.loads(p.read_text())
    obj[0]["image"] = str(tmp_path / "elsewhere.jpg")
    p.write_text(json.dumps(obj))
    with pytest.raises(DataError, match=r"\[record 262148000\]: image path .* escapes the data root"):
        list(get_dataset("lavis").load(root, file="vqav2/annotations/vqa_val_eval.json"))


def test_symlinked_image_folder_inside_the_root_is_followed(tmp_path: Path) -> None:
    # users often link a shared COCO copy into the data root; that is not an escape
    shared = make_all(tmp_path / "shared")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(shared / "coco", root / "coco")
    os.symlink(shared / "vqav2", root / "vqav2")
    os.symlink(shared / "vizwiz", root / "vizwiz")
    recs = list(get_dataset("vqav2").load(root))
    assert len(recs) == 5 and all(r.image_path.is_file() for r in recs)
    assert len(list(get_dataset("vizwiz").load(root))) == 2


def test_unknown_option_and_bad_split(root: Path) -> None:
    with pytest.raises(ConfigError, match="unknown option"):
        get_dataset("vqav2").load(root, frction=0.1)
    with pytest.raises(ConfigError, match="split must be one of"):
        get_dataset("vqav2").load(root, split="validation")
    with pytest.raises(ConfigError, match="fraction"):
        get_dataset("vqav2").load(root, fraction=1.5)
    with pytest.raises(ConfigError, match="--data-root"):
        get_dataset("textvqa").load(None)
