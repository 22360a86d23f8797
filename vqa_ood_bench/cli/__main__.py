"""``python -m vqa_ood_bench.cli``: the same as the ``vqa-ood-bench`` command (torchrun -m uses it)."""

from . import main

raise SystemExit(main())
