"""Predictions files: JSON lines ``{"question_id": ..., "prediction": ...}`` (+ optional fields).

Writing appends one line per question and flushes after every batch, so a killed run loses at
most the batch in flight; :func:`read_predictions` tolerates a torn last line (the kill case)
and refuses duplicates, so resuming never counts a question twice.

A last line without a final newline is torn only when it is not a whole JSON value: a line is
written as ``json.dumps(row) + "\n"`` in one go, and no proper prefix of a JSON object parses,
so a last line that parses was written completely (the newline may simply be missing, e.g. a
file made or edited by hand). It counts like any other line, for scoring and for resuming.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from ..errors import DataError


def read_predictions(path: str | Path, *, allow_torn_tail: bool = True) -> dict[str, dict[str, Any]]:
    """question_id → the line's object. Errors name the file and line number.

    ``allow_torn_tail``: a last line that does not parse is dropped (a kill cut it; resume
    redoes that question) instead of being an error. Scoring passes False: a file still being
    written, or cut short, must not be scored as if it were whole.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("predictions file not found", path=path)
    out: dict[str, dict[str, Any]] = {}
    with open(path, "rb") as fh:
        lines = fh.read().split(b"\n")
    # After the split, the last element is what follows the final "\n": empty for a terminated file.
    last = len(lines)
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            if lineno == last:
                if allow_torn_tail:
                    break
                raise DataError(f"line {lineno}: the file ends in the middle of a line (malformed JSON: {exc}); "
                                "was the run that wrote it stopped?", path=path) from None
            raise DataError(f"line {lineno}: malformed JSON ({exc})", path=path) from None
        if not isinstance(obj, dict) or "question_id" not in obj or "prediction" not in obj:
            raise DataError(f"line {lineno}: expected an object with question_id and prediction", path=path)
        qid = str(obj["question_id"])
        if not isinstance(obj["prediction"], str):
            raise DataError(f"line {lineno}: prediction must be a string", path=path, record=qid)
        if qid in out:
            raise DataError(f"line {lineno}: question_id {qid!r} appears twice", path=path, record=qid)
        obj["question_id"] = qid
        out[qid] = obj
    return out


class PredictionWriter:
    """Append-only writer that resumes: questions already in the file are reported as done.

    A torn tail left by a kill is cut off before appending, so the file stays valid JSONL.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            self.done = read_predictions(self.path)
            self._truncate_torn_tail()
        self._fh = open(self.path, "a", encoding="utf-8")

    def _truncate_torn_tail(self) -> None:
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        try:
            json.loads(data[cut:])
            whole = True
        except (json.JSONDecodeError, UnicodeDecodeError):
            whole = False
        with open(self.path, "r+b") as fh:
            if whole:
                # read_predictions counted this line as done: keep it, and end it so the next row
                # starts on a line of its own.
                fh.seek(0, os.SEEK_END)
                fh.write(b"\n")
            else:
                fh.truncate(cut)
            fh.flush()
            os.fsync(fh.fileno())

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            qid = str(row["question_id"])
            if qid in self.done:
                raise DataError(f"question_id {qid!r} already predicted", path=self.path, record=qid)
            row = {**row, "question_id": qid}
            self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            self.done[qid] = row
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "PredictionWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
