"""What a sweep runs: its specification, the cells it expands to, and each cell's command.

A sweep is methods x adapters x method-parameter grids x seeds. Each cell is one ordinary
``vqa-ood-bench run`` into its own run folder under the sweep folder, so a cell is resumed,
locked and checked like any run, and a finished cell (a valid ``results.json`` of the same
method, parameters and seed) is never run again.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..config import MAX_SEED
from ..errors import ConfigError, DataError
from ..io import read_json

SPEC_FILE = "sweep-spec.json"


class MethodGrid(BaseModel):
    """One method and the grid of its parameters (every combination is a setting)."""

    model_config = ConfigDict(extra="forbid")

    method: str
    params: dict[str, Any] = Field(default_factory=dict)  # fixed parameters of every setting
    grid: dict[str, list[Any]] = Field(default_factory=dict)  # parameter -> values

    @field_validator("grid")
    @classmethod
    def _non_empty(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"grid {key!r} has no values")
            if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
                raise ValueError(f"grid {key!r} repeats a value: {values}")
        return grid

    def settings(self) -> list[dict[str, Any]]:
        """Every parameter combination, fixed ``params`` included, in grid order."""
        keys = list(self.grid)
        overlap = set(keys) & set(self.params)
        if overlap:
            raise ValueError(f"{self.method}: {sorted(overlap)} both fixed and swept")
        return [{**self.params, **dict(zip(keys, combo))} for combo in itertools.product(*(self.grid[k] for k in keys))]


class SweepSpec(BaseModel):
    """A sweep: the grid, and the options every cell's ``run`` gets."""

    model_config = ConfigDict(extra="forbid")

    methods: list[MethodGrid]
    adapters: list[str] = Field(default_factory=lambda: ["lora"])
    seeds: list[int] = Field(default_factory=lambda: [0])
    config: Optional[str] = None  # a run config file or packaged config name, for every cell
    suite: Optional[str] = None
    model: Optional[str] = None
    data_root: Optional[str] = None
    limit: Optional[int] = Field(default=None, ge=1)
    epochs: Optional[float] = Field(default=None, gt=0)

    @field_validator("methods")
    @classmethod
    def _some_method(cls, v: list[MethodGrid]) -> list[MethodGrid]:
        if not v:
            raise ValueError("a sweep needs at least one method")
        return v

    @field_validator("adapters")
    @classmethod
    def _adapters(cls, v: list[str]) -> list[str]:
        bad = [a for a in v if a not in ("lora", "full")]
        if not v or bad:
            raise ValueError(f"adapters must be a non-empty list of lora / full, got {v}")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if not v or len(set(v)) != len(v) or any(not 0 <= s <= MAX_SEED for s in v):
            raise ValueError(f"seeds must be distinct integers in [0, {MAX_SEED}], got {v}")
        return v


