"""Benchmark: optimizer step time and state size of DiGraP and FTP against torch's AdamW.

Three cases, all timed in the same process against torch's fastest AdamW on this build
(``fused=True`` where available) and ``foreach=True`` AdamW:

(a) full fine-tuning of ~50 M parameters in transformer shapes (anchor = pre-trained copy);
(b) 200 LoRA-shaped tensors (r = 8, anchor = origin);
(c) the whole training step (forward, backward, optimizer) of the embedded tiny PaliGemma,
    vanilla AdamW against DiGraP.

Step times are the median of ``--steps`` steps after ``--warmup`` steps (the first step of a
compiled optimizer compiles and is reported separately), the rows of a case stepped in rounds
(one step each per round, in a shuffled order: the machine's drift and the cache left by the
previous step hit them alike); case (c) takes at least 30 steps per row. State bytes count each storage in ``optimizer.state`` once.

    OMP_NUM_THREADS=2 python benchmarks/bench_optim.py [--steps 10] [--no-compile] [--json]

Goals (issue 4): DiGraP step <= 2x fused AdamW for (a) and (b); whole training step
<= 1.05x vanilla; DiGraP state <= AdamW's + the anchor copy. "(compiled)" rows run the
torch.compile kernels (the optimizers' fast path), "(eager)" rows the same kernels uncompiled;
row "floor" is fused AdamW plus one read of the five tensors DiGraP's statistics pass needs
(see MemoryFloor).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from typing import Any, Callable

import torch

from vqa_ood_bench.optim import FTP, DiGraP, state_bytes


def full_ft_shapes(layers: int = 8, d: int = 768, ff: int = 3072, vocab: int = 8000) -> list[tuple[int, ...]]:
    """~63 M parameters: embeddings plus ``layers`` transformer blocks (q, k, v, o, two MLP
    matrices, biases, two norms)."""
    shapes: list[tuple[int, ...]] = [(vocab, d)]
    for _ in range(layers):
        shapes += [(d, d)] * 4 + [(ff, d), (d, ff)] + [(d,)] * 4 + [(ff,), (d,), (d,), (d,)]
    return shapes


def lora_shapes(n_tensors: int = 200, d: int = 768, r: int = 8) -> list[tuple[int, ...]]:
    return [(r, d) if i % 2 == 0 else (d, r) for i in range(n_tensors)]


def make_params(shapes: list[tuple[int, ...]], seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.02) for s in shapes]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    return ps


def has_fused_adamw() -> bool:
    try:
        p = torch.nn.Parameter(torch.zeros(2))
        p.grad = torch.zeros(2)
        torch.optim.AdamW([p], fused=True).step()
        return True
    except (RuntimeError, TypeError):
        return False


def time_alternating(steps_of: list[Callable[[], Any]], steps: int, warmup: int) -> list[tuple[float, float]]:
    """``(first step seconds, median step seconds)`` per callable. After each one's first step
    and ``warmup`` more, the callables are stepped in rounds, one step each per round, in a
    new random order every round: this machine's speed drifts by up to 2x within minutes, and
    a step's time depends on what the step before it left in (or evicted from) the cache, so
    a fixed order would favour some rows; rounds make the drift hit every row alike and the
    shuffle spreads the cache effects."""
    firsts = []
    for step in steps_of:
        t = time.perf_counter()
        step()
        firsts.append(time.perf_counter() - t)
        for _ in range(warmup):
            step()
    times: list[list[float]] = [[] for _ in steps_of]
    order = list(range(len(steps_of)))
    rng = random.Random(0)
    for _ in range(steps):
        rng.shuffle(order)
        for i in order:
            t = time.perf_counter()
            steps_of[i]()
            times[i].append(time.perf_counter() - t)
    return [(f, statistics.median(ts)) for f, ts in zip(firsts, times)]


def _read_pass(g: torch.Tensor, p: torch.Tensor, p0: torch.Tensor, m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Reads five tensors once (a per-row sum, the shape of DiGraP's statistics pass)."""
    return (g * p + p0 * m + v).sum(-1)


class MemoryFloor:
    """Not an optimizer: fused AdamW's step plus one compiled pass that reads gradient,
    weights, anchor and both moments once. DiGraP reads these five tensors before its update
    (the projection strength and the projection depend on per-tensor sums over all of them),
    and its update moves as much memory as AdamW's when no tensor projects. This row makes
    the reading pass over all tensors and then the update over all tensors, so it is the
    limit of that order, where nothing read in the first pass is still in cache for the
    second. DiGraP's compiled step runs both passes tensor by tensor, so a tensor whose five
    streams fit in the last-level cache is read from there the second time."""

    def __init__(self, params: list[torch.nn.Parameter], compile_: bool):
        self.adamw = torch.optim.AdamW(params, lr=1e-4, fused=True)
        self.params = params
        self.anchors = [p.detach().clone() for p in params]
        self.read = torch.compile(_read_pass, dynamic=False) if compile_ else _read_pass
        self.state = self.adamw.state  # for state_bytes (the anchors are added to the row)

    @torch.no_grad()
    def step(self) -> None:
        for p, p0 in zip(self.params, self.anchors):
            st = self.adamw.state.get(p)
            if st:
                self.read(p.grad, p, p0, st["exp_avg"], st["exp_avg_sq"])
        self.adamw.step()


