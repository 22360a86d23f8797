"""WiSE-FT equals weight interpolation (LoRA: of the merged weights); DiGraP's ω log and its plots."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from vqa_ood_bench.cli import main
from vqa_ood_bench.config import RunConfig, TrainConfig
from vqa_ood_bench.errors import DataError
from vqa_ood_bench.methods.base import MethodContext, get_method
from vqa_ood_bench.methods.omega_log import OMEGA_FILE, OmegaLog, read_omega_log
from vqa_ood_bench.runner import run_benchmark


@pytest.fixture(scope="module")
def tiny():
    from vqa_ood_bench.models.pretrain import load_tiny

    model, _, _ = load_tiny(show_progress=False)
    return model


def _pretend_training(model, seed: int) -> None:
    """Random values in every trainable tensor (B no longer 0), as after fine-tuning."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)


@pytest.mark.parametrize("alpha", [0.5, 0.3])
def test_wise_ft_lora_equals_interpolating_merged_weights(tiny, alpha) -> None:
    method = get_method("wise-ft", alpha=alpha)
    ctx = MethodContext(config=RunConfig(method="wise-ft", adapter="lora"))
    w0 = {k: v.double() for k, v in tiny.state_dict().items()}
    model = method.prepare(copy.deepcopy(tiny), ctx)
    ctx.pretrained_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    _pretend_training(model, seed=1)
    w_ft = {k: v.double() for k, v in copy.deepcopy(model).merge_and_unload().state_dict().items()}

    wise = method.finalize(model, ctx)
    w_wise = copy.deepcopy(wise).merge_and_unload().state_dict()

    assert set(w_wise) == set(w0)
    moved = 0
    for k in w0:
        expected = (1 - alpha) * w0[k] + alpha * w_ft[k]
        torch.testing.assert_close(w_wise[k].double(), expected, rtol=0, atol=2e-6)
        moved += not torch.equal(w_ft[k], w0[k])
    assert moved == 12  # q, k, v, o of the 3 decoder layers carry LoRA deltas
    # the wrong recipe (averaging A and B with their initial values) is measurably different
    naive = copy.deepcopy(tiny)
    naive_model = method.prepare(naive, ctx)
    with torch.no_grad():
        for (n, p), (_, q) in zip(naive_model.named_parameters(), model.named_parameters()):
            if p.requires_grad:
                p.copy_(torch.lerp(ctx.pretrained_state[n], q / (alpha if ".lora_B." in n else 1.0), alpha))
    w_naive = naive_model.merge_and_unload().state_dict()
    key = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(w_naive[key].double(), (1 - alpha) * w0[key] + alpha * w_ft[key], atol=1e-4)


def test_wise_ft_full_interpolates_every_tensor(tiny) -> None:
    method = get_method("wise-ft")  # alpha 0.5
    ctx = MethodContext(config=RunConfig(method="wise-ft", adapter="full"))
    model = method.prepare(copy.deepcopy(tiny), ctx)
    ctx.pretrained_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    _pretend_training(model, seed=2)
    ft = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    method.finalize(model, ctx)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.double(), 0.5 * ctx.pretrained_state[n].double() + 0.5 * ft[n], rtol=0, atol=1e-7)


# --- DiGraP's omega ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digrap_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("digrap") / "run"
    cfg = RunConfig(method="digrap", adapter="full", limit=8,
                    train=TrainConfig(max_steps=4, batch_size=4, validation_size=4, learning_rate=1e-3))
    run_benchmark(cfg, folder, show_progress=False)
    return folder


def test_digrap_writes_omega_per_tensor_and_step(digrap_run) -> None:
    entries = read_omega_log(digrap_run)
    trained = torch.load(digrap_run / "trained_state.pt", weights_only=True)
    assert [e["step"] for e in entries] == [1, 2, 3, 4]
    for e in entries:
        assert list(e["omega"]) == list(trained)  # every trained tensor, in the model's order
        assert all(0.0 <= v <= 1.0 for v in e["omega"].values())
        assert e["mean"] == pytest.approx(sum(e["omega"].values()) / len(e["omega"]))
        assert e["epoch"] == pytest.approx(e["step"] * 4 / 8)  # 8 training records, batch 4
    assert all(v == 0.0 for v in entries[0]["omega"].values())  # ω = 0 at the first step (Algorithm 1)
    assert any(v > 0.0 for e in entries[1:] for v in e["omega"].values())  # and it is learned afterwards


def test_plot_omega_writes_figures(digrap_run, tmp_path, capsys) -> None:
    from matplotlib.image import imread

    out = tmp_path / "plots"
    assert main(["plot", "omega", str(digrap_run), "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    names = sorted(Path(p).name for p in printed["files"])
    assert names == ["omega_layers.png", "omega_layers.svg", "omega_mean.png", "omega_mean.svg"]
    for p in printed["files"]:
        assert Path(p).stat().st_size > 1000
    img = imread(out / "omega_mean.png")
    assert img.ndim == 3 and img.shape[0] > 200
    last = read_omega_log(digrap_run)[-1]
    assert printed["runs"]["run"]["final_mean_omega"] == pytest.approx(last["mean"])


def test_plot_omega_on_a_run_without_omega_is_one_line(tmp_path, capsys) -> None:
    assert main(["plot", "omega", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no omega log" in err and "Traceback" not in err and err.count("\n") == 1


def test_omega_log_survives_a_torn_last_line_and_resumes(tmp_path) -> None:
    log = OmegaLog(tmp_path / OMEGA_FILE)
    log.start()
    log.append(1, 0.5, {"a": 0.0, "b": 0.0})
    log.append(2, 1.0, {"a": 0.2, "b": 0.4})
    log.append(2, 1.0, {"a": 0.3, "b": 0.5})  # step 2 again after a resume: the later line wins
    with open(tmp_path / OMEGA_FILE, "a") as fh:
        fh.write('{"step": 3, "epoch": 1.5, "om')  # killed mid-write
    entries = read_omega_log(tmp_path)
    assert [e["step"] for e in entries] == [1, 2]
    assert entries[1]["omega"] == {"a": 0.3, "b": 0.5} and entries[1]["mean"] == pytest.approx(0.4)
    # a corrupt line in the middle is an error naming the file and line
    lines = (tmp_path / OMEGA_FILE).read_text().splitlines()
    (tmp_path / OMEGA_FILE).write_text("\n".join([lines[0], "garbage", lines[1]]) + "\n")
    with pytest.raises(DataError, match="line 2"):
        read_omega_log(tmp_path)
    log.start()  # a new training run starts afresh
    with pytest.raises(DataError, match="empty"):
        read_omega_log(tmp_path)
