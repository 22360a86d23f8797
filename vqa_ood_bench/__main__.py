"""``python -m vqa_ood_bench``: the ``vqa-ood-bench`` command."""

from .cli import main

raise SystemExit(main())
