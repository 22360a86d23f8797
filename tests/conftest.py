"""Test-wide settings: offline, quiet, deterministic."""

from __future__ import annotations

import os

# A failed hub lookup hangs ~45 s; tests never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

# Every test session builds the embedded suite and any tiny model into a fresh cache folder,
# so a stale cache can never hide a construction bug.
import tempfile

os.environ["VQA_OOD_BENCH_CACHE"] = tempfile.mkdtemp(prefix="vqa-ood-bench-test-cache-")
# Tests pre-train the tiny model for a handful of steps only (the step count is in the cache key).
os.environ.setdefault("VQA_OOD_BENCH_PRETRAIN_STEPS", "4")
