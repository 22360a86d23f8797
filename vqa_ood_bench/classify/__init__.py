"""The image-classification track: an image encoder with a linear head, cross-entropy, top-1.

The DiGraP paper's first experiment (Tab. 1, and Tab. 8 / 10 / 11) fine-tunes an image encoder
on DomainNet real and scores top-1 accuracy on the other domains. This subpackage runs that
task with the package's methods and optimizers, into the same run folders and results schema
(``task: image-classification``, top-1 in each split's ``exact_match``, as the leaderboard's
reported classification entries store it):

* :mod:`.suites` — ``domainnet-cls`` (released DomainNet lists) and ``embedded-domains`` (the
  CPU-sized twin built from easy-VQA, :mod:`.embedded_domains`);
* :mod:`.backbones` — the tiny model's SigLIP vision tower, CLIP through open_clip (zero-shot
  text head), torchvision ResNet-50 with MoCo-v3 weights from a user's file;
* :mod:`.methods` — what each method trains, its optimizer and its phases;
* :mod:`.train` and :mod:`.runner` — the training loop and the run (resume, several processes).
"""

from __future__ import annotations

TASK = "image-classification"
CLASSIFICATION_SUITES = ("embedded-domains", "domainnet-cls")


def is_classification_suite(name: str | None) -> bool:
    """Whether ``name`` is a suite of this track (registering the suites on first use)."""
    if name not in CLASSIFICATION_SUITES:
        return False
    from . import suites  # noqa: F401  (registers the suites)

    return True
