"""Classification through every method, on a tiny synthetic backbone (seconds, CPU).

The backbone is a small conv net with batch norm over 8x8 images whose class is the brightest
quadrant, so training visibly changes weights and accuracy. Each test checks what a method
trains against an independent expectation (which tensors moved, a hand-computed WiSE-FT
interpolation, MARS-SP's radius, sklearn's accuracy).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vqa_ood_bench.classify import methods as M
from vqa_ood_bench.classify import train as T
from vqa_ood_bench.classify.backbones import Backbone
from vqa_ood_bench.config import TrainConfig
from vqa_ood_bench.errors import ConfigError


class ToyBackbone(Backbone):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.feature_dim = 4
        self.name = "toy"

    def preprocess(self, images, *, train=False, generator=None):
        return torch.stack([torch.as_tensor(im, dtype=torch.float32)[None] for im in images])

    def forward(self, pixels):
        return torch.relu(self.bn(self.conv(pixels))).mean(dim=(2, 3))


class ZeroShotToy(ToyBackbone):
    def zero_shot_weights(self, class_names, template=M.RUN_PARAMS["template"]):
        return torch.arange(len(class_names) * 4, dtype=torch.float32).reshape(len(class_names), 4) / 10


def toy_data(n: int, seed: int) -> list[tuple[np.ndarray, int]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        label = int(rng.integers(4))
        img = rng.uniform(0, 0.3, size=(8, 8))
        r, c = divmod(label, 2)
        img[4 * r : 4 * r + 4, 4 * c : 4 * c + 4] += 1.0
        out.append((img, label))
    return out


def model_for(plan: M.Plan, backbone: Backbone | None = None, seed: int = 0) -> tuple[M.Classifier, str]:
    torch.manual_seed(seed)
    model = M.Classifier(backbone or ToyBackbone(), 4)
    head_init = M.init_head(model, plan, ["a", "b", "c", "d"])
    M.prepare(model, plan)
    return model, head_init


CFG = TrainConfig(learning_rate=0.05, max_steps=12, batch_size=8, warmup_ratio=0.0, scheduler="constant", save_steps=0, validation_size=0)


def train(name: str, params: dict | None = None, *, cfg: TrainConfig = CFG, backbone=None, ckpt=None, hooks=()):
    plan = M.make_plan(name, params or {})
    model, head_init = model_for(plan, backbone)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    if plan.trains:
        T.fit(model, plan, toy_data(64, 1), toy_data(16, 2), cfg, seed=0, checkpoint_dir=ckpt, step_hooks=hooks)
    return plan, model, before, head_init


def moved(model, before, prefix: str) -> bool:
    return any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n.startswith(prefix))


@pytest.mark.parametrize("name", ["vanilla", "wise-ft", "l2-sp", "mars-sp", "tpgm", "ftp", "digrap", "lp-ft", "lp-ft-c"])
def test_full_methods_train_backbone_and_head(name):
    params = {"compile": False} if name in ("ftp", "digrap") else {}
    if name == "digrap":
        params["log_every"] = 0
    plan, model, before, _ = train(name, params)
    assert moved(model, before, "backbone.") and moved(model, before, "head.")


def test_linear_probe_moves_the_head_only_and_keeps_batch_norm_statistics():
    plan, model, before, _ = train("linear-probe")
    assert moved(model, before, "head.") and not moved(model, before, "backbone.")
    bn = model.backbone.bn
    assert torch.equal(bn.running_mean, torch.zeros(4)) and int(bn.num_batches_tracked) == 0  # eval mode throughout


def test_lp_ft_probing_phase_leaves_the_backbone_untouched():
    plan, model, before, _ = train("lp-ft", {"lp_fraction": 1.0})
    assert moved(model, before, "head.") and not moved(model, before, "backbone.")
    assert M.make_plan("lp-ft", {"lp_fraction": 0.5}).probe_steps(12) == 6


def test_wise_ft_interpolates_by_hand():
    plan = M.make_plan("wise-ft", {"alpha": 0.25})
    model, head_init = model_for(plan, ZeroShotToy())
    assert head_init == "zeroshot"
    pre = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # "fine-tuned" = pre-trained + 1 everywhere
    M.finalize(model, plan, pre, head_init)
    for n, p in model.named_parameters():
        assert torch.allclose(p, pre[n] + 0.25), n  # 0.75*pre + 0.25*(pre + 1)


def test_wise_ft_keeps_a_random_head_as_trained():
    plan = M.make_plan("wise-ft", {"alpha": 0.5})
    model, head_init = model_for(plan)
    assert head_init == "random"
    pre = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(2.0)
    M.finalize(model, plan, pre, head_init)
    assert torch.allclose(model.head.weight, pre["head.weight"] + 2.0)
    assert torch.allclose(model.backbone.conv.weight, pre["backbone.conv.weight"] + 1.0)


def test_mars_sp_keeps_every_row_within_the_radius():
    radius = 0.05
    plan, model, before, _ = train("mars-sp", {"radius": radius})
    for n, p in model.named_parameters():
        if n.startswith("backbone."):
            rows = (p - before[n]).reshape(p.shape[0], -1) if p.dim() > 1 else (p - before[n]).reshape(1, -1)
            assert float(rows.detach().abs().sum(dim=1).max()) <= radius + 1e-5, n


def test_sgd_base_and_anchors():
    plan = M.make_plan("l2-sp", {"optimizer": "sgd", "momentum": 0.9, "lam": 0.1})
    model, _ = model_for(plan)
    opt = M.build_optimizer(model, plan, 0.01, 1e-4)
    assert opt.base == "sgd"
    head = {id(p) for p in model.head.parameters()}
    anchors = {g["anchor"] for g in opt.param_groups if any(id(p) in head for p in g["params"])}
    assert anchors == {None}  # the new head is not pulled toward its initialisation
    assert all(g["momentum"] == 0.9 for g in opt.param_groups)
    vanilla = M.build_optimizer(*[model_for(p := M.make_plan("vanilla", {"optimizer": "sgd"}))[0], p], 0.01, 0.0)
    assert isinstance(vanilla, torch.optim.SGD)


def test_zeroshot_needs_a_zero_shot_head():
    plan = M.make_plan("zeroshot", {})
    with pytest.raises(ConfigError, match="no zero-shot head"):
        model_for(plan)
    model, head_init = model_for(plan, ZeroShotToy())
    assert head_init == "zeroshot" and not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name,params,match", [
    ("nope", {}, "unknown method"), ("wise-ft", {"alpha": 2}, "alpha"), ("lp-ft-c", {"reg": -1}, "reg"),
    ("vanilla", {"optimizer": "rmsprop"}, "optimizer"), ("lp-ft", {"head": "tied"}, "VQA"),
    ("vanilla", {"template": "no slot"}, "class_name"),
])
def test_bad_method_params_are_one_line_config_errors(name, params, match):
    with pytest.raises(ConfigError, match=match):
        M.make_plan(name, params)


def test_top1_matches_sklearn():
    from sklearn.metrics import accuracy_score

    plan, model, _, _ = train("vanilla")
    items = toy_data(40, 3)
    preds = T.evaluate(model, items, batch_size=7)
    with torch.no_grad():
        direct = model(model.backbone.preprocess([x for x, _ in items])).argmax(-1).numpy()
    assert (preds == direct).all()
    assert T.top1(model, items, 7) == pytest.approx(100 * accuracy_score([y for _, y in items], preds))


class QuadrantBackbone(ToyBackbone):
    """The toy backbone pooled per image quadrant: the toy label (which quadrant is bright) is
    then linearly readable, where a global mean pool leaves only border effects to learn from."""

    def __init__(self):
        super().__init__()
        self.feature_dim = 16

    def forward(self, pixels):
        return torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.bn(self.conv(pixels))), 2).flatten(1)


def test_training_learns_the_toy_task():
    cfg = CFG.model_copy(update={"max_steps": 60})
    plan, model, _, _ = train("vanilla", cfg=cfg, backbone=QuadrantBackbone())
    assert T.top1(model, toy_data(64, 9), 64) > 60  # chance is 25


def test_resume_after_a_kill_gives_the_same_weights(tmp_path):
    cfg = CFG.model_copy(update={"save_steps": 4})
    _, whole, _, _ = train("digrap", {"compile": False, "log_every": 0}, cfg=cfg, ckpt=tmp_path / "a")

    class Killed(Exception):
        pass

    def kill(model, step):
        if step == 6:
            raise Killed

    with pytest.raises(Killed):
        train("digrap", {"compile": False, "log_every": 0}, cfg=cfg, ckpt=tmp_path / "b", hooks=[kill])
    _, resumed, _, _ = train("digrap", {"compile": False, "log_every": 0}, cfg=cfg, ckpt=tmp_path / "b")
    for (n, p), (_, q) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(p, q), n


def test_a_damaged_checkpoint_is_skipped_with_a_warning(tmp_path):
    cfg = CFG.model_copy(update={"save_steps": 4})
    train("vanilla", cfg=cfg, ckpt=tmp_path)
    (tmp_path / T.CHECKPOINT).write_bytes(b"truncated")
    warnings = []
    plan = M.make_plan("vanilla", {})
    model, _ = model_for(plan)
    T.fit(model, plan, toy_data(64, 1), [], cfg, seed=0, checkpoint_dir=tmp_path, log=warnings.append)
    assert any("cannot be used" in w for w in warnings)


def test_stream_is_a_permutation_per_epoch():
    idx = T.stream_indices(10, 0, 0, 30)
    for e in range(3):
        assert sorted(idx[10 * e : 10 * e + 10]) == list(range(10))
    assert T.stream_indices(10, 0, 13, 5) == idx[13:18]
