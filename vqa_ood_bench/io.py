"""File helpers: atomic writes, checksums, JSON reading with errors that name the file, safe joins."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

from .errors import DataError


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see either the old file or the new one.

    The bytes go to a temporary file in the same folder (same file system), are flushed and
    fsync'ed, and the temporary file is renamed over the target.
    """
    return _atomic_write(path, lambda fh: fh.write(data))


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)``, atomically (see :func:`atomic_write_bytes`): a kill while saving
    leaves the previous file or none, never a truncated one. Streams to disk (no copy in memory)."""
    import torch

    return _atomic_write(path, lambda fh: torch.save(obj, fh))


def _atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
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


def file_digest(path: str | Path) -> dict[str, Any]:
    """``{"bytes": size, "sha256": hex digest}`` of a file, read in 1 MiB pieces."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": h.hexdigest()}


def digest_problem(path: str | Path, expected: Any) -> str | None:
    """Why ``path`` is not the file ``expected`` (a :func:`file_digest` record) describes; None
    when it is. The size is compared first, so a truncated file is named as such cheaply."""
    path = Path(path)
    if not isinstance(expected, dict) or not isinstance(expected.get("bytes"), int) or not isinstance(expected.get("sha256"), str):
        return f"no valid size/sha256 record for {path.name}"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return f"{path.name} is missing"
    except OSError as exc:
        return f"{path.name} cannot be read ({exc.strerror or exc})"
    if size != expected["bytes"]:
        return f"{path.name} has {size} bytes, {expected['bytes']} were written (truncated or replaced)"
    try:
        actual = file_digest(path)["sha256"]
    except OSError as exc:
        return f"{path.name} cannot be read ({exc.strerror or exc})"
    if actual != expected["sha256"]:
        return f"{path.name} does not match the sha256 recorded when it was written"
    return None


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
