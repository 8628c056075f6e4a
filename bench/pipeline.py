"""The whole no-LLM `generate` on both corpus shapes: seconds, rows and peak memory per stage, the work's own floor, growth.

    python bench/pipeline.py                              # both shapes, each at its size and at twice it
    python bench/pipeline.py --shape short --no-double    # 10,786 short entries (≈1.3M tokens) only
    python bench/pipeline.py --shape long --size 400000   # 400k words of long journal entries, and 800k

Each run is a fresh `python -m jobs.generate` process that starts its own local
Ray, exactly as a user would. Its stderr says when each stage starts, so every
RSS sample (driver plus all its descendants: Ray's GCS, raylet and workers;
every 0.25 s) and the CPU seconds they used since the last sample are booked
to the stage running then; "start-up" is everything before the first stage
(interpreter, imports, preflight, Ray's start), "rest" everything else:
between stages (fingerprints, markers, manifest), the card, and the exit
(Ray's shutdown). RSS sums count pages shared between processes (the object
store) once per process, so they are an upper bound; the driver's own peak is
shown too (at 10x the short corpus it must stay under 8 GB: `--size 107860
--no-double`).

The floor is the work itself, done afterwards in this process as one plain
loop over the same corpus (no Ray, no files written): reading and parsing it,
WordPiece-tokenizing every document with the chunker's tokenizer, building
the bm25s index over the run's chunks and answering as many queries as the
synthesis stage retrieved for (or wrote questions). It is timed in CPU
seconds, its wall time on an idle machine. "stage / floor" says how far a
stage's wall time is from the work it does. Goals (issue 15): ≈1.3M tokens of
short entries ≤ 60 s end to end; twice the corpus ≤ 2.2x the time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.corpus import write_shape  # noqa: E402

STAGES = ("ingest", "chunk", "graph", "reports", "synthesis")
SIZES = {"short": 10_786, "long": 800_000}  # entries; words (≈1.1M WordPiece tokens)
UNITS = {"short": "entries", "long": "words"}
GiB = 2**30


def tree_usage(pid: int, cpu_seen: dict[int, float]) -> tuple[int, int, float]:
    """RSS of a process and all its descendants (a local Ray's processes are the driver's), the
    process's own RSS, and the CPU seconds they used since the last call (`cpu_seen` remembers each
    process's total)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0, 0.0
    rss, own, cpu = 0, 0, 0.0
    for p in procs:
        try:
            with p.oneshot():
                rss += (mine := p.memory_info().rss)
                own = mine if p.pid == pid else own
                t = p.cpu_times()
        except psutil.Error:
            continue
        used = t.user + t.system
        cpu += used - cpu_seen.get(p.pid, 0.0)
        cpu_seen[p.pid] = used
    return rss, own, cpu


def kill_leftovers(marker: str) -> None:
    """Ray processes of this run that outlived the driver (found by their private temp dir), by pid."""
    import psutil

    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if marker in " ".join(p.info["cmdline"] or []):
                p.kill()
        except psutil.Error:
            pass


class Phases:
    """Which part of the job runs now, from the driver's stderr: 'start-up', a stage, or 'rest'."""

    def __init__(self, stream):
        self.now, self.lines = "start-up", []
        self.started: dict[str, float] = {}
        self.last_stage_end = self.finished = 0.0  # when the last stage and the job said they were done
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line)
            for stage in STAGES:
                if line.startswith(f"ragtune: [{stage}] started"):
                    self.now = stage
                    self.started[stage] = time.perf_counter()
                elif line.startswith(f"ragtune: [{stage}] ") and " rows out" in line:
                    self.now = "rest"
                    self.last_stage_end = time.perf_counter()
            if line.startswith("ragtune: generate finished"):
                self.finished = time.perf_counter()

    def join(self) -> None:
        self._thread.join()


