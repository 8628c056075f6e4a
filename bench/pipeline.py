"""The whole no-LLM `generate` on generated corpora of growing size: seconds per stage, peak memory, growth.

    python bench/pipeline.py                       # 0.5M, 1M, 2M WordPiece tokens
    python bench/pipeline.py --tokens 1000000      # one size

Each size runs `python -m jobs.generate` as a fresh process that starts its own
local Ray, exactly as a user would, so "total" includes interpreter and Ray
start-up. Peak memory is the largest sum of RSS over that process and every
Ray process it started (sampled every 0.25 s). Goals (issue 9): 1M tokens end
to end <= 60 s; 2x the corpus <= 2.2x the time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.corpus import write_corpus

WORDS_PER_TOKEN = 0.8  # WordPiece splits ~1.25 tokens per English word on this corpus
STAGES = ("ingest", "chunk", "graph", "reports", "synthesis")


def tree_rss(marker: str, root_pid: int) -> int:
    """RSS of the driver and of every process whose command line names this run's Ray temp dir."""
    import psutil

    total = 0
    for p in psutil.process_iter(["pid", "cmdline", "memory_info"]):
        try:
            if p.info["pid"] == root_pid or marker in " ".join(p.info["cmdline"] or []):
                total += p.info["memory_info"].rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, TypeError):
            pass
    return total


def kill_leftovers(marker: str) -> None:
    import psutil

    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if marker in " ".join(p.info["cmdline"] or []):
                p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def run_size(tokens: int, work: Path, extra: list[str]) -> dict:
    corpus, out = work / f"corpus-{tokens}", work / f"run-{tokens}"
    docs = write_corpus(corpus, int(tokens * WORDS_PER_TOKEN))
    ray_tmp = tempfile.mkdtemp(prefix="rb", dir="/tmp")  # short: Ray's socket paths live under it
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "jobs.generate", "--set", f"corpus.path={corpus}", "--set", f"output.path={out}", *extra]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(ray_tmp, proc.pid))
        time.sleep(0.25)
    total = time.perf_counter() - start
    err = proc.stderr.read()
    kill_leftovers(ray_tmp)
    if proc.returncode != 0:
        raise SystemExit(f"generate failed on {tokens} tokens:\n{err[-3000:]}")
    markers = {s: json.loads((out / "_stages" / f"{s}.json").read_text()) for s in STAGES}
    stages = {s: m["seconds"] for s, m in markers.items()}
    chunk = markers["chunk"]
    return {"target": tokens, "tokens": chunk["stats"].get("tokens"), "docs": docs, "chunks": chunk["rows_out"],
            "qa": markers["synthesis"]["rows_out"], "stages": stages, "overhead": total - sum(stages.values()),
            "total": total, "peak_gb": peak / 2**30}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, action="append", help="corpus size in tokens (repeatable)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override for generate")
    p.add_argument("--work", help="folder for corpora and runs (default: a temp folder)")
    args = p.parse_args()
    sizes = args.tokens or [500_000, 1_000_000, 2_000_000]
    extra = [a for o in args.overrides for a in ("--set", o)]
    work = Path(args.work or tempfile.mkdtemp(prefix="ragtune-bench-"))
    load = os.getloadavg()[0]
    results = [run_size(t, work, extra) for t in sizes]

    head = "| tokens | docs | chunks | qa | " + " | ".join(STAGES) + " | start-up + other | total s | peak RSS GiB | time ratio |"
    print(head)
    print("|" + " --- |" * (head.count("|") - 1))
    prev = None
    for r in results:
        ratio = f"{r['total'] / prev['total']:.2f}x for {r['target'] / prev['target']:.1f}x" if prev else "-"
        print(f"| {r['tokens']:,} | {r['docs']:,} | {r['chunks']:,} | {r['qa']:,} | "
              + " | ".join(f"{r['stages'][s]:.1f}" for s in STAGES)
              + f" | {r['overhead']:.1f} | {r['total']:.1f} | {r['peak_gb']:.2f} | {ratio} |")
        prev = r
    print(f"\nload average at start: {load:.1f} on {os.cpu_count()} CPUs")
    one = next((r for r in results if r["target"] == 1_000_000), None)
    if one:
        print(f"goal 1M tokens <= 60 s: {'met' if one['total'] <= 60 else 'NOT met'} ({one['total']:.1f} s)")
    for a, b in itertools.pairwise(results):
        if b["target"] == 2 * a["target"]:
            g = b["total"] / a["total"]
            print(f"goal 2x corpus <= 2.2x time ({a['target']:,} -> {b['target']:,}): {'met' if g <= 2.2 else 'NOT met'} ({g:.2f}x)")


if __name__ == "__main__":
    main()
