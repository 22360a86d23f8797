"""The ``embedded-domains`` suite: DomainNet's design at CPU size, built from easy-VQA images.

Every easy-VQA image shows one shape in one colour; its class is what it shows, "<colour>
<shape>" (8 colours x 3 shapes = 24 classes, labels in :data:`CLASSES` order). Domains are
render styles the tiny foundation model saw in pre-training (``data/embedded/broad.py``):

=========  =====  ========================================================================
domain     role   images
=========  =====  ========================================================================
solid      ID     the released easy-VQA images (train: train minus 400 held-out images for
                  model selection; test: easy-VQA test)
outline    OOD    each test image's shape reduced to its outline (the shape's coverage minus
                  its erosion), in the shape's colour
stripes    OOD    the pale background replaced by stripes; shape pixels kept
checker    OOD    the background replaced by a checkerboard
noisy      OOD    Gaussian pixel noise (the pre-training's "noisy" style)
blurred    OOD    Gaussian blur (the pre-training's "blurred" style)
=========  =====  ========================================================================

Every OOD domain re-renders the same 1,000 test images, so ID and OOD differ in style only.
Everything is a function of :data:`SUITE_SEED` and the easy-vqa package; the build is cached
(``<cache>/embedded-domains/v<version>``) and checked against the content hashes recorded for
the version (``domains-v<version>.sha256.json``), with the embedded VQA suite's rule for
drift (``VQA_OOD_BENCH_ALLOW_SUITE_DRIFT=1`` runs a differing build as "<version>+local").
Bump :data:`SUITE_VERSION` on any change.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter

from ..cache import cache_dir
from ..data.embedded import render
from ..data.embedded.build import build_once, building_folder, check_manifest, drift_allowed, manifest_differences, source_digest
from ..data.embedded.questions import EASYVQA_COLORS, EASYVQA_SHAPES
from ..data.embedded.source import package_root, read_images
from ..data.records import VQARecord, open_image
from ..errors import DataError
from ..io import atomic_write_json

SUITE_VERSION = "1.0"
SUITE_SEED = 20250611
EXPECTED_HASHES = Path(__file__).with_name(f"domains-v{SUITE_VERSION}.sha256.json")
VALIDATION_IMAGES = 400
QUESTION = "What is in the image?"
CLASSES: tuple[str, ...] = tuple(f"{c} {s}" for c in EASYVQA_COLORS for s in EASYVQA_SHAPES)
ID_DOMAIN = "solid"
OOD_DOMAINS = ("outline", "stripes", "checker", "noisy", "blurred")
DOMAINS = (ID_DOMAIN, *OOD_DOMAINS)
PKG_PREFIX = "easyvqa://"


def label_of(color: str, shape: str) -> int:
    return CLASSES.index(f"{color} {shape}")


def outline(img: Image.Image, color: str) -> Image.Image:
    """The shape's outline: its coverage minus the coverage eroded by a few pixels."""
    arr = np.asarray(img, dtype=np.float32)
    alpha = render.shape_alpha(arr, color)
    eroded = np.asarray(Image.fromarray(np.rint(alpha * 255).astype(np.uint8)).filter(ImageFilter.MinFilter(5)), dtype=np.float32) / 255
    edge = np.clip(alpha - eroded, 0.0, 1.0)[..., None]
    bg = render.background_of(arr)
    out = bg * (1 - edge) + np.array(EASYVQA_COLORS[color], dtype=np.float32) * edge
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def restyle(img: Image.Image, color: str, domain: str, rng: np.random.Generator) -> Image.Image:
    """``img`` (a released easy-VQA image of a ``color`` shape) in ``domain``'s style."""
    if domain == "outline":
        return outline(img, color)
    if domain in ("stripes", "checker"):
        return render.replace_background(img, color, domain, rng)
    if domain == "noisy":
        return render._post(img, "noise", rng)  # the pre-training's own noise and blur
    if domain == "blurred":
        return render._post(img, "blur", rng)
    raise ValueError(f"unknown domain {domain!r}")


def suite_dir(root: Path | None = None) -> Path:
    return (root or cache_dir()) / "embedded-domains" / f"v{SUITE_VERSION}"


def _record(qid: str, image: str, image_id: int, color: str, shape: str, domain: str, split: str) -> dict:
    label = label_of(color, shape)
    return {"question_id": qid, "image": image, "question": QUESTION, "answers": [CLASSES[label]],
            "answer_type": "other", "question_type": "class", "dataset": "embedded-domains", "split": split,
            "meta": {"label": label, "class_name": CLASSES[label], "domain": domain, "image_id": image_id}}


