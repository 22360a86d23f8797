"""The paper's suites over the released datasets (``--data-root DIR`` needed).

``paper-vqa`` (DiGraP, ICLR 2025, Tab. 3): fine-tune on VQAv2, score VQAv2 val (ID), six
near-OOD variants of VQAv2 and three far-OOD sets. The paper samples 10% of VQAv2 train and
val; here:

* train: VQAv2 train, ``fraction=0.1`` (deterministic, by question id; an option);
* validation (model selection): VQAv2 val, hash range [0, 0.1);
* ID evaluation ``vqav2-val``: VQAv2 val, hash range [0.1, 0.2) — 10% like the paper, and
  disjoint from the selection split so the ID number is not the one models were picked on;
* near OOD: IV-VQA, CV-VQA, VQA-Rephrasings, VQA-CP v2 (test), VQA-CE (counterexamples),
  AdVQA; far OOD: TextVQA (val), VizWiz (val), OK-VQA (val) — all in full.

``domainnet-ovqa`` (Sec. 4.2): DomainNet as VQA ("What is in the image?" → class name). Train
on real/train minus a 10% hash slice held out for model selection; ID evaluation on real/test;
OOD on the test lists of clipart, infograph, painting, quickdraw and sketch.

The factories take the fractions as arguments (:func:`paper_vqa_suite`,
:func:`domainnet_ovqa_suite`); the registered suites use the paper's defaults.
"""

from __future__ import annotations

from ..errors import ConfigError
from .suite import SplitSpec, Suite, register_suite

VQA_NEAR = (
    ("iv-vqa", "iv-vqa", "vision", {}),
    ("cv-vqa", "cv-vqa", "vision", {}),
    ("vqa-rephrasings", "vqa-rephrasings", "question", {}),
    ("vqa-cp-v2", "vqa-cp-v2", "answer", {"split": "test"}),
    ("vqa-ce", "vqa-ce", "multimodal", {"split": "counterexamples"}),
    ("advqa", "advqa", "adversarial", {}),
)
VQA_FAR = (
    ("textvqa", "textvqa", {"split": "val"}),
    ("vizwiz", "vizwiz", {"split": "val"}),
    ("ok-vqa", "ok-vqa", {"split": "val"}),
)
DOMAINNET_OOD = ("clipart", "infograph", "painting", "quickdraw", "sketch")


def _check_fraction(name: str, value: float, *, upper: float = 1.0) -> float:
    if not (0.0 < float(value) <= upper):
        raise ConfigError(f"{name} must be in (0, {upper}], got {value!r}")
    return float(value)


def paper_vqa_suite(train_fraction: float = 0.1, val_fraction: float = 0.1, id_eval_fraction: float = 0.1) -> Suite:
    """The paper's VQA suite; the three fractions are of VQAv2 train / val / val."""
    train_fraction = _check_fraction("train_fraction", train_fraction)
    val_fraction = _check_fraction("val_fraction", val_fraction, upper=0.9)
    id_eval_fraction = _check_fraction("id_eval_fraction", id_eval_fraction, upper=1.0 - val_fraction)
    evaluation = [
        SplitSpec(
            "vqav2-val", "vqav2", "id", "none",
            options={"split": "val", "fraction": id_eval_fraction, "fraction_start": val_fraction},
        )
    ]
    evaluation += [SplitSpec(n, d, "near", s, options=dict(o)) for n, d, s, o in VQA_NEAR]
    evaluation += [SplitSpec(n, d, "far", "far", options=dict(o)) for n, d, o in VQA_FAR]
    return Suite(
        name="paper-vqa",
        description=(
            f"DiGraP Tab. 3: fine-tune on {train_fraction:.0%} of VQAv2 train; select on {val_fraction:.0%} of VQAv2 val; "
            "score a disjoint slice of VQAv2 val (ID), IV-VQA, CV-VQA, VQA-Rephrasings, VQA-CP v2, VQA-CE, AdVQA "
            "(near OOD), TextVQA, VizWiz, OK-VQA (far OOD)."
        ),
        train=SplitSpec("vqav2-train", "vqav2", "id", "none", options={"split": "train", "fraction": train_fraction}),
        validation=SplitSpec(
            "vqav2-val-select", "vqav2", "id", "none", options={"split": "val", "fraction": val_fraction}
        ),
        evaluation=tuple(evaluation),
        needs_data_root=True,
    )


def domainnet_ovqa_suite(val_fraction: float = 0.1, question: str = "What is in the image?") -> Suite:
    """DomainNet-oVQA: real as ID, the other five domains as OOD (vision shift)."""
    val_fraction = _check_fraction("val_fraction", val_fraction, upper=0.5)
    q = {"question": question}
    return Suite(
        name="domainnet-ovqa",
        description=(
            f"DomainNet-oVQA: '{question}' answered with the class name; fine-tune on real/train "
            f"(minus {val_fraction:.0%} held out for selection), score real/test (ID) and the test lists of "
            "clipart, infograph, painting, quickdraw, sketch (OOD)."
        ),
        train=SplitSpec(
            "domainnet-real-train", "domainnet-real", "id", "none",
            options={"split": "train", "fraction": 1.0 - val_fraction, "fraction_start": 0.0, **q},
        ),
        validation=SplitSpec(
            "domainnet-real-select", "domainnet-real", "id", "none",
            options={"split": "train", "fraction": val_fraction, "fraction_start": 1.0 - val_fraction, **q},
        ),
        evaluation=(SplitSpec("domainnet-real", "domainnet-real", "id", "none", options={"split": "test", **q}),)
        + tuple(
            SplitSpec(f"domainnet-{d}", f"domainnet-{d}", "near", "vision", options={"split": "test", **q})
            for d in DOMAINNET_OOD
        ),
        needs_data_root=True,
    )


@register_suite("paper-vqa")
def _paper_vqa() -> Suite:
    return paper_vqa_suite()


@register_suite("domainnet-ovqa")
def _domainnet_ovqa() -> Suite:
    return domainnet_ovqa_suite()
