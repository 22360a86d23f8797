"""``vqa-ood-bench run``: the main job (fine-tune, predict, score, report)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ..errors import BenchError, ConfigError
from .app import app
from .options import DataRootOpt, JsonOpt, LimitOpt, ModelOpt, OutOpt, SeedOpt, VariantOpt, parse_key_values, positive_number
from .options import FamilyOpt, check_family_choice, check_model_data_and_device, validation_error

DEFAULT_METHOD = "vanilla"
ALL = "all"
BASELINE = "vanilla"
ALPHA = 0.05  # significance level of the Δ marks of `run --method all`

# Prediction options, shared with `eval` (cmd_eval.py). None: the config's value (RunConfig's default).
BatchSizeOpt = Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Prediction batch size: questions answered together (the answers do not depend on it; default: the config's eval_batch_size, 128). Training batches are set by the config's train.batch_size.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="torch device: cpu, cuda, cuda:1, mps (default: cuda when available, else cpu).")]
DtypeOpt = Annotated[Optional[str], typer.Option("--dtype", help="dtype of the model's weights: float32 (default), bfloat16, float16.")]
MaxNewTokensOpt = Annotated[Optional[int], typer.Option("--max-new-tokens", min=1, help="Longest answer generated, in tokens (default 4).")]
NumBeamsOpt = Annotated[Optional[int], typer.Option("--num-beams", min=1, help="Beam width; 1 (default) is greedy decoding.")]
PromptOpt = Annotated[Optional[str], typer.Option("--prompt", help="Prompt template, with {question} where the question goes (default 'answer en {question}', PaliGemma's VQA prefix).")]
#: config field -> the option that sets it, for the prediction options
PREDICTION_OPTIONS = {"eval_batch_size": "batch_size", "device": "device", "dtype": "dtype", "max_new_tokens": "max_new_tokens",
                      "num_beams": "num_beams", "prompt": "prompt"}


def prediction_overrides(values: dict[str, object]) -> dict[str, object]:
    """Config fields set by the prediction options given (``values``: the command's parameters)."""
    return {field: values[option] for field, option in PREDICTION_OPTIONS.items() if values.get(option) is not None}


@app.command("run")
def run(
    ctx: typer.Context,
    method: Annotated[str, typer.Option("--method", help="Fine-tuning method (zeroshot, vanilla, …), or 'all': every method into OUT/<method>/ and a table with ΔID/ΔOOD vs vanilla.")] = DEFAULT_METHOD,
    adapter: Annotated[str, typer.Option("--adapter", help="lora or full fine-tuning.")] = "lora",
    model: ModelOpt = "tiny",
    family: FamilyOpt = None,
    suite: Annotated[str, typer.Option("--suite", help="Benchmark suite: embedded (default), paper-vqa, domainnet-ovqa.")] = "embedded",
    data_root: DataRootOpt = None,
    seed: SeedOpt = 0,
    out: OutOpt = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML/JSON run config file, or a packaged config by name (embedded, paper/vqa-digrap, …); command-line options given explicitly override it.")] = None,
    variant: VariantOpt = "official",
    epochs: Annotated[Optional[float], typer.Option("--epochs", help="Training epochs (> 0); replaces the config's step budget (default: the config's; with --limit and no --config: 1).", callback=positive_number)] = None,
    limit: LimitOpt = None,
    cpu_threads: Annotated[int, typer.Option("--cpu-threads", min=0, max=1024, help="Intra-op CPU threads (0: torch's default). The numbers depend on it; the embedded suite's published ones are for 2.")] = 2,
    param: Annotated[Optional[list[str]], typer.Option("--param", help="Method parameter KEY=VALUE (repeatable; VALUE read as JSON where it is: 0.5, true, null), e.g. --param mu=0.5 --param omega=1.0; overrides the config's method_params.")] = None,
    batch_size: BatchSizeOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    max_new_tokens: MaxNewTokensOpt = None,
    num_beams: NumBeamsOpt = None,
    prompt: PromptOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune MODEL with METHOD on the suite's training split, score every split, write results.json."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Every value is checked before any slow work (suite building, model loading): a typo should
    # cost a second, not the minutes a model takes to load before the value is first used.
    if param and method == ALL:
        raise ConfigError("--param sets one method's parameters; for --method all put method_params in a --config")
    cli_params = parse_params(param) if param else {}

    from ..config import load_config

    cfg = load_config(config) if config else default_config()
    config_method = cfg.method  # under --method all, the config's method_params belong to this method
    given = {k for k, v in ctx.params.items() if ctx.get_parameter_source(k).name != "DEFAULT"}
    overrides = {
        "method": method, "adapter": adapter, "model": model, "family": family, "suite": suite, "seed": seed, "scoring_variant": variant,
        "data_root": str(data_root) if data_root else None, "limit": limit, "cpu_threads": cpu_threads,
    }
    update = {k: v for k, v in overrides.items() if OPTION_OF.get(k, k) in given or not config}
    cfg = cfg.model_copy(update={**update, **prediction_overrides(ctx.params)})
    if epochs is not None:  # an explicit epoch count replaces the config's step budget
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": epochs, "max_steps": -1})})
    elif limit is not None and not config:
        # Smoke runs: the default's 400-step budget would loop over a few records for minutes;
        # one epoch over the limited training split is what a smoke run means.
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 1.0, "max_steps": -1})})
    if cli_params:
        cfg = cfg.model_copy(update={"method_params": {**cfg.method_params, **cli_params}})
    from ..classify import is_classification_suite

    if is_classification_suite(cfg.suite):  # image classification: its own methods, defaults and table
        from ..classify.cli import run_command

        return run_command(cfg, given, config, out, update=update, epochs=epochs, limit=limit, as_json=as_json)
    cfg = checked_config(cfg, given, config)
    check_method_params(cfg, cli_params, config, sweep_params_of=config_method if method == ALL else None)

    from ..report.table import results_table
    from ..runner import run_benchmark

    err = Console(stderr=True)
    log = (lambda s: None) if as_json else (lambda s: err.print(f"[dim]{s}[/dim]"))
    if method == ALL:
        run_sweep(cfg, out, log=log, as_json=as_json, params_for=config_method)
        return
    results = run_benchmark(cfg, out, log=log, show_progress=not as_json)
    if as_json:
        typer.echo(results.model_dump_json(indent=2))
        return
    console = wide_console()
    console.print(results_table([results]))
    run_dir = Path(out) if out else None
    where = run_dir or Path("runs") / results.run_id
    console.print(f"results: {where / 'results.json'}  ·  total {results.timings.get('total_s', 0):.0f} s  ·  peak memory {results.peak_memory_mb:.0f} MB")


