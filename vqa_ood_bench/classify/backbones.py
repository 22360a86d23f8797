"""Image encoders for the classification track, named by the run config's ``model``.

=====================================  =======================================================
``model``                              encoder
=====================================  =======================================================
``tiny``                               the tiny foundation model's SigLIP vision tower (the
                                       shipped artifact), mean-pooled patch tokens
``open_clip:ARCH[@PRETRAINED]``        an open_clip image tower, e.g. ``open_clip:ViT-B-16@openai``
                                       (no ``@``: random weights); features L2-normalised, and
                                       a zero-shot head from the text tower
``resnet50[:CHECKPOINT]``              torchvision ResNet-50 without its ``fc``; CHECKPOINT a
                                       MoCo-v3 (or any ResNet-50) state dict in a ``.pth`` /
                                       ``.pth.tar`` / ``.safetensors`` file
=====================================  =======================================================

User checkpoints are never unpickled: ``torch.load(..., weights_only=True)`` or safetensors.
Each encoder maps a list of PIL images to a batch (:meth:`Backbone.preprocess`; training
batches may be augmented, drawing from a generator the loop seeds per step) and a batch to
features (:meth:`Backbone.forward`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from ..errors import ConfigError, DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_TEMPLATE = "a photo of a {class_name}."


class Backbone(nn.Module):
    """An image encoder: ``forward(pixels) -> (batch, feature_dim)``."""

    feature_dim: int
    name: str = ""
    content_hash: Optional[str] = None

    def preprocess(self, images: Sequence[Any], *, train: bool = False, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        raise NotImplementedError

    def zero_shot_weights(self, class_names: Sequence[str], template: str = DEFAULT_TEMPLATE) -> Optional[torch.Tensor]:
        """(classes, feature_dim) head weights from the encoder's own text side, or None."""
        return None


def _pil(images: Sequence[Any]):
    from PIL import Image

    from ..data.records import open_image

    return [im.convert("RGB") if isinstance(im, Image.Image) else open_image(im) for im in images]


class TinyVisionTower(Backbone):
    """The tiny PaliGemma's SigLIP vision tower; features: the mean of the final patch tokens."""

    def __init__(self, vision_tower: nn.Module, image_processor: Any, *, content_hash: Optional[str] = None):
        super().__init__()
        self.tower = vision_tower
        self.image_processor = image_processor
        self.feature_dim = int(vision_tower.config.hidden_size)
        self.name = "tiny"
        self.content_hash = content_hash

    def preprocess(self, images, *, train=False, generator=None):
        # No augmentation: the CPU suite keeps every step a pure function of the data order.
        return self.image_processor(_pil(images), return_tensors="pt")["pixel_values"]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.tower(pixel_values=pixels).last_hidden_state.mean(dim=1)


class OpenClipImage(Backbone):
    """An open_clip model's image tower; the text tower is kept only to build the zero-shot head."""

    def __init__(self, clip_model: nn.Module, tokenizer: Callable, *, image_size: int, mean=None, std=None, name: str = "open_clip"):
        super().__init__()
        from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        self.visual = clip_model.visual
        self._text = [clip_model]  # a list: not a submodule, so its weights are not trained or saved
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.mean = tuple(mean or OPENAI_DATASET_MEAN)
        self.std = tuple(std or OPENAI_DATASET_STD)
        self.feature_dim = int(clip_model.text_projection.shape[1] if getattr(clip_model, "text_projection", None) is not None
                               else clip_model.visual.output_dim)
        self.name = name

    def preprocess(self, images, *, train=False, generator=None):
        return _torchvision_batch(_pil(images), self.image_size, self.mean, self.std, train=train, generator=generator)

    def forward(self, pixels):
        return nn.functional.normalize(self.visual(pixels), dim=-1)

    @torch.no_grad()
    def zero_shot_weights(self, class_names, template=DEFAULT_TEMPLATE):
        """CLIP's zero-shot classifier: the normalised text embedding of each class's prompt,
        times the model's logit scale (the head then reproduces CLIP's zero-shot logits)."""
        model = self._text[0]
        if "{class_name}" not in template:
            raise ConfigError(f"zero-shot head: the prompt template must contain {{class_name}}, got {template!r}")
        tokens = self.tokenizer([template.format(class_name=c) for c in class_names])
        text = nn.functional.normalize(model.encode_text(tokens.to(next(model.parameters()).device)).float(), dim=-1)
        return text * model.logit_scale.exp().float()


class ResNetFeatures(Backbone):
    """torchvision ResNet-50 with ``fc`` removed: the 2048-d pooled features."""

    def __init__(self, resnet: nn.Module, *, name: str = "resnet50", image_size: int = 224):
        super().__init__()
        resnet.fc = nn.Identity()
        self.net = resnet
        self.feature_dim = 2048 if name == "resnet50" else int(getattr(resnet, "_feature_dim", 2048))
        self.image_size = image_size
        self.name = name

    def preprocess(self, images, *, train=False, generator=None):
        return _torchvision_batch(_pil(images), self.image_size, IMAGENET_MEAN, IMAGENET_STD, train=train, generator=generator)

    def forward(self, pixels):
        return self.net(pixels)


