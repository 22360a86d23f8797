"""``vqa-ood-bench model``: the shipped tiny foundation model.

    vqa-ood-bench model info [--json]
    vqa-ood-bench model rebuild-tiny [--steps N] [--limit N] [--export DIR] [--json]

``info`` verifies the shipped artifact's files against their recorded SHA-256 and prints its
key and how it was made. ``rebuild-tiny`` runs the documented pre-training again (minutes on
a CPU; cached by recipe, so a second call compares at once) and reports how far the rebuild
lands from the shipped weights: the weight distance, and the zero-shot answers of both models
on the embedded ID test split. ``--export DIR`` writes the rebuild as a new artifact folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import ConfigError
from .app import model_app
from .options import JsonOpt


@model_app.command("info")
def info(as_json: JsonOpt = False) -> None:
    """Verify the shipped tiny model's files and print its key and pre-training recipe."""
    from ..models.tiny_artifact import ARTIFACT_DIR, artifact_key, verify

    manifest = verify()
    summary = {"key": artifact_key(manifest), "version": manifest["version"], "folder": str(ARTIFACT_DIR),
               "files_verified": len(manifest["files"]), **{k: manifest.get(k) for k in ("pretraining", "built_with", "built_at")}}
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    console = Console()
    console.print(f"tiny model {summary['key']}: {summary['files_verified']} files verified in {ARTIFACT_DIR}")
    console.print(f"pre-training: {json.dumps(manifest.get('pretraining', {}).get('recipe', {}))}")
    console.print(f"built with: {json.dumps(manifest.get('built_with', {}))}")


@model_app.command("rebuild-tiny")
def rebuild_tiny(
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Pre-training steps (default: the shipped recipe's).")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="ID test questions to compare the zero-shot answers on.")] = 1000,
    export: Annotated[Optional[Path], typer.Option("--export", help="Write the rebuild as an artifact folder here (maintainers: a new model version).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Pre-train the tiny model again with the shipped recipe and compare it with the shipped one."""
    from ..models.pretrain import PretrainRecipe, load_tiny, pretrained_dir
    from ..models.tiny_artifact import artifact_key, export as export_artifact, load_shipped, weight_distance

    if export is not None and export.exists() and any(export.iterdir()):
        raise ConfigError(f"--export {str(export)!r} is not empty; choose a new folder")
    shipped, processor, shipped_info = load_shipped()
    recipe = PretrainRecipe(**{**shipped_info["pretraining"]["recipe"], **({"steps": steps} if steps else {})})
    rebuilt, _, rebuilt_info = load_tiny(recipe=recipe, show_progress=not as_json)
    report: dict[str, Any] = {
        "shipped": artifact_key(shipped_info), "rebuilt": rebuilt_info["key"], "recipe": vars(recipe),
        "weights": weight_distance(rebuilt, shipped), "answers": _compare_answers(rebuilt, shipped, processor, limit),
    }
    if export is not None:
        report["exported"] = export_artifact(pretrained_dir(recipe=recipe), export, pretrain_info=rebuilt_info)["files"]
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    w, a = report["weights"], report["answers"]
    table = Table(title=f"rebuild {report['rebuilt']} vs shipped {report['shipped']}")
    table.add_column("measure")
    table.add_column("value", justify="right", no_wrap=True)
    table.add_row("max |Δ weight|", f"{w['max_abs']:.3g}")
    table.add_row("relative L2 distance", f"{w['relative_l2']:.3g}")
    table.add_row(f"most changed tensor ({w['worst_tensor']})", f"{w['worst_relative_l2']:.3g}")
    table.add_row(f"zero-shot ID accuracy, shipped ({a['n']} questions)", f"{a['accuracy_shipped']:.1f}")
    table.add_row("zero-shot ID accuracy, rebuilt", f"{a['accuracy_rebuilt']:.1f}")
    table.add_row("same answer", f"{a['same_answer_pct']:.1f}%")
    Console().print(table)
    if export is not None:
        Console().print(f"artifact written to {export}")


def _compare_answers(rebuilt, shipped, processor, limit: int) -> dict[str, Any]:
    """Zero-shot greedy answers of both models on the first ``limit`` embedded ID test questions."""
    import torch

    from ..config import RunConfig
    from ..data.suite import get_suite
    from ..predict.generate import generate_answers
    from ..score.vqa_accuracy import vqa_scores

    suite = get_suite("embedded")
    (spec,) = [s for s in suite.evaluation if s.role == "id"]
    records = suite.load(spec, None, limit=limit)
    defaults = RunConfig()
    answers: dict[str, list[str]] = {"rebuilt": [], "shipped": []}
    with torch.inference_mode():
        for i in range(0, len(records), defaults.eval_batch_size):
            batch = records[i : i + defaults.eval_batch_size]
            images = [r.load_image() for r in batch]
            prompts = [defaults.prompt.format(question=r.question) for r in batch]
            for name, model in (("rebuilt", rebuilt), ("shipped", shipped)):
                answers[name] += generate_answers(model.eval(), processor, images, prompts, max_new_tokens=defaults.max_new_tokens)
    gold = [r.answers for r in records]
    same = sum(x == y for x, y in zip(answers["rebuilt"], answers["shipped"]))
    return {"n": len(records), "same_answer_pct": 100.0 * same / max(1, len(records)),
            "accuracy_rebuilt": float(vqa_scores(answers["rebuilt"], gold).mean() * 100),
            "accuracy_shipped": float(vqa_scores(answers["shipped"], gold).mean() * 100)}
