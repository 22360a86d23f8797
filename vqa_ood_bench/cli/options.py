"""Options shared by several commands, as annotated types (one definition, one help text)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..config import MAX_SEED
from ..errors import ConfigError

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout instead of a table.")]
SuiteOpt = Annotated[str, typer.Option("--suite", help="Benchmark suite (see `datasets list`).")]
DataRootOpt = Annotated[
    Optional[Path], typer.Option("--data-root", help="Folder holding the released dataset files (not needed for the embedded suite).")
]
SeedOpt = Annotated[int, typer.Option("--seed", help=f"Random seed for training and sampling (0 to {MAX_SEED}).", min=0, max=MAX_SEED)]
ModelOpt = Annotated[
    str,
    typer.Option("--model", help="'tiny' (the embedded pre-trained model) or a PaliGemma hub id / local path."),
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
