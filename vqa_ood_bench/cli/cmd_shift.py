"""``vqa-ood-bench shift``: Mahalanobis shift of every split relative to the ID training split.

    vqa-ood-bench shift RUN_DIR [--model ENCODER] [--suite S] [--data-root DIR] [--fit-size N|all] [--json]
    vqa-ood-bench shift MODEL --suite S [--out DIR] [--json]

RUN_DIR is a run folder written by ``vqa-ood-bench run`` (holding results.json): the means go
into its ``splits[*].shift`` and the per-sample scores into ``RUN_DIR/shift/{split}.npz``. The
feature encoder is, by default, the run's own model, rebuilt from its stored config and
``trained_state.pt`` (the pre-trained model for zero-shot runs); ``--model`` picks another one:
a run folder (the paper measures every run with the vanilla fine-tuned model, so shifts compare
across methods), ``tiny``, a local PaliGemma folder or a hub id. A run folder is measured on the
records it was scored on (its ``--limit`` and ``--data-root`` unless given here).

The Gaussian is fitted on ``--fit-size`` training records (default ``auto``: 5,000 on the
embedded suite, all elsewhere; ``all`` or ``0``: the whole split), chosen by a hash of their
question ids and ``--fit-seed`` (``shift.json``'s ``fit`` records the size and the rule).
Features are cached per model weights and records (``--cache-dir``), so a second ``shift`` of
the same model does not run it again.

MODEL is ``tiny``, a local PaliGemma folder or a hub id; its scores go to ``--out`` (default
``runs/shift-MODEL-SUITE``). ``--json`` prints the summary (``splits.NAME.shift.{vision,question,joint}``:
mean negative Mahalanobis distances; higher = closer to the training data).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import ConfigError
from .app import app
from .options import DataRootOpt, JsonOpt, LimitOpt

KindsOpt = Annotated[str, typer.Option("--kinds", help="Comma-separated feature kinds: vision, question, joint.")]
EncoderOpt = Annotated[
    Optional[str],
    typer.Option("--model", help="Feature encoder: a run folder, 'tiny', a PaliGemma folder or hub id (default: the run's own fine-tuned model)."),
]
ShiftSuiteOpt = Annotated[Optional[str], typer.Option("--suite", help="Benchmark suite (default: the run's).")]
ShrinkageOpt = Annotated[
    str, typer.Option("--shrinkage", help="Covariance shrinkage: auto (ledoit-wolf on the embedded suite, whose few question templates make the empirical covariance singular; none elsewhere, as in the paper), none, ledoit-wolf, or a number in [0, 1].")
]
RidgeOpt = Annotated[float, typer.Option("--ridge", help="Added to the covariance diagonal (after shrinkage).", min=0.0)]
PrecisionOpt = Annotated[
    str, typer.Option("--precision", help="float64 (default), mixed (float32 products in the fit) or float32 (also in scoring); faster on CPU, see shift/mahalanobis.py.")
]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Records per forward pass.", min=1)]
FitSizeOpt = Annotated[
    str,
    typer.Option("--fit-size", help="Training records the Gaussian is fitted on: a number, 'all' (or 0), or 'auto' (5000 on the embedded suite, all elsewhere). "
                                    "A deterministic subsample by a hash of the question ids and --fit-seed; recorded in shift.json."),
]
FitSeedOpt = Annotated[int, typer.Option("--fit-seed", help="Seed of the --fit-size subsample.")]
TrainLimitOpt = Annotated[Optional[int], typer.Option("--train-limit", help="Former name of --fit-size.", min=2, hidden=True)]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="Model dtype: float32, bfloat16 or float16.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="Device for the model and the estimator (default: cuda if available).")]
CacheOpt = Annotated[Optional[Path], typer.Option("--cache-dir", help="Feature / statistics cache (default: the package cache's shift/).")]
ShiftOutOpt = Annotated[Optional[Path], typer.Option("--out", help="Output folder when a model (not a run folder) is given.")]
SplitsOpt = Annotated[Optional[str], typer.Option("--splits", help="Comma-separated evaluation splits (default: all of the suite's).")]


def _parse_shrinkage(value: str):
    v = value.strip().lower()
    if v in ("none", "", "0"):
        return None
    if v in ("ledoit-wolf", "ledoit_wolf", "lw"):
        return "ledoit-wolf"
    try:
        x = float(v)
    except ValueError:
        raise ConfigError(f"--shrinkage must be none, ledoit-wolf or a number in [0, 1], got {value!r}") from None
    if not 0.0 <= x <= 1.0:
        raise ConfigError(f"--shrinkage must lie in [0, 1], got {x}")
    return x


@app.command("shift")
def shift(
    run_or_model: Annotated[str, typer.Argument(help="A run folder (with results.json), or a model: tiny / folder / hub id.")],
    model: EncoderOpt = None,
    suite: ShiftSuiteOpt = None,
    data_root: DataRootOpt = None,
    kinds: KindsOpt = "vision,question,joint",
    splits: SplitsOpt = None,
    shrinkage: ShrinkageOpt = "auto",
    ridge: RidgeOpt = 0.0,
    precision: PrecisionOpt = "float64",
    batch_size: BatchOpt = 32,
    fit_size: FitSizeOpt = "auto",
    fit_seed: FitSeedOpt = 0,
    train_limit: TrainLimitOpt = None,
    limit: LimitOpt = None,
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = None,
    cache_dir: CacheOpt = None,
    out: ShiftOutOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure vision / question / joint shift (negative Mahalanobis distance) of every split."""
    from rich.console import Console

    from ..data.suite import suite_names
    from ..shift.features import FEATURE_KINDS
    from ..shift.mahalanobis import PRECISIONS
    from ..shift.measure import resolve_fit_size

    kind_list = tuple(k.strip() for k in kinds.split(",") if k.strip())
    unknown = [k for k in kind_list if k not in FEATURE_KINDS]
    if unknown or not kind_list:
        raise ConfigError(f"unknown feature kind(s) {unknown or kinds!r}; known: {', '.join(FEATURE_KINDS)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"--dtype must be float32, bfloat16 or float16, got {dtype!r}")
    resolve_fit_size(fit_size, "")  # a bad --fit-size fails before any model is loaded
    shrink = _parse_shrinkage(shrinkage) if shrinkage.strip().lower() != "auto" else "auto"
    if data_root is not None and not data_root.is_dir():
        raise ConfigError(f"--data-root {str(data_root)!r} is not a folder")

    # run folder or model?
    target = Path(run_or_model)
    run_dir: Optional[Path] = None
    results = None
    if _is_run_dir(target):
        from ..report.schema import read_results

        run_dir = target
        results = read_results(target / "results.json")
        if suite is None:
            suite = results.suite
        elif suite != results.suite:
            raise ConfigError(f"the run was scored on suite {results.suite!r}, not {suite!r}")
        # measure on the records the run was scored on, so shifts and accuracies pair up
        run_cfg = results.config or {}
        if limit is None:
            limit = run_cfg.get("limit")
        if data_root is None and run_cfg.get("data_root"):
            data_root = Path(run_cfg["data_root"])
        encoder_source = model or str(target)  # default: the run's own fine-tuned model
    else:
        if model is not None:
            raise ConfigError(f"{run_or_model!r} is not a run folder (no results.json); give the encoder as the argument, not --model")
        encoder_source = run_or_model
        if suite is None:
            raise ConfigError("--suite is required when a model (not a run folder) is given")
    if suite not in suite_names():
        raise ConfigError(f"unknown suite {suite!r}; known: {', '.join(suite_names())}")
    if shrink == "auto":
        shrink = "ledoit-wolf" if suite == "embedded" else None

    err = Console(stderr=True)
    log = (lambda s: None) if as_json else (lambda s: err.print(f"[dim]{s}[/dim]"))

    import torch

    from ..shift.measure import measure_shift, save_shift, write_into_results

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    encoder, processor, encoder_name = _load_encoder(encoder_source, suite=suite, dtype=dtype, device=dev, log=log,
                                                     show_progress=not as_json)

    progress_cb = None
    bar = None
    if not as_json:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err)
        tasks: dict[str, int] = {}

        def progress_cb(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=total)
            bar.update(tasks[what], completed=done, total=total)

    split_list = [s.strip() for s in splits.split(",") if s.strip()] if splits else None
    try:
        if bar is not None:
            bar.start()
        report = measure_shift(
            encoder, processor, suite, data_root=data_root, cache_dir=cache_dir, kinds=kind_list, batch_size=batch_size,
            fit_size=fit_size, fit_seed=fit_seed, train_limit=train_limit, limit=limit, splits=split_list, shrinkage=shrink, ridge=ridge, precision=precision,
            model_name=encoder_name, estimator_device=dev, progress=progress_cb, log=log,
        )
    finally:
        if bar is not None:
            bar.stop()

    if run_dir is not None:
        folder = save_shift(report, run_dir)
        write_into_results(report, run_dir)
    else:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(encoder_source).name or encoder_source).strip("._") or "model"
        out_dir = out or Path("runs") / f"shift-{safe}-{suite}"
        folder = save_shift(report, out_dir)

    summary = report.to_json()
    summary["output"] = str(folder)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    _print_table(report, results, folder)


