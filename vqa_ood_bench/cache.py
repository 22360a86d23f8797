"""Where cached artefacts live: the user cache directory, or $VQA_OOD_BENCH_CACHE."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    env = os.environ.get("VQA_OOD_BENCH_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("vqa-ood-bench"))
