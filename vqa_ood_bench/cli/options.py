"""Options shared by several commands, as annotated types (one definition, one help text)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout instead of a table.")]
SuiteOpt = Annotated[str, typer.Option("--suite", help="Benchmark suite (see `datasets list`).")]
DataRootOpt = Annotated[
    Optional[Path], typer.Option("--data-root", help="Folder holding the released dataset files (not needed for the embedded suite).")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed for training and sampling.")]
ModelOpt = Annotated[
    str,
    typer.Option("--model", help="'tiny' (the embedded pre-trained model) or a PaliGemma hub id / local path."),
]
VariantOpt = Annotated[str, typer.Option("--variant", help="VQA accuracy variant: official, lavis or lenient.")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", help="Run folder to write into (default: a new folder under ./runs).")]
LimitOpt = Annotated[
    Optional[int], typer.Option("--limit", help="Use at most N records per split (smoke runs).", min=1)
]