#: RunConfig field -> the `run` option (typer parameter name) that sets it
OPTION_OF = {"scoring_variant": "variant", "eval_batch_size": "batch_size"}


def checked_config(cfg, given: set[str], config: Optional[Path]):
    """``cfg`` validated, with names checked against the known ones; errors name the option or the file."""
    from pydantic import ValidationError

    from ..config import RunConfig
    from ..data.suite import suite_names
    from ..methods.base import method_names
    from ..score.vqa_accuracy import VARIANTS

    def source(field: str) -> str:
        """Where the user wrote ``field``: the option (message as is) or the config file (its name first)."""
        return "" if OPTION_OF.get(field, field) in given or not config else f"{config}: "

    def named(field: str) -> str:
        """``field`` as the user wrote it: ``--option`` or ``CONFIG: field``."""
        option = OPTION_OF.get(field, field)
        return f"--{option.replace('_', '-')}" if option in given or not config else f"{config}: {field}"

    if cfg.method != ALL and cfg.method not in method_names():
        raise ConfigError(f"{source('method')}unknown method {cfg.method!r}; known: {', '.join(method_names())}, or {ALL}")
    if cfg.suite not in suite_names():
        raise ConfigError(f"{source('suite')}unknown suite {cfg.suite!r}; known: {', '.join(suite_names())}")
    if cfg.scoring_variant not in VARIANTS:
        raise ConfigError(f"{source('scoring_variant')}unknown scoring variant {cfg.scoring_variant!r}; known: {', '.join(VARIANTS)}")
    if cfg.adapter not in ("lora", "full"):
        raise ConfigError(f"{source('adapter')}unknown adapter {cfg.adapter!r}; known: lora, full")
    check_model_data_and_device(cfg.model, cfg.data_root, cfg.device, named=named)
    check_family_choice(cfg.model, cfg.family, named=named)

    def named_loc(loc: str) -> str:
        """A validation error's field as the user wrote it; --epochs sets train.epochs."""
        return named("epochs") if loc == "train.epochs" and "epochs" in given else named(loc)

    try:
        return RunConfig.model_validate(cfg.model_dump())
    except ValidationError as exc:  # a safety net: the options' own checks catch their values first
        raise validation_error(exc, named=named_loc) from None


def check_method_params(cfg, cli_params: dict[str, object], config: Optional[Path], *, sweep_params_of: Optional[str]) -> None:
    """The method's parameters, checked by the method itself (types, ranges, the adapter); an
    error names where the bad value was written (``--param`` or the config file).

    ``sweep_params_of``: under ``--method all``, the method the config's ``method_params`` belong to.
    """
    from ..methods.base import get_method

    name = sweep_params_of or cfg.method
    from_config = {k: v for k, v in cfg.method_params.items() if k not in cli_params}
    for params, where in ((from_config, f"{config}: method_params"), (cli_params, "--param")):
        if params:
            try:
                get_method(name, **params)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
    if sweep_params_of is None:  # under --method all a method without the adapter is skipped, not an error
        get_method(cfg.method, **cfg.method_params).check(cfg)


