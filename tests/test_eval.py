"""`vqa-ood-bench eval` and `vqa_ood_bench.evaluate`: a model (and a PEFT adapter) evaluated
without training; a LoRA run's saved adapter evaluated again gives the run's predictions files
byte for byte."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from fixtures.mini_suite import SPLITS, register, records

from vqa_ood_bench.cli import main
from vqa_ood_bench.errors import ConfigError
from vqa_ood_bench.models.pretrain import PRETRAIN_STEPS_ENV
from vqa_ood_bench.models.tiny_artifact import artifact_key, load_shipped
from vqa_ood_bench.report.schema import read_results

SUITE = register()
EVAL_SPLITS = [n for n in SPLITS if n != "train"]
RECIPE = {"train": {"batch_size": 4, "learning_rate": 0.01, "max_steps": 4, "warmup_ratio": 0.0, "validation_size": 4, "save_steps": 0}}


@pytest.fixture(scope="module")
def shipped_tiny():
    """Runs on the shipped tiny model (varied answers), not the tests' few-step one."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(PRETRAIN_STEPS_ENV, raising=False)
        yield


def _train(folder: Path, method: str = "vanilla") -> Path:
    cfg = folder.parent / f"{folder.name}.yaml"
    cfg.write_text(yaml.safe_dump({"method": method, **RECIPE}))
    assert main(["run", "--config", str(cfg), "--suite", SUITE, "--out", str(folder), "--json"]) == 0
    return folder


@pytest.fixture(scope="module")
def run(shipped_tiny, tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("eval") / "run")


@pytest.fixture(scope="module")
def evaluated(run) -> Path:
    out = run.parent / "eval"
    # another batch size than the run's on purpose: the answers do not depend on it
    assert main(["eval", "--adapter", str(run), "--suite", SUITE, "--batch-size", "5", "--out", str(out), "--json"]) == 0
    return out


def _prediction_bytes(folder: Path) -> dict[str, bytes]:
    results = read_results(folder / "results.json")
    return {name: (folder / split.predictions_file).read_bytes() for name, split in results.splits.items()}


def test_eval_of_a_runs_adapter_writes_the_runs_predictions_byte_for_byte(run, evaluated) -> None:
    ran, ev = read_results(run / "results.json"), read_results(evaluated / "results.json")
    assert set(_prediction_bytes(run)) == set(EVAL_SPLITS)
    assert _prediction_bytes(evaluated) == _prediction_bytes(run)
    assert {k: s.vqa_accuracy for k, s in ev.splits.items()} == {k: s.vqa_accuracy for k, s in ran.splits.items()}
    # the results name the model and adapter evaluated, not a method
    assert ev.method == "eval" and ev.method_params == {}
    weights = run / "adapter" / "adapter_model.safetensors"
    assert ev.model.name_or_path == "tiny" and ev.model.content_hash == ran.model.content_hash == artifact_key()
    assert ev.model.adapter == str(run) and ev.model.adapter_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert ev.model.adapter_origin == {"run_id": "run", "method": "vanilla", "method_params": {"name": "vanilla", "adapter": "lora"}}
    assert ev.config["eval_batch_size"] == 5 and ev.config["prompt"] == ran.config["prompt"]


def test_the_saved_adapter_is_a_peft_folder_of_the_trained_weights(run) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file

    adapter = run / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny"  # no machine path
    saved = load_file(adapter / "adapter_model.safetensors")
    trained = torch.load(run / "trained_state.pt", weights_only=True)
    assert trained and {n.replace(".default.", "."): t for n, t in trained.items()}.keys() == saved.keys()
    assert all(torch.equal(saved[n.replace(".default.", ".")], t) for n, t in trained.items())
    assert any("lora_B" in n and t.abs().max() > 0 for n, t in saved.items())  # training moved the adapter
    # loaded with PEFT's own API, the adapter changes what the model computes
    base, processor, _ = load_shipped()
    batch = processor(text=["<image>answer en what color is it?"], images=[records("test")[0].image], return_tensors="pt")
    batch = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        before = base(**batch).logits
        after = PeftModel.from_pretrained(base, str(adapter)).eval()(**batch).logits
    assert (after - before).abs().max() > 1e-3


