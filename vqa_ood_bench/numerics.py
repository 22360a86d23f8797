"""CPU numerics that a run's numbers depend on, fixed for the duration of a run.

Float sums split across threads come out in a different order with a different number of
threads, so the same fine-tuning on a 2-core and an 8-core machine drifts apart step by step
(the tiny model's weights differ after five AdamW steps with 1 and 2 intra-op threads). A run
therefore fixes the number of intra-op threads (``RunConfig.cpu_threads``) and asks torch for
deterministic algorithms, and gives both settings back afterwards: they are process-wide, and a
user calling :func:`~vqa_ood_bench.runner.run_benchmark` from their own program keeps theirs.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch


@contextlib.contextmanager
def fixed_cpu_numerics(threads: Optional[int]) -> Iterator[None]:
    """Within the block: ``threads`` intra-op threads (``None`` or 0: leave torch's setting) and
    deterministic algorithms (warning, not failing, where an op has no deterministic version)."""
    before_threads = torch.get_num_threads()
    before_det = torch.are_deterministic_algorithms_enabled()
    before_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        if threads:
            torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True, warn_only=True)
        yield
    finally:
        torch.set_num_threads(before_threads)
        torch.use_deterministic_algorithms(before_det, warn_only=before_warn)


def describe(threads: Optional[int]) -> dict[str, object]:
    """What a results file records about the numerics it was computed with."""
    return {
        "torch": torch.__version__,
        "cpu_threads": threads or torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
