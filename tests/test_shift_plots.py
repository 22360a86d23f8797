"""`shift` and `plot shift` end to end on a tiny model and a tiny registered suite; plot helpers.

The shift written into results.json is checked against an independent computation: the same
features (extracted separately) fed to scikit-learn's EmpiricalCovariance / LedoitWolf.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter
from scipy.stats import pearsonr

from vqa_ood_bench.cli import main
from vqa_ood_bench.data.records import VQARecord
from vqa_ood_bench.data.registry import DATASETS, register_dataset
from vqa_ood_bench.data.suite import SUITES, SplitSpec, Suite, get_suite, register_suite
from vqa_ood_bench.report.plots import (
    figure_correlation_heatmaps,
    figure_shift_histograms,
    figure_shift_vs_accuracy,
    pearson,
    save_figure,
    shift_correlations,
)
from vqa_ood_bench.report.schema import Averages, ModelInfo, RunResults, SplitResult, read_results, write_results

SUITE = "shifttest"
# question features depend on the question only: enough distinct questions for a full-rank covariance
QUESTIONS = [f"{a} {b} is the {c} {d}" for a in ("what", "which", "is") for b in ("color", "shape", "size", "side")
             for c in ("circle", "square", "shape", "thing") for d in ("here", "there", "left", "right")]
FAR_QUESTIONS = [f"{a} does the {b} say {c}" for a in ("what", "which") for b in ("sign", "label", "word") for c in ("here", "now")]


def _image(seed: int, style: str) -> Image.Image:
    rng = np.random.default_rng(seed)
    a = np.full((32, 32, 3), 235, np.uint8)
    x, y, r = rng.integers(6, 26, 2).tolist() + [int(rng.integers(3, 7))]
    yy, xx = np.mgrid[:32, :32]
    a[(xx - x) ** 2 + (yy - y) ** 2 <= r * r] = rng.integers(0, 255, 3)
    img = Image.fromarray(a)
    if style == "blur":
        img = img.filter(ImageFilter.GaussianBlur(2))
    elif style == "noise":
        img = Image.fromarray(np.clip(a + rng.normal(0, 60, a.shape), 0, 255).astype(np.uint8))
    return img


def _records(split: str, n: int, style: str, questions: list[str], seed: int) -> list[VQARecord]:
    return [
        VQARecord(question_id=f"{split}-{i}", image=_image(seed * 1000 + i, style), question=questions[(7 * i + seed) % len(questions)],
                  answers=["red"] * 10, split=split, dataset=SUITE)
        for i in range(n)
    ]


SPLITS = {
    # name: (role, shift type, n, image style, questions)
    "train": ("id", "none", 90, "plain", QUESTIONS),
    "test": ("id", "none", 24, "plain", QUESTIONS),
    "blurred": ("near", "vision", 24, "blur", QUESTIONS),
    "far": ("far", "far", 24, "noise", FAR_QUESTIONS),
}
RECORDS = {name: _records(name, n, style, qs, seed=k) for k, (name, (_, _, n, style, qs)) in enumerate(SPLITS.items())}


def _register() -> None:
    for name, (role, shift, *_rest) in SPLITS.items():
        ds = f"{SUITE}-{name}"
        if ds not in DATASETS:
            register_dataset(ds, role=role, shift_type=shift)(lambda root, _n=name, **kw: list(RECORDS[_n]))
    if SUITE not in SUITES:

        @register_suite(SUITE)
        def _suite() -> Suite:
            specs = {n: SplitSpec(name=n, dataset=f"{SUITE}-{n}", role=r, shift_type=t) for n, (r, t, *_x) in SPLITS.items()}
            return Suite(name=SUITE, description="shift test", train=specs["train"], validation=specs["test"],
                         evaluation=(specs["test"], specs["blurred"], specs["far"]), needs_data_root=False, version="1")


_register()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from vqa_ood_bench.models.paligemma import TinySpec, build_tiny_model, build_tiny_processor, save

    spec = TinySpec(image_size=32, patch_size=8, vision_hidden=32, vision_layers=1, vision_heads=2, vision_intermediate=64,
                    text_hidden=24, text_layers=1, text_heads=2, text_kv_heads=1, text_head_dim=12, text_intermediate=48,
                    tokenizer_vocab=300)
    words = {w for recs in RECORDS.values() for r in recs for w in ("answer en " + r.question).split()}
    processor = build_tiny_processor(words, spec)
    model = build_tiny_model(processor, spec, seed=3)
    return save(model, processor, tmp_path_factory.mktemp("encoder") / "model")


def _run_dir(root: Path, method: str, accuracies: dict[str, float]) -> Path:
    run = root / method
    splits = {n: SplitResult(role=SPLITS[n][0], shift_type=SPLITS[n][1], n=SPLITS[n][2], vqa_accuracy=a) for n, a in accuracies.items()}
    res = RunResults(run_id=method, created_at="2025-01-01T00:00:00+00:00", method=method, model=ModelInfo(name_or_path="tiny"),
                     suite=SUITE, suite_version="1", seed=0, dtype="float32", batch_size=8, scoring_variant="official",
                     package_version="0", config={}, splits=splits, averages=Averages())
    write_results(res, run / "results.json")
    return run


def _independent_scores(model_dir: Path, kind: str, shrinkage: str | None) -> dict[str, np.ndarray]:
    """Features through extract_features (no cache), Gaussian fitted by scikit-learn."""
    from sklearn.covariance import EmpiricalCovariance, LedoitWolf
    from transformers import PaliGemmaForConditionalGeneration, PaliGemmaProcessor

    from vqa_ood_bench.shift.features import extract_features

    model = PaliGemmaForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = PaliGemmaProcessor.from_pretrained(model_dir)
    feats = {n: extract_features(model, processor, RECORDS[n], batch_size=7, kinds=(kind,)).arrays[kind].astype(np.float64)
             for n in SPLITS}
    est = (LedoitWolf() if shrinkage else EmpiricalCovariance()).fit(feats["train"])
    return {n: -np.sqrt(est.mahalanobis(feats[n])) for n in ("test", "blurred", "far")}


@pytest.mark.parametrize("shrinkage", [None, "ledoit-wolf"])
def test_shift_cli_writes_results_and_matches_sklearn(tmp_path, model_dir, shrinkage, capsys) -> None:
    run = _run_dir(tmp_path, "vanilla", {"test": 80.0, "blurred": 60.0, "far": 30.0})
    cache = tmp_path / "cache"
    argv = ["shift", str(run), "--model", str(model_dir), "--cache-dir", str(cache), "--batch-size", "8", "--json",
            "--device", "cpu"]
    if shrinkage:
        argv += ["--shrinkage", shrinkage]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    res = read_results(run / "results.json")
    for kind in ("vision", "question", "joint"):
        ref = _independent_scores(model_dir, kind, shrinkage)
        for split, scores in ref.items():
            assert res.splits[split].shift[kind] == pytest.approx(float(scores.mean()), rel=1e-4)
            assert out["splits"][split]["shift"][kind] == pytest.approx(float(scores.mean()), rel=1e-4)
            with np.load(run / "shift" / f"{split}.npz") as z:
                np.testing.assert_allclose(z[kind], scores, rtol=1e-4)
                assert list(z["question_ids"]) == [r.question_id for r in RECORDS[split]]
    assert res.splits["test"].vqa_accuracy == 80.0  # untouched
    assert all(res.splits[s].shift["vision"] < 0 for s in ("test", "blurred", "far"))
    if shrinkage:
        assert all(0 < v <= 1 for v in out["shrinkage_used"].values())
    else:
        assert all(v == 0 for v in out["shrinkage_used"].values())

    # a second run reuses the cached features and statistics and gives the same numbers
    stats = sorted(p.name for p in cache.rglob("stats-*.npz"))
    assert len(stats) == 3
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["splits"] == out["splits"]


def test_shift_cli_model_mode_and_errors(tmp_path, model_dir, capsys) -> None:
    out_dir = tmp_path / "out"
    rc = main(["shift", str(model_dir), "--suite", SUITE, "--out", str(out_dir), "--cache-dir", str(tmp_path / "c"),
               "--kinds", "vision", "--limit", "60", "--json", "--device", "cpu"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kinds"] == ["vision"] and summary["n_train"] == 60
    assert (out_dir / "shift" / "shift.json").is_file()
    # errors are one line, exit code 2
    assert main(["shift", str(model_dir), "--cache-dir", str(tmp_path / "c")]) == 2
    assert "--suite is required" in capsys.readouterr().err
    assert main(["shift", str(model_dir), "--suite", SUITE, "--kinds", "audio"]) == 2
    assert "unknown feature kind" in capsys.readouterr().err
    run = _run_dir(tmp_path, "nomodel", {"test": 50.0})
    assert main(["shift", str(run)]) == 2
    assert "--model" in capsys.readouterr().err
    # too few training samples for 24 features without shrinkage: a one-line hint, not a traceback
    rc = main(["shift", str(model_dir), "--suite", SUITE, "--out", str(out_dir), "--cache-dir", str(tmp_path / "c"),
               "--kinds", "vision", "--limit", "10", "--device", "cpu"])
    assert rc == 2
    assert "shrinkage" in capsys.readouterr().err


def test_plot_shift_cli(tmp_path, model_dir, capsys) -> None:
    cache = tmp_path / "cache"
    runs = []
    for method, accs in {"vanilla": {"test": 80.0, "blurred": 61.0, "far": 30.0}, "digrap": {"test": 82.0, "blurred": 66.0, "far": 35.0}}.items():
        run = _run_dir(tmp_path, method, accs)
        assert main(["shift", str(run), "--model", str(model_dir), "--cache-dir", str(cache), "--json", "--shrinkage", "ledoit-wolf",
                     "--device", "cpu"]) == 0
        capsys.readouterr()
        runs.append(run)
    plots = tmp_path / "plots"
    assert main(["plot", "shift", *map(str, runs), "--out", str(plots), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    names = sorted(Path(f).name for f in info["files"])
    assert names == sorted(
        f"{stem}.{ext}" for stem in ("shift_hist_vanilla", "shift_hist_digrap", "shift_vs_accuracy", "shift_correlation_heatmap")
        for ext in ("png", "svg")
    )
    for f in info["files"]:
        data = Path(f).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" if f.endswith(".png") else b"<svg" in data[:2000]
    # the reported correlations are recomputed here from the saved per-sample scores and the means
    with np.load(runs[0] / "shift" / "far.npz") as z:
        r = pearsonr(z["question"], z["joint"]).statistic
    assert info["unimodal_joint_correlation"]["vanilla"]["far"]["question-joint"] == pytest.approx(r, rel=1e-9)
    xs, ys = [], []
    for run in runs:
        res = read_results(run / "results.json")
        for s in ("test", "blurred", "far"):
            xs.append(res.splits[s].shift["vision"])
            ys.append(res.splits[s].vqa_accuracy)
    assert info["shift_accuracy_pearson"]["vision"] == pytest.approx(pearsonr(xs, ys).statistic, rel=1e-9)
    # a folder without shift scores is a one-line error
    assert main(["plot", "shift", str(tmp_path / "nowhere")]) == 2


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """A run folder written by `vqa-ood-bench run` (LoRA vanilla, tiny model): no model/, only trained_state.pt."""
    run = tmp_path_factory.mktemp("realrun") / "run"
    assert main(["run", "--method", "vanilla", "--suite", SUITE, "--limit", "90", "--epochs", "2", "--out", str(run), "--json"]) == 0
    assert (run / "trained_state.pt").is_file() and not (run / "model").exists()
    return run


def test_load_run_model_rebuilds_the_evaluated_model(real_run, tmp_path) -> None:
    """The rebuilt model carries the trained tensors and reproduces the run's own predictions."""
    import torch

    from vqa_ood_bench.predict.generate import predict_records
    from vqa_ood_bench.predict.jsonl import read_predictions
    from vqa_ood_bench.runner import load_run_model

    model, processor, results = load_run_model(real_run, device="cpu", show_progress=False)
    saved = torch.load(real_run / "trained_state.pt", weights_only=True)
    params = dict(model.named_parameters())
    assert saved and all(torch.equal(params[n].detach(), v) for n, v in saved.items())
    # training moved the LoRA B matrices off their zero init, so the rebuilt model is not the pre-trained one
    assert any("lora_B" in n and v.abs().max() > 0 for n, v in saved.items())
    cfg = results.config
    for split in ("test", "far"):
        again = predict_records(model, processor, get_suite(SUITE).load(get_suite(SUITE).split(split), limit=cfg["limit"]),
                                tmp_path / f"{split}.jsonl", prompt=cfg["prompt"], batch_size=cfg["eval_batch_size"],
                                max_new_tokens=cfg["max_new_tokens"])
        original = {q: row["prediction"] for q, row in read_predictions(real_run / results.splits[split].predictions_file).items()}
        assert again == original


