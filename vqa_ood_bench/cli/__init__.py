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


def _usage_error_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(usage errors, aborts) of every click the app may raise from.

    typer >= 0.2x ships its own copy of click (``typer._click``) whose exceptions do not derive
    from the installed click's, and code we call may still raise the installed click's; so both
    are matched, each only where it exists.
    """
    usage: list[type] = []
    aborts: list[type] = []
    for module, names in (
        ("typer.exceptions", ("TyperException", "Abort")),
        ("typer._click.exceptions", ("ClickException",)),
        ("click.exceptions", ("ClickException", "Abort")),
    ):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        for name in names:
            cls = getattr(mod, name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                (aborts if name == "Abort" else usage).append(cls)
    return tuple(usage), tuple(aborts)


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, print user errors on one line (exit 2), never a traceback."""
    _quiet_libraries()
    usage_errors, aborts = _usage_error_types()
    try:
        rv = app(args=argv, standalone_mode=False)
    except BenchError as exc:
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; partial outputs are kept and the run can be resumed", file=sys.stderr)
        return 130
    except SystemExit as exc:  # typer/click exit codes (e.g. --help)
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    except usage_errors as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()  # a bare command group: its help is the useful answer, not a one-liner
        else:
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            print(f"error: {_one_line(message)}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    except aborts:
        print("aborted", file=sys.stderr)
        return 1
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
