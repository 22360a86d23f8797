"""``vqa-ood-bench run`` for the classification suites: defaults, checks, ``--method all``, tables.

``run`` hands a classification suite here once its options are merged (config file, then the
options given). Without ``--config`` the defaults are :func:`default_config`'s (the CPU suite's
budget); with one, the file's. ``--method all`` runs every method that applies into
``OUT/<method>/`` (each a normal, resumable run folder) and prints the paper-form table with
ΔID / ΔOOD (%) against vanilla; ``OUT/sweep.json`` keeps the numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from ..config import RunConfig, TrainConfig
from ..errors import BenchError, ConfigError
from . import methods as M

ALL = "all"
BASELINE = "vanilla"


def default_config() -> RunConfig:
    """The embedded-domains default: the tiny model's vision tower, AdamW, 200 steps of 32."""
    return RunConfig(method="vanilla", adapter="full", model="tiny", suite="embedded-domains", eval_batch_size=256,
                     train=TrainConfig(learning_rate=1e-3, weight_decay=0.0, max_steps=200, batch_size=32, warmup_ratio=0.05,
                                       eval_steps=0, validation_size=0, save_steps=50))


def run_command(cfg: RunConfig, given: set[str], config: Optional[Path], out: Optional[Path], *, update: dict[str, Any],
                epochs: Optional[float], limit: Optional[int], as_json: bool) -> None:
    """The ``run`` command for a classification suite (``cfg``: the options merged by ``run``)."""
    if config is None:  # the VQA defaults do not apply: start from the classification ones
        chosen = {k: v for k, v in update.items() if k in given or k in ("suite", "seed", "method")}
        cfg = default_config().model_copy(update={**chosen, "method_params": dict(cfg.method_params)})
        if epochs is not None or limit is not None:
            cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": epochs or 1.0, "max_steps": -1})})
    cfg = checked(cfg, config)
    from ..report.table import results_table
    from ..runner import run_benchmark
    from rich.console import Console

    err = Console(stderr=True)
    log = (lambda s: None) if as_json else (lambda s: err.print(f"[dim]{s}[/dim]"))
    if cfg.method == ALL:
        run_all(cfg, out, log=log, as_json=as_json)
        return
    results = run_benchmark(cfg, out, log=log, show_progress=not as_json)
    if as_json:
        typer.echo(results.model_dump_json(indent=2))
        return
    from ..cli.cmd_run import wide_console

    console = wide_console()
    console.print(results_table([results], metric="exact_match", title=f"{results.suite} suite · top-1 accuracy", intervals=False))
    where = Path(out) if out else Path("runs") / results.run_id
    console.print(f"results: {where / 'results.json'}  ·  total {results.timings.get('total_s', 0):.0f} s")


def checked(cfg: RunConfig, config: Optional[Path]) -> RunConfig:
    """Names and values checked before any slow work; errors name the config file where it applies."""
    from pydantic import ValidationError

    where = f"{config}: " if config else ""
    if cfg.method != ALL:
        try:
            M.make_plan(cfg.method, cfg.method_params)
        except ConfigError as exc:
            raise ConfigError(f"{where}{exc}") from None
    if cfg.adapter != "full":
        raise ConfigError(f"{where}image classification fine-tunes all weights: use --adapter full (linear-probe trains the head alone)")
    if cfg.data_root is not None and not Path(cfg.data_root).is_dir():
        raise ConfigError(f"--data-root {cfg.data_root!r} is not a folder")
    try:
        return RunConfig.model_validate(cfg.model_dump())
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"{where}{'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from None


def applicable(name: str, cfg: RunConfig) -> Optional[str]:
    """Why ``name`` does not apply to this run (None: it does)."""
    if name == "zeroshot" and not (cfg.model.startswith("open_clip:") and "@" in cfg.model):
        return "no zero-shot head (only pre-trained open_clip backbones have one)"
    return None


def run_all(cfg: RunConfig, out: Optional[Path], *, log, as_json: bool) -> list:
    """Every applicable method into ``OUT/<method>/``, then the table and ``OUT/sweep.json``."""
    from ..io import atomic_write_json, ensure_writable_dir
    from ..report.table import deltas, find_baseline, results_table
    from ..runner import new_run_dir, run_benchmark

    base = ensure_writable_dir(out or new_run_dir(method=ALL))
    # The run options (optimizer, momentum, head) hold for every method; the rest of a config's
    # method_params belong to the method that config names.
    run_params = {k: v for k, v in cfg.method_params.items() if k in M.RUN_PARAMS}
    runs = []
    for name in M.METHODS:
        why = applicable(name, cfg)
        if why:
            log(f"{name}: skipped ({why})")
            continue
        log(f"[{len(runs) + 1}] {name} → {base / name}")
        runs.append(run_benchmark(cfg.model_copy(update={"method": name, "method_params": dict(run_params)}), base / name,
                                  log=log, show_progress=not as_json))
    reference = find_baseline(runs, BASELINE)
    summary = {
        "task": "image-classification", "baseline": BASELINE, "suite": cfg.suite, "seed": cfg.seed, "metric": "top-1 (exact_match)",
        "methods": {r.method: {"results": f"{r.method}/results.json", "averages": r.averages.model_dump(),
                               "splits": {n: s.exact_match for n, s in r.splits.items()},
                               "delta_id_pct": deltas(r, reference)[0], "delta_ood_pct": deltas(r, reference)[1]} for r in runs},
    }
    atomic_write_json(base / "sweep.json", summary)
    if as_json:
        typer.echo(json.dumps({"out": str(base), **summary}, indent=2))
        return runs
    from ..cli.cmd_run import wide_console

    console = wide_console()
    console.print(results_table(runs, metric="exact_match", title=f"{cfg.suite} suite · top-1 accuracy (seed {cfg.seed})",
                                delta_baseline=BASELINE, intervals=False))
    console.print(f"results: {base}/<method>/results.json  ·  summary: {base / 'sweep.json'}")
    return runs


def seeds_summary(sweep_dirs: list[Path]) -> dict[str, Any]:
    """Mean and sample standard deviation over seeds of each method's ID and OOD averages, from
    the ``sweep.json`` of several ``run --method all`` folders (one per seed)."""
    import statistics

    per: dict[str, dict[str, list[float]]] = {}
    for folder in sweep_dirs:
        path = Path(folder) / "sweep.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise BenchError(f"{path}: not a sweep summary ({exc})") from None
        for method, row in data.get("methods", {}).items():
            for key in ("id", "ood"):
                value = row.get("averages", {}).get(key)
                if value is not None:
                    per.setdefault(method, {}).setdefault(key, []).append(float(value))
    out = {}
    for method, vals in per.items():
        out[method] = {key: {"mean": statistics.fmean(v), "sd": statistics.stdev(v) if len(v) > 1 else None, "n": len(v)}
                       for key, v in vals.items()}
    return out


def main(argv: Optional[list[str]] = None) -> None:
    """``python -m vqa_ood_bench.classify.cli SWEEP_DIR ...``: the over-seeds summary as JSON."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if not args:
        raise SystemExit("usage: python -m vqa_ood_bench.classify.cli SWEEP_DIR [SWEEP_DIR ...]")
    print(json.dumps(seeds_summary([Path(a) for a in args]), indent=2))


if __name__ == "__main__":
    main()
