"""``vqa-ood-bench eval``: predict and score a model (optionally with a PEFT adapter), no fine-tuning."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ..errors import ConfigError
from .app import app
from .cmd_run import (
    DeviceOpt,
    DtypeOpt,
    MaxNewTokensOpt,
    NumBeamsOpt,
    PREDICTION_OPTIONS,
    PromptOpt,
    prediction_overrides,
    wide_console,
)
from .options import DataRootOpt, JsonOpt, LimitOpt, OutOpt, SeedOpt, SuiteOpt, VariantOpt
from .options import FamilyOpt, check_family_choice, check_model_data_and_device, validation_error

BatchSizeOpt = Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Prediction batch size: questions answered together (the answers do not depend on it; default 128).")]
#: EvalConfig field -> the `eval` option that sets it, where the names differ
OPTION_OF = {**PREDICTION_OPTIONS, "scoring_variant": "variant", "adapter_path": "adapter", "model_revision": "model"}


@app.command("eval")
def eval_command(
    ctx: typer.Context,
    model: Annotated[Optional[str], typer.Option("--model", help="'tiny', a local folder (e.g. a merged checkpoint) or a hub id of a supported family. Default: the base model the --adapter records.")] = None,
    family: FamilyOpt = None,
    adapter: Annotated[Optional[Path], typer.Option("--adapter", help="PEFT adapter folder to apply, or a run folder (its adapter/, saved by LoRA runs).")] = None,
    suite: SuiteOpt = "embedded",
    data_root: DataRootOpt = None,
    limit: LimitOpt = None,
    out: OutOpt = None,
    variant: VariantOpt = "official",
    seed: SeedOpt = 0,
    cpu_threads: Annotated[Optional[int], typer.Option("--cpu-threads", min=0, max=1024, help="Intra-op CPU threads (0: torch's default; default: the adapter's run's, else 2).")] = None,
    batch_size: BatchSizeOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    max_new_tokens: MaxNewTokensOpt = None,
    num_beams: NumBeamsOpt = None,
    prompt: PromptOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Predict and score MODEL (with ADAPTER) on every split of the suite; write results.json,
    predictions and per-sample logs. Options not given take the values the adapter's run
    predicted with (prompt, max new tokens, beams, dtype, CPU threads), else the defaults."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from ..evaluate import adapter_defaults

    recorded: dict[str, object] = {}
    if adapter is not None:
        try:
            recorded = adapter_defaults(adapter)
        except ConfigError as exc:
            raise ConfigError(f"--adapter: {exc}") from None
    if model is None and "model" not in recorded:
        raise ConfigError("--model is required (the adapter records no base model)" if adapter else "--model is required: 'tiny', a folder or a hub id")
    fields: dict[str, object] = {
        "model": model or recorded["model"],
        "model_revision": recorded.get("model_revision") if model in (None, recorded.get("model")) else None,
        "adapter_path": None if adapter is None else str(adapter),
        "family": family or recorded.get("family"),
        "suite": suite, "data_root": None if data_root is None else str(data_root), "limit": limit, "seed": seed,
        "scoring_variant": variant,
        **{k: v for k, v in recorded.items() if k not in ("model", "model_revision", "family")},
        **({"cpu_threads": cpu_threads} if cpu_threads is not None else {}),
        **prediction_overrides(ctx.params),
    }
    from_record = sorted(k for k in recorded if k not in ("model", "model_revision") and k in fields
                         and OPTION_OF.get(k, k) not in {p for p, v in ctx.params.items() if v is not None})
    cfg = checked_eval_config(fields)

    from ..evaluate import evaluate_model
    from ..report.table import results_table

    err = Console(stderr=True)
    log = (lambda s: None) if as_json else (lambda s: err.print(f"[dim]{s}[/dim]"))
    if from_record:
        log(f"from the adapter's run: {', '.join(f'{k}={getattr(cfg, k)!r}' for k in from_record)}")
    results = evaluate_model(cfg, out, log=log, show_progress=not as_json)
    if as_json:
        typer.echo(results.model_dump_json(indent=2))
        return
    console = wide_console()
    console.print(results_table([results]))
    m = results.model
    what = m.name_or_path + (f" ({m.content_hash})" if m.content_hash else "")
    if m.adapter:
        what += f" + adapter {m.adapter} (sha256 {m.adapter_sha256[:12] if m.adapter_sha256 else '?'})"
    where = Path(out) if out else Path("runs") / results.run_id
    console.print(f"evaluated: {what}")
    console.print(f"results: {where / 'results.json'}  ·  per-sample logs: {where / 'samples'}  ·  total {results.timings.get('total_s', 0):.0f} s")


def checked_eval_config(fields: dict[str, object]):
    """The EvalConfig of ``fields``, names and values checked before any slow work; errors name
    the option."""
    from pydantic import ValidationError

    from ..config import EvalConfig
    from ..data.suite import suite_names
    from ..score.vqa_accuracy import VARIANTS

    if fields["suite"] not in suite_names():
        raise ConfigError(f"--suite: unknown suite {fields['suite']!r}; known: {', '.join(suite_names())}")
    if fields["scoring_variant"] not in VARIANTS:
        raise ConfigError(f"--variant: unknown scoring variant {fields['scoring_variant']!r}; known: {', '.join(VARIANTS)}")
    check_model_data_and_device(str(fields["model"]), fields["data_root"], fields.get("device"), named=eval_option)  # type: ignore[arg-type]
    check_family_choice(str(fields["model"]), fields.get("family"), named=eval_option)  # type: ignore[arg-type]
    try:
        return EvalConfig.model_validate(fields)
    except ValidationError as exc:
        raise validation_error(exc, named=eval_option) from None


def eval_option(field: str) -> str:
    """The `eval` option that sets EvalConfig's ``field`` ("--adapter" for adapter_path)."""
    return f"--{OPTION_OF.get(field, field).replace('_', '-')}"
