"""File helpers: atomic writes, JSON reading with errors that name the file, safe joins."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import DataError


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see either the old file or the new one.

    The bytes go to a temporary file in the same folder (same file system), are flushed and
    fsync'ed, and the temporary file is renamed over the target.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file; a missing or malformed file raises :class:`DataError` naming it."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise DataError("file not found", path=path) from None
    except IsADirectoryError:
        raise DataError("expected a file, found a folder", path=path) from None
    except json.JSONDecodeError as exc:
        raise DataError(f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", path=path) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text ({exc.reason})", path=path) from None


def safe_join(root: str | Path, relative: str | Path, *, record: object = None) -> Path:
    """Join ``relative`` under ``root`` and refuse any result outside ``root``.

    Annotation files name images by relative paths; a path such as ``../../etc/passwd`` or an
    absolute path must not let a data file read outside the folder the user pointed us at.
    """
    root_resolved = Path(root).resolve()
    candidate = (root_resolved / Path(relative)).resolve()
    if candidate != root_resolved and root_resolved not in candidate.parents:
        raise DataError(f"path {str(relative)!r} escapes the data root {str(root_resolved)!r}", path=root, record=record)
    return candidate


def ensure_writable_dir(path: str | Path) -> Path:
    """Create ``path`` if needed and check that a file can be written in it."""
    from .errors import ConfigError

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-probe-", delete=True)
        probe.close()
    except OSError as exc:
        raise ConfigError(f"output folder {str(path)!r} is not writable: {exc.strerror or exc}") from None
    return path
