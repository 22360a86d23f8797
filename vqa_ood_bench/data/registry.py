"""Datasets by name: what each is, its role and shift type, and how to read it.

A loader is ``loader(root: Path, **options) -> Iterable[VQARecord]``. ``root`` is the folder
the user points at (``--data-root``); the embedded datasets ignore it and read the package
cache. Loaders register with :func:`register_dataset`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import ConfigError
from ..registry import Registry
from .records import ROLES, SHIFT_TYPES, VQARecord

Loader = Callable[..., Iterable[VQARecord]]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    role: str
    shift_type: str
    loader: Loader
    description: str = ""
    expected_files: tuple[str, ...] = ()
    licence: str = ""
    source: str = ""
    stands_in_for: str = ""
    default_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"dataset {self.name!r}: role must be one of {ROLES}, got {self.role!r}")
        if self.shift_type not in SHIFT_TYPES:
            raise ValueError(f"dataset {self.name!r}: shift_type must be one of {SHIFT_TYPES}, got {self.shift_type!r}")

    def load(self, root: str | Path | None, **options: Any) -> Iterable[VQARecord]:
        opts = {**self.default_options, **options}
        return self.loader(Path(root) if root is not None else None, **opts)


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(
    name: str,
    *,
    role: str,
    shift_type: str,
    description: str = "",
    expected_files: Iterable[str] = (),
    licence: str = "",
    source: str = "",
    stands_in_for: str = "",
    default_options: dict[str, Any] | None = None,
) -> Callable[[Loader], Loader]:
    """Decorator: register ``loader`` under ``name``."""

    def deco(loader: Loader) -> Loader:
        DATASETS.add(
            name,
            DatasetSpec(
                name=name,
                role=role,
                shift_type=shift_type,
                loader=loader,
                description=description,
                expected_files=tuple(expected_files),
                licence=licence,
                source=source,
                stands_in_for=stands_in_for,
                default_options=dict(default_options or {}),
            ),
        )
        return loader

    return deco


def get_dataset(name: str) -> DatasetSpec:
    _import_builtin_loaders()
    return DATASETS.get(name)


def dataset_names() -> list[str]:
    _import_builtin_loaders()
    return DATASETS.names()


def _import_builtin_loaders() -> None:
    """Import the modules whose decorators fill the registry (lazily, to keep start-up fast)."""
    import importlib
    import pkgutil

    from . import formats
    from .embedded import datasets as _embedded  # noqa: F401

    for mod in pkgutil.iter_modules(formats.__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{formats.__name__}.{mod.name}")


def require_root(root: Path | None, dataset: str) -> Path:
    """Loaders of released data need ``--data-root``; say so clearly when it is missing."""
    if root is None:
        raise ConfigError(f"dataset {dataset!r} reads released files: pass --data-root DIR")
    if not Path(root).is_dir():
        raise ConfigError(f"dataset {dataset!r}: data root {str(root)!r} is not a folder")
    return Path(root)
