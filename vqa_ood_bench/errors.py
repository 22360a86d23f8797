"""Errors a user can act on.

Every error raised for bad input derives from :class:`BenchError`; the CLI prints its message
on one line and exits non-zero instead of showing a traceback. Messages name the file and,
where there is one, the record, so the user can find and fix the input.
"""

from __future__ import annotations

from pathlib import Path


class BenchError(Exception):
    """An error caused by input or configuration, reported to the user in one line."""


class DataError(BenchError):
    """Bad or missing data: names the file and (optionally) the record at fault."""

    def __init__(self, message: str, *, path: str | Path | None = None, record: object = None):
        self.path = None if path is None else str(path)
        self.record = record
        where = ""
        if self.path is not None:
            where = f"{self.path}"
            if record is not None:
                where += f" [record {record}]"
            where += ": "
        elif record is not None:
            where = f"[record {record}]: "
        super().__init__(where + message)


class ConfigError(BenchError, ValueError):
    """An unknown name or an invalid option value.

    Also a ``ValueError``, the exception Python code (torch's optimizers among it) raises for
    bad arguments: a user of ``vqa_ood_bench.optim`` catches ``ValueError`` as for torch.
    """


class TrainingError(BenchError):
    """Training could not go on (e.g. a non-finite loss); the checkpoint so far is kept."""
