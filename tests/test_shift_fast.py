"""Faster `shift`: the fit subsample, all feature kinds from one extraction, the verified feature cache.

References are independent computations: the masked full-length formulation run one record at a
time (``pooled_features_masked``), single-modality runs (``test_features.reference``) and
scikit-learn's float64 Ledoit-Wolf Gaussian on features extracted separately.
"""

from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

import test_features as tf
from test_shift_plots import RECORDS, SUITE, model_dir  # noqa: F401  (registers the "shifttest" suite; fixture)
from vqa_ood_bench.cli import main
from vqa_ood_bench.data.records import VQARecord
from vqa_ood_bench.errors import ConfigError
from vqa_ood_bench.shift import features as F
from vqa_ood_bench.shift.features import (
    FEATURE_KINDS,
    FeatureMemo,
    extract_features,
    inference_model,
    model_fingerprint,
    pooled_features,
    pooled_features_masked,
)
from vqa_ood_bench.shift.measure import fit_subsample, measure_shift, resolve_fit_size, save_shift

SPECIAL = {tf.BOS, tf.EOS, tf.PAD}


def _encode_any(recs):
    """test_features.encode, for records whose image is a file as well as in memory."""
    return tf.encode([VQARecord(question_id=r.question_id, image=r.load_image(), question=r.question, answers=r.answers) for r in recs])


@pytest.fixture
def count_passes(monkeypatch):
    """Counts decoder passes (and the rows they run) and vision-tower calls."""
    calls = {"decoder": 0, "decoder_rows": 0, "tower_rows": 0}
    real = F._final_states

    def counting(model, backbone, **inputs):
        calls["decoder"] += 1
        calls["decoder_rows"] += int(inputs["input_ids"].shape[0])
        return real(model, backbone, **inputs)

    monkeypatch.setattr(F, "_final_states", counting)
    from transformers.models.paligemma.modeling_paligemma import PaliGemmaModel

    real_tower = PaliGemmaModel.get_image_features

    def tower(self, pixel_values, **kw):
        calls["tower_rows"] += int(pixel_values.shape[0])
        return real_tower(self, pixel_values, **kw)

    monkeypatch.setattr(PaliGemmaModel, "get_image_features", tower)
    return calls


# ----------------------------------------------------------------------------- fit subsample
def _id_records(n: int) -> list[VQARecord]:
    return [VQARecord(question_id=f"q{i:04d}", image=f"/img/{i % 37}.png", question="what color", answers=["red"]) for i in range(n)]


def test_fit_subsample_is_deterministic_sized_order_free_and_nested() -> None:
    recs = _id_records(500)
    np.random.seed(1), random.seed(1), torch.manual_seed(1)
    a = fit_subsample(recs, 120, seed=0)
    shuffled = list(recs)
    random.Random(7).shuffle(shuffled)
    np.random.seed(99), random.seed(99), torch.manual_seed(99)  # global RNG state plays no part
    b = fit_subsample(shuffled, 120, seed=0)
    ids = [r.question_id for r in a]
    assert len(a) == 120 and len(set(ids)) == 120
    assert ids == [r.question_id for r in b]  # same records, same order, whatever the input order
    # the documented rule, computed here by hand
    want = sorted((r.question_id for r in recs), key=lambda q: hashlib.sha256(f"shift-fit/0/{q}".encode()).hexdigest())[:120]
    assert ids == want
    # not a prefix: spread over the split
    idx = sorted(int(q[1:]) for q in ids)
    assert idx != list(range(120)) and 150 < np.mean(idx) < 350
    # nested sizes, other seeds choose other records
    assert {r.question_id for r in fit_subsample(recs, 60, seed=0)} < set(ids)
    other = {r.question_id for r in fit_subsample(recs, 120, seed=1)}
    assert len(other) == 120 and other != set(ids)
    # all records (in their order) when no cap or a cap at least the split
    for size in (None, 0, 500, 10_000):
        assert [r.question_id for r in fit_subsample(shuffled, size)] == [r.question_id for r in shuffled]
    with pytest.raises(ConfigError):
        fit_subsample(recs, -1)


def test_resolve_fit_size() -> None:
    assert resolve_fit_size("auto", "embedded") == 5000
    assert resolve_fit_size("auto", "paper-vqa") is None
    for everything in ("all", "ALL", "0", 0, None):
        assert resolve_fit_size(everything, "embedded") is None
    assert resolve_fit_size("1234", "embedded") == 1234 and resolve_fit_size(77, "x") == 77
    for bad in ("many", "1", 1, -5):
        with pytest.raises(ConfigError):
            resolve_fit_size(bad, "embedded")


