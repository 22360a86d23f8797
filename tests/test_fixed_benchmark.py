"""The fixed embedded benchmark: the shipped tiny model, the suite's recorded content, CPU numerics."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from vqa_ood_bench.cli import main
from vqa_ood_bench.data.embedded import build as suite_build
from vqa_ood_bench.errors import DataError
from vqa_ood_bench.models import tiny_artifact
from vqa_ood_bench.models.paligemma import TinySpec, count_parameters
from vqa_ood_bench.models.pretrain import PRETRAIN_STEPS_ENV, load_tiny
from vqa_ood_bench.numerics import fixed_cpu_numerics


def test_shipped_model_verifies_and_loads_by_default(monkeypatch) -> None:
    monkeypatch.delenv(PRETRAIN_STEPS_ENV, raising=False)
    manifest = tiny_artifact.verify()
    assert manifest["version"] == tiny_artifact.TINY_MODEL_VERSION
    model, processor, info = load_tiny(show_progress=False)
    assert info["source"] == "shipped" and info["key"] == tiny_artifact.artifact_key()
    assert info["key"].startswith(f"tiny-v{tiny_artifact.TINY_MODEL_VERSION}-")
    # the weights are the hashed file's, and the architecture is the documented one
    from safetensors.torch import load_file

    # (transformers renames checkpoint keys on load: "language_model.model.x" -> "model.language_model.x")
    def tail(name: str) -> str:
        return name.replace("language_model.model.", "language_model.").removeprefix("model.")

    on_disk = {tail(n): t for n, t in load_file(tiny_artifact.ARTIFACT_DIR / tiny_artifact.WEIGHTS).items()}
    state = {tail(n): t for n, t in model.state_dict().items()}
    assert len(on_disk) >= len(state) - 1  # lm_head is tied to the input embeddings
    for name, tensor in on_disk.items():
        assert torch.equal(state[name], tensor), name
    spec = TinySpec()
    assert model.config.vision_config.hidden_size == spec.vision_hidden and model.config.text_config.num_hidden_layers == spec.text_layers
    assert 1_000_000 < count_parameters(model)[0] < 2_000_000
    assert processor.image_processor.size["height"] == spec.image_size


def test_the_shipped_model_knows_the_task_zero_shot() -> None:
    """The artifact is the pre-trained model, not an initialisation: zero-shot it answers the ID
    questions far better than the same architecture freshly initialised."""
    from vqa_ood_bench.data.suite import get_suite
    from vqa_ood_bench.models.paligemma import build_tiny_model
    from vqa_ood_bench.predict.generate import generate_answers
    from vqa_ood_bench.score.vqa_accuracy import vqa_scores

    shipped, processor, _ = tiny_artifact.load_shipped()
    fresh = build_tiny_model(processor, seed=0)
    suite = get_suite("embedded")
    records = suite.load(suite.evaluation[0], None, limit=128)
    images = [r.load_image() for r in records]
    prompts = [f"answer en {r.question}" for r in records]

    def accuracy(model) -> float:
        preds = generate_answers(model.eval(), processor, images, prompts, max_new_tokens=4)
        return float(vqa_scores(preds, [r.answers for r in records]).mean())

    assert accuracy(shipped) > accuracy(fresh) + 0.1


def test_a_damaged_artifact_is_named_not_loaded(tmp_path: Path) -> None:
    copy = tmp_path / "artifact"
    shutil.copytree(tiny_artifact.ARTIFACT_DIR, copy)
    tiny_artifact.verify(copy)  # an intact copy passes
    weights = copy / tiny_artifact.WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(DataError, match="model.safetensors.*SHA-256"):
        tiny_artifact.load_shipped(copy)
    weights.unlink()
    with pytest.raises(DataError, match="missing"):
        tiny_artifact.verify(copy)


def test_weight_distance_against_a_hand_computation() -> None:
    a = torch.nn.Linear(3, 2)
    b = torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    zero = tiny_artifact.weight_distance(a, b)
    assert zero["max_abs"] == 0.0 and zero["relative_l2"] == 0.0
    with torch.no_grad():
        b.bias[0] += 0.5
    d = tiny_artifact.weight_distance(a, b)
    total = torch.cat([b.weight.double().flatten(), b.bias.double()]).norm().item()
    assert d["max_abs"] == pytest.approx(0.5, abs=1e-6)
    assert d["relative_l2"] == pytest.approx(0.5 / total, rel=1e-5)
    assert d["worst_tensor"] == "bias"


def test_export_writes_a_verifiable_artifact(tmp_path: Path) -> None:
    model, processor, info = tiny_artifact.load_shipped()
    folder = tmp_path / "pretrained"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    manifest = tiny_artifact.export(folder, tmp_path / "artifact", pretrain_info=info["pretraining"])
    assert manifest == tiny_artifact.verify(tmp_path / "artifact")
    assert tiny_artifact.WEIGHTS in manifest["files"]
    reloaded, _, _ = tiny_artifact.load_shipped(tmp_path / "artifact")
    assert tiny_artifact.weight_distance(reloaded, model)["max_abs"] == 0.0


def test_rebuild_reports_its_distance_from_the_shipped_model(tmp_path: Path, capsys) -> None:
    """A 2-step rebuild lands far from the shipped weights; the report says so, and --export
    writes an artifact that verifies and carries the rebuild's weights."""
    out = tmp_path / "new-artifact"
    assert main(["model", "rebuild-tiny", "--steps", "2", "--limit", "16", "--export", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["shipped"] == tiny_artifact.artifact_key()
    assert report["recipe"]["steps"] == 2
    assert report["weights"]["relative_l2"] > 0.05  # 2 steps against 1,300
    assert report["answers"]["n"] == 16 and 0 <= report["answers"]["same_answer_pct"] <= 100
    assert set(report["exported"]) == set(tiny_artifact.verify(out)["files"])
    rebuilt, _, _ = tiny_artifact.load_shipped(out)
    shipped, _, _ = tiny_artifact.load_shipped()
    assert tiny_artifact.weight_distance(rebuilt, shipped)["relative_l2"] == pytest.approx(report["weights"]["relative_l2"], rel=1e-9)
    # a second export into the same (now non-empty) folder is refused on one line
    assert main(["model", "rebuild-tiny", "--steps", "2", "--export", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_model_info_verifies_the_files(capsys) -> None:
    assert main(["model", "info", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["key"] == tiny_artifact.artifact_key()
    assert summary["files_verified"] == len(tiny_artifact.read_manifest()["files"]) >= 5


# -- the suite's recorded content ---------------------------------------------------------------

def test_the_built_suite_is_the_recorded_v1() -> None:
    """The suite this install builds (the tests' cache) has exactly the recorded content."""
    target = suite_build.build()
    manifest = json.loads((target / "manifest.json").read_text())
    assert suite_build.content_differences(manifest) == []
    expected = json.loads(suite_build.EXPECTED_HASHES.read_text())
    assert {k: v["sha256"] for k, v in manifest["splits"].items()} == expected["splits"]


def _drifted_copy(tmp_path: Path, split: str) -> Path:
    target = suite_build.build()
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["splits"][split]["sha256"] = "0" * 64
    folder = tmp_path / "embedded" / f"v{suite_build.SUITE_VERSION}"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_a_drifted_build_is_refused_naming_what_differs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(suite_build.DRIFT_ENV, raising=False)
    folder = _drifted_copy(tmp_path, "adversarial")
    with pytest.raises(DataError) as err:
        suite_build.check_content(folder)
    msg = str(err.value)
    assert "adversarial" in msg and "knowledge" not in msg and "not v1.0" in msg and suite_build.DRIFT_ENV in msg


def test_a_drifted_build_runs_only_as_local_when_allowed(tmp_path: Path, monkeypatch) -> None:
    from vqa_ood_bench.data.suite import get_suite

    folder = _drifted_copy(tmp_path, "degraded")
    monkeypatch.setenv(suite_build.DRIFT_ENV, "1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        suite_build.check_content(folder)
    assert any("degraded" in str(w.message) for w in caught)
    assert get_suite("embedded").version == "1.0+local"
    monkeypatch.delenv(suite_build.DRIFT_ENV)
    assert get_suite("embedded").version == "1.0"


def _adversarial_candidates() -> tuple[suite_build._Sources, list]:
    src = suite_build._Sources()
    k = list(suite_build.BUILDERS).index("adversarial")
    return src, suite_build._adversarial_candidates(src, np.random.default_rng([suite_build.SUITE_SEED, k + 1]))


def test_the_shipped_adversary_decisions_are_the_reference_models_mistakes() -> None:
    """Refit the reference model here: the recorded decisions are its mistakes, up to the few
    borderline candidates that another CPU's BLAS kernels decide differently."""
    src, cands = _adversarial_candidates()
    record = json.loads(suite_build.ADVERSARY_FILE.read_text())
    assert record["candidates"] == len(cands)
    shipped = {int(k): v for k, v in record["wrong"].items()}
    assert suite_build.adversary_decisions(src, cands) == shipped
    refit = suite_build.reference_predictions(src, cands)
    for k, p in shipped.items():  # a recorded mistake is a real mistake, whoever fit it
        assert p != cands[k][2]
    here = {k for k, ((_, _, a, _), p) in enumerate(zip(cands, refit)) if p != a}
    jaccard = len(here & set(shipped)) / len(here | set(shipped))
    agree = sum(p == shipped.get(k, cands[k][2]) for k, p in enumerate(refit)) / len(cands)
    assert jaccard > 0.9 and agree > 0.9, (jaccard, agree)


def test_changed_adversarial_candidates_are_refused(tmp_path: Path, monkeypatch) -> None:
    src, cands = _adversarial_candidates()
    record = json.loads(suite_build.ADVERSARY_FILE.read_text())
    record["candidates_sha256"] = "0" * 64
    fake = tmp_path / "adversary.json"
    fake.write_text(json.dumps(record))
    monkeypatch.setattr(suite_build, "ADVERSARY_FILE", fake)
    with pytest.raises(DataError, match="candidate questions differ"):
        suite_build.adversary_decisions(src, cands)


# -- CPU numerics ---------------------------------------------------------------------------------

def _train_a_few_steps() -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 64))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randn(512, 256)
    for _ in range(5):
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


def test_fixed_numerics_are_repeatable_and_give_the_settings_back() -> None:
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    with fixed_cpu_numerics(1):
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
        first = _train_a_few_steps()
        second = _train_a_few_steps()
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == before
    with fixed_cpu_numerics(0):  # 0: torch's own thread count is left alone
        assert torch.get_num_threads() == before[0]
