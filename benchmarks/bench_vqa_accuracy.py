"""Benchmark: VQA accuracy on 214,354 predictions x 10 answers (VQAv2 val size).

Compares the vectorised scorer (``vqa_scores``) with a plain per-question loop
(``vqa_scores_loop``, the official script's structure without its file handling) in the same
run, on a synthetic answer distribution shaped like VQAv2's: yes/no and small numbers dominate,
annotators mostly agree, answers come with case / article / number-word / punctuation variants,
and a long tail of free-text answers gives many distinct strings (the normaliser's real cost).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_vqa_accuracy.py [--n 214354] [--skip-loop]

Peak memory is measured in a separate call under ``tracemalloc`` (numpy reports its buffers to
it), so the timing run is not slowed by tracing. Prints one JSON object at the end.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vqa_ood_bench.score.vqa_accuracy import VARIANTS, vqa_scores, vqa_scores_loop  # noqa: E402

_NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
_NOUNS = [
    "dog", "cat", "man", "woman", "frisbee", "pizza", "tennis", "baseball", "kite", "train", "bus", "red",
    "blue", "white", "black", "green", "table", "grass", "water", "snow", "skateboard", "surfboard", "horse",
    "elephant", "giraffe", "umbrella", "clock", "kitchen", "bathroom", "street", "sky", "phone", "banana",
]


def make_data(n: int, n_answers: int = 10, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    rng = np.random.default_rng(seed)
    base = ["yes", "no"] + [str(i) for i in range(21)] + _NOUNS
    base += [f"{a} {b}" for a in _NOUNS for b in _NOUNS if a != b][:4000]
    weights = np.concatenate([[60.0, 55.0], 30.0 / (1 + np.arange(21)), 8.0 / (1 + np.arange(len(base) - 23)) ** 0.9])
    weights /= weights.sum()

    def variant(ans: str, r: float) -> str:
        if r < 0.25:
            return ans.capitalize()
        if r < 0.45:
            return ("the " if r < 0.35 else "a ") + ans
        if r < 0.6 and ans.isdigit() and int(ans) <= 10:
            return _NUMBER_WORDS[int(ans)]
        if r < 0.75:
            return ans + "."
        if r < 0.85:
            return ans.replace(" ", "-")
        return f"{ans}, {ans}" if r < 0.92 else f" {ans}\n"

    truth = rng.choice(len(base), size=n, p=weights)
    other = rng.choice(len(base), size=(n, n_answers), p=weights)
    kind = rng.random((n, n_answers))
    rvar = rng.random((n, n_answers))
    tail = rng.integers(0, 10**6, size=(n, n_answers))
    answers: list[list[str]] = []
    for q in range(n):
        t = base[truth[q]]
        row = []
        for j in range(n_answers):
            k = kind[q, j]
            if k < 0.70:
                row.append(t)
            elif k < 0.82:
                row.append(variant(t, rvar[q, j]))
            elif k < 0.95:
                row.append(base[other[q, j]])
            else:  # free-text long tail: a distinct string most of the time
                row.append(f"{_NOUNS[tail[q, j] % len(_NOUNS)]} {tail[q, j]}")
        answers.append(row)
    pk = rng.random(n)
    pv = rng.random(n)
    pother = rng.choice(len(base), size=n, p=weights)
    preds = []
    for q in range(n):
        t = base[truth[q]]
        if pk[q] < 0.6:
            preds.append(t)
        elif pk[q] < 0.75:
            preds.append(variant(t, pv[q]))
        else:
            preds.append(base[pother[q]])
    return preds, answers


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=214_354)
    ap.add_argument("--skip-loop", action="store_true", help="time only the vectorised scorer")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()

    t0 = time.perf_counter()
    preds, answers = make_data(args.n)
    gen_s = time.perf_counter() - t0
    n_distinct = len(set(preds).union(*map(set, answers)))
    print(f"data: {args.n} questions x 10 answers, {n_distinct} distinct strings (built in {gen_s:.1f} s)", flush=True)

    out: dict = {"n": args.n, "answers_per_question": 10, "distinct_strings": n_distinct, "variants": {}}
    for variant in args.variants.split(","):
        t0 = time.perf_counter()
        fast = vqa_scores(preds, answers, variant)
        fast_s = time.perf_counter() - t0

        tracemalloc.start()
        vqa_scores(preds, answers, variant)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()

        row = {"vectorised_s": round(fast_s, 3), "vectorised_peak_mb": round(peak / 2**20, 1), "accuracy": float(100 * fast.mean())}
        if not args.skip_loop:
            t0 = time.perf_counter()
            slow = vqa_scores_loop(preds, answers, variant)
            slow_s = time.perf_counter() - t0
            diff = float(np.abs(fast - slow).max())
            row.update(
                loop_s=round(slow_s, 3),
                speedup=round(slow_s / fast_s, 1),
                loop_accuracy=float(100 * slow.mean()),
                max_abs_diff=diff,
                unchanged=bool(diff <= 1e-12 and abs(fast.mean() - slow.mean()) <= 1e-12),
            )
        out["variants"][variant] = row
        print(f"{variant}: {json.dumps(row)}", flush=True)
    out["process_max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