def run_generate(corpus: Path, out: Path, extra: list[str]) -> dict:
    ray_tmp = tempfile.mkdtemp(prefix="rb", dir="/tmp")  # short: Ray's socket paths live under it
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "jobs.generate", "--set", f"corpus.path={corpus}", "--set", f"output.path={out}", *extra]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    phases = Phases(proc.stderr)
    peak: dict[str, int] = {}
    driver: dict[str, int] = {}
    cpu: dict[str, float] = {}
    cpu_seen: dict[int, float] = {}
    while proc.poll() is None:
        now = phases.now
        rss, own, used = tree_usage(proc.pid, cpu_seen)
        peak[now] = max(peak.get(now, 0), rss)
        driver[now] = max(driver.get(now, 0), own)
        cpu[now] = cpu.get(now, 0.0) + used
        time.sleep(0.25)
    total = time.perf_counter() - start
    phases.join()
    kill_leftovers(ray_tmp)
    if proc.returncode != 0:
        raise SystemExit(f"generate failed on {corpus}:\n{''.join(phases.lines)[-3000:]}")
    markers = {s: json.loads(p.read_text()) for s in STAGES if (p := out / "_stages" / f"{s}.json").exists()}
    startup = min(phases.started.values()) - start
    end = start + total
    finished = phases.finished or end
    return {"markers": markers, "peak": peak, "driver": driver, "cpu": cpu, "total": total, "startup": startup,
            "rest": total - startup - sum(m["seconds"] for m in markers.values()),
            "card": finished - phases.last_stage_end, "exit": end - finished}


def floor(corpus: Path, shape: str, out: Path, queries: int) -> dict[str, float]:
    """Seconds of the work itself, as plain single-process loops over the same corpus: CPU seconds
    (its wall time on an idle machine; a busy one stretches wall time, not this)."""
    import pyarrow.parquet as pq

    from factory.chunking import load_tokenizer
    from factory.config import load_config
    from factory.synth.retrieval import Retriever

    cfg = load_config(None, [])
    t0 = time.process_time()
    if shape == "short":
        texts = [json.loads(line)["text"] for line in (corpus / "entries.jsonl").read_text(encoding="utf-8").splitlines()]
    else:
        texts = [p.read_text(encoding="utf-8") for p in sorted(corpus.glob("*.md"))]
    t1 = time.process_time()
    tok = load_tokenizer(cfg.chunking.tokenizer)
    t2 = time.process_time()
    for text in texts:
        tok.encode(text, add_special_tokens=False)
    t3 = time.process_time()
    chunks = pq.read_table(out / "chunks", columns=["id", "text", "title"])
    t4 = time.process_time()
    retriever = Retriever.build(chunks, "bm25")
    t5 = time.process_time()
    titles = [t or "" for t in chunks.column("title").to_pylist()]
    asked = [f"What do the sources say about {titles[i % len(titles)]}?" for i in range(queries)]
    retriever.search(asked, k=cfg.synth.top_k)
    t6 = time.process_time()
    return {"read": t1 - t0, "tokenize": t3 - t2, "bm25 index": t5 - t4, "bm25 queries": t6 - t5, "queries": queries}


def measure(shape: str, size: int, work: Path, extra: list[str]) -> dict:
    corpus, out = work / f"{shape}-{size}", work / f"run-{shape}-{size}"
    docs = write_shape(corpus, shape, size)
    r = run_generate(corpus, out, extra)
    synth = r["markers"].get("synthesis", {}).get("stats", {})
    # As many queries as the stage retrieved for, else one per question it wrote.
    queries = synth.get("retrieval", {}).get("questions") or sum(synth.get("questions", {}).values())
    r["floor"] = floor(corpus, shape, out, queries or r["markers"]["chunk"]["rows_out"])
    r.update(shape=shape, size=size, docs=docs, tokens=r["markers"]["chunk"]["stats"].get("tokens", 0))
    return r