def parse_params(items: list[str]) -> dict[str, object]:
    """``--param`` values: :func:`.options.parse_key_values`, single values only."""
    params = parse_key_values(items, "--param", "mu=0.5")
    for key, value in params.items():
        if isinstance(value, (dict, list)):
            raise ConfigError(f"--param {key}: VALUE must be a single number, boolean, null or string")
    return params


def run_sweep(cfg, out: Optional[Path], *, log, as_json: bool, params_for: Optional[str] = None) -> None:
    """``run --method all``: every method into ``OUT/<method>/`` (each a normal, resumable run
    folder), then the paper-form table with ΔID / ΔOOD (%) against vanilla, "*" where the
    difference is significant (paired test on the same questions), and ``OUT/sweep.json``."""
    from ..io import atomic_write_json, ensure_writable_dir
    from ..methods.base import get_method, sweep_order
    from ..report.table import deltas, find_baseline, results_table
    from ..runner import new_run_dir, run_benchmark

    base = ensure_writable_dir(out or new_run_dir(method=ALL))
    runs = []
    for name in sweep_order():
        # method_params of a config file belong to the method that file names, not to the others
        params = cfg.method_params if name == params_for else {}
        if cfg.adapter not in get_method(name, **params).adapters:
            log(f"{name}: skipped (no {cfg.adapter} variant)")
            continue
        log(f"[{len(runs) + 1}] {name} ({cfg.adapter}) → {base / name}")
        runs.append(run_benchmark(cfg.model_copy(update={"method": name, "method_params": params}), base / name,
                                  log=log, show_progress=not as_json))
    reference = find_baseline(runs, BASELINE, cfg.adapter)
    try:
        tests = significance_vs_reference(base, runs, reference)
    except BenchError as exc:  # the runs are written; a failed test only costs the marks
        typer.echo(f"warning: differences from {BASELINE} not tested for significance: {exc}", err=True)
        tests = {}
    summary = {
        "baseline": BASELINE, "adapter": cfg.adapter, "suite": cfg.suite, "alpha": ALPHA,
        "methods": {r.method: {"results": f"{r.method}/results.json", "averages": r.averages.model_dump(),
                               "averages_ci": {k: v.model_dump() for k, v in r.averages_ci.items()},
                               "delta_id_pct": deltas(r, reference)[0], "delta_ood_pct": deltas(r, reference)[1],
                               "vs_baseline": tests.get(r.run_id)} for r in runs},
    }
    atomic_write_json(base / "sweep.json", summary)
    if as_json:
        typer.echo(json.dumps({"out": str(base), **summary}, indent=2))
        return
    console = wide_console()
    marks = {run_id: (t["id"]["significant"] if "id" in t else None, t["ood"]["significant"] if "ood" in t else None)
             for run_id, t in tests.items()}
    console.print(results_table(runs, delta_baseline=BASELINE, significance=marks, alpha=ALPHA))
    console.print(f"results: {base}/<method>/results.json  ·  summary: {base / 'sweep.json'}")


def significance_vs_reference(base: Path, runs: list, reference) -> dict[str, dict[str, dict]]:
    """run_id -> {"id"|"ood": {difference, interval, p_value, significant, ...}}: each run's ID and
    OOD averages against the reference (vanilla) run's on the same questions (paired bootstrap
    interval, sign-flip p-value, significant at :data:`ALPHA`). Runs whose Δ the table leaves
    blank (zero-shot, the reference itself) are not tested."""
    from ..report.table import deltas
    from ..report.compare import paired_vs_baseline

    if reference is None:
        return {}
    tested = [r for r in runs if r is not reference and any(d is not None for d in deltas(r, reference))]
    if not tested:
        return {}
    found = paired_vs_baseline(base / reference.method, [base / r.method for r in tested], confidence=1.0 - ALPHA)
    return {r.run_id: {k: v.to_json() for k, v in found[base / r.method].items()} for r in tested}


def wide_console() -> Console:
    """A console at least wide enough for the paper-style table, also when output is piped."""
    probe = Console()
    return Console(width=max(probe.width, 190)) if not probe.is_terminal else probe


def default_config():
    """The embedded default: tuned so a warm run fits in ~3 minutes on 2 CPU cores."""
    from ..config import RunConfig, TrainConfig

    return RunConfig(train=TrainConfig(learning_rate=1e-3, weight_decay=0.0, max_steps=400, batch_size=32, warmup_ratio=0.05, eval_steps=0, validation_size=300))
