"""DiGraP's projection strength ω over training: ``RUN/omega.jsonl``, one JSON line per logged step.

Each line is ``{"step": t, "epoch": e, "mean": m, "omega": {tensor name: ω}}``, written with a
single ``write`` of a whole line and flushed, so a killed run leaves at worst one torn last line,
which :func:`read_omega_log` skips. A new training run starts the file afresh; if a step appears
twice (training resumed from a checkpoint), the later line wins.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional

from ..errors import DataError
from ..io import atomic_write_text

OMEGA_FILE = "omega.jsonl"


class OmegaLog:
    """Appends one line per logged step to ``path`` (created empty by :meth:`start`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def start(self) -> None:
        atomic_write_text(self.path, "")  # a new training run starts a new log

    def append(self, step: int, epoch: Optional[float], omegas: Mapping[Any, float]) -> None:
        values = {str(k): float(v) for k, v in omegas.items()}
        mean = sum(values.values()) / len(values) if values else 0.0
        line = json.dumps({"step": int(step), "epoch": None if epoch is None else round(float(epoch), 6), "mean": mean, "omega": values})
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()


def read_omega_log(path: str | Path) -> list[dict[str, Any]]:
    """The logged steps of an ``omega.jsonl`` in step order (last line per step wins)."""
    path = Path(path)
    if path.is_dir():
        path = path / OMEGA_FILE
    if not path.is_file():
        raise DataError("no omega log here; only DiGraP runs write one", path=path)
    by_step: dict[int, dict[str, Any]] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            step = int(entry["step"])
            entry["omega"] = {str(k): float(v) for k, v in entry["omega"].items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            if i == len(lines) - 1:  # a torn last line from a killed run
                continue
            raise DataError(f"line {i + 1} is not an omega record", path=path) from None
        by_step[step] = entry
    if not by_step:
        raise DataError("the omega log is empty (training logged no step)", path=path)
    return [by_step[s] for s in sorted(by_step)]
