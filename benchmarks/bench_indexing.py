"""Benchmark: index a synthetic VQAv2-val-sized set (214,354 questions) with the vqav2 loader.

Writes a questions file and an annotations file in the released VQAv2 format (wrapper dicts,
10 answers per question with ``answer_confidence`` and ``answer_id``, ~5 questions per image)
into a temporary folder, then, in a fresh Python process, reads them into a list of
``VQARecord`` with ``vqa_ood_bench``'s ``vqav2`` loader (what ``Suite.load`` does) and reports
wall time and peak resident memory of that process (``VmHWM``, interpreter included).
Images are not created: the loader is lazy and never touches them.

    python benchmarks/bench_indexing.py [--n 214354] [--json] [--keep DIR]

Goal (issue 3): under 10 s and under 1 GiB.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_VAL = 214_354
GOAL_SECONDS = 10.0
GOAL_BYTES = 1 << 30

QTYPES = ["what is the", "is the", "how many", "what color is the", "is this", "what", "are there", "what is"]
WORDS = ["yes", "no", "2", "1", "3", "white", "red", "blue", "tennis", "dog", "table", "pizza", "kitchen", "black"]
CONF = ["yes", "maybe", "no"]


def write_synthetic(folder: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    rng = random.Random(seed)
    questions, annotations = [], []
    image_id, k = 0, 0
    for _ in range(n):
        if k == 0 or k >= rng.randint(3, 7) or k >= 999:
            image_id += rng.randint(1, 13)
            k = 0
        qid = image_id * 1000 + k
        k += 1
        qtype = rng.choice(QTYPES)
        questions.append({"image_id": image_id, "question": f"{qtype.capitalize()} thing number {qid % 97} near the {rng.choice(WORDS)}?", "question_id": qid})
        answers = [
            {"answer": rng.choice(WORDS), "answer_confidence": rng.choice(CONF), "answer_id": j + 1} for j in range(10)
        ]
        annotations.append(
            {
                "question_type": qtype,
                "multiple_choice_answer": answers[0]["answer"],
                "answers": answers,
                "image_id": image_id,
                "answer_type": rng.choice(["yes/no", "number", "other"]),
                "question_id": qid,
            }
        )
    d = folder / "vqav2"
    d.mkdir(parents=True, exist_ok=True)
    info = {"description": "synthetic", "version": "2.0", "year": 2017}
    q_path = d / "v2_OpenEnded_mscoco_val2014_questions.json"
    a_path = d / "v2_mscoco_val2014_annotations.json"
    q_path.write_text(json.dumps({"info": info, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": "val2014", "questions": questions}))
    a_path.write_text(json.dumps({"info": info, "license": {}, "data_subtype": "val2014", "annotations": annotations}))
    return q_path, a_path


CHILD = r"""
import json, sys, time

def vm_hwm():
    # peak resident set of this process (VmHWM; unlike ru_maxrss it is not inherited
    # from the parent that wrote the files)
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

from vqa_ood_bench.data.registry import get_dataset
from vqa_ood_bench.data.formats._common import LoadReport
spec = get_dataset("vqav2")
base = vm_hwm()
t0 = time.perf_counter()
report = LoadReport()
records = list(spec.load(sys.argv[1], split="val", report=report))
elapsed = time.perf_counter() - t0
ids = {r.question_id for r in records}
peak = vm_hwm()
print(json.dumps({"records": len(records), "unique_ids": len(ids), "skipped": len(report.skipped),
                  "seconds": elapsed, "peak_rss_bytes": peak, "rss_after_imports_bytes": base}))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=N_VAL, help="number of questions (default: VQAv2 val, 214,354)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--keep", type=Path, default=None, help="write the synthetic files here and keep them")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        t0 = time.perf_counter()
        q_path, a_path = write_synthetic(root, args.n)
        gen_s = time.perf_counter() - t0
        out = subprocess.run([sys.executable, "-c", CHILD, str(root)], capture_output=True, text=True)
        if out.returncode != 0:
            sys.stderr.write(out.stderr)
            return 1
        res = json.loads(out.stdout)
        res.update(
            {
                "questions": args.n,
                "annotation_file_bytes": a_path.stat().st_size,
                "question_file_bytes": q_path.stat().st_size,
                "generate_seconds": gen_s,
                "goal_seconds": GOAL_SECONDS,
                "goal_peak_bytes": GOAL_BYTES,
                "ok": res["seconds"] < GOAL_SECONDS and res["peak_rss_bytes"] < GOAL_BYTES and res["records"] == args.n,
            }
        )
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        mib = 1 << 20
        print(
            f"indexed {res['records']:,} questions ({res['annotation_file_bytes'] / mib:.0f} MiB annotations) in "
            f"{res['seconds']:.2f} s, peak RSS {res['peak_rss_bytes'] / mib:.0f} MiB "
            f"(after imports {res['rss_after_imports_bytes'] / mib:.0f} MiB); goal < {GOAL_SECONDS:.0f} s, < 1024 MiB: "
            + ("met" if res["ok"] else "NOT met")
        )
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
