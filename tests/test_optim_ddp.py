"""Two-process DDP (gloo) gives the same parameters as one process at the same global batch.

The optimizers only read ``p.grad`` after DDP's all-reduce (a mean over ranks), so each rank
must take exactly the single-process step on the full batch.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vqa_ood_bench.optim import FTP, DiGraP

GLOBAL_BATCH = 16
STEPS = 6


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()


def _optimizer(kind: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    if kind == "digrap":
        return DiGraP(model.named_parameters(), lr=0.05, mu=0.5, base="adamw", weight_decay=0.01)
    return FTP(model.named_parameters(), lr=0.05, mu=0.05, base="sgd", momentum=0.9)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, GLOBAL_BATCH, 6, generator=gen, dtype=torch.float64)
    return x, torch.sin(3 * x[..., :3]) + 2.0


def _train(kind: str, model: torch.nn.Module, rank: int = 0, world: int = 1) -> None:
    opt = _optimizer(kind, model.module if hasattr(model, "module") else model)
    x, y = _data()
    per = GLOBAL_BATCH // world
    for s in range(STEPS):
        xb, yb = x[s, rank * per : (rank + 1) * per], y[s, rank * per : (rank + 1) * per]
        torch.nn.functional.mse_loss(model(xb), yb).backward()
        opt.step()
        opt.zero_grad()


def _worker(rank: int, world: int, port: int, kind: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(_model())
        _train(kind, ddp, rank, world)
        torch.save({k: v.detach() for k, v in ddp.module.state_dict().items()}, f"{out}.{rank}")
        # Both ranks reach here before either tears gloo down: a rank that destroys its group
        # (rank 0 also hosts the TCP store) while the other still talks to it aborts with
        # "terminate called without an active exception" about one run in three.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["digrap", "ftp"])
def test_two_process_ddp_matches_one_process(kind, tmp_path):
    out = str(tmp_path / "params")
    mp.spawn(_worker, args=(2, _free_port(), kind, out), nprocs=2, join=True)
    single = _model()
    _train(kind, single)
    ranks = [torch.load(f"{out}.{r}") for r in range(2)]
    moved = False
    for name, ref in single.state_dict().items():
        assert torch.equal(ranks[0][name], ranks[1][name])  # replicas stay identical
        torch.testing.assert_close(ranks[0][name], ref, rtol=1e-11, atol=1e-12)
        moved |= not torch.equal(ref, _model().state_dict()[name])
    assert moved
