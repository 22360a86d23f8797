"""The run configs that ship with the package: ``embedded.yaml`` and the paper recipes in ``paper/``.

``run --config NAME`` takes a packaged config by name when ``NAME`` is not a file:
``embedded``, ``paper/vqa-digrap`` (the ``.yaml`` suffix is optional).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

SUFFIX = ".yaml"


def _root() -> Path:
    return Path(str(files(__name__)))


def names() -> list[str]:
    """Every packaged config's name, e.g. ``embedded``, ``paper/vqa-digrap``."""
    root = _root()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob(f"*{SUFFIX}"))


def path(name: str) -> Path | None:
    """The packaged config file called ``name`` (``paper/vqa-digrap`` or ``paper/vqa-digrap.yaml``), or None."""
    rel = name.replace("\\", "/").strip("/")
    if not rel.endswith(SUFFIX):
        rel += SUFFIX
    if rel.startswith(".") or "/." in rel:  # no ../ out of the package
        return None
    candidate = _root() / rel
    return candidate if candidate.is_file() else None