def _torchvision_batch(images, size: int, mean, std, *, train: bool, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Train: random resized crop + horizontal flip (the TPGM / FTP DomainNet recipe); eval:
    resize to size/0.875 and centre crop. Random draws come from ``generator`` only."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F
    from torchvision.transforms import RandomResizedCrop

    out = []
    for img in images:
        if train:
            # RandomResizedCrop.get_params draws from torch's global generator: fork it so that
            # the draw is the step's own and nothing else's random state moves.
            with torch.random.fork_rng(devices=[]):
                if generator is not None:
                    torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
                i, j, h, w = RandomResizedCrop.get_params(img, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
                flip = bool(torch.rand(1) < 0.5)
            img = F.resized_crop(img, i, j, h, w, [size, size], interpolation=InterpolationMode.BICUBIC)
            if flip:
                img = F.hflip(img)
        else:
            img = F.center_crop(F.resize(img, int(round(size / 0.875)), interpolation=InterpolationMode.BICUBIC), [size, size])
        out.append(F.normalize(F.to_tensor(img), mean, std))
    return torch.stack(out)


# --- loading checkpoints safely ----------------------------------------------------------------

# MoCo-v3 checkpoints keep the query encoder under module.base_encoder. (and a momentum copy);
# linear-evaluation and converted files keep the bare torchvision names, maybe under module.
_PREFIXES = ("module.base_encoder.", "base_encoder.", "module.encoder_q.", "encoder_q.", "module.", "backbone.", "encoder.")
_SKIP = re.compile(r"(^|\.)(momentum_encoder|encoder_k|predictor|head)\.|^fc\.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file: safetensors, or a torch file read with weights_only."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle of arbitrary objects is refused here, never executed
        raise DataError(f"cannot read the checkpoint as tensors ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})", path=path) from None
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataError("expected a state dict (name -> tensor), or one under 'state_dict' / 'model'", path=path)
    return obj


def resnet_state_from_checkpoint(state: dict[str, torch.Tensor], path: str | Path) -> dict[str, torch.Tensor]:
    """A MoCo-v3 (or plain) ResNet-50 state dict with torchvision's names, without the head."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if _SKIP.search(key):
            continue
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        if not key.startswith("fc."):
            out[key] = value
    if not out:
        raise DataError("no ResNet-50 encoder weights found (keys after removing MoCo-v3 prefixes are empty)", path=path)
    return out


def load_resnet50(checkpoint: Optional[str]) -> ResNetFeatures:
    from torchvision.models import resnet50

    net = resnet50(weights=None)
    if checkpoint:
        state = resnet_state_from_checkpoint(read_state_dict(checkpoint), checkpoint)
        expected = {k for k in net.state_dict() if not k.startswith("fc.")}
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - expected)
        if missing or unexpected:
            what = f"{len(missing)} missing (e.g. {missing[0]})" if missing else f"{len(unexpected)} unknown (e.g. {unexpected[0]})"
            raise DataError(f"not a ResNet-50 encoder: {what}", path=checkpoint)
        shapes = [k for k, v in state.items() if tuple(v.shape) != tuple(net.state_dict()[k].shape)]
        if shapes:
            raise DataError(f"not a ResNet-50 encoder: {shapes[0]} has shape {tuple(state[shapes[0]].shape)}", path=checkpoint)
        net.load_state_dict(state, strict=False)
    backbone = ResNetFeatures(net)
    if checkpoint:
        from ..io import file_digest

        backbone.content_hash = file_digest(checkpoint)["sha256"][:16]
    return backbone


def load_open_clip(arch: str, pretrained: Optional[str]) -> OpenClipImage:
    import open_clip

    try:
        model = open_clip.create_model(arch, pretrained=pretrained or None, weights_only=True)
    except RuntimeError as exc:
        raise ConfigError(f"open_clip model {arch!r} ({pretrained or 'random weights'}): {str(exc).splitlines()[0]}") from None
    pp = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    backbone = OpenClipImage(model, open_clip.get_tokenizer(arch), image_size=size, mean=pp.get("mean"), std=pp.get("std"),
                             name=f"open_clip:{arch}" + (f"@{pretrained}" if pretrained else ""))
    return backbone


def load_tiny() -> TinyVisionTower:
    from ..models.pretrain import load_tiny as _load

    model, processor, info = _load(show_progress=False)
    tower = getattr(model, "vision_tower", None) or model.model.vision_tower
    return TinyVisionTower(tower.float(), processor.image_processor, content_hash=info["key"])


def load_backbone(spec: str) -> Backbone:
    """The encoder the run config's ``model`` names (module docstring)."""
    spec = spec.strip()
    if spec == "tiny":
        return load_tiny()
    if spec.startswith("open_clip:"):
        arch, _, pretrained = spec[len("open_clip:"):].partition("@")
        if not arch:
            raise ConfigError(f"model {spec!r}: expected open_clip:ARCH[@PRETRAINED], e.g. open_clip:ViT-B-16@openai")
        return load_open_clip(arch, pretrained or None)
    if spec == "resnet50" or spec.startswith("resnet50:"):
        return load_resnet50(spec.partition(":")[2] or None)
    raise ConfigError(f"model {spec!r} is not an image encoder of the classification track; "
                      "known: tiny, open_clip:ARCH[@PRETRAINED], resnet50[:CHECKPOINT]")