# ----------------------------------------------------------------------------- one pass
def _records_with_repeats() -> list[VQARecord]:
    """Distinct records that share images and questions (as easy-VQA's do)."""
    base = tf.records(4, seed=3)
    extra = [
        VQARecord(question_id="dup-img", image=base[0].image, question=base[2].question, answers=["x"]),
        VQARecord(question_id="dup-both", image=base[1].image, question=base[1].question, answers=["x"]),
        VQARecord(question_id="dup-q", image=tf.rand_image(999), question=base[0].question, answers=["x"]),
    ]
    return [base[0], extra[0], base[1], base[2], extra[1], base[3], extra[2]]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_one_pass_equals_per_kind_passes_and_single_modality_runs(attn: str, count_passes) -> None:
    model = tf.tiny_model(attn)
    recs = _records_with_repeats()
    memo = FeatureMemo()
    feats = pooled_features(model, tf.encode(recs), special_ids=SPECIAL, memo=memo)
    assert set(feats) == set(FEATURE_KINDS)
    # one tower call on the 5 distinct images; decoder: question (4 distinct), vision (5 distinct), joint (7 records)
    assert count_passes["decoder"] == 3 and count_passes["tower_rows"] == 5
    assert count_passes["decoder_rows"] == 4 + 5 + 7
    for kind in FEATURE_KINDS:
        per_kind = pooled_features_masked(model, tf.encode(recs), special_ids=SPECIAL, kinds=(kind,))[kind]
        np.testing.assert_allclose(feats[kind].numpy(), per_kind.numpy(), rtol=1e-5, atol=1e-6, err_msg=kind)
    for i, rec in enumerate(recs):
        ref = tf.reference(model, rec)
        for kind in FEATURE_KINDS:
            np.testing.assert_allclose(feats[kind][i].numpy(), ref[kind], rtol=1e-4, atol=1e-5, err_msg=f"{kind} of {rec.question_id}")
    # records that share only the image differ in question and joint, records sharing only the question in vision
    assert np.abs(feats["joint"][0] - feats["joint"][1]).max() > 1e-3
    assert np.abs(feats["vision"][0] - feats["vision"][6]).max() > 1e-3

    # a later batch of the same extraction: seen images and questions come from the memo; only the joint pass runs
    before = dict(count_passes)
    again = pooled_features(model, tf.encode(recs[::-1]), special_ids=SPECIAL, memo=memo)
    assert count_passes["decoder"] - before["decoder"] == 1 and count_passes["tower_rows"] - before["tower_rows"] == 5
    for kind in FEATURE_KINDS:
        np.testing.assert_allclose(again[kind].numpy()[::-1], feats[kind].numpy(), rtol=1e-5, atol=1e-6)


