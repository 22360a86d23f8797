"""Intervals in results files, tables, leaderboard entries and the HTML page; ``compare`` of seed
groups; the significance marks of ``run --method all``.

Run folders are built here on a small suite registered by this module (records made in the
test, no data files), with predictions chosen so every per-question score is known: a question's
ten answers are nine times "gold" and once "part", so predicting "gold" scores 1, "part" 0.3
(official variant: 9 of the 10 leave-one-out subsets hold the one "part", 1/3 each) and anything
else 0."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from scipy import stats as sps

from vqa_ood_bench.cli import main
from vqa_ood_bench.data.records import VQARecord
from vqa_ood_bench.data.registry import DATASETS, register_dataset
from vqa_ood_bench.data.suite import SUITES, SplitSpec, Suite, get_suite, register_suite
from vqa_ood_bench.errors import DataError
from vqa_ood_bench.report import stats
from vqa_ood_bench.report.intervals import CONFIDENCE, fill_intervals
from vqa_ood_bench.report.leaderboard import entry_from_results, entry_json, load_entries, read_entry, write_entry
from vqa_ood_bench.report.leaderboard_html import render_html
from vqa_ood_bench.report.schema import (
    ModelInfo,
    RunResults,
    SplitResult,
    compute_averages,
    read_results,
    write_results,
)
from vqa_ood_bench.report.table import leaderboard_table, results_table

SUITE = "intervaltest-suite"
Q = 40  # questions per split
ROLES = {"id-a": ("id", "none"), "near-a": ("near", "vision"), "near-b": ("near", "question"), "far-a": ("far", "far")}
PREDICTION = {1.0: "gold", 0.3: "part", 0.0: "zzz"}


def _records(split: str) -> list[VQARecord]:
    return [VQARecord(question_id=f"{split}-{i:03d}", image="unused.png", question="q?", answers=["gold"] * 9 + ["part"],
                      answer_type="other", question_type="what is", dataset=f"intervaltest-{split}", split=split)
            for i in range(Q)]


def _register() -> None:
    for split, (role, shift) in ROLES.items():
        if f"intervaltest-{split}" not in DATASETS:
            register_dataset(f"intervaltest-{split}", role=role, shift_type=shift)(lambda root, _s=split, **kw: _records(_s))
    if SUITE not in SUITES:

        @register_suite(SUITE)
        def _suite() -> Suite:
            specs = {s: SplitSpec(name=s, dataset=f"intervaltest-{s}", role=r, shift_type=t) for s, (r, t) in ROLES.items()}
            return Suite(name=SUITE, description="interval tests", train=specs["id-a"], validation=specs["id-a"],
                         evaluation=tuple(specs.values()), needs_data_root=False, version="3")


_register()


def make_run(run: Path, levels: dict[str, np.ndarray], *, method: str = "vanilla", seed: int = 0, limit: int | None = None,
             intervals: bool = True, model: str = "google/paligemma-3b-pt-224") -> dict[str, np.ndarray]:
    """A run folder whose question ``i`` of each split (in the suite's record order) scores
    ``levels[split][i]`` (1, 0.3 or 0); returns those scores, as the runner would write the file."""
    suite = get_suite(SUITE)
    splits, scores = {}, {}
    for name, lv in levels.items():
        spec = suite.split(name)
        records = suite.load(spec, None, limit=limit)
        lines = [{"question_id": r.question_id, "prediction": PREDICTION[float(v)]} for r, v in zip(records, lv)]
        (run / "predictions").mkdir(parents=True, exist_ok=True)
        (run / "predictions" / f"{name}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        scores[name] = np.asarray(lv[: len(records)], dtype=float)
        acc = round(100 * float(scores[name].mean()), 4)
        splits[name] = SplitResult(role=spec.role, shift_type=spec.shift_type, n=len(records), vqa_accuracy=acc,
                                   per_answer_type={"other": acc}, per_question_type={"what is": acc},
                                   predictions_file=f"predictions/{name}.jsonl")
    averages_ci = {}
    if intervals:
        splits, averages_ci = fill_intervals(splits, scores)
    from vqa_ood_bench.config import RunConfig

    config = RunConfig.model_validate({"method": method, "adapter": "lora", "model": model, "suite": SUITE, "seed": seed,
                                       "limit": limit}).model_dump(mode="json")
    results = RunResults(
        run_id=f"{run.parent.name}-{run.name}", created_at="2025-01-01T00:00:00Z", method=method, method_params={"adapter": "lora"},
        model=ModelInfo(name_or_path=model), suite=SUITE, suite_version="3", seed=seed, dtype="float32", batch_size=8,
        scoring_variant="official", package_version="0.1.0", config=config, splits=splits,
        averages=compute_averages(splits), averages_ci=averages_ci,
    )
    write_results(results, run / "results.json")
    return scores


def random_levels(rng: np.random.Generator, p=(0.4, 0.2, 0.4)) -> dict[str, np.ndarray]:
    return {s: rng.choice([0.0, 0.3, 1.0], size=Q, p=p) for s in ROLES}


# --- schema -----------------------------------------------------------------------------------


def test_results_round_trip_with_intervals_and_old_files_still_read(tmp_path: Path) -> None:
    levels = random_levels(np.random.default_rng(0))
    make_run(tmp_path / "r", levels)
    res = read_results(tmp_path / "r" / "results.json")
    assert all(s.ci is not None for s in res.splits.values())
    assert set(res.averages_ci) == {"id", "near_ood", "far_ood", "ood"}
    write_results(res, tmp_path / "again.json")
    assert read_results(tmp_path / "again.json") == res
    assert (tmp_path / "again.json").read_bytes() == (tmp_path / "r" / "results.json").read_bytes()

    # A file written before intervals existed (no "ci", no "averages_ci") reads, without them.
    data = json.loads((tmp_path / "r" / "results.json").read_text())
    del data["averages_ci"]
    for s in data["splits"].values():
        del s["ci"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = read_results(tmp_path / "old.json")
    assert old.averages_ci == {} and all(s.ci is None for s in old.splits.values())
    assert old.schema_version == 1

    for edit, needle in (
        (lambda d: d["splits"]["id-a"]["ci"].update(low=90.0, high=10.0), "splits.id-a.ci"),
        (lambda d: d["splits"]["id-a"]["ci"].update(method="normal"), "splits.id-a.ci.method"),
        (lambda d: d["averages_ci"].update(median=d["averages_ci"]["ood"]), "unknown average 'median'"),
    ):
        bad = json.loads((tmp_path / "r" / "results.json").read_text())
        edit(bad)
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(DataError, match=re.escape(needle)):
            read_results(tmp_path / "bad.json")


def test_stored_intervals_are_the_stats_functions_own_and_deterministic(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    levels = random_levels(rng)
    levels["far-a"] = rng.choice([0.0, 1.0], size=Q)  # 0/1 scores: the exact interval
    make_run(tmp_path / "r1", levels)
    make_run(tmp_path / "r2", levels)
    one, two = ((tmp_path / r / "results.json").read_text() for r in ("r1", "r2"))
    assert one.replace('"run_id": "test_stored_intervals_are_the_0-r1"', "") == two.replace('"run_id": "test_stored_intervals_are_the_0-r2"', "")
    res = read_results(tmp_path / "r1" / "results.json")
    far = res.splits["far-a"].ci
    k = int(levels["far-a"].sum())
    cp = sps.binomtest(k, Q).proportion_ci(confidence_level=0.95, method="exact")
    assert far.method == "clopper-pearson" and far.confidence == CONFIDENCE
    assert (far.low, far.high) == (pytest.approx(100 * cp.low, abs=1e-4), pytest.approx(100 * cp.high, abs=1e-4))
    near = res.splits["near-a"].ci
    assert near.method == "bootstrap"
    assert (near.low, near.high) == pytest.approx(stats.split_interval(levels["near-a"]), abs=1e-4)
    assert near.low <= res.splits["near-a"].vqa_accuracy <= near.high
    ood = res.averages_ci["ood"]
    assert (ood.low, ood.high) == pytest.approx(stats.average_interval(levels, ["near-a", "near-b", "far-a"]), abs=1e-4)
    assert ood.low <= res.averages.ood <= ood.high
    # The interval of the average, not the average of the intervals: narrower than the latter.
    members = [res.splits[n].ci for n in ("near-a", "near-b", "far-a")]
    assert ood.high - ood.low < sum(c.high - c.low for c in members) / 3
    # The ID average is over one split: its interval is that split's.
    assert res.averages_ci["id"] == res.splits["id-a"].ci


def test_fill_intervals_is_fast_on_a_full_size_run() -> None:
    import time

    rng = np.random.default_rng(2)
    roles = ["id"] + ["near"] * 5 + ["far"] * 3
    scores = {f"s{i}": rng.integers(0, 31, size=1000) / 30 for i in range(len(roles))}  # 9,000 questions, 31 values
    splits = {n: SplitResult(role=r, shift_type="none", n=1000, vqa_accuracy=100 * scores[n].mean()) for n, r in zip(scores, roles)}
    t = time.perf_counter()
    fill_intervals(splits, scores)
    assert time.perf_counter() - t < 2.0  # typically ~0.1 s; generous for a loaded machine


# --- re-scoring -------------------------------------------------------------------------------


def test_rescoring_keeps_intervals_current_and_leaves_old_files_alone(tmp_path: Path, capsys) -> None:
    levels = random_levels(np.random.default_rng(3))
    make_run(tmp_path / "new", levels)
    before = (tmp_path / "new" / "results.json").read_bytes()
    assert main(["score", "--predictions", str(tmp_path / "new")]) == 0
    assert (tmp_path / "new" / "results.json").read_bytes() == before  # same predictions: same bytes

    make_run(tmp_path / "old", levels, intervals=False)
    before = (tmp_path / "old" / "results.json").read_bytes()
    assert main(["score", "--predictions", str(tmp_path / "old")]) == 0
    assert (tmp_path / "old" / "results.json").read_bytes() == before  # not rewritten only to add intervals

    # Predictions that score otherwise: the stored intervals follow the new numbers.
    pred = tmp_path / "new" / "predictions" / "near-a.jsonl"
    lines = [json.loads(line) for line in pred.read_text().splitlines()]
    pred.write_text("".join(json.dumps({**obj, "prediction": "gold"}) + "\n" for obj in lines))
    assert main(["score", "--predictions", str(tmp_path / "new")]) == 0
    capsys.readouterr()
    res = read_results(tmp_path / "new" / "results.json")
    now = {**levels, "near-a": np.ones(Q)}
    near = res.splits["near-a"]
    cp = sps.binomtest(Q, Q).proportion_ci(confidence_level=0.95, method="exact")
    assert near.vqa_accuracy == 100.0 and near.ci.method == "clopper-pearson"
    assert (near.ci.low, near.ci.high) == pytest.approx((100 * cp.low, 100.0), abs=1e-4)
    for key, members in (("near_ood", ["near-a", "near-b"]), ("ood", ["near-a", "near-b", "far-a"])):
        assert (res.averages_ci[key].low, res.averages_ci[key].high) == pytest.approx(stats.average_interval(now, members), abs=1e-4)
    assert res.averages_ci["id"] == res.splits["id-a"].ci


# --- tables -----------------------------------------------------------------------------------


def _text(renderable, width: int = 250) -> str:
    console = Console(record=True, width=width)
    console.print(renderable)
    return console.export_text()


def test_results_table_shows_half_widths_and_a_legend(tmp_path: Path) -> None:
    make_run(tmp_path / "r", random_levels(np.random.default_rng(4)))
    res = read_results(tmp_path / "r" / "results.json")
    text = _text(results_table([res]))
    for name, s in res.splits.items():
        assert f"{s.vqa_accuracy:.1f} ±{(s.ci.high - s.ci.low) / 2:.1f}" in text
    ood = res.averages_ci["ood"]
    assert f"{res.averages.ood:.1f} ±{(ood.high - ood.low) / 2:.1f}" in text
    assert "half the width of the 95% interval" in text
    plain = _text(results_table([res], intervals=False))
    assert "±" not in plain and f"{res.averages.ood:.1f}" in plain


def test_leaderboard_entry_table_and_html_carry_the_intervals(tmp_path: Path) -> None:
    make_run(tmp_path / "r", random_levels(np.random.default_rng(5)))
    res = read_results(tmp_path / "r" / "results.json")
    entry = entry_from_results(res, entry_id="intervals-entry")
    assert entry.splits["near-a"].ci == res.splits["near-a"].ci and entry.averages_ci == res.averages_ci
    write_entry(entry, tmp_path / "board" / "intervals-entry.json")
    assert read_entry(tmp_path / "board" / "intervals-entry.json") == entry
    assert '"averages_ci"' in entry_json(entry)
    assert '"averages_ci"' not in entry_json(entry.model_copy(update={"averages_ci": {}}))  # paper entries keep their bytes

    text = _text(leaderboard_table(SUITE, [entry], with_splits=True))
    ood = res.averages_ci["ood"]
    assert f"{res.averages.ood:.2f} ±{(ood.high - ood.low) / 2:.2f}" in text
    assert "half the width of the 95% interval" in text

    # The HTML page: the half width after the number, the exact bounds in its tooltip, all escaped.
    hostile = entry.model_copy(update={"method": "<script>alert(1)</script>"})
    html = render_html([hostile])
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    cell = re.search(r'<td class="num avg ood" data-v="[^"]*" title="([^"]*)">([^<]*)<span class="pm">([^<]*)</span></td>', html)
    assert cell is not None
    assert cell.group(1) == f"95% interval [{ood.low:.2f}, {ood.high:.2f}] (bootstrap)"
    assert cell.group(2) == f"{res.averages.ood:.2f}" and cell.group(3) == f"±{(ood.high - ood.low) / 2:.2f}"


# --- compare: seed groups ---------------------------------------------------------------------


def _anova_reference(a_runs, b_runs, members, confidence=0.95):
    """The group interval from sums of squares (SS_E = SS_total - SS_seeds - SS_questions),
    written independently of report.stats: (difference, low, high, p) in points."""
    seeds, k = len(a_runs), len(members)
    seed_means = np.zeros(seeds)
    components = []  # (value, df)
    q_terms = []
    for name in members:
        d = np.array([b[name] - a[name] for a, b in zip(a_runs, b_runs)], dtype=np.float64)
        q = d.shape[1]
        grand = d.mean()
        ss_t = ((d - grand) ** 2).sum()
        ss_s = q * ((d.mean(axis=1) - grand) ** 2).sum()
        ss_q = seeds * ((d.mean(axis=0) - grand) ** 2).sum()
        ms_q = ss_q / (q - 1)
        ms_e = (ss_t - ss_s - ss_q) / ((seeds - 1) * (q - 1))
        seed_means += d.mean(axis=1) / k
        if ms_q - ms_e > 0:  # the question component, truncated at zero
            q_terms += [(ms_q / (seeds * q * k * k), q - 1), (-ms_e / (seeds * q * k * k), (seeds - 1) * (q - 1))]
    components.append((seed_means.var(ddof=1) / seeds, seeds - 1))
    components += q_terms
    var = sum(v for v, _ in components)
    df = var**2 / sum(v**2 / f for v, f in components)
    diff = seed_means.mean()
    se = math.sqrt(var)
    half = sps.t.ppf(0.5 + confidence / 2, df) * se
    p = 2 * sps.t.sf(abs(diff) / se, df)
    return 100 * diff, 100 * (diff - half), 100 * (diff + half), p


@pytest.fixture
def groups(tmp_path: Path):
    """Group A (vanilla) and B (digrap), seeds 0, 1, 2; B a little better and seeds differ."""
    rng = np.random.default_rng(6)
    a_levels, b_levels = [], []
    for seed in (0, 1, 2):
        a = random_levels(rng)
        b = {s: np.where(rng.random(Q) < 0.25, 1.0, v) for s, v in a.items()}  # B fixes a quarter of the questions
        b = {s: np.where(rng.random(Q) < 0.1, 0.0, v) for s, v in b.items()}  # and breaks a tenth
        make_run(tmp_path / "A" / f"s{seed}", a, seed=seed)
        make_run(tmp_path / "B" / f"s{seed}", b, method="digrap", seed=seed)
        a_levels.append(a)
        b_levels.append(b)
    return tmp_path, a_levels, b_levels


def _compare(capsys, *args):
    rc = main(["compare", *map(str, args)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_group_compare_equals_an_independent_computation(groups, capsys) -> None:
    root, a_levels, b_levels = groups
    rc, out, err = _compare(capsys, root / "A", root / "B", "--json")
    assert rc == 0, err
    obj = json.loads(out)
    assert obj["seeds"] == [0, 1, 2] and obj["group_a"]["method"] == "vanilla" and obj["group_b"]["method"] == "digrap"
    assert obj["warnings"] == []
    checks = {name: [name] for name in ROLES} | {"ood": ["near-a", "near-b", "far-a"], "near_ood": ["near-a", "near-b"]}
    for key, members in checks.items():
        row = obj["splits"][key] if key in ROLES else obj["averages"][key]
        diff, low, high, p = _anova_reference(a_levels, b_levels, members)
        assert row["difference"] == pytest.approx(diff, abs=1e-9)
        assert row["interval"] == pytest.approx([low, high], abs=1e-9)
        assert row["p_value"] == pytest.approx(p, rel=1e-9)
        assert row["significant"] == (p < 0.05) and row["seeds"] == 3 and row["n"] == Q * len(members)
        per_seed = [100 * np.mean([b[m].mean() - a[m].mean() for m in members]) for a, b in zip(a_levels, b_levels)]
        assert row["per_seed"] == pytest.approx(per_seed)
        # each side over seeds: mean, sample standard deviation, t interval
        a_acc = [100 * np.mean([a[m].mean() for m in members]) for a in a_levels]
        assert row["a_seeds"]["mean"] == pytest.approx(np.mean(a_acc)) and row["a_seeds"]["std"] == pytest.approx(np.std(a_acc, ddof=1))
        t = sps.ttest_1samp(a_acc, 0.0).confidence_interval(0.95)
        assert row["a_seeds"]["interval"] == pytest.approx([t.low, t.high])
    assert obj["averages"]["ood"]["splits"] == ["near-a", "near-b", "far-a"]

    # The same groups named as comma-separated run folders (in another order: runs pair by seed).
    listed_a = ",".join(str(root / "A" / s) for s in ("s2", "s0", "s1"))
    listed_b = ",".join(str(root / "B" / s) for s in ("s1", "s2", "s0"))
    rc, out2, err = _compare(capsys, listed_a, listed_b, "--json")
    assert rc == 0, err
    again = json.loads(out2)
    assert again["splits"] == obj["splits"] and again["averages"] == obj["averages"]

    rc, table, err = _compare(capsys, root / "A", root / "B")
    assert rc == 0, err
    line = next(line for line in table.splitlines() if line.lstrip("│ ").startswith("OOD avg"))
    r = obj["averages"]["ood"]
    assert f"{r['difference']:+.2f}" in line and f"[{r['interval'][0]:+.2f}, {r['interval'][1]:+.2f}]" in line
    assert ("*" in line) == r["significant"]


def test_group_compare_refuses_groups_that_cannot_be_paired(groups, capsys) -> None:
    root, a_levels, _ = groups
    rng = np.random.default_rng(7)

    def refused(a, b, needle):
        rc, _, err = _compare(capsys, a, b)
        assert rc == 2 and err.count("\n") == 1 and needle in err and "Traceback" not in err, err

    two = ",".join(str(root / "B" / s) for s in ("s0", "s1"))
    refused(root / "A", two, "seeds differ: A 0, 1, 2; B 0, 1")
    refused(root / "A", f"{root / 'B' / 's0'},{root / 'B' / 's0'}", "seed 0 twice")
    refused(f"{root / 'A' / 's0'},{root / 'B' / 's1'}", root / "B", "group A mixes methods")
    make_run(root / "short" / "s0", {s: v[: Q - 4] for s, v in a_levels[0].items()}, seed=0, limit=Q - 4)
    make_run(root / "short" / "s1", {s: v[: Q - 4] for s, v in a_levels[1].items()}, seed=1, limit=Q - 4)
    make_run(root / "short" / "s2", random_levels(rng), seed=2)
    refused(root / "A", root / "short", "scored different questions")
    (root / "empty").mkdir()
    refused(root / "A", root / "empty", "neither a run folder nor a folder of run folders")
    refused(root / "A", f"{root / 'B' / 's0'},{root / 'nowhere'}", "not found")


# --- run --method all: significance marks --------------------------------------------------------


def test_method_all_marks_significant_deltas(tmp_path: Path, monkeypatch, capsys) -> None:
    """Every method's run is made here (no training); B's changes against vanilla are chosen so
    that digrap is clearly better and wise-ft's difference is noise. With 0/1 scores and equal
    split sizes the paired sign-flip test of an average is the sign test over its changed
    questions, so scipy's binomial test gives the expected p-values."""
    import vqa_ood_bench.runner as runner
    from vqa_ood_bench.cli.cmd_run import default_config, run_sweep
    from vqa_ood_bench.methods.base import get_method, sweep_order

    rng = np.random.default_rng(8)
    vanilla = {s: (rng.random(Q) < 0.5).astype(float) for s in ROLES}

    def changed(n_up: int, n_down: int) -> dict[str, np.ndarray]:
        out = {}
        for s, v in vanilla.items():
            w = v.copy()
            zeros, ones = np.flatnonzero(w == 0), np.flatnonzero(w == 1)
            w[zeros[:n_up]] = 1.0
            w[ones[:n_down]] = 0.0
            out[s] = w
        return out

    plan = {"vanilla": vanilla, "digrap": changed(8, 1), "wise-ft": changed(2, 1), "zeroshot": changed(0, 10)}
    made = {}

    def fake_run_benchmark(cfg, out, *, log, show_progress):
        levels = plan.get(cfg.method, vanilla)
        made[cfg.method] = make_run(Path(out), levels, method=cfg.method)
        return read_results(Path(out) / "results.json")

    monkeypatch.setattr(runner, "run_benchmark", fake_run_benchmark)
    cfg = default_config().model_copy(update={"suite": SUITE})
    run_sweep(cfg, tmp_path / "sweep", log=lambda s: None, as_json=False)
    text = capsys.readouterr().out
    summary = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert summary["alpha"] == 0.05
    lora = [m for m in sweep_order() if "lora" in get_method(m).adapters]
    assert set(summary["methods"]) == set(lora)

    def sign_test(members):
        up = sum(int(((made["digrap"][m] - vanilla[m]) > 0).sum()) for m in members)
        down = sum(int(((made["digrap"][m] - vanilla[m]) < 0).sum()) for m in members)
        return sps.binomtest(up, up + down, 0.5).pvalue

    digrap = summary["methods"]["digrap"]["vs_baseline"]
    assert digrap["id"]["p_value"] == pytest.approx(sign_test(["id-a"]), rel=1e-9)
    assert digrap["ood"]["p_value"] == pytest.approx(sign_test(["near-a", "near-b", "far-a"]), rel=1e-9)
    assert digrap["id"]["significant"] is (digrap["id"]["p_value"] < 0.05)
    assert digrap["ood"]["significant"] is True
    wise = summary["methods"]["wise-ft"]["vs_baseline"]
    assert wise["ood"]["significant"] is False and wise["id"]["significant"] is False
    assert summary["methods"]["vanilla"]["vs_baseline"] is None and summary["methods"]["zeroshot"]["vs_baseline"] is None
    assert set(summary["methods"]["digrap"]["averages_ci"]) == {"id", "near_ood", "far_ood", "ood"}

    def row(method: str) -> list[str]:
        line = next(line for line in text.splitlines() if line.lstrip("│ ").startswith(f"{method} "))
        return [c.strip() for c in line.strip("│").split("│")]

    d_row, w_row, z_row = row("digrap"), row("wise-ft"), row("zeroshot")
    assert d_row[-1].endswith("*") and d_row[-2].endswith("*") == digrap["id"]["significant"]
    assert not w_row[-1].endswith("*") and not w_row[-2].endswith("*")
    assert z_row[-1] == "–" and z_row[-2] == "–"
    assert "*: Δ differs significantly from vanilla (paired sign-flip test on the same questions, p < 0.05)" in " ".join(text.split())


# --- leaderboard: significance against a baseline entry -----------------------------------------


def test_leaderboard_marks_significance_against_a_baseline_entry(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(9)
    base = {s: (rng.random(Q) < 0.5).astype(float) for s in ROLES}
    better = {s: np.where(v == 0, 1.0, v) for s, v in base.items()}  # every wrong answer fixed
    make_run(tmp_path / "runs" / "vanilla", base, method="vanilla")
    make_run(tmp_path / "runs" / "digrap", better, method="digrap")
    board = tmp_path / "board"
    add = ["leaderboard", "add", "--dir", str(board)]
    assert main([*add, str(tmp_path / "runs" / "vanilla"), "--id", "lb-vanilla"]) == 0
    rc = main([*add, str(tmp_path / "runs" / "digrap"), "--id", "lb-digrap", "--baseline", str(tmp_path / "runs" / "vanilla")])
    out = capsys.readouterr()
    assert rc == 0, out.err
    entries = {e.entry_id: e for _, e in load_entries(board)}
    v = entries["lb-digrap"].versus
    assert v is not None and v.baseline == "lb-vanilla"
    ref = stats.paired_average_difference(base, better, ["near-a", "near-b", "far-a"])
    assert v.averages["ood"].difference == pytest.approx(ref.difference, abs=1e-4)
    assert v.averages["ood"].p_value == pytest.approx(ref.p_value) and v.averages["ood"].significant
    # The intervals come from the re-scored predictions.
    assert entries["lb-digrap"].averages_ci == read_results(tmp_path / "runs" / "digrap" / "results.json").averages_ci

    assert main(["leaderboard", "show", "--dir", str(board)]) == 0
    text = capsys.readouterr().out
    line = next(line for line in text.splitlines() if "lb-digrap" in line)
    assert f"{entries['lb-digrap'].averages.ood:.2f} ±" in line and "*" in line
    assert "*" not in next(line for line in text.splitlines() if "lb-vanilla" in line)
    html = render_html(list(entries.values()))
    assert '<span class="sig">*</span>' in html and "vs lb-vanilla: +" in html

    # Without the baseline entry on the board (or with other predictions under its id) no mark.
    alone = render_html([entries["lb-digrap"]])
    assert '<span class="sig">' not in alone
    moved = entries["lb-vanilla"].model_copy(update={"predictions_sha256": {"predictions/id-a.jsonl": "0" * 64}})
    assert '<span class="sig">' not in render_html([entries["lb-digrap"], moved])

    # A baseline run that has no entry on the board is refused.
    make_run(tmp_path / "runs" / "other", {s: 1.0 - v for s, v in base.items()}, method="vanilla", seed=1)
    rc = main([*add, str(tmp_path / "runs" / "digrap"), "--id", "lb-x", "--baseline", str(tmp_path / "runs" / "other")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "not on the leaderboard" in err
