"""``vqa-ood-bench score``: score saved predictions without the model.

    vqa-ood-bench score --predictions RUN_DIR [--variant lavis] [--json]
    vqa-ood-bench score --predictions RUN_DIR/predictions/SPLIT.jsonl [--json]
    vqa-ood-bench score --predictions FILE --suite SUITE [--split SPLIT] [--data-root DIR] [--json]
    vqa-ood-bench score --predictions FILE --dataset NAME [--data-root DIR] [--json]

A run folder (or a predictions file a run's results.json names) is re-scored through the
run's suite and its results.json is rewritten (``--no-write`` to only print; a results.json
whose numbers come out the same is left untouched, and ``results_file`` is then null). A
predictions file must hold exactly the split's questions: an empty file, a question the split
does not have, or one it lacks is an error naming the file. A loose file is
scored against a suite split or a registered dataset. ``--json`` prints one object: top-level
``vqa_accuracy`` (0-100; for a run folder, over all re-scored questions together), ``n``,
``variant``, ``per_answer_type``, ``per_question_type``, and for runs ``splits`` and ``averages``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..errors import ConfigError, DataError
from .app import app
from .options import DataRootOpt, JsonOpt, LimitOpt

PredictionsOpt = Annotated[
    Path, typer.Option("--predictions", help="A predictions JSONL file, or a run folder (holding results.json).")
]
ScoreSuiteOpt = Annotated[Optional[str], typer.Option("--suite", help="Suite whose split the file holds predictions for.")]
SplitOpt = Annotated[Optional[str], typer.Option("--split", help="Split of --suite (default: the file's name without .jsonl).")]
DatasetOpt = Annotated[Optional[str], typer.Option("--dataset", help="A registered dataset (see `datasets list`), scored whole.")]
ScoreVariantOpt = Annotated[
    Optional[str],
    typer.Option("--variant", help="VQA accuracy variant: official, lavis or lenient (default: the run's own, else official)."),
]
WriteOpt = Annotated[bool, typer.Option("--write/--no-write", help="Rewrite the run's results.json with the new numbers.")]
ClipMatchOpt = Annotated[bool, typer.Option("--clipmatch", help="Also compute ClipMatch top-1/top-5 (needs the CLIP weights).")]
ClipModelOpt = Annotated[str, typer.Option("--clip-model", help="open_clip model name, hf-hub:ID or local-dir:PATH.")]
ClipPretrainedOpt = Annotated[
    str, typer.Option("--clip-pretrained", help="open_clip pretrained tag or a checkpoint file ('none': random weights).")
]
ClipConfigDirOpt = Annotated[
    Optional[Path], typer.Option("--clip-config-dir", help="Folder of extra open_clip model configs (JSON).")
]
ClipTemplatesOpt = Annotated[
    str, typer.Option("--clip-templates", help="Prompt templates for class names: openai_imagenet, simple_imagenet or none.")
]
ClassesOpt = Annotated[
    Optional[Path], typer.Option("--classes", help="Class list for ClipMatch, one name per line (default: the split's answers).")
]
CacheDirOpt = Annotated[Optional[Path], typer.Option("--cache-dir", help="Where ClipMatch caches class embeddings.")]
ExactOpt = Annotated[bool, typer.Option("--exact", help="Also compute exact match and 'contains' (classification-style sets).")]


def _matcher_factory(clipmatch: bool, model: str, pretrained: str, config_dir, templates: str, cache_dir):
    if not clipmatch:
        return None
    from ..score.clipmatch import ClipMatcher, OpenClipTextEmbedder

    embedder = OpenClipTextEmbedder(model, pretrained, config_dir=config_dir)  # one model for every split

    def factory(class_names):
        return ClipMatcher(class_names, embedder, templates=templates, cache_dir=cache_dir)

    return factory


def _read_classes(path: Optional[Path]) -> Optional[list[str]]:
    if path is None:
        return None
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as exc:
        raise DataError(f"cannot read class list ({exc.strerror})", path=path) from None
    if not names:
        raise DataError("class list is empty", path=path)
    return names


@app.command("score")
def score(
    predictions: PredictionsOpt,
    suite: ScoreSuiteOpt = None,
    split: SplitOpt = None,
    dataset: DatasetOpt = None,
    data_root: DataRootOpt = None,
    variant: ScoreVariantOpt = None,
    limit: LimitOpt = None,
    write: WriteOpt = True,
    clipmatch: ClipMatchOpt = False,
    clip_model: ClipModelOpt = "EVA01-g-14",
    clip_pretrained: ClipPretrainedOpt = "laion400m_s11b_b41k",
    clip_config_dir: ClipConfigDirOpt = None,
    clip_templates: ClipTemplatesOpt = "openai_imagenet",
    classes: ClassesOpt = None,
    cache_dir: CacheDirOpt = None,
    exact: ExactOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Score a predictions file or a run folder without the model; rewrites the run's results.json."""
    from ..score.rescore import (
        find_run_split,
        is_run_dir,
        load_prediction_map,
        load_records_for,
        pooled,
        rescore_run,
        score_split,
    )
    from ..score.vqa_accuracy import DEFAULT_VARIANT, check_variant

    if variant is not None:
        check_variant(variant)
    factory = _matcher_factory(clipmatch, clip_model, clip_pretrained, clip_config_dir, clip_templates, cache_dir)
    class_names = _read_classes(classes)
    extra = dict(clipmatch=factory, class_names=class_names, text_metrics=exact)

    if not predictions.exists():
        raise DataError("predictions file or run folder not found", path=predictions)
    run_target = None
    if predictions.is_dir():
        if not is_run_dir(predictions):
            raise ConfigError(f"{str(predictions)!r} is a folder without results.json; pass a predictions file or a run folder")
        if suite or dataset or split:
            raise ConfigError("a run folder names its own suite and splits; drop --suite/--split/--dataset")
        run_target = (predictions, None)
    elif dataset is None:
        found = find_run_split(predictions) if predictions.is_file() else None
        if found is not None and suite is None and split is None:
            run_target = (found[0], [found[1]])

    if run_target is not None:
        run_dir, only = run_target
        rr = rescore_run(run_dir, variant=variant, data_root=data_root, limit=limit, splits=only, write=write, **extra)
        if only is not None and len(rr.scores) == 1:
            sc = next(iter(rr.scores.values()))
            out: dict[str, Any] = {"predictions": str(predictions), "suite": rr.results.suite, "split": sc.name, **sc.to_json()}
        else:
            out = {"run": str(run_dir), "suite": rr.results.suite, "variant": rr.results.scoring_variant, **pooled(list(rr.scores.values()))}
            out["splits"] = {
                name: {"role": s.role, "shift_type": s.shift_type, **rr.scores[name].to_json()} for name, s in rr.results.splits.items() if name in rr.scores
            }
        out["variant"] = rr.results.scoring_variant
        out["averages"] = rr.results.averages.model_dump()
        out["results_file"] = str(rr.results_file) if rr.written else None
        out["results_changed"] = rr.changed
        if rr.warnings:
            out["warnings"] = rr.warnings
        _emit(out, json_out, rr.scores)
        return

    chosen = variant or DEFAULT_VARIANT
    name, records = load_records_for(
        suite=suite, split=split, dataset=dataset, data_root=data_root, limit=limit, predictions_file=predictions
    )
    preds = load_prediction_map(predictions, records, split=name, limit=limit)
    try:
        sc = score_split(name, records, preds, variant=chosen, **extra)
    except DataError as exc:
        raise DataError(f"split {name!r}: {exc}", path=predictions) from None
    out = {"predictions": str(predictions), **({"suite": suite, "split": name} if suite else {"dataset": name}), **sc.to_json()}
    _emit(out, json_out, {name: sc})


