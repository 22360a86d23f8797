"""report.stats (intervals, paired tests, seed groups, seed summaries) and ``vqa-ood-bench compare``.

Coverage is checked by simulation, p-values against scipy.stats.permutation_test (paired runs)
and scipy's t tests (seed groups, in the cases where the test reduces to one), and the compare
command on run folders of the embedded suite built here (offline)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from vqa_ood_bench.cli import main
from vqa_ood_bench.report.schema import ModelInfo, RunResults, SplitResult, compute_averages, write_results
from vqa_ood_bench.report.stats import (
    average_accuracy,
    average_interval,
    group_difference,
    paired_average_difference,
    paired_difference,
    seed_summary,
    sign_flip_test,
    split_interval,
)

THIRDS = np.array([0.0, 1 / 3, 2 / 3, 1.0])


# --- split_interval -------------------------------------------------------------------------

def test_clopper_pearson_is_used_for_binary_scores_and_covers() -> None:
    rng = np.random.default_rng(123)
    p, n = 0.3, 200
    x = (rng.random(n) < p).astype(float)
    ci = sps.binomtest(int(x.sum()), n).proportion_ci(confidence_level=0.95, method="exact")
    assert split_interval(x) == pytest.approx((100 * ci.low, 100 * ci.high), abs=1e-12)
    covered = 0
    for _ in range(400):
        low, high = split_interval(rng.random(n) < p)
        covered += low <= 100 * p <= high
    assert covered / 400 >= 0.93


def test_bootstrap_interval_for_fractional_scores_covers() -> None:
    rng = np.random.default_rng(7)
    probs = np.array([0.35, 0.15, 0.2, 0.3])
    truth = 100 * float(probs @ THIRDS)
    covered = 0
    for i in range(300):
        x = rng.choice(THIRDS, size=100, p=probs)
        low, high = split_interval(x, n_boot=500, seed=i)
        assert low <= 100 * x.mean() <= high
        covered += low <= truth <= high
    assert 0.90 <= covered / 300 <= 0.98


def test_split_interval_is_seeded_and_checks_its_input() -> None:
    x = np.random.default_rng(0).choice(THIRDS, size=50)
    assert split_interval(x, seed=3) == split_interval(x, seed=3)
    assert split_interval([0.5, 0.5, 0.5]) == pytest.approx((50.0, 50.0))
    for bad in ([], [0.2, 1.5], [[0.1]], [np.nan]):
        with pytest.raises(ValueError):
            split_interval(bad)
    with pytest.raises(ValueError):
        split_interval(x, confidence=1.0)


# --- average_interval -----------------------------------------------------------------------

def test_average_interval_by_hand() -> None:
    # X = [0, 1] resamples to a mean of 0, 1/2 or 1 (probabilities 1/4, 1/2, 1/4); Y is constant
    # 0.2. The average (X + Y) / 2 is 10, 35 or 60 points: the 95% interval is (10, 60) and the
    # point value 35 (unweighted; the pooled mean of the five questions would be 32).
    per_split = {"x": [0.0, 1.0], "y": [0.2, 0.2, 0.2]}
    assert average_accuracy(per_split, ["x", "y"]) == pytest.approx(35.0)
    assert average_interval(per_split, ["x", "y"]) == pytest.approx((10.0, 60.0))
    assert average_interval({"x": [0.5] * 4, "y": [0.25] * 9}, ["x", "y"]) == pytest.approx((37.5, 37.5))
    # One split: that split's interval (Clopper-Pearson for 0/1 scores).
    assert average_interval(per_split, ["x"]) == split_interval([0.0, 1.0])
    with pytest.raises(ValueError):
        average_interval(per_split, ["x", "z"])


def test_average_interval_is_the_interval_of_the_average() -> None:
    rng = np.random.default_rng(11)
    a = rng.choice(THIRDS, size=400, p=[0.2, 0.2, 0.2, 0.4])
    b = rng.choice(THIRDS, size=100, p=[0.5, 0.2, 0.2, 0.1])
    per_split = {"a": a, "b": b}
    low, high = average_interval(per_split, ["a", "b"], n_boot=4000)
    centre = 100 * (a.mean() + b.mean()) / 2
    se = 100 * 0.5 * math.sqrt(a.var() / a.size + b.var() / b.size)
    assert low < centre < high
    assert (high - low) / 2 == pytest.approx(1.96 * se, rel=0.1)
    # Narrower than the average of the two split intervals (errors of independent splits partly cancel).
    (la, ha), (lb, hb) = split_interval(a, n_boot=4000), split_interval(b, n_boot=4000)
    assert high - low < ((ha - la) + (hb - lb)) / 2


# --- paired tests ---------------------------------------------------------------------------

def _scipy_p(d: np.ndarray, n_resamples: float) -> float:
    return float(sps.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=n_resamples, rng=0).pvalue)


def test_paired_p_value_equals_scipys_exact_test_for_small_n() -> None:
    a = np.array([1, 2, 0, 3, 3, 1, 0, 2, 2, 3, 1, 0, 3, 2, 1, 0]) / 3
    b = np.array([3, 2, 1, 3, 2, 3, 0, 3, 1, 3, 3, 0, 3, 3, 0, 2]) / 3
    res = paired_difference(a, b)
    assert res.exact and res.n == 16
    assert res.difference == pytest.approx(100 * (b - a).mean())
    assert res.p_value == pytest.approx(_scipy_p(b - a, np.inf), abs=1e-12)
    rng = np.random.default_rng(3)
    for n in (2, 7, 13, 17):  # VQA-accuracy-like values (multiples of 0.1 from 10 answers)
        a, b = rng.choice([0, 0.3, 0.6, 0.9, 1.0], size=(2, n))
        # (not a zero difference: scipy's rounding can put that p below 1, see the next test)
        assert abs((b - a).sum()) > 1e-9
        assert paired_difference(a, b).p_value == pytest.approx(_scipy_p(b - a, np.inf), abs=1e-12)


def test_a_zero_difference_has_p_one_despite_rounding() -> None:
    a = np.array([1, 0, 2, 3, 1, 0, 2, 3]) / 3
    b = np.array([0, 1, 3, 2, 0, 1, 3, 2]) / 3  # differences sum to 0; in floating point not quite
    assert paired_difference(a, b).p_value == 1.0


def test_paired_p_value_matches_scipys_monte_carlo_for_large_n() -> None:
    rng = np.random.default_rng(5)
    a = np.clip(rng.normal(0.5, 0.2, size=150), 0, 1)
    b = np.clip(a + rng.normal(0.01, 0.1, size=150), 0, 1)
    res = paired_difference(a, b, n_perm=9999)
    assert not res.exact
    assert 0.02 < res.p_value < 0.98  # an informative case, not a saturated one
    assert res.p_value == pytest.approx(_scipy_p(b - a, 9999), abs=0.02)


def test_binary_scores_get_an_exact_p_value_at_any_size() -> None:
    # 0/1 scores: the sign-flip test is the sign test, exact through grouping however many questions.
    rng = np.random.default_rng(3)
    a = (rng.random(5000) < 0.5).astype(float)
    b = a.copy()
    flip = rng.choice(5000, size=300, replace=False)
    b[flip[:170]] = 1 - b[flip[:170]]
    d = b - a
    res = paired_difference(a, b)
    assert res.exact
    expected = sps.binomtest(int((d > 0).sum()), int((d != 0).sum()), 0.5).pvalue
    assert res.p_value == pytest.approx(expected, rel=1e-9)


def test_identical_runs_differ_by_zero_with_p_one() -> None:
    x = np.random.default_rng(0).choice(THIRDS, size=300)
    res = paired_difference(x, x.copy())
    assert res.difference == 0.0 and res.p_value == 1.0 and res.interval == (0.0, 0.0) and not res.significant
    per_split = {"s": x, "t": x[:50]}
    avg = paired_average_difference(per_split, dict(per_split), ["s", "t"])
    assert avg.difference == 0.0 and avg.p_value == 1.0 and avg.n == 350


def test_paired_inputs_must_match() -> None:
    with pytest.raises(ValueError, match="same questions"):
        paired_difference([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="'t'"):
        paired_average_difference({"s": [1, 0], "t": [1]}, {"s": [0, 0], "t": [1, 1]}, ["s", "t"])


def test_paired_average_difference() -> None:
    rng = np.random.default_rng(8)
    a = {"s": rng.choice(THIRDS, size=200), "t": rng.choice(THIRDS, size=60)}
    b = {"s": np.clip(a["s"] + rng.choice([0, 1 / 3], size=200), 0, 1), "t": a["t"].copy()}
    res = paired_average_difference(a, b, ["s", "t"])
    assert res.a == pytest.approx(average_accuracy(a, ["s", "t"]))
    assert res.b == pytest.approx(average_accuracy(b, ["s", "t"]))
    assert res.difference == pytest.approx(res.b - res.a)
    assert res.interval[0] < res.difference < res.interval[1]
    assert res.significant and res.p_value < 0.001
    # The permutation test of the average is that of the per-question terms d / (splits x split size).
    terms = np.concatenate([(b[k] - a[k]) / (2 * a[k].size) for k in ("s", "t")])
    assert sign_flip_test(terms, seed=1)[0] == pytest.approx(res.p_value, abs=0.01)
    # One split: the same as paired_difference.
    one = paired_average_difference(a, b, ["s"])
    assert one == paired_difference(a["s"], b["s"])


# --- group_difference: seeds and questions -------------------------------------------------

def test_group_difference_by_hand() -> None:
    # Two seeds, three questions, A scores 0 everywhere, B = d:
    #   d = [[1, 1, 0], [1, 0, 0]]: seed means 2/3, 1/3; question means 1, 1/2, 0; mean 1/2.
    #   s2_seed = 2 (1/6)^2 = 1/18 -> term 1/18 / 2 = 1/36 (df 1)
    #   s2_q = (1/4 + 0 + 1/4) / 2 = 1/4 -> term 1/4 / 3 = 1/12 (df 2)
    #   residuals +-1/6 (four) and +-1/3 (two): SS_E = 1/3, MS_E = 1/3 / (1 x 2) = 1/6
    #   -> term -MS_E / (S Q) = -1/36 (df 2)
    #   var = 1/36 + 1/12 - 1/36 = 1/12; df = (1/12)^2 / ((1/36)^2 + (1/12)^2 / 2 + (1/36)^2 / 2) = 3/2
    #   t = (1/2) / sqrt(1/12) = sqrt(3)
    a = [{"s": [0.0, 0.0, 0.0]}, {"s": [0.0, 0.0, 0.0]}]
    b = [{"s": [1.0, 1.0, 0.0]}, {"s": [1.0, 0.0, 0.0]}]
    res = group_difference(a, b, ["s"])
    se = 100 * math.sqrt(1 / 12)
    assert res.difference == pytest.approx(50.0) and res.se == pytest.approx(se) and res.df == pytest.approx(1.5)
    assert res.p_value == pytest.approx(2 * sps.t.sf(math.sqrt(3), 1.5))
    half = sps.t.ppf(0.975, 1.5) * se
    assert res.interval == pytest.approx((50.0 - half, 50.0 + half))
    assert res.per_seed == pytest.approx((100 * 2 / 3, 100 / 3)) and (res.a, res.b) == pytest.approx((0.0, 50.0))
    assert res.seeds == 2 and res.n == 3 and not res.significant


def test_group_difference_reduces_to_scipys_t_tests() -> None:
    # Every question of a seed differs by the same amount: only the seeds vary, and the test is
    # the one-sample t test of the per-seed differences.
    c = np.array([0.02, 0.05, -0.01, 0.04])
    a = [{"s": np.full(30, 0.5), "t": np.full(10, 0.4)} for _ in c]
    b = [{"s": np.full(30, 0.5 + x), "t": np.full(10, 0.4 + x)} for x in c]
    res = group_difference(a, b, ["s", "t"])
    ref = sps.ttest_1samp(100 * c, 0.0)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-9) and res.df == pytest.approx(3)
    ci = ref.confidence_interval(0.95)
    assert res.interval == pytest.approx((ci.low, ci.high), rel=1e-9)
    # Every seed the same: only the questions vary; the t test of the per-question differences.
    rng = np.random.default_rng(4)
    x = rng.random(40)
    y = np.clip(x + rng.normal(0.03, 0.1, 40), 0, 1)
    res = group_difference([{"s": x}] * 3, [{"s": y}] * 3, ["s"])
    ref = sps.ttest_1samp(100 * (y - x), 0.0)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-9) and res.df == pytest.approx(39)
    ci = ref.confidence_interval(0.95)
    assert res.interval == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_group_difference_interval_covers_by_simulation() -> None:
    # Each run answers question q right with probability base_q + (B's gain on q) + a shift of
    # its seed; B's gain on a question is uniform on [-0.1, 0.2], so the difference over the
    # population of questions and seeds is 5 points exactly; a sample of 60 questions per split
    # and 3 seeds per side varies around it. The 95% interval must cover 5 about 95% of the time.
    rng = np.random.default_rng(12)
    n_sim, q, truth = 600, 60, 5.0
    covered = 0
    for _ in range(n_sim):
        base = {k: rng.uniform(0.2, 0.7, q) for k in ("x", "y")}
        gain = {k: rng.uniform(-0.1, 0.2, q) for k in ("x", "y")}
        a_runs, b_runs = [], []
        for _seed in range(3):
            sa, sb = rng.uniform(-0.08, 0.08, 2)
            a_runs.append({k: (rng.random(q) < base[k] + sa).astype(float) for k in base})
            b_runs.append({k: (rng.random(q) < base[k] + gain[k] + sb).astype(float) for k in base})
        low, high = group_difference(a_runs, b_runs, ["x", "y"]).interval
        covered += low <= truth <= high
    assert 0.92 <= covered / n_sim <= 0.98


def test_group_difference_checks_its_input() -> None:
    one = [{"s": [0.5, 0.5]}]
    with pytest.raises(ValueError, match="at least two seeds"):
        group_difference(one, one, ["s"])
    with pytest.raises(ValueError, match="as many runs"):
        group_difference(one * 2, one * 3, ["s"])
    with pytest.raises(ValueError, match="same questions"):
        group_difference([{"s": [0.5, 0.5]}, {"s": [0.5]}], one * 2, ["s"])
    identical = group_difference(one * 2, one * 2, ["s"])
    assert identical.difference == 0.0 and identical.p_value == 1.0 and identical.interval == (0.0, 0.0)


# --- seeds ----------------------------------------------------------------------------------

def test_seed_summary() -> None:
    s = seed_summary([50.0, 52.0, 51.0])
    half = sps.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)
    assert (s.n, s.mean, s.std) == (3, 51.0, pytest.approx(1.0))
    assert s.interval == pytest.approx((51.0 - half, 51.0 + half))
    one = seed_summary([42.0])
    assert one.mean == 42.0 and one.std is None and one.interval is None
    with pytest.raises(ValueError):
        seed_summary([])


# --- vqa-ood-bench compare ------------------------------------------------------------------

LIMIT = 10
SPLITS = ("easyvqa-test", "iv-edit", "rephrase", "text-read")  # ID, two near-OOD, one far-OOD


def _suite():
    from vqa_ood_bench.data.suite import get_suite

    return get_suite("embedded")  # built from the installed easy-vqa package: offline


def _right(split: str) -> list[bool]:
    """Which questions run A answers right (B's patterns are set per test)."""
    return [i % 2 == 0 for i in range(LIMIT)]


def make_run(run: Path, right: dict[str, list[bool]], *, variant: str = "official", limit: int = LIMIT,
             method: str = "vanilla") -> dict[str, np.ndarray]:
    """An embedded-suite run folder whose predictions are right exactly where ``right`` says.

    An embedded record's ten answers agree, so a right prediction scores 1 and a wrong one 0 in
    every variant; returns those per-question scores (in record order)."""
    suite = _suite()
    splits, scores = {}, {}
    for name, pattern in right.items():
        spec = suite.split(name)
        records = suite.load(spec, None, limit=limit)
        lines = [{"question_id": r.question_id, "prediction": r.answers[0] if ok else "xyzzy"}
                 for r, ok in zip(records, pattern)]
        (run / "predictions").mkdir(parents=True, exist_ok=True)
        (run / "predictions" / f"{name}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        scores[name] = np.array(pattern[: len(records)], dtype=float)
        splits[name] = SplitResult(role=spec.role, shift_type=spec.shift_type, n=len(records),
                                   vqa_accuracy=round(100 * float(scores[name].mean()), 4),
                                   predictions_file=f"predictions/{name}.jsonl")
    results = RunResults(
        run_id=f"run-{run.name}", created_at="2025-01-01T00:00:00Z", method=method, model=ModelInfo(name_or_path="tiny"),
        suite="embedded", suite_version=suite.version, seed=0, dtype="float32", batch_size=8, scoring_variant=variant,
        package_version="0.1.0", config={"suite": "embedded", "scoring_variant": variant, "data_root": None, "limit": limit},
        splits=splits, averages=compute_averages(splits),
    )
    write_results(results, run / "results.json")
    return scores


@pytest.fixture
def two_runs(tmp_path: Path):
    a_right = {s: _right(s) for s in SPLITS}
    b_right = {
        "easyvqa-test": [True] * 9 + [False],  # 5 -> 9 right
        "iv-edit": [i % 2 == 0 for i in range(LIMIT)],  # the same
        "rephrase": [i % 2 == 1 for i in range(LIMIT)],  # as many right, other questions
        "text-read": [True] * 8 + [False] * 2,  # 5 -> 8 right
    }
    a = make_run(tmp_path / "a", a_right)
    b = make_run(tmp_path / "b", b_right, method="digrap")
    return tmp_path / "a", tmp_path / "b", a, b


def _cli(capsys, *args):
    rc = main(["compare", *map(str, args)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_compare_json_matches_the_stats_functions(two_runs, capsys) -> None:
    run_a, run_b, a, b = two_runs
    rc, out, err = _cli(capsys, run_a, run_b, "--json", "--n-boot", 500)
    assert rc == 0, err
    obj = json.loads(out)
    assert obj["suite"] == "embedded" and obj["variant"] == "official" and obj["confidence"] == 0.95
    assert obj["run_a"]["method"] == "vanilla" and obj["run_b"]["method"] == "digrap"
    assert list(obj["splits"]) == list(SPLITS)
    assert obj["warnings"] == []
    fields = {"n", "a", "b", "difference", "interval", "p_value", "exact", "significant", "a_interval", "b_interval"}
    for name in SPLITS:
        row = obj["splits"][name]
        assert set(row) == fields | {"role", "shift_type"}
        ref = paired_difference(a[name], b[name], n_boot=500)
        assert row["n"] == LIMIT
        assert row["a"] == pytest.approx(ref.a) and row["b"] == pytest.approx(ref.b)
        assert row["difference"] == pytest.approx(ref.difference)
        assert row["interval"] == pytest.approx(list(ref.interval))
        assert row["p_value"] == pytest.approx(ref.p_value) and row["significant"] == ref.significant
        assert row["a_interval"] == pytest.approx(list(split_interval(a[name], n_boot=500)))
    assert obj["splits"]["easyvqa-test"]["a"] == pytest.approx(50.0) and obj["splits"]["easyvqa-test"]["b"] == pytest.approx(90.0)
    assert obj["splits"]["iv-edit"]["difference"] == 0.0 and obj["splits"]["iv-edit"]["p_value"] == 1.0
    # rephrase: same accuracy, but every question changed: B - A = 0, p = 1 (exact)
    assert obj["splits"]["rephrase"]["difference"] == pytest.approx(0.0) and obj["splits"]["rephrase"]["p_value"] == 1.0

    groups = {"id": ["easyvqa-test"], "near_ood": ["iv-edit", "rephrase"], "far_ood": ["text-read"],
              "ood": ["iv-edit", "rephrase", "text-read"]}
    assert list(obj["averages"]) == list(groups)
    for key, members in groups.items():
        row = obj["averages"][key]
        assert row["splits"] == members and set(row) == fields | {"splits"}
        ref = paired_average_difference(a, b, members, n_boot=500)
        assert row["difference"] == pytest.approx(ref.difference)
        assert row["interval"] == pytest.approx(list(ref.interval))
        assert row["p_value"] == pytest.approx(ref.p_value)
        assert row["b_interval"] == pytest.approx(list(average_interval(b, members, n_boot=500)))
    # The averages are those results.json holds.
    stored = json.loads((run_b / "results.json").read_text())["averages"]
    for key in groups:
        assert obj["averages"][key]["b"] == pytest.approx(stored[key])


def test_compare_table(two_runs, capsys) -> None:
    run_a, run_b, a, b = two_runs
    rc, out, err = _cli(capsys, run_a, run_b, "--n-boot", 500)
    assert rc == 0, err
    ref = paired_difference(a["easyvqa-test"], b["easyvqa-test"], n_boot=500)
    line = next(line for line in out.splitlines() if "easyvqa-test" in line)
    assert "50.00" in line and "90.00" in line and "+40.00" in line
    assert f"[{ref.interval[0]:+.2f}, {ref.interval[1]:+.2f}]" in line and f"{ref.p_value:.4f}" in line
    assert ("*" in line.split(f"{ref.p_value:.4f}")[1]) == ref.significant
    assert "OOD avg" in out and "near-OOD avg" in out and "far-OOD avg" in out
    assert "-0.00" not in out


def test_compare_refuses_runs_that_cannot_be_paired(tmp_path: Path, capsys) -> None:
    right = {s: _right(s) for s in SPLITS[:2]}
    make_run(tmp_path / "a", right)
    make_run(tmp_path / "b", right)

    data = json.loads((tmp_path / "b" / "results.json").read_text())
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "results.json").write_text(json.dumps({**data, "suite": "paper-vqa"}))
    rc, out, err = _cli(capsys, tmp_path / "a", tmp_path / "c")
    assert rc == 2 and err.count("\n") == 1 and "different suites" in err and "Traceback" not in err

    make_run(tmp_path / "lavis", right, variant="lavis")
    rc, _, err = _cli(capsys, tmp_path / "a", tmp_path / "lavis")
    assert rc == 2 and err.count("\n") == 1 and "variants" in err

    make_run(tmp_path / "fewer", {s: _right(s) for s in SPLITS[:1]})
    rc, _, err = _cli(capsys, tmp_path / "a", tmp_path / "fewer")
    assert rc == 2 and err.count("\n") == 1 and "only A has iv-edit" in err

    make_run(tmp_path / "limit8", right, limit=8)
    rc, _, err = _cli(capsys, tmp_path / "a", tmp_path / "limit8")
    assert rc == 2 and err.count("\n") == 1 and "split 'easyvqa-test'" in err and "different questions" in err

    rc, _, err = _cli(capsys, tmp_path / "a", tmp_path / "nowhere")
    assert rc == 2 and err.count("\n") == 1 and "not found" in err
