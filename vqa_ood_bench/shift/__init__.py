"""Distribution shift between ID training data and test splits (paper Sec. 4.3, App. 7.3).

``MahalanobisEstimator`` (numpy/torch only) is imported eagerly; feature extraction and the
per-suite measurement import transformers lazily from their own modules
(``vqa_ood_bench.shift.features``, ``vqa_ood_bench.shift.measure``).
"""

from .mahalanobis import MahalanobisEstimator, ledoit_wolf_coefficient

FEATURE_KINDS = ("vision", "question", "joint")

__all__ = ["FEATURE_KINDS", "MahalanobisEstimator", "ledoit_wolf_coefficient"]
