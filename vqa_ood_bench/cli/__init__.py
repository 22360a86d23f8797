"""Command-line interface: ``vqa-ood-bench``.

Commands live in ``cmd_*.py`` modules of this package and register on the shared app; this
module imports them all and turns :class:`BenchError` into a one-line message.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

from ..errors import BenchError
from .app import app

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name.startswith("cmd_"):
        importlib.import_module(f"{__name__}.{_mod.name}")


def _quiet_libraries() -> None:
    """Our own progress bars and messages replace the libraries' (weights loading bars etc.)."""
    import warnings

    # transformers' Trainer calls its own deprecated helpers; the warnings are not the user's to act on
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, print user errors on one line (exit 2), never a traceback."""
    _quiet_libraries()
    try:
        rv = app(args=argv, standalone_mode=False)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; partial outputs are kept and the run can be resumed", file=sys.stderr)
        return 130
    except SystemExit as exc:  # typer/click exit codes (e.g. --help)
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    except Exception as exc:  # click usage errors carry their own formatting
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            return exc.exit_code
        if isinstance(exc, click.exceptions.Abort):
            print("aborted", file=sys.stderr)
            return 1
        raise
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
