"""vqa_ood_bench: robust fine-tuning benchmark for vision-language models on VQA."""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("vqa-ood-bench")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
