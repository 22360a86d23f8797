"""Backbones of the classification track: CLIP's zero-shot head, ResNet-50 checkpoints read safely.

The CLIP model is an open_clip ``CLIP`` with tiny widths built offline (random weights); the
zero-shot head is checked against CLIP's own logits computed independently in float64.
"""

from __future__ import annotations

import pickle

import pytest
import torch

from vqa_ood_bench.classify import methods as M
from vqa_ood_bench.classify.backbones import OpenClipImage, load_backbone, load_resnet50, read_state_dict
from vqa_ood_bench.errors import ConfigError, DataError

open_clip = pytest.importorskip("open_clip")


@pytest.fixture(scope="module")
def tiny_clip():
    from open_clip.model import CLIP

    torch.manual_seed(0)
    model = CLIP(embed_dim=16, vision_cfg=dict(layers=1, width=32, patch_size=8, image_size=32, head_width=16),
                 text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1))
    model.eval()
    return model, open_clip.SimpleTokenizer(context_length=16)


CLASSES = ["red circle", "blue square", "green triangle"]


def test_zero_shot_head_reproduces_clip_logits(tiny_clip):
    model, tok = tiny_clip
    backbone = OpenClipImage(model, tok, image_size=32)
    plan = M.make_plan("zeroshot", {"template": "a drawing of a {class_name}."})
    clf = M.Classifier(backbone, len(CLASSES))
    assert M.init_head(clf, plan, CLASSES) == "zeroshot"
    images = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        got = clf(images).double()
        # independent: CLIP's forward, normalised features, logit scale, in float64
        img = model.encode_image(images).double()
        txt = model.encode_text(tok([f"a drawing of a {c}." for c in CLASSES])).double()
        want = model.logit_scale.exp().double() * (img / img.norm(dim=-1, keepdim=True)) @ (txt / txt.norm(dim=-1, keepdim=True)).T
    assert torch.allclose(got, want, atol=1e-4)
    assert torch.equal(clf.head.bias, torch.zeros(3))


def test_clip_text_tower_is_not_part_of_the_trained_model(tiny_clip):
    model, tok = tiny_clip
    clf = M.Classifier(OpenClipImage(model, tok, image_size=32), 3)
    names = [n for n, _ in clf.named_parameters()]
    assert names and all(n.startswith(("backbone.visual.", "head.")) for n in names)


def test_clip_preprocess_shapes_and_determinism(tiny_clip):
    from PIL import Image

    backbone = OpenClipImage(*tiny_clip, image_size=32)
    img = Image.new("RGB", (50, 40), (200, 10, 10))
    a = backbone.preprocess([img, img], train=True, generator=torch.Generator().manual_seed(1))
    b = backbone.preprocess([img, img], train=True, generator=torch.Generator().manual_seed(1))
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b)
    assert backbone.preprocess([img]).shape == (1, 3, 32, 32)


def test_head_init_random_when_asked(tiny_clip):
    clf = M.Classifier(OpenClipImage(*tiny_clip, image_size=32), 3)
    assert M.init_head(clf, M.make_plan("vanilla", {"head_init": "random"}), CLASSES) == "random"
    assert float(clf.head.weight.detach().std()) < 0.05


@pytest.fixture(scope="module")
def resnet_state():
    from torchvision.models import resnet50

    torch.manual_seed(3)
    return {k: v for k, v in resnet50(weights=None).state_dict().items()}


def test_mocov3_checkpoint_loads_without_unpickling(tmp_path, resnet_state):
    # MoCo-v3's layout: the query encoder under module.base_encoder., a momentum copy, a projection head
    state = {f"module.base_encoder.{k}": v for k, v in resnet_state.items() if not k.startswith("fc.")}
    state["module.base_encoder.fc.0.weight"] = torch.zeros(4096, 2048)  # MoCo-v3's projector lives in fc
    state["module.momentum_encoder.conv1.weight"] = torch.zeros_like(resnet_state["conv1.weight"])
    state["module.predictor.0.weight"] = torch.zeros(2, 2)
    path = tmp_path / "r-50-1000ep.pth.tar"
    torch.save({"epoch": 1000, "arch": "resnet50", "state_dict": state}, path)
    backbone = load_resnet50(str(path))
    for k, v in backbone.net.state_dict().items():
        assert torch.equal(v, resnet_state[k]), k
    assert backbone.content_hash and backbone.feature_dim == 2048
    assert backbone(torch.randn(1, 3, 64, 64)).shape == (1, 2048)


def test_safetensors_checkpoint(tmp_path, resnet_state):
    from safetensors.torch import save_file

    path = tmp_path / "r50.safetensors"
    save_file({k: v.contiguous() for k, v in resnet_state.items()}, str(path))
    backbone = load_backbone(f"resnet50:{path}")
    assert torch.equal(backbone.net.conv1.weight, resnet_state["conv1.weight"])


class Evil:
    def __reduce__(self):
        return (print, ("executed",))


def test_a_pickled_object_is_refused_not_run(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": Evil()}, fh)
    with pytest.raises(DataError, match="cannot read the checkpoint as tensors"):
        read_state_dict(path)
    assert "executed" not in capsys.readouterr().out


def test_wrong_checkpoints_name_the_file(tmp_path, resnet_state):
    path = tmp_path / "half.pth"
    torch.save({k: v for k, v in list(resnet_state.items())[:10]}, path)
    with pytest.raises(DataError, match=r"half\.pth.*missing"):
        load_resnet50(str(path))
    with pytest.raises(ConfigError, match="no such file"):
        load_resnet50(str(tmp_path / "absent.pth"))


def test_unknown_model_spec():
    with pytest.raises(ConfigError, match="not an image encoder"):
        load_backbone("google/paligemma-3b-pt-224")
