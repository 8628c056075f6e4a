"""The quality report's cost on a run folder, in CPU seconds (time.process_time: a shared, loaded
box inflates wall time far more than the work done).

    python bench/quality_report.py RUN_FOLDER [--repeat 3]

Rows, in the same run: `quality_report()` itself; its floor, reading the qa and chunks columns
it reads (Parquet decoding, nothing measured); and the per-text Python it replaced for its
largest measure, text.shingles() and crc32 of every answer one at a time (what MinHash needs
before any hashing). Each is the fastest of --repeat runs. Any run folder works, e.g. one
written by `python -m jobs.generate` or bench/pipeline.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from factory.pipeline import open_run  # noqa: E402
from factory.synth.report import _batches, quality_report  # noqa: E402
from factory.text import shingles  # noqa: E402

QA_COLUMNS = ["id", "kind", "split", "question", "answer", "reasoning", "messages", "source_chunk_id",
              "retrieved_source", "groundedness", "question_set"]


def read_columns(run) -> int:
    rows = sum(b.num_rows for b in _batches(run, "qa", QA_COLUMNS))
    for _ in _batches(run, "chunks", ["id", "text"]):
        pass
    return rows


def shingle_hashes_per_text(run) -> int:
    rows = 0
    for b in _batches(run, "qa", ["answer"]):
        for answer in b.column("answer").to_pylist():
            [zlib.crc32(g.encode()) for g in shingles(answer)]
            rows += 1
    return rows


def fastest(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="run folder with qa and chunks tables")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    run = open_run(args.run)
    rows = read_columns(run)
    floor = fastest(lambda: read_columns(run), args.repeat)
    print(f"{rows} qa rows in {args.run}; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    report = fastest(lambda: quality_report(run), args.repeat)
    per_text = fastest(lambda: shingle_hashes_per_text(run), args.repeat)
    print("| step | CPU s | qa rows/s | vs floor |\n|---|---|---|---|")
    for name, seconds in [("quality_report()", report), ("floor: read the columns it reads", floor),
                          ("per-text Python: shingles + crc32 of each answer", per_text)]:
        print(f"| {name} | {seconds:.2f} | {rows / seconds:,.0f} | {seconds / floor:.1f}x |")

if __name__ == "__main__":
    main()
