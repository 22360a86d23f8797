"""Several processes (``torchrun`` / ``accelerate launch``): rank helpers, barriers, sharding, merging.

The training loop's data parallelism is the ``transformers.Trainer``'s (DDP); this module holds
what the runner needs around it:

* :func:`init_from_env` joins the process group a launcher describes (``WORLD_SIZE``, ``RANK``,
  ``MASTER_ADDR`` …): gloo on CPU, nccl on GPU. The Trainer (through accelerate) reuses it.
* :func:`rank` / :func:`world_size` / :func:`is_main` / :func:`barrier` / :func:`main_first`: only
  rank 0 writes run files; shared caches (embedded suite, tiny model) are built by rank 0 first.
* :func:`shard` / :func:`merge_shards`: prediction is split by rank (strided: record k goes to rank
  k mod world, which balances the work and keeps each shard in record order), each rank writes
  its own JSONL shard, and rank 0 merges them into the usual predictions file in the original
  record order, refusing a missing or duplicated question with an error that names the file.
* :func:`check_sharding`: which optimizers survive parameter sharding (FSDP / DeepSpeed ZeRO).

Global batch: ``train.batch_size`` is the number of examples per micro-step summed over all
processes, so a run on N processes sees the same batches as a run on one; each process takes
``batch_size / N`` (see :func:`per_device_batch`). ``batch_size × grad_accum`` examples make one
optimizer step.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence, TypeVar

import torch

from .errors import ConfigError, DataError

T = TypeVar("T")

#: Methods whose optimizer reads whole tensors (an anchor θ0 of the parameter's full shape, norms or
#: inner products per tensor or per row). FSDP and DeepSpeed ZeRO hand an optimizer flat shards of
#: parameters, so these would compute their projections on fragments: refused.
WHOLE_TENSOR_METHODS = frozenset({"l2-sp", "mars-sp", "tpgm", "ftp", "digrap"})
SHARDING_MODES = ("none", "fsdp", "deepspeed")


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    if _dist_ready():
        return torch.distributed.get_world_size()
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def rank() -> int:
    if _dist_ready():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def backend() -> str:
    """nccl when this process drives a GPU, gloo otherwise (CPU tests)."""
    return "nccl" if torch.cuda.is_available() and torch.distributed.is_nccl_available() else "gloo"


def init_from_env() -> bool:
    """Join the process group a launcher set up; True when running on several processes.

    A single process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) does nothing, so one-process runs
    stay exactly as they were.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not torch.distributed.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if not _dist_ready():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend())
    return True


def barrier() -> None:
    if _dist_ready() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (e.g. a run folder name made from the clock)."""
    if not (_dist_ready() and torch.distributed.get_world_size() > 1):
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (building shared caches), the others after it finished."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def per_device_batch(global_batch: int, world: int | None = None) -> int:
    world = world or world_size()
    if global_batch % world:
        raise ConfigError(f"train.batch_size {global_batch} is the global batch and must be divisible by the {world} processes")
    return global_batch // world


def shard(items: Sequence[T], rank_: int, world: int) -> list[T]:
    """The items rank ``rank_`` of ``world`` handles: every world-th one, starting at ``rank_``."""
    if world < 1 or not 0 <= rank_ < world:
        raise ValueError(f"bad shard {rank_} of {world}")
    return list(items[rank_::world])


def shard_path(path: str | Path, rank_: int, world: int) -> Path:
    """Where rank ``rank_`` writes its part of ``path`` (world in the name: a resume with another
    process count starts fresh shards instead of mixing two partitions)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.rank{rank_}-of-{world}{path.suffix}")


def merge_rows(order: Sequence[str], parts: Sequence[tuple[Path, dict[str, dict[str, Any]]]], *, target: Path) -> list[dict[str, Any]]:
    """Rows of ``parts`` (file, question_id → row) in the order of ``order``.

    A question in two parts, a question that no part has, or one that is not in ``order`` is an
    error naming the files involved: merging must neither lose nor duplicate a question.
    """
    owner: dict[str, Path] = {}
    rows: dict[str, dict[str, Any]] = {}
    for path, part in parts:
        for qid, row in part.items():
            if qid in owner:
                raise DataError(f"question_id {qid!r} is in both {owner[qid]} and {path}; refusing to merge", path=target, record=qid)
            owner[qid] = path
            rows[qid] = row
    wanted = set(order)
    if len(wanted) != len(order):
        raise DataError("the record list has a question_id twice", path=target)
    missing = [q for q in order if q not in rows]
    if missing:
        raise DataError(f"{len(missing)} question(s) missing from the shards {', '.join(str(p) for p, _ in parts)} "
                        f"(e.g. {missing[0]!r})", path=target)
    extra = [q for q in rows if q not in wanted]
    if extra:
        raise DataError(f"{len(extra)} question(s) in {owner[extra[0]]} are not in this split (e.g. {extra[0]!r})", path=target)
    return [rows[q] for q in order]


def merge_shards(target: str | Path, order: Sequence[str], world: int, *, keep_shards: bool = False) -> Path:
    """Merge the rank shards of ``target`` (and rows already in ``target``) into ``target``.

    The result holds one line per question of ``order``, in that order, written atomically; the
    shard files are removed afterwards unless ``keep_shards``.
    """
    from .io import atomic_write_text
    from .predict.jsonl import read_predictions

    target = Path(target)
    parts = []
    if target.is_file():  # rows a previous (e.g. one-process) attempt left in the main file
        parts.append((target, read_predictions(target)))
    shards = [shard_path(target, r, world) for r in range(world)]
    parts += [(p, read_predictions(p)) for p in shards if p.is_file()]
    rows = merge_rows(order, parts, target=target)
    atomic_write_text(target, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    if not keep_shards:
        for p in shards:
            p.unlink(missing_ok=True)
    return target


def sharding_from_env() -> str:
    """The sharding an ``accelerate launch`` config asks for through its environment variables."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true", "yes"):
        return "deepspeed"
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true", "yes"):
        return "fsdp"
    return "none"


def check_sharding(method: str, sharding: str) -> None:
    """Refuse parameter sharding for methods whose optimizer needs whole tensors.

    Works: DDP (``sharding: none``) for every method. FSDP / DeepSpeed: zeroshot, vanilla,
    linear-probe, lp-ft, wise-ft (the Trainer's element-wise AdamW). Refused: l2-sp, mars-sp, tpgm,
    ftp, digrap (anchors of full shape, per-tensor / per-row norms and inner products).
    """
    if sharding not in SHARDING_MODES:
        raise ConfigError(f"unknown train.sharding {sharding!r}; known: {', '.join(SHARDING_MODES)}")
    if sharding != "none" and method in WHOLE_TENSOR_METHODS:
        raise ConfigError(
            f"method {method!r} cannot train under {sharding}: its optimizer needs whole parameter tensors "
            f"(anchor, per-tensor norms/projections) and {sharding} hands it shards; use DDP (train.sharding: none)"
        )