def report(r: dict) -> None:
    m, peak, driver, cpu, fl = r["markers"], r["peak"], r["driver"], r["cpu"], r["floor"]
    g = m.get("graph", {}).get("stats", {})
    entities, communities = g.get("merge", {}).get("entities", 0), g.get("communities", {}).get("communities", 0)
    print(f"\n### {r['shape']}: {r['size']:,} {UNITS[r['shape']]}, {r['docs']:,} documents, {r['tokens']:,} chunk tokens, "
          f"{entities:,} entities, {communities:,} communities\n")
    print("| part | rows in | rows out | wall s | CPU s | peak RSS GiB | driver peak RSS GiB "
          "| floor: the same work in one plain loop | floor s | stage / floor |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |")
    floors = {"ingest": ("read + parse the corpus", fl["read"]),
              "chunk": ("WordPiece-tokenize every document", fl["tokenize"]),
              "synthesis": (f"bm25s index + {fl['queries']:,} queries", fl["bm25 index"] + fl["bm25 queries"])}

    def row(name: str, rows_in: str, rows_out: str, seconds: float, key: str) -> None:
        what, f = floors.get(key, ("", None))
        ratio = f"{seconds / f:.1f}x" if f else ""
        print(f"| {name} | {rows_in} | {rows_out} | {seconds:.1f} | {cpu.get(key, 0):.1f} | {peak.get(key, 0) / GiB:.2f} | "
              f"{driver.get(key, 0) / GiB:.2f} | {what} | "
              f"{'' if f is None else f'{f:.2f}'} | {ratio} |")

    row("start-up (interpreter, imports, preflight, Ray start)", "", "", r["startup"], "start-up")
    for s in m:
        row(s, f"{m[s]['rows_in']:,}", f"{m[s]['rows_out']:,}", m[s]["seconds"], s)
    between = r["rest"] - r["card"] - r["exit"]
    row(f"rest: between stages {between:.1f} s (fingerprints, markers, manifest), card {r['card']:.1f} s, "
        f"exit {r['exit']:.1f} s (Ray shutdown)", "", "", r["rest"], "rest")
    print(f"| **total** | | | **{r['total']:.1f}** | **{sum(cpu.values()):.1f}** | **{max(peak.values()) / GiB:.2f}** | "
          f"**{max(driver.values()) / GiB:.2f}** | all of the above | "
          f"{fl['read'] + fl['tokenize'] + fl['bm25 index'] + fl['bm25 queries']:.2f} | |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=("short", "long", "both"), default="both")
    p.add_argument("--size", type=int, help="entries (short) or words (long); default: " +
                   ", ".join(f"{k} {v:,}" for k, v in SIZES.items()))
    p.add_argument("--no-double", action="store_true", help="skip the run at twice the size")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override for generate")
    p.add_argument("--until", choices=STAGES, help="stop generate after this stage")
    p.add_argument("--work", help="folder for corpora and runs (default: a temp folder)")
    args = p.parse_args()
    extra = [a for o in args.overrides for a in ("--set", o)] + (["--until", args.until] if args.until else [])
    work = Path(args.work or tempfile.mkdtemp(prefix="ragtune-bench-"))
    shapes = ("short", "long") if args.shape == "both" else (args.shape,)
    load = os.getloadavg()
    results = []
    for shape in shapes:
        size = args.size or SIZES[shape]
        for n in (size,) if args.no_double else (size, 2 * size):
            results.append(measure(shape, n, work, extra))
            report(results[-1])
    print(f"\nload average at start: {load[0]:.1f} (1 min), {load[1]:.1f} (5 min); at end: {os.getloadavg()[0]:.1f}; "
          f"{os.cpu_count()} CPUs")
    for r in results:
        if r["shape"] == "short" and r["size"] == SIZES["short"]:
            print(f"goal ≈1.3M tokens of short entries <= 60 s: {'met' if r['total'] <= 60 else 'NOT met'} ({r['total']:.1f} s)")
        if r["shape"] == "short" and r["size"] >= 10 * SIZES["short"]:
            peak = max(r["driver"].values())
            print(f"goal 10x the short corpus: driver peak RSS < 8 GB: {'met' if peak < 8e9 else 'NOT met'} ({peak / GiB:.2f} GiB)")
    for a, b in zip(results, results[1:]):
        if a["shape"] == b["shape"] and b["size"] == 2 * a["size"]:
            g = b["total"] / a["total"]
            print(f"goal 2x corpus <= 2.2x time ({a['shape']}, {a['tokens']:,} -> {b['tokens']:,} tokens): "
                  f"{'met' if g <= 2.2 else 'NOT met'} ({g:.2f}x)")


if __name__ == "__main__":
    main()