def _emit(out: dict[str, Any], json_out: bool, scores: dict) -> None:
    if json_out:
        typer.echo(json.dumps(out, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.markup import escape

    from ..report.table import NumberTable

    # Split names, answer / question types and paths come from data files: escaped, not markup.
    console = Console()
    table = NumberTable(title=escape(f"VQA accuracy ({out['variant']} variant)"))
    table.add_column("split", overflow="fold")
    table.add_number_column("n")
    table.add_number_column("VQA acc.")
    has_cm = any(s.clipmatch_top1 is not None for s in scores.values())
    has_em = any(s.text is not None for s in scores.values())
    if has_cm:
        table.add_number_column("ClipMatch@1")
        table.add_number_column("ClipMatch@5")
    if has_em:
        table.add_number_column("exact")
        table.add_number_column("contains")
    for name, s in scores.items():
        row = [escape(name), str(s.vqa.n), f"{s.vqa.accuracy:.2f}"]
        if has_cm:
            row += [_fmt(s.clipmatch_top1), _fmt(s.clipmatch_top5)]
        if has_em:
            row += [_fmt(s.text.exact_match if s.text else None), _fmt(s.text.contains if s.text else None)]
        table.add_row(*row)
    console.print(table)
    if len(scores) == 1:
        s = next(iter(scores.values()))
        for title, d in (("answer type", s.vqa.per_answer_type), ("question type", s.vqa.per_question_type)):
            if d:
                t = NumberTable(title=f"per {title}")
                t.add_column(title, overflow="fold")
                t.add_number_column("VQA acc.")
                for k, v in sorted(d.items()):
                    t.add_row(escape(k), f"{v:.2f}")
                console.print(t)
    if out.get("averages"):
        avg = out["averages"]
        console.print(escape("averages: " + ", ".join(f"{k} {_fmt(v)}" for k, v in avg.items())))
    if out.get("results_file"):
        console.print(escape(f"rewrote {out['results_file']}"))
    elif out.get("results_changed") is False:
        console.print("results.json unchanged (same numbers)")
    for w in out.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {escape(w)}")


def _fmt(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}"
