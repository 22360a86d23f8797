"""notebooks/walkthrough.ipynb: stored without outputs, and executed top to bottom in a fresh kernel.

The execution takes about a minute on 2 CPU cores (~60 s with a fresh cache, the embedded suite's
~20 s build included), so it is part of the default run rather than marked slow.

The execution test runs the notebook as a reader would (its own parameters, its default work folder
under the working directory) in this interpreter's kernel, then checks the artefacts it promises
against the package's own readers: two schema-valid results files made with the parameters' sizes,
the shift means written into both, the plots, DiGraP's omega log and a leaderboard export whose
numbers are those of the runs.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbclient
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "walkthrough.ipynb"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


def parameters_of(nb) -> dict:
    """The values the notebook's ``parameters`` cell sets (it holds plain assignments only)."""
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    params: dict = {}
    exec(cells[0].source, params)  # noqa: S102 - the repository's own notebook
    return {k: v for k, v in params.items() if not k.startswith("__")}


def python_kernel_spec_dir(folder: Path) -> Path:
    """A ``python3`` kernel spec that starts ipykernel with this very interpreter (the venv's)."""
    spec = folder / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (test)",
        "language": "python",
    }))
    return folder / "kernels"


def test_notebook_is_stored_valid_and_without_outputs() -> None:
    nb = read_notebook()
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) >= 5 and any(c.cell_type == "markdown" for c in nb.cells)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"cells {dirty} carry outputs; clear them before committing"
    params = parameters_of(nb)
    assert {"LIMIT", "TRAIN_OVERRIDES", "METHODS", "WORK_DIR"} <= set(params)
    assert nb.cells.index(next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))) <= 2, "parameters come first"


def _image_outputs(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def _text_outputs(nb) -> str:
    parts = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            parts.append(o.get("text", ""))
            parts.append(o.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


@pytest.mark.slow
def test_walkthrough_executes_and_writes_what_it_shows(tmp_path: Path) -> None:
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    from vqa_ood_bench.data.suite import get_suite
    from vqa_ood_bench.report.leaderboard import read_entry
    from vqa_ood_bench.report.schema import compute_averages, read_results

    nb = read_notebook()
    params = parameters_of(nb)
    methods, limit = list(params["METHODS"]), params["LIMIT"]
    assert params["WORK_DIR"] is None  # the default work folder is what this test looks for
    repo_boards = sorted(str(p) for p in (ROOT / "vqa_ood_bench" / "leaderboards").rglob("*")) if (ROOT / "vqa_ood_bench" / "leaderboards").is_dir() else []

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    # The kernel inherits the test session's settings (offline, its fresh cache, the short pre-training).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    km = KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(python_kernel_spec_dir(tmp_path))]))
    client = nbclient.NotebookClient(nb, km=km, timeout=600, allow_errors=False)
    client.execute(cwd=str(cwd), env=env)  # raises CellExecutionError, naming the cell, on any error
    assert km.kernel_spec.argv[0] == sys.executable

    work_dirs = list((cwd / "runs").glob("notebook-*"))
    assert len(work_dirs) == 1, work_dirs
    work = work_dirs[0]

    # 2. both runs: schema-valid results with the parameters' sizes, every evaluation split scored
    suite = get_suite("embedded")
    results = {m: read_results(work / m / "results.json") for m in methods}
    for method, r in results.items():
        assert r.method == method and r.config["adapter"] == "lora" and r.config["limit"] == limit
        if "max_steps" in params["TRAIN_OVERRIDES"]:
            assert r.method_params["fit"]["steps"] == params["TRAIN_OVERRIDES"]["max_steps"]
        assert set(r.splits) == {s.name for s in suite.evaluation}
        assert all(0 < s.n <= (limit or s.n) for s in r.splits.values())
        # 3. the lavis re-score was shown, not written: the file keeps the variant it was run with
        assert r.scoring_variant == "official"
        # 4. shift: one encoder (the baseline's model) on the same records gives both runs the same means
        for name, s in r.splits.items():
            assert set(s.shift) == {"vision", "question", "joint"}, name
            assert s.shift == results[methods[0]].splits[name].shift
    if "digrap" in methods:
        omega_lines = (work / "digrap" / "omega.jsonl").read_text().splitlines()
        assert len(omega_lines) == results["digrap"].method_params["fit"]["steps"]

    plots = work / "plots"
    expected = ["shift_vs_accuracy", "shift_correlation_heatmap", *(f"shift_hist_{m}" for m in methods)]
    expected += ["omega_mean", "omega_layers"] if "digrap" in methods else []
    for stem in expected:
        data = (plots / f"{stem}.png").read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000, stem

    # 5. leaderboard: one entry per run in the notebook's own folder, exported with the runs' numbers
    entries = sorted((work / "leaderboard").rglob("*.json"))
    assert len(entries) == len(methods)
    assert {read_entry(p).method for p in entries} == set(methods)
    exported = json.loads((work / "exports" / "leaderboard.json").read_text())["entries"]
    assert len(exported) == len(methods)
    for entry in exported:
        run = results[entry["method"]]
        assert entry["averages"] == pytest.approx(compute_averages(run.splits).model_dump())
        assert {k: v["vqa_accuracy"] for k, v in entry["splits"].items()} == {k: v.vqa_accuracy for k, v in run.splits.items()}
    csv_rows = (work / "exports" / "leaderboard.csv").read_text().strip().splitlines()
    assert len(csv_rows) == 1 + len(methods)
    assert (work / "exports" / "leaderboard.html").stat().st_size > 0
    after = sorted(str(p) for p in (ROOT / "vqa_ood_bench" / "leaderboards").rglob("*")) if (ROOT / "vqa_ood_bench" / "leaderboards").is_dir() else []
    assert after == repo_boards, "the walkthrough must not touch the packaged vqa_ood_bench/leaderboards/"

    # What the reader sees: the records figure, the shift and omega plots inline, the paper-style table.
    # (records, shift vs accuracy, heatmap, the baseline's histograms, and DiGraP's two omega figures)
    assert _image_outputs(nb) == 4 + (2 if "digrap" in methods else 0)
    shown = _text_outputs(nb)
    assert all(f"{m} (lora)" in shown for m in methods) and "OOD" in shown
