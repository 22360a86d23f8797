"""Benchmark: embedder work saved by ClipMatch's deduplication on a VQA-like answer distribution.

Predictions come from the same synthetic VQAv2-shaped generator as ``bench_vqa_accuracy.py``
(yes/no and small numbers dominate, case / article / punctuation variants, a long tail). The
embedder is a tiny open_clip model built offline (same code path as EVA-CLIP, just small), so
the *counts* (texts requested, distinct strings, distinct token sequences, rows run through the
text tower) are what carries over to EVA01-g-14, where each row costs ~100x more.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_clipmatch_dedup.py [--n 50000]

Also times ClipMatcher.score (dedup on) against embedding every prediction (dedup off), checks
both give the same top-1/top-5, and shows the class-embedding cache hit path. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_vqa_accuracy import make_data  # noqa: E402

from vqa_ood_bench.score.clipmatch import ClipMatcher, OpenClipTextEmbedder  # noqa: E402

TINY = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 2},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000, help="number of predictions")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--classes", type=int, default=100, help="class list size (the most frequent answers)")
    args = ap.parse_args()

    import open_clip
    import torch

    tmp = Path(tempfile.mkdtemp(prefix="bench-clipmatch-"))
    (tmp / "cfg").mkdir()
    (tmp / "cfg" / "TinyCLIP-bench.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(tmp / "cfg")
    torch.manual_seed(0)
    ckpt = tmp / "tiny.pt"
    torch.save(open_clip.create_model("TinyCLIP-bench", pretrained=None).state_dict(), ckpt)

    preds, answers = make_data(args.n, seed=1)
    # Targets: each question's most common annotator answer; classes: the --classes most frequent of those.
    tops = [max(set(a), key=a.count) for a in answers]
    vals, counts = np.unique(tops, return_counts=True)
    classes = [str(v) for v in vals[np.argsort(-counts)][: args.classes]]
    keep = [i for i, t in enumerate(tops) if t in set(classes)]
    preds = [preds[i] for i in keep]
    targets = [tops[i] for i in keep]
    n = len(preds)

    def embedder():
        return OpenClipTextEmbedder("TinyCLIP-bench", str(ckpt), device="cpu", batch_size=args.batch_size)

    cache = tmp / "cache"
    emb = embedder()
    m = ClipMatcher(classes, emb, templates="openai_imagenet", cache_dir=cache)
    t0 = time.perf_counter()
    m.class_embeddings
    class_s = time.perf_counter() - t0
    class_rows = emb.rows_embedded
    before = (emb.texts_requested, emb.rows_embedded, emb.forward_calls)
    t0 = time.perf_counter()
    res = m.score(preds, targets)
    dedup_s = time.perf_counter() - t0
    distinct_strings = len(set(preds))
    dedup_rows = emb.rows_embedded - before[1]
    dedup_calls = emb.forward_calls - before[2]

    # Baseline: every prediction tokenized and run through the tower, no dedup at all.
    base = embedder()
    t0 = time.perf_counter()
    tokens = base.tokenize(preds)
    all_emb = base.encode_tokens(tokens)
    sims = all_emb @ m.class_embeddings.T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    base_s = time.perf_counter() - t0
    tgt = m.target_indices(targets)
    base_top1 = float(100 * (top[:, 0] == tgt).mean())
    base_top5 = float(100 * (top == tgt[:, None]).any(axis=1).mean())

    # Cache hit path: a fresh matcher with a fresh embedder loads the class embeddings from disk.
    emb2 = embedder()
    m2 = ClipMatcher(classes, emb2, templates="openai_imagenet", cache_dir=cache)
    t0 = time.perf_counter()
    m2.class_embeddings
    hit_s = time.perf_counter() - t0

    out = {
        "predictions": n,
        "distinct_strings": distinct_strings,
        "distinct_token_sequences_embedded": dedup_rows,
        "rows_saved": n - dedup_rows,
        "rows_saved_pct": round(100 * (n - dedup_rows) / n, 2),
        "forward_batches_dedup": dedup_calls,
        "forward_batches_no_dedup": base.forward_calls,
        "score_s_dedup": round(dedup_s, 3),
        "score_s_no_dedup": round(base_s, 3),
        "speedup": round(base_s / dedup_s, 1),
        "top1": res.top1,
        "top5": res.top5,
        "top1_no_dedup": base_top1,
        "top5_no_dedup": base_top5,
        "same_numbers": bool(abs(res.top1 - base_top1) < 1e-9 and abs(res.top5 - base_top5) < 1e-9),
        "classes": len(classes),
        "class_prompts_embedded": class_rows,
        "class_embeddings_s_miss": round(class_s, 3),
        "class_embeddings_s_hit": round(hit_s, 4),
        "cache_hit": m2.cache_hit,
        "model_built_on_hit": emb2._model is not None,
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
