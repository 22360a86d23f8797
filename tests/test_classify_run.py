"""Classification runs end to end on a DomainNet fixture in the released list format.

The fixture writes ``domainnet/{domain}_{split}.txt`` ("DOMAIN/CLASS/FILE.jpg LABEL" lines)
and the images they name; the run uses the shipped tiny model's vision tower for a few steps.
Scores are recomputed from the predictions files and the fixture's own lists with sklearn.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqa_ood_bench.classify.suites import class_names, domainnet_cls_suite
from vqa_ood_bench.config import RunConfig, TrainConfig
from vqa_ood_bench.data.suite import get_suite
from vqa_ood_bench.errors import BenchError, ConfigError, DataError
from vqa_ood_bench.report.schema import read_results

DOMAINS = ("real", "sketch", "painting", "infograph", "clipart", "quickdraw")
CLASSES = {0: ("aircraft_carrier", (200, 30, 30)), 5: ("bus", (30, 200, 30)), 344: ("zigzag", (30, 30, 200))}


def write_fixture(root: Path, per_class: int = 4) -> dict[str, list[tuple[str, int]]]:
    lists: dict[str, list[tuple[str, int]]] = {}
    d = root / "domainnet"
    for domain in DOMAINS:
        for split in ("train", "test"):
            if domain != "real" and split == "train":
                continue
            rows = []
            for label, (name, color) in CLASSES.items():
                for k in range(per_class):
                    rel = f"{domain}/{name}/{domain}_{split}_{label}_{k}.jpg"
                    (d / rel).parent.mkdir(parents=True, exist_ok=True)
                    shade = tuple(min(255, c + 10 * k) for c in color)
                    Image.new("RGB", (20, 20), shade).save(d / rel)
                    rows.append((rel, label))
            (d / f"{domain}_{split}.txt").write_text("".join(f"{r} {y}\n" for r, y in rows))
            lists[f"{domain}_{split}"] = rows
    return lists


@pytest.fixture()
def fixture_root(tmp_path):
    lists = write_fixture(tmp_path / "data")
    return tmp_path / "data", lists


def config(root: Path, method: str = "linear-probe", **train) -> RunConfig:
    return RunConfig(method=method, adapter="full", model="tiny", suite="domainnet-cls", data_root=str(root), eval_batch_size=16,
                     train=TrainConfig(**{"learning_rate": 1e-2, "max_steps": 3, "batch_size": 4, "warmup_ratio": 0.0, "save_steps": 2,
                                          "validation_size": 0, **train}))


def test_suite_reads_the_released_lists(fixture_root):
    root, lists = fixture_root
    suite = get_suite("domainnet-cls")
    train = suite.load(suite.train, root)
    select = suite.load(suite.validation, root)
    assert {r.question_id for r in train}.isdisjoint({r.question_id for r in select})
    assert sorted(r.question_id for r in train + select) == sorted(p for p, _ in lists["real_train"])
    assert [s.name for s in suite.evaluation] == ["domainnet-real", "domainnet-sketch", "domainnet-painting", "domainnet-infograph",
                                                  "domainnet-clipart", "domainnet-quickdraw"]
    names = class_names(suite, train + select)
    assert len(names) == 345 and names[0] == "aircraft carrier" and names[344] == "zigzag" and names[1] == "class 1"
    sketch = suite.load(suite.evaluation[1], root)
    assert [(r.question_id, r.meta["label"]) for r in sketch] == lists["sketch_test"]


def test_a_bad_list_line_names_file_and_line(fixture_root):
    root, _ = fixture_root
    path = root / "domainnet" / "sketch_test.txt"
    path.write_text(path.read_text() + "sketch/bus/x.jpg not-a-label\n")
    suite = domainnet_cls_suite()
    with pytest.raises(DataError, match=r"sketch_test\.txt.*line 13"):
        suite.load(suite.evaluation[1], root)


def test_run_end_to_end_and_resume(fixture_root, tmp_path):
    from sklearn.metrics import accuracy_score

    from vqa_ood_bench.runner import run_benchmark

    root, lists = fixture_root
    out = tmp_path / "run"
    results = run_benchmark(config(root), out, show_progress=False)
    assert results.task == "image-classification" and results.scoring_variant == "top-1"
    stored = read_results(out / "results.json")
    assert stored.task == "image-classification"
    for name, split in stored.splits.items():
        assert split.vqa_accuracy is None and split.ci is not None
        rows = [json.loads(line) for line in (out / split.predictions_file).read_text().splitlines()]
        truth = dict(lists[f"{name.removeprefix('domainnet-')}_test"])
        assert [r["question_id"] for r in rows] == [p for p, _ in lists[f"{name.removeprefix('domainnet-')}_test"]]
        expected = 100 * accuracy_score([truth[r["question_id"]] for r in rows], [r["prediction"] for r in rows])
        assert split.exact_match == pytest.approx(expected, abs=1e-4)
    ood = [s.exact_match for s in stored.splits.values() if s.role == "near"]
    assert stored.averages.ood == pytest.approx(np.mean(ood)) and stored.averages.id == stored.splits["domainnet-real"].exact_match
    # the backbone stayed as loaded: a linear probe trains 345 x 128 weights and 345 biases
    assert stored.model.trainable_parameters == 345 * 128 + 345
    again = run_benchmark(config(root), out, show_progress=False)
    assert again.method_params["fit"]["resumed"] is True
    assert {n: s.exact_match for n, s in again.splits.items()} == {n: s.exact_match for n, s in stored.splits.items()}
    with pytest.raises(ConfigError, match="different configuration"):
        run_benchmark(config(root, learning_rate=0.5), out, show_progress=False)


def test_lora_and_unknown_labels_are_refused(fixture_root, tmp_path):
    from vqa_ood_bench.runner import run_benchmark

    root, _ = fixture_root
    with pytest.raises(ConfigError, match="adapter full"):
        run_benchmark(config(root).model_copy(update={"adapter": "lora"}), tmp_path / "a", show_progress=False)
    path = root / "domainnet" / "clipart_test.txt"
    first = path.read_text().splitlines()[0].rsplit(" ", 1)[0]
    path.write_text(path.read_text() + f"{first.replace('.jpg', '_copy.jpg')} 400\n")
    Image.new("RGB", (20, 20)).save(root / "domainnet" / first.replace(".jpg", "_copy.jpg"))
    with pytest.raises(ConfigError, match=r"domainnet-clipart \[record .*_copy\.jpg\]: label 400"):
        run_benchmark(config(root), tmp_path / "b", show_progress=False)


def test_cli_run_and_errors(fixture_root, tmp_path):
    from typer.testing import CliRunner

    from vqa_ood_bench.cli.app import app

    root, _ = fixture_root
    runner = CliRunner()
    out = tmp_path / "cli"
    res = runner.invoke(app, ["run", "--suite", "domainnet-cls", "--data-root", str(root), "--method", "vanilla", "--limit", "6",
                              "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output[res.output.index("{"):])
    assert data["task"] == "image-classification" and data["method"] == "vanilla" and data["config"]["adapter"] == "full"
    assert data["method_params"]["optimizer"] == "adamw"
    bad = runner.invoke(app, ["run", "--suite", "domainnet-cls", "--data-root", str(root), "--method", "lp-ft", "--param", "head=tied",
                              "--out", str(tmp_path / "bad")])
    # the app raises; the console entry point prints BenchErrors as one line
    assert bad.exit_code != 0 and isinstance(bad.exception, BenchError) and "VQA task" in str(bad.exception)
