"""Options shared by several commands, as annotated types (one definition, one help text)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from ..config import MAX_SEED, check_device
from ..errors import ConfigError

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout instead of a table.")]
SuiteOpt = Annotated[str, typer.Option("--suite", help="Benchmark suite (see `datasets list`).")]
DataRootOpt = Annotated[
    Optional[Path], typer.Option("--data-root", help="Folder holding the released dataset files (not needed for the embedded suite).")
]
SeedOpt = Annotated[int, typer.Option("--seed", help=f"Random seed for training and sampling (0 to {MAX_SEED}).", min=0, max=MAX_SEED)]
ModelOpt = Annotated[
    str,
    typer.Option("--model", help="'tiny' (the embedded pre-trained model), or a hub id / local folder of a supported family (PaliGemma, LLaVA, Idefics3)."),
]
FamilyOpt = Annotated[
    Optional[str],
    typer.Option("--family", help="Model family: paligemma, llava or idefics3 (default: detected from the checkpoint's model_type)."),
]
VariantOpt = Annotated[str, typer.Option("--variant", help="VQA accuracy variant: official, lavis or lenient.")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", help="Run folder to write into (default: a new folder under ./runs).")]
LimitOpt = Annotated[
    Optional[int], typer.Option("--limit", help="Use at most N records per split (smoke runs).", min=1)
]


def positive_number(value: Optional[float]) -> Optional[float]:
    """Option callback: a finite number > 0 (typer's ``min`` is inclusive and lets nan and inf through)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"must be a finite number > 0, got {value}")
    return value


def parse_key_values(items: list[str], option: str, example: str = "key=value") -> dict[str, Any]:
    """``["mu=0.5", "omega=null", "name=x"]`` -> ``{"mu": 0.5, "omega": None, "name": "x"}``:
    each VALUE read as JSON where it is JSON, else kept as the string (``option`` names the
    command-line option in the error)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{option} {item!r}: expected KEY=VALUE, e.g. {option} {example}")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key.strip()] = value
    return out


def check_model_data_and_device(model: str, data_root: Optional[str], device: Optional[str], named: Callable[[str], str]) -> None:
    """The model name, the data folder and the device of a `run` or an `eval`, checked before
    any slow work; an error names where the value was written: ``named(field)`` (e.g.
    "--data-root", or the config file and the field)."""
    if data_root is not None and not Path(data_root).is_dir():
        raise ConfigError(f"{named('data_root')} {data_root!r} is not a folder")
    if not model.strip():
        raise ConfigError(f"{named('model')}: expected 'tiny', a hub id or a local folder, got {model!r}")
    if model.startswith(("/", "./", "../")) and not Path(model).is_dir():
        raise ConfigError(f"{named('model')} {model!r}: no such folder")
    try:
        check_device(device)
    except ConfigError as exc:
        raise ConfigError(f"{named('device')}: {exc}") from None


def validation_error(exc, named: Callable[[str], str]) -> ConfigError:
    """A config's pydantic ``ValidationError`` as a one-line ConfigError: its first error, the
    field named by ``named(loc)`` (``loc``: the field's dotted path, e.g. "train.epochs")."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return ConfigError(f"{named(loc)}: {err['msg'].removeprefix('Value error, ')}, got {err.get('input')!r}")


def check_family_choice(model: str, family: Optional[str], named: Callable[[str], str]) -> None:
    """``--family`` (or a config's ``family``) names a known model family, and one the model can
    be: the tiny model is a PaliGemma. Checked before any loading; the checkpoint's own type is
    read when the model loads (``runner.load_model``)."""
    if family is None:
        return
    from ..models.families import family_names

    if family not in family_names():
        raise ConfigError(f"{named('family')}: unknown model family {family!r}; known: {', '.join(family_names())}")
    if model == "tiny" and family != "paligemma":
        raise ConfigError(f"{named('family')} {family!r}: the tiny model is a PaliGemma (family paligemma)")