def test_load_run_model_zero_shot_and_missing_weights(real_run, tmp_path, capsys) -> None:
    """A zero-shot run is the pre-trained model; a trained run without trained_state.pt is a one-line error."""
    import shutil

    import torch

    from vqa_ood_bench.models.pretrain import load_tiny
    from vqa_ood_bench.runner import load_run_model

    zs = tmp_path / "zs"
    assert main(["run", "--method", "zeroshot", "--suite", SUITE, "--limit", "8", "--out", str(zs), "--json"]) == 0
    capsys.readouterr()
    assert not (zs / "trained_state.pt").exists()
    model, _, results = load_run_model(zs, device="cpu", show_progress=False)
    base, _, _ = load_tiny(show_progress=False)
    base_params = dict(base.named_parameters())
    assert results.method == "zeroshot"
    assert all(torch.equal(p, base_params[n]) for n, p in model.named_parameters())

    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(real_run / "results.json", broken / "results.json")
    assert main(["shift", str(broken), "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "trained_state.pt" in err and err.count("\n") == 1


def test_shift_cli_on_a_run_folder(real_run, tmp_path, capsys) -> None:
    """`shift RUN` (no --model) measures with the run's fine-tuned model and fills results.json."""
    from sklearn.covariance import LedoitWolf

    from vqa_ood_bench.runner import load_run_model
    from vqa_ood_bench.shift.features import extract_features

    before = read_results(real_run / "results.json")
    assert all(not s.shift for s in before.splits.values())
    argv = ["shift", str(real_run), "--cache-dir", str(tmp_path / "cache"), "--shrinkage", "ledoit-wolf", "--device", "cpu", "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    after = read_results(real_run / "results.json")
    kinds = ("vision", "question", "joint")
    for split in ("test", "blurred", "far"):
        shift = after.splits[split].shift
        assert set(shift) == set(kinds) and all(np.isfinite(v) and v < 0 for v in shift.values())
        assert after.splits[split].vqa_accuracy == before.splits[split].vqa_accuracy  # untouched
    assert summary["n_train"] == 90
    # the same numbers from the run's model through an independent path: features -> scikit-learn
    model, processor, _ = load_run_model(real_run, device="cpu", show_progress=False)
    feats = {n: extract_features(model, processor, RECORDS[n], batch_size=16).arrays for n in ("train", "test", "far")}
    for kind in kinds:
        lw = LedoitWolf().fit(feats["train"][kind].astype(np.float64))
        for split in ("test", "far"):
            ref = float(np.mean(-np.sqrt(lw.mahalanobis(feats[split][kind].astype(np.float64)))))
            assert after.splits[split].shift[kind] == pytest.approx(ref, rel=1e-4)
    # The far split (noisy images, questions in other words) is clearly farther than the ID test split in
    # every kind (measured: vision -13.5 vs -5.5, question -44 vs -3.5, joint -36 vs -4.7, stable over seeds);
    # the margins asserted are a fraction of those. Blurred images are NOT asserted farther: blurring
    # lowers the images' variance and they score closer than the test split here.
    test_shift, far_shift = after.splits["test"].shift, after.splits["far"].shift
    assert far_shift["vision"] < test_shift["vision"] - 2.0
    assert far_shift["question"] < test_shift["question"] - 5.0
    assert far_shift["joint"] < test_shift["joint"] - 5.0


def test_pearson_and_correlations_against_scipy() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(200)
    y = 0.4 * x + rng.standard_normal(200)
    assert pearson(x, y) == pytest.approx(pearsonr(x, y).statistic, rel=1e-12)
    assert np.isnan(pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    assert np.isnan(pearson([1.0], [2.0]))
    per_split = {"a": {"vision": x, "question": y, "joint": x + y}}
    c = shift_correlations(per_split)["a"]
    assert c["question-joint"] == pytest.approx(np.corrcoef(y, x + y)[0, 1], rel=1e-12)
    assert c["vision-joint"] == pytest.approx(np.corrcoef(x, x + y)[0, 1], rel=1e-12)


def test_figures_write_png_and_svg(tmp_path) -> None:
    rng = np.random.default_rng(1)
    per_split = {s: {k: rng.normal(-30 - 5 * i, 3 + i, 300) for k in ("vision", "question", "joint")} for i, s in enumerate(["id", "near", "far"])}
    fig = figure_shift_histograms(per_split, roles={"id": "id", "near": "near", "far": "far"}, title="demo")
    paths = save_figure(fig, tmp_path / "hist")
    assert [p.suffix for p in paths] == [".png", ".svg"] and all(p.stat().st_size > 1000 for p in paths)
    points = [{"label": "m", "split": s, "role": r, "shift": {"vision": v, "joint": v + 1}, "accuracy": a}
              for s, r, v, a in [("a", "id", -28.0, 80.0), ("b", "near", -30.0, 60.0), ("c", "far", -40.0, 20.0), ("d", "far", -35.0, None)]]
    fig, corr = figure_shift_vs_accuracy(points, kinds=("vision", "joint"))
    assert corr["vision"] == pytest.approx(pearsonr([-28, -30, -40], [80, 60, 20]).statistic, rel=1e-12)
    save_figure(fig, tmp_path / "scatter", ["png"])
    fig = figure_correlation_heatmaps({"m1": shift_correlations(per_split), "m2": shift_correlations(per_split)})
    save_figure(fig, tmp_path / "heat", ["svg"])
    assert (tmp_path / "heat.svg").read_text().count("<svg") == 1
    with pytest.raises(ValueError):
        figure_shift_vs_accuracy([{"label": "m", "split": "a", "role": "id", "shift": {"vision": 1.0}, "accuracy": None}])
    with pytest.raises(ValueError):
        save_figure(fig, tmp_path / "x", ["gif"])
