"""The embedded-domains suite (styles by hand, build determinism) and the DomainNet recipes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqa_ood_bench.classify import embedded_domains as ED
from vqa_ood_bench.classify.methods import make_plan
from vqa_ood_bench.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "vqa_ood_bench" / "configs" / "paper-cls"


def square_image(color: str = "blue") -> Image.Image:
    """A pale background with a solid 20x20 square at (20..39, 20..39), as easy-VQA draws shapes."""
    arr = np.full((64, 64, 3), 240, dtype=np.uint8)
    arr[20:40, 20:40] = ED.EASYVQA_COLORS[color]
    return Image.fromarray(arr)


def test_classes_are_colour_times_shape():
    assert len(ED.CLASSES) == 24 and len(set(ED.CLASSES)) == 24
    assert ED.CLASSES[ED.label_of("teal", "triangle")] == "teal triangle"


def test_outline_keeps_the_border_and_clears_the_inside():
    out = np.asarray(ED.outline(square_image(), "blue"))
    blue, pale = np.array([0, 0, 255]), np.array([240, 240, 240])
    assert (out[20, 20:40] == blue).all() and (out[20:40, 39] == blue).all()  # the square's edge rows/columns
    assert (out[25:35, 25:35] == pale).all()  # the inside: 5x5 erosion leaves it background
    assert (out[:18] == pale).all()  # the background stays as it was


def test_restyles_are_deterministic_and_keep_the_shape():
    img = square_image("red")
    for domain in ED.OOD_DOMAINS:
        a = ED.restyle(img, "red", domain, np.random.default_rng([1, 2]))
        b = ED.restyle(img, "red", domain, np.random.default_rng([1, 2]))
        assert np.array_equal(np.asarray(a), np.asarray(b)), domain
    striped = np.asarray(ED.restyle(img, "red", "stripes", np.random.default_rng(0)))
    assert (striped[22:38, 22:38] == [255, 0, 0]).all()  # shape pixels kept, background replaced
    assert len({tuple(p) for p in striped[:15, :15].reshape(-1, 3)}) > 1


def test_the_recorded_hashes_cover_every_split():
    expected = json.loads(ED.EXPECTED_HASHES.read_text())
    assert expected["version"] == ED.SUITE_VERSION
    assert set(expected["splits"]) == {"solid-train", "solid-val", *ED.DOMAINS}


@pytest.mark.slow
def test_build_is_deterministic_and_matches_the_recorded_version(tmp_path):
    a = ED.build(tmp_path / "a")
    b = ED.build(tmp_path / "b")
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert ma == mb and ED.content_differences(ma) == []
    assert {k: v["n"] for k, v in ma["splits"].items()} == {"solid-train": 3600, "solid-val": 400, **{d: 1000 for d in ED.DOMAINS}}
    recs = ED.read_split("outline", tmp_path / "a")
    assert all(r.meta["label"] == ED.CLASSES.index(r.answers[0]) for r in recs)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_domainnet_recipes_follow_the_paper(path):
    cfg = load_config(path)
    assert path.stem == f"domainnet-cls-{cfg.method}"
    assert (cfg.suite, cfg.adapter) == ("domainnet-cls", "full")
    assert (cfg.train.learning_rate, cfg.train.batch_size * cfg.train.grad_accum) == (1e-2, 256)  # App. 7.2
    plan = make_plan(cfg.method, cfg.method_params)  # parameters checked by the methods themselves
    assert plan.run["optimizer"] == "sgd"
    if cfg.method == "digrap":
        assert plan.params["mu"] == 0.1  # Tab. 1: "DiGraP (0.1)"
    if cfg.method == "lp-ft-c":
        assert plan.params["reg"] == 5.0  # Tab. 10: "LP-FT-C (reg=5)"
    assert "/" not in cfg.model.partition(":")[2] or cfg.model.startswith("open_clip:")  # no machine paths
