"""Where generation's per-family encoding used to live; it is now part of each model family.

See :mod:`vqa_ood_bench.models.families` (``generation_inputs`` and ``decode`` of
:class:`~vqa_ood_bench.models.families.base.ModelFamily`). The names stay importable from here.
"""

from __future__ import annotations

from ..models.families import FAMILIES, Generation, ModelFamily, family_of
from ..models.families.paligemma import PaliGemmaFamily

GenerationFamily = ModelFamily

__all__ = ["FAMILIES", "Generation", "GenerationFamily", "PaliGemmaFamily", "family_of"]
