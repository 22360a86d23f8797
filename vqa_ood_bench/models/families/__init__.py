"""Model families: which one a checkpoint belongs to, and the registry.

A checkpoint's family is found from its config's ``model_type`` (:func:`detect_family` reads
only the config file); ``--family NAME`` (``RunConfig.family``) overrides the detection, e.g.
for a fine-tuned checkpoint saved under another type. A model in memory is placed by its own
config (:func:`family_of`), a processor by its class (:func:`family_of_processor`).

Adding a family: subclass :class:`~.base.ModelFamily` in a module of this package, set its
class attributes, override what the shared chat recipe does not cover, and add an instance to
``_BUILTIN`` below. README.md, "Adding a model family", has the checklist.
"""

from __future__ import annotations

from typing import Any, Optional

from ...errors import ConfigError
from .base import Generation, ModelFamily
from .idefics3 import Idefics3Family
from .llava import LlavaFamily
from .paligemma import PaliGemmaFamily

_BUILTIN: tuple[ModelFamily, ...] = (PaliGemmaFamily(), LlavaFamily(), Idefics3Family())
FAMILIES: dict[str, ModelFamily] = {f.name: f for f in _BUILTIN}
_BY_MODEL_TYPE: dict[str, ModelFamily] = {t: f for f in _BUILTIN for t in f.model_types}

__all__ = ["FAMILIES", "Generation", "ModelFamily", "detect_family", "family_for_model_type", "family_names", "family_of",
           "family_of_processor", "get_family", "model_type_of", "resolve_family", "shorten_parameter_name", "supported_model_types"]


def family_names() -> list[str]:
    return sorted(FAMILIES)


def supported_model_types() -> list[str]:
    return sorted(_BY_MODEL_TYPE)


def get_family(name: str) -> ModelFamily:
    """The family called ``name`` (what ``--family`` takes)."""
    if name not in FAMILIES:
        raise ConfigError(f"unknown model family {name!r}; known: {', '.join(family_names())}")
    return FAMILIES[name]


def _unsupported(model_type: Any, what: str) -> ConfigError:
    return ConfigError(f"{what} has model_type {model_type!r}, which no model family supports; "
                       f"supported model types: {', '.join(supported_model_types())} (or name one with --family)")


def family_for_model_type(model_type: Any, what: str = "the model") -> ModelFamily:
    if model_type not in _BY_MODEL_TYPE:
        raise _unsupported(model_type, what)
    return _BY_MODEL_TYPE[model_type]


def family_of(model: Any) -> ModelFamily:
    """The family of ``model`` (a transformers model, possibly inside a peft wrapper), by its
    config's ``model_type``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return family_for_model_type(model_type, f"the model ({type(model).__name__})")


def family_of_processor(processor: Any) -> ModelFamily:
    """The family whose processor class ``processor`` is (or derives from)."""
    names = {cls.__name__ for cls in type(processor).__mro__}
    for family in _BUILTIN:
        if names & set(family.processor_class_names):
            return family
    known = ", ".join(n for f in _BUILTIN for n in f.processor_class_names)
    raise ConfigError(f"no model family uses a {type(processor).__name__}; known processors: {known}")


def model_type_of(name_or_path: str, revision: Optional[str] = None) -> Optional[str]:
    """The ``model_type`` in the config of a hub id or local folder (the config file only)."""
    from transformers import PretrainedConfig

    try:
        config, _ = PretrainedConfig.get_config_dict(name_or_path, revision=revision)
    except OSError as exc:
        raise ConfigError(f"cannot load model {name_or_path!r}: {str(exc).splitlines()[0]}") from None
    return config.get("model_type")


def detect_family(name_or_path: str, revision: Optional[str] = None) -> ModelFamily:
    """The family of a checkpoint, from its config's ``model_type``; a ConfigError in one line
    names the type found and the supported ones."""
    return family_for_model_type(model_type_of(name_or_path, revision), f"model {name_or_path!r}")


def resolve_family(name_or_path: str, family: Optional[str] = None, revision: Optional[str] = None) -> ModelFamily:
    """``family`` when given (``--family``), else the family detected from the checkpoint."""
    return get_family(family) if family else detect_family(name_or_path, revision)


def shorten_parameter_name(name: str) -> str:
    """``name`` with its family's part prefixes in short form (``language_model.`` -> ``lm.``),
    by the first family whose prefixes it contains."""
    for family in _BUILTIN:
        if any(prefix in name for prefix in family.short_names):
            for prefix, short in family.short_names.items():
                name = name.replace(prefix, short)
            return name
    return name