def test_subset_of_kinds_and_lora_merge() -> None:
    from peft import LoraConfig, get_peft_model

    recs = _records_with_repeats()
    model = get_peft_model(tf.tiny_model(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"], lora_alpha=4))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    fp = model_fingerprint(model)
    merged = inference_model(model)
    assert merged is not model and model_fingerprint(model) == fp  # the caller's model is untouched
    assert not any("lora" in n for n, _ in merged.named_parameters())
    wrapped = pooled_features_masked(model, tf.encode(recs), special_ids=SPECIAL)
    for kinds in (("vision",), ("question",), ("joint",), ("vision", "joint")):
        got = pooled_features(merged, tf.encode(recs), special_ids=SPECIAL, kinds=kinds)
        assert set(got) == set(kinds)
        for k in kinds:
            np.testing.assert_allclose(got[k].numpy(), wrapped[k].numpy(), rtol=1e-4, atol=1e-5, err_msg=f"{k} of {kinds}")
    plain = tf.tiny_model()
    assert inference_model(plain) is plain


# ----------------------------------------------------------------------------- extraction and cache
def _file_records(tmp_path) -> list[VQARecord]:
    """Image files shared by interleaved records: the extraction groups them, the output keeps the order."""
    paths = []
    for j in range(3):
        p = tmp_path / "img" / f"{j}.png"
        p.parent.mkdir(exist_ok=True)
        tf.rand_image(50 + j).save(p)
        paths.append(p)
    qs = ["what color is it", "how many", "which shape", "is there a red circle in the image"]
    return [VQARecord(question_id=f"r{i}", image=str(paths[(2 * i) % 3]), question=qs[i % 4], answers=["x"]) for i in range(10)]


def test_extraction_order_cache_hit_and_corrupt_cache(tmp_path, count_passes) -> None:
    model = tf.tiny_model()
    recs = _file_records(tmp_path)
    # independent: each record alone through the masked formulation
    ref = {k: np.stack([pooled_features_masked(model, _encode_any([r]), special_ids=SPECIAL)[k][0].numpy() for r in recs])
           for k in FEATURE_KINDS}
    cache = tmp_path / "cache"
    count_passes.update(decoder=0, tower_rows=0)
    first = extract_features(model, None, recs, split="s", cache_dir=cache, encode=_encode_any, batch_size=4)
    assert first.meta["computed"] and count_passes["decoder"] > 0
    assert count_passes["tower_rows"] <= 6  # 3 files, grouped: at most one tower row per file per batch
    assert first.question_ids == [r.question_id for r in recs]
    for k in FEATURE_KINDS:
        np.testing.assert_allclose(np.asarray(first.arrays[k]), ref[k], rtol=1e-4, atol=1e-5, err_msg=k)
    meta = json.loads((first.path / "meta.json").read_text())
    assert set(meta["files"]) == {"question_ids.json", "vision.npy", "question.npy", "joint.npy"}
    assert not list(first.path.glob("*.partial")) and not (first.path / "progress.json").exists()
    for k in FEATURE_KINDS:  # plain .npy, readable without pickle
        np.testing.assert_array_equal(np.load(first.path / f"{k}.npy", allow_pickle=False), np.asarray(first.arrays[k]))

    # second call: read from the cache, the model does not run
    count_passes.update(decoder=0, tower_rows=0)
    second = extract_features(model, None, recs, split="s", cache_dir=cache, encode=_encode_any, batch_size=4)
    assert count_passes["decoder"] == 0 and count_passes["tower_rows"] == 0 and not second.meta["computed"]
    for k in FEATURE_KINDS:
        np.testing.assert_array_equal(np.asarray(second.arrays[k]), np.asarray(first.arrays[k]))
    want = {k: np.array(first.arrays[k]) for k in FEATURE_KINDS}
    folder = first.path
    del first, second

    def damage_and_reload(damage, what: str) -> None:
        damage()
        logs: list[str] = []
        count_passes.update(decoder=0)
        fs = extract_features(model, None, recs, split="s", cache_dir=cache, encode=_encode_any, batch_size=4, log=logs.append)
        assert fs.meta["computed"] and count_passes["decoder"] > 0, what
        assert len(logs) == 1 and "damaged" in logs[0], (what, logs)
        for k in FEATURE_KINDS:
            np.testing.assert_allclose(np.asarray(fs.arrays[k]), want[k], rtol=1e-6, atol=1e-7)
        # and the rewritten entry is a clean hit again
        count_passes.update(decoder=0)
        assert not extract_features(model, None, recs, split="s", cache_dir=cache, encode=_encode_any, batch_size=4).meta["computed"]
        assert count_passes["decoder"] == 0

    def flip_bytes():  # same size, other numbers: only the checksum can tell
        p = folder / "joint.npy"
        raw = bytearray(p.read_bytes())
        raw[-8:] = bytes(b ^ 0xFF for b in raw[-8:])
        p.write_bytes(bytes(raw))

    def truncate():
        p = folder / "vision.npy"
        p.write_bytes(p.read_bytes()[:-64])

    def drop_ids():
        (folder / "question_ids.json").unlink()

    def garble_meta():
        (folder / "meta.json").write_text("{not json")

    for damage in (flip_bytes, truncate, drop_ids, garble_meta):
        damage_and_reload(damage, damage.__name__)


def test_interrupted_extraction_resumes_with_grouped_order(tmp_path) -> None:
    model = tf.tiny_model()
    recs = _file_records(tmp_path)
    full = extract_features(model, None, recs, encode=_encode_any, batch_size=3)
    calls = {"n": 0}

    def failing(batch):
        if calls["n"] >= 2:
            raise KeyboardInterrupt
        calls["n"] += 1
        return _encode_any(batch)

    with pytest.raises(KeyboardInterrupt):
        extract_features(model, None, recs, split="s", cache_dir=tmp_path / "c", encode=failing, batch_size=3, checkpoint_rows=3)
    counted = {"n": 0}

    def counting(batch):
        counted["n"] += 1
        return _encode_any(batch)

    resumed = extract_features(model, None, recs, split="s", cache_dir=tmp_path / "c", encode=counting, batch_size=3, checkpoint_rows=3)
    assert counted["n"] == 2  # rows 6-8 and 9 of the processing order
    for k in FEATURE_KINDS:
        np.testing.assert_allclose(np.asarray(resumed.arrays[k]), full.arrays[k], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- measure_shift
def _sklearn_scores(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    from sklearn.covariance import LedoitWolf

    lw = LedoitWolf().fit(train.astype(np.float64))
    return -np.sqrt(lw.mahalanobis(test.astype(np.float64)))


def test_measure_shift_fit_size_against_float64_reference(tmp_path, count_passes) -> None:
    model = tf.tiny_model(seed=2)
    enc = tf.encode  # the shifttest records hold 32x32 in-memory images
    kw = dict(encode=enc, shrinkage="ledoit-wolf", estimator_device="cpu", batch_size=8)
    # independent features of every split, and of the fit subsample by hand
    feats = {n: extract_features(model, None, RECORDS[n], encode=enc, batch_size=5).arrays for n in ("train", "test", "far")}
    chosen = sorted(RECORDS["train"], key=lambda r: hashlib.sha256(f"shift-fit/3/{r.question_id}".encode()).hexdigest())[:40]
    row = {r.question_id: i for i, r in enumerate(RECORDS["train"])}
    sub = [row[r.question_id] for r in chosen]

    full = measure_shift(model, None, SUITE, cache_dir=tmp_path / "c", fit_size="all", **kw)
    zero = measure_shift(model, None, SUITE, cache_dir=tmp_path / "c2", fit_size=0, **kw)
    small = measure_shift(model, None, SUITE, cache_dir=tmp_path / "c", fit_size=40, fit_seed=3, **kw)
    assert full.n_train == 90 and full.fit["size"] == 90 and full.fit["split_size"] == 90 and full.fit["fit_size"] == "all"
    assert small.n_train == 40 and small.fit == {
        "split": "train", "size": 40, "split_size": 90, "fit_size": 40, "seed": 3,
        "rule": small.fit["rule"],
    } and "sha256('shift-fit/3/' + question_id)" in small.fit["rule"]
    for kind in FEATURE_KINDS:
        for split in ("test", "far"):
            want_full = _sklearn_scores(feats["train"][kind], feats[split][kind])
            want_small = _sklearn_scores(feats["train"][kind][sub], feats[split][kind])
            np.testing.assert_allclose(full.splits[split].scores[kind], want_full, rtol=1e-4, err_msg=f"{kind} {split} all")
            np.testing.assert_array_equal(zero.splits[split].scores[kind], full.splits[split].scores[kind])
            np.testing.assert_allclose(small.splits[split].scores[kind], want_small, rtol=1e-4, err_msg=f"{kind} {split} 40")
            # the subsample is a different fit, so the test above can tell them apart
            assert np.abs(want_small - want_full).max() > 1e-3 * np.abs(want_full).max()

    # the output says which records were fitted
    out = save_shift(small, tmp_path / "out")
    summary = json.loads((out / "shift.json").read_text())
    assert summary["n_train"] == 40 and summary["fit"]["size"] == 40 and summary["fit"]["split_size"] == 90
    assert summary["settings"]["fit_size"] == 40 and summary["settings"]["fit_seed"] == 3

    # the same measurement again: every split's features come from the cache
    count_passes.update(decoder=0, tower_rows=0)
    again = measure_shift(model, None, SUITE, cache_dir=tmp_path / "c", fit_size=40, fit_seed=3, **kw)
    assert count_passes["decoder"] == 0 and count_passes["tower_rows"] == 0
    for split in ("test", "blurred", "far"):
        for kind in FEATURE_KINDS:
            np.testing.assert_array_equal(again.splits[split].scores[kind], small.splits[split].scores[kind])

    # the former name still works, and conflicting sizes are refused
    legacy = measure_shift(model, None, SUITE, cache_dir=tmp_path / "c", train_limit=40, fit_seed=3, **kw)
    np.testing.assert_array_equal(legacy.splits["far"].scores["joint"], small.splits["far"].scores["joint"])
    with pytest.raises(ConfigError):
        measure_shift(model, None, SUITE, cache_dir=tmp_path / "c", train_limit=40, fit_size=50, **kw)


def test_cli_fit_size(tmp_path, model_dir, capsys) -> None:  # noqa: F811
    out_dir = tmp_path / "out"
    base = ["shift", str(model_dir), "--suite", SUITE, "--out", str(out_dir), "--cache-dir", str(tmp_path / "c"),
            "--kinds", "vision", "--device", "cpu", "--shrinkage", "ledoit-wolf", "--json"]
    assert main(base + ["--fit-size", "50"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_train"] == 50 and summary["fit"]["size"] == 50 and summary["fit"]["split_size"] == 90
    assert json.loads((out_dir / "shift" / "shift.json").read_text())["fit"] == summary["fit"]
    assert main(base + ["--fit-size", "all"]) == 0
    assert json.loads(capsys.readouterr().out)["n_train"] == 90
    assert main(base + ["--fit-size", "lots"]) == 2
    err = capsys.readouterr().err
    assert "fit size" in err and err.count("\n") == 1