class Cell(BaseModel):
    """One run of the sweep."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str
    adapter: str
    params: dict[str, Any]
    seed: int

    @property
    def setting(self) -> str:
        """The cell without its seed: what the summary averages over seeds."""
        return setting_name(self.method, self.adapter, self.params)

    @property
    def folder(self) -> str:
        return f"{self.setting}-s{self.seed}"


_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]")


def setting_name(method: str, adapter: str, params: dict[str, Any]) -> str:
    """``digrap-lora-mu=0.5``: method, adapter and parameters in key order, safe as a folder name."""
    parts = [method, adapter, *(f"{k}={json.dumps(params[k])}" for k in sorted(params))]
    return _UNSAFE.sub("_", "-".join(parts))


def expand(spec: SweepSpec) -> list[Cell]:
    """The sweep's cells, seed by seed and within a seed setting by setting; a cell named twice
    runs once.

    Each method's parameters are checked by the method itself before anything runs, and a
    method without the adapter (e.g. linear probing has no LoRA variant) is an error, so a
    typo costs a second rather than a finished half of a grid.
    """
    from ..methods.base import get_method, method_names

    cells: list[Cell] = []
    seen: dict[str, Cell] = {}
    for entry in spec.methods:
        if entry.method not in method_names():
            raise ConfigError(f"unknown method {entry.method!r}; known: {', '.join(method_names())}")
        try:
            settings = entry.settings()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        for params in settings:
            try:
                method = get_method(entry.method, **params)
            except ConfigError as exc:
                raise ConfigError(f"{entry.method} {params}: {exc}") from None
            for adapter in spec.adapters:
                if adapter not in method.adapters:
                    raise ConfigError(f"{entry.method} has no {adapter} variant (it has: {', '.join(method.adapters)})")
                for seed in spec.seeds:
                    cell = Cell(method=entry.method, adapter=adapter, params=params, seed=seed)
                    if cell.folder in seen:
                        if seen[cell.folder] != cell:  # two settings that only differ by unsafe characters
                            raise ConfigError(f"two cells map to one folder {cell.folder!r}")
                        continue
                    seen[cell.folder] = cell
                    cells.append(cell)
    # Seed by seed: an interrupted or still-running sweep has every setting's first seed before
    # any setting's second, so its partial summary already compares all settings.
    order = {seed: i for i, seed in enumerate(spec.seeds)}
    return sorted(cells, key=lambda c: order[c.seed])


def cell_command(spec: SweepSpec, cell: Cell, run_dir: Path, *, threads: int) -> list[str]:
    """The ``vqa-ood-bench run`` command line of one cell (``--json``: the result on stdout)."""
    argv = [sys.executable, "-m", "vqa_ood_bench.cli", "run", "--method", cell.method, "--adapter", cell.adapter,
            "--seed", str(cell.seed), "--cpu-threads", str(threads), "--out", str(run_dir), "--json"]
    for key, value in sorted(cell.params.items()):
        argv += ["--param", f"{key}={json.dumps(value)}"]
    for option, value in (("--config", spec.config), ("--suite", spec.suite), ("--model", spec.model),
                          ("--data-root", spec.data_root), ("--limit", spec.limit), ("--epochs", spec.epochs)):
        if value is not None:
            argv += [option, str(value)]
    return argv


def finished(run_dir: Path, cell: Cell) -> bool:
    """Whether ``run_dir`` holds this cell's finished results.

    A results file of another run (other method, parameters or seed) is an error, not a
    finished cell: the sweep would otherwise summarise the wrong numbers under this name.
    """
    from ..report.schema import read_results

    path = run_dir / "results.json"
    if not path.is_file():
        return False
    res = read_results(path)  # a broken file: DataError naming it
    given = {k: res.method_params.get(k) for k in cell.params}
    if res.method != cell.method or res.seed != cell.seed or given != cell.params:
        raise DataError(
            f"holds a run of {res.method} seed {res.seed} {res.method_params}, not of this cell "
            f"({cell.method} seed {cell.seed} {cell.params}); move it away or choose another sweep folder",
            path=path,
        )
    return True


def load_spec(path: Path) -> SweepSpec:
    """A sweep specification from YAML or JSON; errors name the file and field."""
    import yaml

    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read sweep spec {path}: {exc.strerror or exc}") from None
    try:
        obj = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DataError(f"not valid YAML/JSON: {str(exc).splitlines()[0]}", path=path) from None
    return validate_spec(obj, where=str(path))


def validate_spec(obj: Any, *, where: str) -> SweepSpec:
    try:
        return SweepSpec.model_validate(obj)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise ConfigError(f"{where}: {loc}: {err['msg']}") from None


def stored_spec(out: Path) -> Optional[SweepSpec]:
    """The spec a sweep folder was started with (``None`` for a new folder)."""
    path = out / SPEC_FILE
    if not path.is_file():
        return None
    return validate_spec(read_json(path), where=str(path))
