"""The classification suites, their datasets, and the class list of a suite.

``domainnet-cls`` (DiGraP Tab. 1 / 8 / 10 / 11, the TPGM / FTP DomainNet setting): the released
DomainNet lists read by ``data/formats/domainnet.py``. Train on real/train minus a 10% hash
slice held out for model selection; ID: real/test; OOD: the test lists of sketch, painting,
infograph, clipart and quickdraw. Labels are the lists' integer labels (alphabetical index of
the 345 classes); the split names are those of the leaderboard's reported entries.

``embedded-domains``: :mod:`.embedded_domains`.

Records are the package's :class:`~vqa_ood_bench.data.records.VQARecord` with ``meta["label"]``
and ``meta["class_name"]`` (DomainNet's loader already writes both), so sub-sampling, ``--limit``
and the id checks are the VQA suites' own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..data.records import VQARecord
from ..data.registry import register_dataset
from ..data.suite import SplitSpec, Suite, register_suite
from ..errors import DataError
from . import embedded_domains as _ed

DOMAINNET_OOD = ("sketch", "painting", "infograph", "clipart", "quickdraw")
DOMAINNET_CLASSES = 345
LICENCE = "easy-VQA: MIT (Victor Zhou); derived images: same"
SOURCE = "pip install easy-vqa (ships the images); the other domains are rendered locally"

# name -> (role, shift type, description)
EMBEDDED_DOMAIN_SPLITS = {
    "solid-train": ("id", "none", "easy-VQA train images minus the held-out ones, labelled '<colour> <shape>'"),
    "solid-val": ("id", "none", "400 held-out easy-VQA train images (model selection)"),
    "solid": ("id", "none", "easy-VQA test images as released"),
    "outline": ("near", "vision", "test images with the shape reduced to its outline"),
    "stripes": ("near", "vision", "test images on a striped background"),
    "checker": ("near", "vision", "test images on a checkerboard background"),
    "noisy": ("near", "vision", "test images with Gaussian pixel noise"),
    "blurred": ("near", "vision", "test images with Gaussian blur"),
}


def _register_embedded(name: str, role: str, shift: str, description: str) -> None:
    def loader(root: Path | None = None, **_: object) -> list[VQARecord]:
        return _ed.read_split(name)

    register_dataset(f"embedded-domains/{name}", role=role, shift_type=shift, description=description,
                     expected_files=(f"{name}/records.jsonl",), licence=LICENCE, source=SOURCE)(loader)


for _name, (_role, _shift, _desc) in EMBEDDED_DOMAIN_SPLITS.items():
    _register_embedded(_name, _role, _shift, _desc)


@register_suite("embedded-domains")
def embedded_domains_suite() -> Suite:
    def spec(name: str, stands_in_for: str = "") -> SplitSpec:
        role, shift, _ = EMBEDDED_DOMAIN_SPLITS[name]
        return SplitSpec(name, f"embedded-domains/{name}", role, shift, stands_in_for=stands_in_for)

    return Suite(
        name="embedded-domains",
        description="24 classes (colour x shape) of easy-VQA images; train on the solid style (ID), score 5 render styles (OOD); CPU-sized",
        train=spec("solid-train", "DomainNet real train"),
        validation=spec("solid-val", "DomainNet real (selection)"),
        evaluation=(spec("solid", "DomainNet real"), spec("outline", "DomainNet sketch"),
                    *(spec(d, "a DomainNet OOD domain") for d in ("stripes", "checker", "noisy", "blurred"))),
        needs_data_root=False,
        version=_ed.suite_version(),
    )


def domainnet_cls_suite(val_fraction: float = 0.1) -> Suite:
    """DomainNet classification: real (ID) -> sketch, painting, infograph, clipart, quickdraw."""
    from ..data.suites import _check_fraction

    val_fraction = _check_fraction("val_fraction", val_fraction, upper=0.5)
    return Suite(
        name="domainnet-cls",
        description=(f"DomainNet image classification (345 classes): train on real/train minus {val_fraction:.0%} held out for "
                     "selection; top-1 on real/test (ID) and the test lists of sketch, painting, infograph, clipart, quickdraw (OOD)."),
        train=SplitSpec("domainnet-real-train", "domainnet-real", "id", "none",
                        options={"split": "train", "fraction": 1.0 - val_fraction, "fraction_start": 0.0}),
        validation=SplitSpec("domainnet-real-select", "domainnet-real", "id", "none",
                             options={"split": "train", "fraction": val_fraction, "fraction_start": 1.0 - val_fraction}),
        evaluation=(SplitSpec("domainnet-real", "domainnet-real", "id", "none", options={"split": "test"}),)
        + tuple(SplitSpec(f"domainnet-{d}", f"domainnet-{d}", "near", "vision", options={"split": "test"}) for d in DOMAINNET_OOD),
        needs_data_root=True,
    )


@register_suite("domainnet-cls")
def _domainnet_cls() -> Suite:
    return domainnet_cls_suite()


def label_of(rec: VQARecord, source: str) -> int:
    """A record's integer class (``meta["label"]``), or a DataError naming the split and record."""
    label = rec.meta.get("label")
    if isinstance(label, bool) or not isinstance(label, int) or label < 0:
        raise DataError(f"no class label (meta.label must be an integer >= 0, got {label!r})", path=source, record=rec.question_id)
    return label


def class_names(suite: Suite, train: Sequence[VQARecord]) -> list[str]:
    """The suite's classes in label order: the embedded list, or DomainNet's from the lists' paths.

    DomainNet's classes are the 345 alphabetical names; the training records name the ones they
    contain (a label with two names is refused by the list reader), the rest keep a placeholder.
    """
    if suite.name == "embedded-domains":
        return list(_ed.CLASSES)
    names: dict[int, str] = {}
    for rec in train:
        names.setdefault(label_of(rec, f"{suite.name}/{suite.train.name}"), str(rec.meta.get("class_name", "")).replace("_", " "))
    n = max([DOMAINNET_CLASSES if suite.name == "domainnet-cls" else 0, *(k + 1 for k in names)])
    return [names.get(k) or f"class {k}" for k in range(n)]
