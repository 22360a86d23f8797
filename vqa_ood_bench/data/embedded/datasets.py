"""The embedded suite: its splits as registered datasets, and the ``embedded`` suite itself."""

from __future__ import annotations

from pathlib import Path

from ..registry import register_dataset
from ..suite import SplitSpec, Suite, register_suite
from . import build as _build

LICENCE = "easy-VQA: MIT (Victor Zhou); derived splits: same"
SOURCE = "pip install easy-vqa (ships the images); derived splits are generated locally"

# name: (role, shift type, stands in for, description)
EMBEDDED_SPLITS: dict[str, tuple[str, str, str, str]] = {
    "easyvqa-test": ("id", "none", "VQAv2 val", "easy-VQA test questions"),
    "iv-edit": ("near", "vision", "IV-VQA", "answer-invariant edits: textured backgrounds, flips, quarter turns"),
    "cv-edit": ("near", "vision", "CV-VQA", "shape recoloured; questions whose answer changes, relabelled"),
    "rephrase": ("near", "question", "VQA-Rephrasings", "questions re-asked in broad phrasings of the same intent"),
    "prior-flip": ("near", "answer", "VQA-CP v2", "answers drawn from the inverse of the training prior per question type"),
    "counterexamples": ("near", "multimodal", "VQA-CE", "counterexamples to shortcut rules mined on the training set"),
    "adversarial": ("near", "adversarial", "AdVQA", "questions a reference model (pixels + words) gets wrong"),
    "text-read": ("far", "far", "TextVQA", "words written in images"),
    "degraded": ("far", "far", "VizWiz", "blurred/dark/bright/noisy images; severe ones unanswerable"),
    "knowledge": ("far", "far", "OK-VQA", "questions needing facts about shapes and colours"),
}


def _register(name: str, role: str, shift: str, stands_in_for: str, description: str) -> None:
    def loader(root: Path | None = None, **_: object):
        return _build.read_split(name)

    register_dataset(
        f"embedded/{name}", role=role, shift_type=shift, description=description,
        expected_files=(f"{name}/records.jsonl",), licence=LICENCE, source=SOURCE, stands_in_for=stands_in_for,
    )(loader)


for _name, (_role, _shift, _for, _desc) in EMBEDDED_SPLITS.items():
    _register(_name, _role, _shift, _for, _desc)


@register_dataset(
    "embedded/easyvqa-train", role="id", shift_type="none", description="easy-VQA train minus the held-out images",
    licence=LICENCE, source=SOURCE, stands_in_for="VQAv2 train",
)
def _train(root: Path | None = None, **_: object):
    return _build.train_records("train")


@register_dataset(
    "embedded/easyvqa-val", role="id", shift_type="none", description="questions on 400 held-out easy-VQA train images",
    licence=LICENCE, source=SOURCE, stands_in_for="VQAv2 val (model selection)",
)
def _val(root: Path | None = None, **_: object):
    return _build.train_records("validation")


@register_suite("embedded")
def embedded_suite() -> Suite:
    return Suite(
        name="embedded",
        description="easy-VQA (ID) with 6 near-OOD and 3 far-OOD splits derived from it; CPU-sized",
        train=SplitSpec("easyvqa-train", "embedded/easyvqa-train", "id", "none", stands_in_for="VQAv2 train"),
        validation=SplitSpec("easyvqa-val", "embedded/easyvqa-val", "id", "none", stands_in_for="VQAv2 val"),
        evaluation=tuple(
            SplitSpec(name, f"embedded/{name}", role, shift, stands_in_for=sif) for name, (role, shift, sif, _) in EMBEDDED_SPLITS.items()
        ),
        needs_data_root=False,
        version=_build.suite_version(),
    )
