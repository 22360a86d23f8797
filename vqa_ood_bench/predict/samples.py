"""Per-sample logs: everything needed to audit one answer, beside the predictions.

A run or eval folder holds ``samples/<split>.jsonl`` next to ``predictions/<split>.jsonl``
(a folder of its own, so that ``predictions/*.jsonl`` stays one file per split for the tools
that read it). One JSON object per question, in the split's record order:

``question_id``, ``question``, ``image`` (the file, or null for an in-memory image)
    the record;
``prompt``
    the prompt template filled with the question;
``prompt_sent``, ``image_tokens``
    the text tokens the model received, decoded with their special tokens (BOS, the
    separator), and the number of image placeholder tokens before them;
``generation``, ``generated_token_ids``
    the raw generation: the new tokens up to and including end-of-sequence, decoded with
    special tokens;
``prediction``
    the answer as the predictions file has it (special tokens dropped, stripped);
``normalized_prediction``
    the form of the prediction the scoring rule compared with the answers (it depends on the
    variant and, for ``official``, on whether the answers all agree; see
    ``docs/vqa-accuracy.md``);
``answers``, ``answer_type``, ``question_type``
    the ground truth and the record's type labels;
``score``, ``variant``
    the question's VQA accuracy in [0, 1] under that variant; the split's accuracy in
    results.json is 100 × their mean;
``seconds``
    generation time per question of its batch (a measurement: the only field that changes
    from one identical run to the next).

The generation fields are null for questions predicted before these logs existed (a run
folder of an earlier version, resumed). Everything else, and re-scoring, needs only the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from ..data.records import VQARecord
from ..errors import DataError
from ..io import atomic_write_text
from .jsonl import read_predictions

SAMPLES_DIR = "samples"
GENERATION_FIELDS = ("prompt_sent", "image_tokens", "generation", "generated_token_ids", "seconds")


def samples_path(run_dir: str | Path, split: str) -> Path:
    """Where the sample log of ``split`` lives in a run or eval folder."""
    return Path(run_dir) / SAMPLES_DIR / f"{split}.jsonl"


def compared_prediction(prediction: str, answers: Sequence[str], variant: str) -> str:
    """The prediction as the VQA accuracy rule of ``variant`` compares it with ``answers``."""
    from ..score.vqa_accuracy import _FORMS, check_variant

    pred_plain, pred_processed, answer_plain, _ = _FORMS[check_variant(variant)]
    identical = len({answer_plain(a) for a in answers}) <= 1
    return pred_plain(prediction) if identical else pred_processed(prediction)


def _details(path: Path) -> dict[str, dict[str, Any]]:
    """Generation details already written for ``path``: the file itself (details appended while
    predicting, or a complete log from an earlier attempt) and per-rank shards of it."""
    found: dict[str, dict[str, Any]] = {}
    shards = sorted(path.parent.glob(f".{path.stem}.rank*-of-*{path.suffix}")) if path.parent.is_dir() else []
    for part in ([path] if path.is_file() else []) + shards:
        found.update(read_predictions(part))
    return found


def write_sample_log(
    path: str | Path,
    records: Sequence[VQARecord],
    predictions: Mapping[str, str],
    scores: Sequence[float] | np.ndarray,
    *,
    variant: str,
    prompt: str,
) -> Path:
    """Complete the sample log at ``path`` (atomically) for ``records`` and their ``scores``
    (per question, in record order, as the split was scored), then remove rank shards.

    Generation details come from what prediction appended; a detail row whose prediction is not
    the predictions file's is not trusted and left out (null fields).
    """
    path = Path(path)
    if len(scores) != len(records):
        raise DataError(f"{len(scores)} scores for {len(records)} records", path=path)
    details = _details(path)
    rows = []
    for record, score in zip(records, scores):
        prediction = predictions[record.question_id]
        detail = details.get(record.question_id)
        if detail is not None and detail.get("prediction") != prediction:
            detail = None
        rows.append({
            "question_id": record.question_id,
            "question": record.question,
            "image": None if record.image_path is None else str(record.image_path),
            "prompt": prompt.format(question=record.question),
            **{k: None if detail is None else detail.get(k) for k in GENERATION_FIELDS[:4]},
            "prediction": prediction,
            "normalized_prediction": compared_prediction(prediction, record.answers, variant),
            "answers": list(record.answers),
            "answer_type": record.answer_type,
            "question_type": record.question_type,
            "score": float(score),
            "variant": variant,
            "seconds": None if detail is None else detail.get("seconds"),
        })
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    for shard in sorted(path.parent.glob(f".{path.stem}.rank*-of-*{path.suffix}")):
        shard.unlink(missing_ok=True)
    return path


REQUIRED = ("question_id", "prediction", "answers", "score", "variant")


def read_sample_log(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a sample log, in order; a malformed or incomplete row is a DataError naming
    the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError("sample log not found", path=path)
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"line {lineno}: malformed JSON ({exc})", path=path) from None
        missing = [k for k in REQUIRED if not isinstance(row, dict) or k not in row]
        if missing:
            raise DataError(f"line {lineno}: not a sample log row (no {missing[0]!r})", path=path)
        rows.append(row)
    return rows


def rescore_sample_log(rows: str | Path | Iterable[Mapping[str, Any]], variant: Optional[str] = None) -> float:
    """The split's VQA accuracy (percent, rounded as results.json stores it) from a sample log
    alone: its predictions scored against its answers with ``variant`` (default: the log's)."""
    from ..report.schema import round_score
    from ..score.vqa_accuracy import vqa_scores

    rows = read_sample_log(rows) if isinstance(rows, (str, Path)) else list(rows)
    if not rows:
        raise DataError("an empty sample log has no accuracy")
    variants = {row["variant"] for row in rows}
    if variant is None and len(variants) != 1:
        raise DataError(f"the sample log mixes scoring variants ({', '.join(sorted(variants))}); pass one")
    scores = vqa_scores([row["prediction"] for row in rows], [row["answers"] for row in rows], variant or variants.pop())
    return round_score(100.0 * float(scores.mean()))
