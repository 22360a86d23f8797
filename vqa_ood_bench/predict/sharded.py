"""Prediction on several processes: each rank predicts its shard into its own file, rank 0 merges.

On one process this is :func:`~vqa_ood_bench.predict.generate.predict_records` unchanged. On N
processes the questions not yet in the predictions file are split by rank
(:func:`vqa_ood_bench.distributed.shard`), each rank appends to its own resumable shard file,
and after a barrier rank 0 merges the file's rows and the shards into the predictions file in
the original record order (atomically), checking that no question is missing or duplicated.
A killed run resumes: every rank skips what its shard file already holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .. import distributed as dist
from ..data.records import VQARecord
from .generate import predict_records
from .jsonl import read_predictions


def predict_sharded(model, processor, records: Sequence[VQARecord], out_path: str | Path, *, rank: int | None = None,
                    world: int | None = None, samples_path: str | Path | None = None, **kwargs) -> dict[str, str]:
    """question_id → prediction for every record, the work split over the processes.

    ``kwargs`` go to :func:`predict_records` (prompt, batch_size, max_new_tokens, num_beams,
    progress, task). ``rank`` / ``world`` default to this process's. ``samples_path``: the
    generation details' file; on several processes each rank appends to its own shard of it
    (:func:`vqa_ood_bench.predict.samples.write_sample_log` merges them).
    """
    rank = dist.rank() if rank is None else rank
    world = dist.world_size() if world is None else world
    out_path = Path(out_path)
    if world == 1:
        return predict_records(model, processor, records, out_path, samples_path=samples_path, **kwargs)

    done = read_predictions(out_path) if out_path.is_file() else {}
    todo = [r for r in records if r.question_id not in done]
    if todo:
        predict_records(model, processor, dist.shard(todo, rank, world), dist.shard_path(out_path, rank, world),
                        samples_path=None if samples_path is None else dist.shard_path(samples_path, rank, world), **kwargs)
    dist.barrier()  # every shard is complete
    if dist.is_main() and todo:
        dist.merge_shards(out_path, [r.question_id for r in records], world)
    elif dist.is_main():  # a run killed between the merge and the clean-up left stale shards
        for r in range(world):
            dist.shard_path(out_path, r, world).unlink(missing_ok=True)
    dist.barrier()  # the merged file is written
    return {qid: row["prediction"] for qid, row in read_predictions(out_path).items()}