def test_python_evaluate_matches_the_cli_and_refuses_another_model_in_its_folder(run, evaluated, tmp_path) -> None:
    from peft import PeftModel

    from vqa_ood_bench.evaluate import evaluate

    base, processor, _ = load_shipped()
    model = PeftModel.from_pretrained(base, str(run / "adapter")).eval()
    results = evaluate(model, processor, SUITE, out_dir=tmp_path / "py", batch_size=64, cpu_threads=2)
    assert _prediction_bytes(tmp_path / "py") == _prediction_bytes(evaluated)
    assert results.method == "eval" and "in memory" in results.model.adapter and results.model.name_or_path == "tiny"
    from vqa_ood_bench.runner import load_run_model

    with pytest.raises(ConfigError, match="cannot be rebuilt"):  # not the base model without its adapter
        load_run_model(tmp_path / "py")
    with pytest.raises(ConfigError, match="another model"):
        evaluate(load_shipped()[0], processor, SUITE, out_dir=tmp_path / "py", batch_size=64, cpu_threads=2)


def test_a_merged_checkpoint_is_evaluated_by_its_folder(run, tmp_path, capsys) -> None:
    from peft import PeftModel

    base, processor, _ = load_shipped()
    merged = PeftModel.from_pretrained(base, str(run / "adapter")).merge_and_unload()
    folder = tmp_path / "merged"
    merged.save_pretrained(folder)
    processor.save_pretrained(folder)
    assert main(["eval", "--model", str(folder), "--suite", SUITE, "--out", str(tmp_path / "ev"), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["model"]["name_or_path"] == str(folder) and results["model"]["adapter"] is None
    # W + s·B·A summed once instead of at every step: float rounding may flip a near tie, no more
    ours = [json.loads(line) for b in _prediction_bytes(tmp_path / "ev").values() for line in b.splitlines()]
    theirs = [json.loads(line) for b in _prediction_bytes(run).values() for line in b.splitlines()]
    assert [r["question_id"] for r in ours] == [r["question_id"] for r in theirs]
    assert sum(a["prediction"] != b["prediction"] for a, b in zip(ours, theirs)) <= len(ours) // 20


def test_an_eval_folder_is_read_like_a_run_folder(evaluated, capsys) -> None:
    from vqa_ood_bench.predict.generate import predict_records
    from vqa_ood_bench.predict.jsonl import read_predictions
    from vqa_ood_bench.runner import load_run_model

    model, processor, results = load_run_model(evaluated, device="cpu", show_progress=False)
    again = predict_records(model, processor, records("far"), evaluated.parent / "again.jsonl", batch_size=7)
    assert again == {q: r["prediction"] for q, r in read_predictions(evaluated / results.splits["far"].predictions_file).items()}
    before = (evaluated / "results.json").read_bytes()
    assert main(["score", "--predictions", str(evaluated), "--json"]) == 0
    capsys.readouterr()
    assert (evaluated / "results.json").read_bytes() == before  # re-scored to the same numbers: untouched


@pytest.mark.slow
def test_wise_ft_saves_the_adapter_it_evaluated(shipped_tiny, tmp_path) -> None:
    """WiSE-FT scales the LoRA delta after training: the saved adapter is the scaled one."""
    from safetensors.torch import load_file

    run = _train(tmp_path / "wise", "wise-ft")
    saved = load_file(run / "adapter" / "adapter_model.safetensors")
    trained = {n.replace(".default.", "."): t for n, t in torch.load(run / "trained_state.pt", weights_only=True).items()}
    # the default alpha, 0.5, scales B exactly (a power of two); A stays as trained
    assert all(torch.equal(saved[n], t * 0.5 if ".lora_B." in n else t) for n, t in trained.items())
    assert main(["eval", "--adapter", str(run), "--suite", SUITE, "--out", str(tmp_path / "ev"), "--json"]) == 0
    assert _prediction_bytes(tmp_path / "ev") == _prediction_bytes(run)


# --- no model needed -------------------------------------------------------------------------

def test_methods_whose_weights_are_not_a_lora_adapter_save_none() -> None:
    from vqa_ood_bench.config import RunConfig
    from vqa_ood_bench.data.embedded.broad import all_words
    from vqa_ood_bench.evaluate import adapter_problem
    from vqa_ood_bench.methods.base import MethodContext, get_method
    from vqa_ood_bench.models.paligemma import TinySpec, build_tiny_model, build_tiny_processor

    spec = TinySpec(vision_layers=1, text_layers=1, vision_hidden=32, text_hidden=32, vision_intermediate=64, text_intermediate=64,
                    vision_heads=2, text_heads=2, text_head_dim=16)
    processor = build_tiny_processor(all_words(), spec)

    def prepared(method: str, adapter: str):
        cfg = RunConfig(method=method, adapter=adapter)
        return get_method(method).prepare(build_tiny_model(processor, spec), MethodContext(config=cfg, processor=processor))

    assert adapter_problem(prepared("vanilla", "lora")) is None
    assert "outside the LoRA adapter" in adapter_problem(prepared("lp-ft", "lora"))
    assert "not a PEFT adapter" in adapter_problem(prepared("linear-probe", "lora"))
    assert "not a PEFT adapter" in adapter_problem(prepared("vanilla", "full"))


@pytest.mark.parametrize("argv, fragment", [
    (["eval", "--suite", "embedded"], "--model is required"),
    (["eval", "--adapter", "/no/such/adapter"], "no such folder"),
    (["eval", "--model", "tiny", "--prompt", "answer"], "--prompt: the prompt must contain {question}"),
    (["eval", "--model", "tiny", "--dtype", "float64"], "--dtype"),
    (["eval", "--model", "tiny", "--device", "gpu"], "--device: device 'gpu' is not a torch device"),
    (["eval", "--model", "tiny", "--batch-size", "0"], "--batch-size"),
    (["eval", "--model", "./no/such/model"], "no such folder"),
    (["eval", "--model", "tiny", "--suite", "nosuch"], "unknown suite 'nosuch'"),
    (["run", "--prompt", "Q: {q} {question}"], "--prompt: the prompt has a field {q}"),
    (["run", "--max-new-tokens", "0"], "--max-new-tokens"),
])
def test_bad_options_give_one_line(capsys, argv, fragment) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and err.count("\n") == 1


def test_adapter_folders_that_are_not_adapters_are_named(tmp_path, capsys) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    assert main(["eval", "--adapter", str(plain)]) == 2
    assert "neither a PEFT adapter folder (adapter_config.json) nor a run folder" in capsys.readouterr().err
    full = tmp_path / "full-run"  # a run folder without adapter/ (full fine-tuning, or an earlier version)
    full.mkdir()
    (full / "config.yaml").write_text("adapter: full\n")
    assert main(["eval", "--adapter", str(full)]) == 2
    err = capsys.readouterr().err
    assert "has no PEFT adapter (adapter/)" in err and err.count("\n") == 1


def test_run_options_reach_the_config(monkeypatch, tmp_path) -> None:
    from vqa_ood_bench import runner

    seen = {}

    def fake_run(cfg, out, **kw):
        seen["cfg"] = cfg
        raise ConfigError("stop")

    monkeypatch.setattr(runner, "run_benchmark", fake_run)
    argv = ["run", "--batch-size", "7", "--dtype", "bfloat16", "--device", "cpu", "--max-new-tokens", "6", "--num-beams", "3",
            "--prompt", "Question: {question} Short answer:", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    cfg = seen["cfg"]
    assert (cfg.eval_batch_size, cfg.dtype, cfg.device, cfg.max_new_tokens, cfg.num_beams, cfg.prompt) == (
        7, "bfloat16", "cpu", 6, 3, "Question: {question} Short answer:")
    assert cfg.train.batch_size == 32  # the training batch is the config's, not --batch-size