def _is_run_dir(path: Path) -> bool:
    return path.is_dir() and (path / "results.json").is_file()


def _load_encoder(source: str, *, suite: str, dtype: str, device: str, log, show_progress: bool):
    """(model, processor, name): a run folder's fine-tuned model, or a model by name / folder / hub id."""
    if _is_run_dir(Path(source)):
        from ..runner import load_run_model

        model, processor, res = load_run_model(source, device=device, dtype=dtype, log=log, show_progress=show_progress)
        return model, processor, f"{res.method} run {res.run_id} ({res.model.name_or_path})"
    from ..config import RunConfig
    from ..runner import load_model

    model, processor, info = load_model(RunConfig(model=source, dtype=dtype, device=device, suite=suite), log,
                                        show_progress=show_progress)
    return model, processor, info.name_or_path


def _print_table(report, results, folder: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    sizes = {s.n for s in report.splits.values()}
    same_n = len(sizes) == 1
    n_text = f", {sizes.pop()} per split" if same_n else ""
    of = (report.fit or {}).get("split_size")
    fitted = f"fitted on {report.n_train} of {of} records, seed {report.fit.get('seed', 0)}" if of and of > report.n_train else f"{report.n_train} records"
    table = Table(title=f"Shift vs {report.train_split} ({fitted}{n_text}) · encoder {report.model} · higher = closer to training")
    # names and numbers are never cut; only the descriptive "shift type" is shortened on a narrow terminal
    table.add_column("split", no_wrap=True)
    table.add_column("role", no_wrap=True, min_width=4)
    table.add_column("shift type", no_wrap=True, overflow="ellipsis", max_width=10)
    if not same_n:
        table.add_column("n", justify="right", no_wrap=True)
    for k in report.kinds:
        table.add_column(k, justify="right", no_wrap=True, min_width=6)
    if results is not None:
        table.add_column("VQA acc", justify="right", no_wrap=True, min_width=6)
    for name, s in report.splits.items():
        row = [name, s.role, s.shift_type] + ([] if same_n else [str(s.n)]) + [f"{s.means[k]:.2f}" for k in report.kinds]
        if results is not None:
            acc = results.splits[name].vqa_accuracy if name in results.splits else None
            row.append("" if acc is None else f"{acc:.2f}")
        table.add_row(*row)
    console = Console()
    console.print(table)
    console.print(f"per-sample scores: {folder}")
