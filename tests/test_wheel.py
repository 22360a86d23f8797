"""A built wheel, installed outside the repository, carries what the README uses: the run configs
(``--config embedded``, ``--config paper/...``), the leaderboard entries, the page template, the
tiny model and the embedded suite's recorded data; and the README's DiGraP snippet runs from it.

The wheel is built from a copy of the package sources (so the build leaves no ``build/`` or
``*.egg-info`` in the checkout, and no stale ``build/lib`` file gets into it), installed with
``pip install --target`` into a temporary folder, and every command runs from a folder outside
the repository with only that folder on PYTHONPATH in front of the environment's dependencies.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PACKAGED = [
    "vqa_ood_bench/configs/embedded.yaml",
    "vqa_ood_bench/configs/paper/vqa-digrap.yaml",
    "vqa_ood_bench/configs/paper/domainnet-zeroshot.yaml",
    "vqa_ood_bench/configs/paper/README.md",
    "vqa_ood_bench/leaderboards/README.md",
    "vqa_ood_bench/leaderboards/paper/paper-tab3-digrap.json",
    "vqa_ood_bench/leaderboards/submitted/embedded-vanilla-lora-s0.json",
    "vqa_ood_bench/report/templates/leaderboard.html",
    "vqa_ood_bench/models/tiny_paligemma/artifact.json",
    "vqa_ood_bench/models/tiny_paligemma/model.safetensors",
    "vqa_ood_bench/data/embedded/adversary-v1.0.json",
    "vqa_ood_bench/data/embedded/suite-v1.0.sha256.json",
    "vqa_ood_bench/configs/paper-cls/domainnet-cls-digrap.yaml",
    "vqa_ood_bench/configs/paper-llava/vqa-digrap.yaml",
    "vqa_ood_bench/classify/domains-v1.0.sha256.json",
]


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{' '.join(cmd)} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory) -> tuple[Path, Path]:
    """(the built wheel, the folder it is installed into)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "vqa_ood_bench", src / "vqa_ood_bench", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"), str(src)],
         env=env, timeout=600)
    (wheel,) = (tmp / "dist").glob("vqa_ood_bench-*.whl")
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp / "site"), str(wheel)], env=env, timeout=600)
    return wheel, tmp / "site"


def _env(site: Path) -> dict[str, str]:
    # What a user's shell has: no leaderboards folder set, and the shipped tiny model rather than the
    # few-step one conftest.py pre-trains for the other tests (the test session's cache is kept).
    drop = ("VQA_OOD_BENCH_LEADERBOARDS", "VQA_OOD_BENCH_PRETRAIN_STEPS", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _python(site: Path, cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return _run([sys.executable, *args], cwd=cwd, env=_env(site), timeout=timeout)


def test_the_wheel_holds_the_packaged_files(wheel_site):
    wheel, site = wheel_site
    names = set(zipfile.ZipFile(wheel).namelist())
    for rel in PACKAGED:
        assert rel in names, f"{rel} is not in {wheel.name}"
        assert (site / rel).is_file(), rel
    # every config and entry of the checkout, nothing left behind
    for folder, pattern in (("configs", "**/*.yaml"), ("leaderboards", "**/*.json")):
        in_repo = {p.relative_to(ROOT).as_posix() for p in (ROOT / "vqa_ood_bench" / folder).glob(pattern)}
        assert in_repo and in_repo <= names, sorted(in_repo - names)
    assert not any(n.startswith(("configs/", "leaderboards/", "tests/")) for n in names)


def test_the_installed_package_is_the_one_imported(wheel_site, tmp_path):
    _, site = wheel_site
    out = _python(site, tmp_path, "-c", "import vqa_ood_bench; print(vqa_ood_bench.__file__)").stdout.strip()
    assert Path(out).resolve() == (site / "vqa_ood_bench" / "__init__.py").resolve()


def test_leaderboard_show_reads_the_packaged_entries(wheel_site, tmp_path):
    _, site = wheel_site
    shown = json.loads(_python(site, tmp_path, "-m", "vqa_ood_bench.cli", "leaderboard", "show", "--json").stdout)
    ids = {e["entry_id"] for e in shown}
    expected = {p.stem for p in (site / "vqa_ood_bench" / "leaderboards").rglob("*.json")}
    assert ids == expected and "paper-tab3-digrap" in ids and "embedded-vanilla-lora-s0" in ids
    assert not (tmp_path / "leaderboards").exists()


def test_a_paper_config_by_name_runs_and_add_starts_a_local_leaderboard(wheel_site, tmp_path):
    """The paper recipe by name, on the embedded suite and the tiny model (zero-shot, 4 records per
    split); `leaderboard add` then writes ./leaderboards, not into the installed package."""
    _, site = wheel_site
    out = tmp_path / "run"
    results = json.loads(_python(site, tmp_path, "-m", "vqa_ood_bench.cli", "run", "--config", "paper/vqa-zeroshot",
                                 "--suite", "embedded", "--model", "tiny", "--limit", "4", "--json", "--out", str(out)).stdout)
    assert (results["method"], results["suite"], results["model"]["name_or_path"]) == ("zeroshot", "embedded", "tiny")
    assert results["model"]["content_hash"].startswith("tiny-v")  # the shipped model, checked against artifact.json
    # the rest is the paper recipe's
    assert (results["config"]["num_beams"], results["config"]["prompt"], results["dtype"]) == (5, "Question: {question} Answer:", "bfloat16")
    assert results["splits"] and all(0 < s["n"] <= 4 for s in results["splits"].values())

    packaged = sorted(p.name for p in (site / "vqa_ood_bench" / "leaderboards").rglob("*"))
    entry = json.loads(_python(site, tmp_path, "-m", "vqa_ood_bench.cli", "leaderboard", "add", str(out), "--json").stdout)
    assert (tmp_path / "leaderboards" / "submitted" / f"{entry['entry_id']}.json").is_file()
    assert sorted(p.name for p in (site / "vqa_ood_bench" / "leaderboards").rglob("*")) == packaged


def _readme_digrap_snippet() -> str:
    blocks = re.findall(r"```python\n(.+?)\n```", (ROOT / "README.md").read_text(encoding="utf-8"), flags=re.S)
    (snippet,) = [b for b in blocks if "DiGraP(" in b]
    return snippet


def test_the_readme_digrap_snippet_runs_from_the_wheel(wheel_site, tmp_path):
    """The README's optimizer example, with a small model and loader in place of its `...`."""
    _, site = wheel_site
    snippet = _readme_digrap_snippet()
    model_line = re.compile(r"^model = \.\.\..*$", flags=re.M)
    assert len(model_line.findall(snippet)) == 1, "the README's snippet no longer has a `model = ...` line to fill in"
    prelude = (
        "import types, torch\n"
        "import vqa_ood_bench.optim\n"
        "print(vqa_ood_bench.optim.__file__)\n"
        "class Tiny(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.lin = torch.nn.Linear(8, 3)\n"
        "    def forward(self, x, y):\n"
        "        return types.SimpleNamespace(loss=torch.nn.functional.cross_entropy(self.lin(x), y))\n"
        "torch.manual_seed(0)\n"
        "loader = [{'x': torch.randn(16, 8), 'y': torch.randint(0, 3, (16,))} for _ in range(5)]\n"
    )
    script = tmp_path / "snippet.py"
    script.write_text(prelude + model_line.sub("model = Tiny()", snippet) + "\n")
    out = _python(site, tmp_path, str(script), timeout=300).stdout.splitlines()
    assert Path(out[0]).resolve().is_relative_to(site.resolve()), out[0]
    assert len(out) > 1  # the snippet's print(opt.omegas())
