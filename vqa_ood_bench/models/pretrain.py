"""Pre-training the tiny foundation model on the broad mixture, cached by content hash.

Runs use the shipped artifact (:mod:`.tiny_artifact`) that this code made; pre-training runs
when asked for: ``vqa-ood-bench model rebuild-tiny``, a non-default recipe or architecture, or
``VQA_OOD_BENCH_PRETRAIN_STEPS`` (the tests' few-step models).

The cache key hashes everything that determines the weights: the architecture, the
pre-training recipe, the mixture's version, and the library versions that shape the numerics.
A second call with the same key loads the saved model; a different key trains afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..cache import cache_dir
from ..config import TrainConfig
from .paligemma import TinySpec, build_tiny_model, build_tiny_processor

MIXTURE_VERSION = "2"


@dataclass(frozen=True)
class PretrainRecipe:
    # Measured on 2 CPU cores: ~0.23 s per step, so ~5 minutes. lr 2e-3 sat on the answer-prior
    # plateau for 1,200 steps (easy-VQA colour questions 6% zero-shot); 1e-3 escapes it.
    steps: int = 1300
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.03
    seed: int = 0
    cpu_threads: int = 2  # the float sums depend on it (see numerics.py); the artifact was made with 2


def cache_key(spec: TinySpec, recipe: PretrainRecipe) -> str:
    import transformers

    payload = {
        "spec": asdict(spec),
        "recipe": asdict(recipe),
        "mixture": MIXTURE_VERSION,
        "torch": torch.__version__.split("+")[0],
        "transformers": transformers.__version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def pretrained_dir(spec: TinySpec = TinySpec(), recipe: PretrainRecipe = PretrainRecipe()) -> Path:
    return cache_dir() / "models" / f"tiny-paligemma-{cache_key(spec, recipe)}"


def pretrain_tiny(folder: Path, spec: TinySpec, recipe: PretrainRecipe, *, show_progress: bool = True) -> dict:
    """Train the tiny model into ``folder`` (a temporary folder: the caller renames it into place)."""
    from ..data.embedded.broad import all_words, make_example
    from ..train.engine import ExampleDataset, TrainExample, fit

    processor = build_tiny_processor(all_words(), spec)
    model = build_tiny_model(processor, spec, seed=recipe.seed)

    def example(i: int) -> TrainExample:
        ex = make_example(recipe.seed, i)
        return TrainExample(ex.image, ex.prompt, ex.answer)

    n = recipe.steps * recipe.batch_size  # every example seen once: no repetition to memorise
    cfg = TrainConfig(
        learning_rate=recipe.learning_rate,
        weight_decay=recipe.weight_decay,
        batch_size=recipe.batch_size,
        max_steps=recipe.steps,
        warmup_ratio=recipe.warmup_ratio,
    )
    from ..numerics import fixed_cpu_numerics

    with tempfile.TemporaryDirectory() as tmp, fixed_cpu_numerics(recipe.cpu_threads):
        result = fit(model, processor, ExampleDataset(example, n), cfg, output_dir=tmp, seed=recipe.seed,
                     description="pre-training tiny PaliGemma", show_progress=show_progress)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    info = {"key": cache_key(spec, recipe), "steps": result.steps, "seconds": round(result.seconds, 1), "final_loss": result.final_loss,
            "spec": asdict(spec), "recipe": asdict(recipe), "mixture": MIXTURE_VERSION}
    (folder / "pretrain.json").write_text(json.dumps(info, indent=2))
    return info


PRETRAIN_STEPS_ENV = "VQA_OOD_BENCH_PRETRAIN_STEPS"


def steps_override() -> int | None:
    """``VQA_OOD_BENCH_PRETRAIN_STEPS``: tests and smoke runs pre-train a few-step model instead of
    loading the shipped one; the step count is part of the cache key, so a short test model
    never stands in for the real one."""
    steps = os.environ.get(PRETRAIN_STEPS_ENV)
    return int(steps) if steps else None


def default_recipe() -> PretrainRecipe:
    """The recipe the shipped artifact was made with, with the environment's step count if set."""
    steps = steps_override()
    return PretrainRecipe(steps=steps) if steps else PretrainRecipe()


def load_tiny(spec: TinySpec = TinySpec(), recipe: PretrainRecipe | None = None, *, show_progress: bool = True):
    """The tiny foundation model and processor: the shipped artifact by default; pre-trained here
    (and cached) for another recipe or architecture, or under ``VQA_OOD_BENCH_PRETRAIN_STEPS``."""
    from transformers import PaliGemmaForConditionalGeneration, PaliGemmaProcessor

    if recipe is None and spec == TinySpec() and steps_override() is None:
        from .tiny_artifact import load_shipped

        return load_shipped()
    recipe = recipe or default_recipe()
    folder = pretrained_dir(spec, recipe)
    if not (folder / "pretrain.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".pretraining-", dir=folder.parent))
        try:
            pretrain_tiny(tmp, spec, recipe, show_progress=show_progress)
            try:
                tmp.rename(folder)
            except OSError:
                if not (folder / "pretrain.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    from .tiny_artifact import IMAGE_BACKEND

    processor = PaliGemmaProcessor.from_pretrained(folder, backend=IMAGE_BACKEND)
    model = PaliGemmaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    info = json.loads((folder / "pretrain.json").read_text())
    return model, processor, info