def _write(folder: Path, rows: list[dict], images: dict[str, Image.Image]) -> str:
    """records.jsonl (and images/) of one split; the digest covers records and pixels."""
    h = hashlib.sha256()
    if images:
        (folder / "images").mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for row in rows:
        img = images.get(row["question_id"])
        if img is not None:
            img.save(folder / row["image"], format="PNG", optimize=False)
            h.update(np.asarray(img).tobytes())
        line = json.dumps(row, sort_keys=True)
        h.update(line.encode())
        lines.append(line)
    (folder / "records.jsonl").write_text("\n".join(lines) + "\n")
    return h.hexdigest()


def _build_into(target: Path, progress: Callable[[str], None] | None) -> None:
    train, test = read_images("train"), read_images("test")
    rng = np.random.default_rng([SUITE_SEED, 0])
    val_ids = {int(i) for i in rng.choice(sorted(train), size=VALIDATION_IMAGES, replace=False)}
    with building_folder(target) as tmp:
        manifest = {"version": SUITE_VERSION, "seed": SUITE_SEED, "source_sha256": source_digest(), "classes": list(CLASSES), "splits": {}}
        parts: dict[str, tuple[list[dict], dict[str, Image.Image]]] = {}
        for name, ids in (("solid-train", [i for i in sorted(train) if i not in val_ids]), ("solid-val", sorted(val_ids))):
            parts[name] = ([_record(f"{name}-{i}", f"{PKG_PREFIX}train/images/{i}.png", i, train[i].color, train[i].shape, ID_DOMAIN, name)
                            for i in ids], {})
        parts[ID_DOMAIN] = ([_record(f"{ID_DOMAIN}-{i}", f"{PKG_PREFIX}test/images/{i}.png", i, test[i].color, test[i].shape, ID_DOMAIN, ID_DOMAIN)
                             for i in sorted(test)], {})
        for k, domain in enumerate(OOD_DOMAINS, start=1):
            if progress:
                progress(domain)
            drng = np.random.default_rng([SUITE_SEED, k])
            rows, images = [], {}
            for i in sorted(test):
                info = test[i]
                qid = f"{domain}-{i}"
                images[qid] = restyle(open_image(info.path), info.color, domain, drng)
                rows.append(_record(qid, f"images/{i}.png", i, info.color, info.shape, domain, domain))
            parts[domain] = (rows, images)
        for name, (rows, images) in parts.items():
            manifest["splits"][name] = {"n": len(rows), "sha256": _write(tmp / name, rows, images)}
        atomic_write_json(tmp / "manifest.json", manifest)


def build(root: Path | None = None, *, progress: Callable[[str], None] | None = None) -> Path:
    """Build the suite into the cache once (atomically, one builder at a time), then check it."""
    target = suite_dir(root)
    build_once(target, SUITE_VERSION, lambda folder: _build_into(folder, progress))
    # No recorded content while a new version is being defined: then the manifest is only read.
    recorded = EXPECTED_HASHES if EXPECTED_HASHES.is_file() else None
    check_manifest(target / "manifest.json", recorded, suite="embedded-domains", version=SUITE_VERSION, remedy=_pinned_remedy)
    return target


def content_differences(manifest: dict) -> list[str]:
    """What in a built suite differs from the version's recorded content (empty: identical)."""
    return manifest_differences(manifest, EXPECTED_HASHES)


def _pinned_remedy() -> str:
    """The drift refusal's middle (:func:`~vqa_ood_bench.data.embedded.build.check_manifest`)."""
    return "; install the versions pyproject.toml pins"


def suite_version() -> str:
    return f"{SUITE_VERSION}+local" if drift_allowed() else SUITE_VERSION


def read_split(name: str, root: Path | None = None) -> list[VQARecord]:
    folder = build(root) / name
    path = folder / "records.jsonl"
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DataError(f"embedded-domains split missing ({exc.strerror}); delete {folder.parent} to rebuild", path=path) from None
    out = []
    for lineno, line in enumerate(lines, start=1):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"malformed JSON ({exc.msg}); delete the folder to rebuild", path=path, record=f"line {lineno}") from None
        ref = obj["image"]
        obj["image"] = str(package_root() / ref[len(PKG_PREFIX):]) if ref.startswith(PKG_PREFIX) else str(folder / ref)
        out.append(VQARecord.from_json(obj))
    return out
