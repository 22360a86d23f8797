"""The method interface: what a fine-tuning method decides, and the registry of methods.

A method prepares the model (adapter or full, what is frozen), may hand the training loop its
own optimizer and per-step hooks, and may transform the weights after training (WiSE-FT).
The loop itself is :func:`vqa_ood_bench.train.engine.fit` for every method, so methods differ
only where their papers say they differ.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional

import torch

from ..config import RunConfig
from ..errors import ConfigError
from ..registry import Registry


@dataclass
class MethodContext:
    """What a method may look at: the run's config and the model before any training.

    ``processor`` (for methods that build batches of their own, e.g. TPGM's validation batch),
    ``run_dir`` (for methods that log per step, e.g. DiGraP's omega) and ``train_size`` (number
    of training examples, to turn steps into epochs) are set by the runner when it has them.
    """

    config: RunConfig
    pretrained_state: dict[str, torch.Tensor] = field(default_factory=dict)
    processor: Any = None
    run_dir: Optional[Path] = None
    train_size: Optional[int] = None


class Method:
    """Base class. Subclasses set ``name``, ``trains`` and ``defaults`` and override hooks."""

    name: ClassVar[str] = ""
    trains: ClassVar[bool] = True
    adapters: ClassVar[tuple[str, ...]] = ("lora", "full")
    defaults: ClassVar[dict[str, Any]] = {}
    #: parameters that take a number or null although their default (None) does not say so
    optional_numbers: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""

    def __init__(self, **params: Any):
        unknown = set(params) - set(self.defaults)
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "none"
            raise ConfigError(f"method {self.name!r} has no parameter(s) {', '.join(sorted(unknown))}; known: {known}")
        # Types are checked here, before any model is loaded: a string where a number belongs
        # would otherwise fail deep inside the optimizer, after minutes of loading.
        self.params = {**self.defaults, **{k: self._typed(k, v) for k, v in params.items()}}

    def _typed(self, key: str, value: Any) -> Any:
        """``value`` as the type ``defaults[key]`` has (numbers only; other types pass unchanged)."""
        default = self.defaults[key]
        if key in self.optional_numbers:
            return None if value is None else as_number(self.name, key, value, float)
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            return value
        return as_number(self.name, key, value, int if isinstance(default, int) else float)

    def check(self, config: RunConfig) -> None:
        if config.adapter not in self.adapters:
            raise ConfigError(f"method {self.name!r} does not support adapter {config.adapter!r} (supported: {', '.join(self.adapters)})")

    def prepare(self, model: torch.nn.Module, ctx: MethodContext) -> torch.nn.Module:
        """Return the model to train (e.g. wrapped with LoRA); default: LoRA (where the model's
        family puts it) or all weights."""
        from ..models.families import family_of

        cfg = ctx.config
        if cfg.adapter == "lora":
            return family_of(model).apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout)
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def optimizer_factory(self, ctx: MethodContext) -> Optional[Callable[[torch.nn.Module, int], torch.optim.Optimizer]]:
        """None: the Trainer's AdamW with the run's learning rate and weight decay."""
        return None

    def step_hooks(self, ctx: MethodContext) -> list[Callable[[torch.nn.Module, int], None]]:
        return []

    def finalize(self, model: torch.nn.Module, ctx: MethodContext) -> torch.nn.Module:
        return model

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.params}


def as_number(method: str, key: str, value: Any, kind: type) -> int | float:
    """``value`` as a finite ``kind`` (int or float), or a ConfigError naming the parameter.

    Numbers written as strings are accepted: YAML 1.1 reads ``1e-2`` (no dot) as a string.
    """
    number = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    what = "an integer" if kind is int else "a number"
    if isinstance(number, bool) or not isinstance(number, numbers.Real) or not math.isfinite(number):
        raise ConfigError(f"method {method!r}: {key} must be {what}, got {value!r}")
    if kind is int:
        if not float(number).is_integer():
            raise ConfigError(f"method {method!r}: {key} must be {what}, got {value!r}")
        return int(number)
    return float(number)


METHODS: Registry[type[Method]] = Registry("method")


def register_method(cls: type[Method]) -> type[Method]:
    METHODS.add(cls.name, cls)
    return cls


def get_method(name: str, **params: Any) -> Method:
    _import_builtin_methods()
    return METHODS.get(name)(**params)


def method_names() -> list[str]:
    _import_builtin_methods()
    return METHODS.names()


# The order of the paper's tables (zero-shot first, vanilla the reference, DiGraP last).
PAPER_ORDER = ("zeroshot", "vanilla", "linear-probe", "lp-ft", "wise-ft", "l2-sp", "mars-sp", "tpgm", "ftp", "digrap")


def sweep_order() -> list[str]:
    """Every registered method, in the paper's table order (others after, alphabetically)."""
    names = method_names()
    return [n for n in PAPER_ORDER if n in names] + [n for n in names if n not in PAPER_ORDER]


def _import_builtin_methods() -> None:
    import importlib
    import pkgutil

    from .. import methods as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name != "base" and not mod.name.startswith("_"):
            importlib.import_module(f"{pkg.__name__}.{mod.name}")
