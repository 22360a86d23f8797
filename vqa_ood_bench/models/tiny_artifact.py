"""The tiny foundation model as a shipped, versioned artifact.

Pre-training the tiny PaliGemma takes minutes and its float sums depend on the torch build and
the machine, so a model pre-trained on each install would give every user a different foundation
model, and different numbers for the same benchmark. The package therefore ships the weights it
was measured with (``tiny_paligemma/``: safetensors, config, processor, and ``artifact.json`` with
the SHA-256 of every file) and loads them by default. The pre-training code in
:mod:`.pretrain` stays as the documented way the artifact was made:
``vqa-ood-bench model rebuild-tiny`` runs it again and reports how far the rebuild lands from the
shipped weights (``--export DIR`` writes a new artifact folder).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import DataError

TINY_MODEL_VERSION = "1.0"
ARTIFACT_DIR = Path(__file__).with_name("tiny_paligemma")
MANIFEST = "artifact.json"
WEIGHTS = "model.safetensors"
# transformers picks the torchvision image backend where torchvision imports and PIL elsewhere;
# their pixel values differ in the last float bit (6e-8), which fine-tuning then amplifies. The
# tiny model is always fed by the PIL backend, whatever is installed.
IMAGE_BACKEND = "pil"
# What save_pretrained writes that loading needs; training leftovers are not part of the artifact.
_SKIP = {MANIFEST, "pretrain.json"}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(folder: Path = ARTIFACT_DIR) -> dict[str, Any]:
    path = folder / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError("the tiny model's artifact manifest is missing; reinstall the package", path=path) from None
    except (OSError, ValueError) as exc:
        raise DataError(f"unreadable artifact manifest ({exc}); reinstall the package", path=path) from None


def verify(folder: Path = ARTIFACT_DIR) -> dict[str, Any]:
    """The manifest, after checking every listed file's SHA-256 (a damaged install is named, not loaded)."""
    manifest = read_manifest(folder)
    for name, expected in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise DataError("file of the shipped tiny model is missing; reinstall the package", path=path)
        if _sha256(path) != expected:
            raise DataError("file of the shipped tiny model does not match its recorded SHA-256; reinstall the package", path=path)
    return manifest


def artifact_key(manifest: Optional[dict[str, Any]] = None) -> str:
    """The model key runs record (``results.model.content_hash``): version and weights hash."""
    manifest = manifest or read_manifest()
    return f"tiny-v{manifest['version']}-{manifest['files'][WEIGHTS][:12]}"


def load_shipped(folder: Path = ARTIFACT_DIR):
    """(model, processor, info) of the shipped tiny model, verified against its manifest."""
    from transformers import PaliGemmaForConditionalGeneration, PaliGemmaProcessor

    manifest = verify(folder)
    processor = PaliGemmaProcessor.from_pretrained(folder, backend=IMAGE_BACKEND)
    model = PaliGemmaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    return model, processor, {**manifest, "key": artifact_key(manifest), "source": "shipped"}


def export(model_folder: Path, dest: Path, *, pretrain_info: dict[str, Any]) -> dict[str, Any]:
    """Write a pre-trained folder as an artifact into ``dest`` (files + manifest with hashes)."""
    import transformers

    from ..numerics import describe

    dest.mkdir(parents=True, exist_ok=True)
    files = {}
    for path in sorted(model_folder.iterdir()):
        if path.is_file() and path.name not in _SKIP:
            shutil.copyfile(path, dest / path.name)
            files[path.name] = _sha256(dest / path.name)
    manifest = {
        "version": TINY_MODEL_VERSION,
        "files": files,
        "pretraining": {k: pretrain_info[k] for k in ("recipe", "spec", "mixture", "steps", "final_loss", "seconds") if k in pretrain_info},
        "built_with": {**describe(None), "transformers": transformers.__version__},
        "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def weight_distance(a: torch.nn.Module, b: torch.nn.Module) -> dict[str, Any]:
    """How far two models' weights are apart: largest absolute difference, the relative L2
    distance over all weights, and the tensor that differs most (relative)."""
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        raise DataError(f"the models have different tensors ({len(sa.keys() ^ sb.keys())} names differ)")
    diff_sq = ref_sq = 0.0
    max_abs, worst, worst_rel = 0.0, "", 0.0
    for name in sa:
        x, y = sa[name].double(), sb[name].double()
        d = (x - y).norm().item()
        n = y.norm().item()
        diff_sq += d * d
        ref_sq += n * n
        max_abs = max(max_abs, (x - y).abs().max().item() if x.numel() else 0.0)
        rel = d / n if n else d
        if rel > worst_rel:
            worst, worst_rel = name, rel
    return {"max_abs": max_abs, "relative_l2": (diff_sq ** 0.5) / (ref_sq ** 0.5 or 1.0), "worst_tensor": worst, "worst_relative_l2": worst_rel}