def optimizer_rows(shapes, anchor: str, steps: int, warmup: int, compile_: bool) -> list[dict[str, Any]]:
    fused = has_fused_adamw()
    makers: list[tuple[str, Callable[[list], torch.optim.Optimizer]]] = []
    if fused:
        makers.append(("AdamW fused", lambda ps: torch.optim.AdamW(ps, lr=1e-4, fused=True)))
    makers.append(("AdamW foreach", lambda ps: torch.optim.AdamW(ps, lr=1e-4, foreach=True)))
    makers.append(("DiGraP adam (eager)", lambda ps: DiGraP(ps, lr=1e-4, mu=0.5, anchor=anchor)))
    if compile_:
        makers.append(("DiGraP adam (compiled)", lambda ps: DiGraP(ps, lr=1e-4, mu=0.5, anchor=anchor, compile=True)))
    if fused and anchor == "pretrained":
        makers.append(("floor: fused + 5 reads", lambda ps: MemoryFloor(ps, compile_)))
    makers.append(("FTP adamw (eager)", lambda ps: FTP(ps, lr=1e-4, anchor=anchor)))
    if compile_:
        makers.append(("FTP adamw (compiled)", lambda ps: FTP(ps, lr=1e-4, anchor=anchor, compile=True)))
    opts = [make(make_params(shapes)) for _name, make in makers]
    timed = time_alternating([opt.step for opt in opts], steps, warmup)
    rows = [dict(optimizer=name, first_s=first, step_ms=med * 1e3, state_bytes=state_bytes(opt))  # type: ignore[arg-type]
            for (name, _make), opt, (first, med) in zip(makers, opts, timed)]
    for r, opt in zip(rows, opts):
        if isinstance(opt, MemoryFloor):
            r["state_bytes"] += sum(t.numel() * t.element_size() for t in opt.anchors)
    base = rows[0]["step_ms"]
    for r in rows:
        r["ratio"] = r["step_ms"] / base
    return rows


def training_rows(steps: int, warmup: int, compile_: bool) -> list[dict[str, Any]]:
    from vqa_ood_bench.data.embedded.broad import all_words, make_example
    from vqa_ood_bench.models.paligemma import build_tiny_model, build_tiny_processor
    from vqa_ood_bench.train.engine import TrainExample, VQACollator

    processor = build_tiny_processor(all_words())
    examples = [make_example(0, i) for i in range(16)]
    batch = VQACollator(processor)([TrainExample(e.image, e.prompt, e.answer) for e in examples])
    makers = [("AdamW (vanilla)", lambda m: torch.optim.AdamW(m.parameters(), lr=1e-4, foreach=True)),
              ("DiGraP adam (eager)", lambda m: DiGraP(m.named_parameters(), lr=1e-4, mu=0.5))]
    if compile_:
        makers.append(("DiGraP adam (compiled)", lambda m: DiGraP(m.named_parameters(), lr=1e-4, mu=0.5, compile=True)))
    runs = []
    for name, make in makers:
        model = build_tiny_model(processor)
        opt = make(model)

        def step(model=model, opt=opt) -> None:
            model(**batch).loss.backward()
            opt.step()
            opt.zero_grad()

        runs.append((name, model, opt, step))
    timed = time_alternating([step for *_, step in runs], steps, warmup)
    rows = [dict(optimizer=name, first_s=first, step_ms=med * 1e3, state_bytes=state_bytes(opt),
                 params=sum(p.numel() for p in model.parameters()))
            for (name, model, opt, _step), (first, med) in zip(runs, timed)]
    base = rows[0]["step_ms"]
    for r in rows:
        r["ratio"] = r["step_ms"] / base
    return rows


def print_table(title: str, rows: list[dict[str, Any]], base_name: str) -> None:
    print(f"\n{title}")
    print(f"{'optimizer':<26}{'step ms':>10}{'x ' + base_name:>16}{'state MiB':>11}{'1st step s':>12}")
    for r in rows:
        print(f"{r['optimizer']:<26}{r['step_ms']:>10.1f}{r['ratio']:>16.2f}{r['state_bytes'] / 2**20:>11.1f}{r['first_s']:>12.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile-d rows")
    ap.add_argument("--cases", default="full,lora,train")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    compile_ = not args.no_compile
    cases = set(args.cases.split(","))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}), "
          f"fused AdamW: {has_fused_adamw()}")
    out: dict[str, Any] = {}
    base_name = "fused" if has_fused_adamw() else "foreach"
    if "full" in cases:
        shapes = full_ft_shapes()
        n = sum(torch.Size(s).numel() for s in shapes)
        out["full"] = optimizer_rows(shapes, "pretrained", args.steps, args.warmup, compile_)
        print_table(f"(a) full fine-tuning, {n / 1e6:.1f} M parameters in {len(shapes)} tensors", out["full"], base_name)
    if "lora" in cases:
        shapes = lora_shapes()
        out["lora"] = optimizer_rows(shapes, "origin", args.steps, args.warmup, compile_)
        print_table(f"(b) LoRA, {len(shapes)} tensors (r=8, d=768)", out["lora"], base_name)
    if "train" in cases:
        out["train"] = training_rows(max(args.steps, 30), args.warmup, compile_)
        print_table(f"(c) whole training step, embedded tiny model ({out['train'][0]['params'] / 1e6:.2f} M params, batch 16)",
                    out["train"], "vanilla")
    if args.json:
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
