"""Scoring: VQA accuracy (variants), ClipMatch (EVA-CLIP text tower), exact match, re-scoring.

``vqa_accuracy`` and ``text`` need only numpy; ``clipmatch`` imports torch and open_clip when
an embedder is built, so importing this package stays cheap.
"""

from .vqa_accuracy import VARIANTS, VQAAccuracy, score_records, vqa_scores

__all__ = ["VARIANTS", "VQAAccuracy", "score_records", "vqa_scores"]
