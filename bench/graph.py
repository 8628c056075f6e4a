"""The graph and reports stages in no-LLM mode, on both corpus shapes, and hierarchical Leiden at 50k nodes.

    python bench/graph.py --shape short --size 10000   # 10k short reference entries (bench/corpus.py), ≈1.2M tokens
    python bench/graph.py --shape long --size 800000   # ≈800k words of long journal entries, ≈1.3M tokens
    python bench/graph.py --skip-corpus                # clustering only

Shapes: `short` is bench/corpus.py's many ~480-character reference entries
(thousands of Zipf-reused names, cross-references), one chunk each; `long` is
a journal-like corpus generated here (entries of ~400 words whose names come
from social circles, so the graph has communities), chunked by
factory.chunking (500/100). Each step of the graph stage (entity types and
voice, rule extraction on Ray Data, merge, clustering, writing) and the
reports stage is timed: wall seconds; CPU seconds of the driver and its Ray
processes (the work done, which a loaded shared box does not inflate much);
and the step's peak RSS, the largest RSS sum of the driver and its Ray
processes sampled every 0.1 s while it ran. Always read the load average
printed with the table: the box is shared.

Part 2 clusters a planted-partition graph of 50k nodes / 250k edges with
factory.graph.communities.hierarchical_leiden (max cluster size 10) against,
in the same run, one flat pass of leidenalg (n_iterations=2, the setting the
stack notes timed at ~6 s) as the baseline.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import psutil  # noqa: E402
import pyarrow as pa  # noqa: E402

import schemas  # noqa: E402
from bench.corpus import entry_records  # noqa: E402
from factory.chunking import chunk_document, load_tokenizer  # noqa: E402
from factory.config import validate_config  # noqa: E402
from factory.graph import resolve_entity_types  # noqa: E402
from factory.graph.communities import build_communities, hierarchical_leiden  # noqa: E402
from factory.graph.extract import extract_graph  # noqa: E402
from factory.graph.merge import finalize, merge  # noqa: E402
from factory.graph.reports import write_reports  # noqa: E402
from factory.ingest import document_id, markdown_title, normalize  # noqa: E402
from factory.pipeline import Run, StageRecord  # noqa: E402

SYL = ["ka", "lo", "mi", "ren", "dor", "sa", "vel", "tor", "an", "bri", "cor", "del", "fen", "gar", "hal", "is", "jen",
       "mar", "nor", "pel", "quin", "ros", "sten", "tal", "ul", "vor", "wen", "yar", "zel", "bel"]
SUFFIX = {"geo": ["Street", "River", "Bay", "Gardens", "Road", "Hill"], "organization": ["Studio", "Bakery", "Club", "Library"],
          "event": ["Festival", "Marathon", "Fair"]}
TEMPLATES = [
    "{a} and I walked along {p} and talked about {b} for an hour.",
    "In the afternoon {a} met {b} at {o}, which made the whole week feel lighter.",
    "{a} told me that {b} is planning the {e} this year, and {p} will be busy.",
    "We had dinner near {p} with {a}, and {b} arrived late from {o}.",
    "I spent the morning at {o} sketching, while {a} called twice about the {e}.",
]
FILLER = ["The weather turned cold again and the tea went cold before I noticed.",
          "I slept badly and woke before the alarm, thinking about the garden plan.",
          "Work was slow, and I kept rereading the same three emails.",
          "There was bread, soup and a long quiet evening with a notebook."]


class PeakRSS:
    """Largest RSS sum of this process and its children (the local Ray), sampled in a thread; `reset` starts a step."""

    def __init__(self, every_s: float = 0.1):
        self.every_s, self.peak, self._stop = every_s, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(self.every_s)

    def reset(self) -> None:
        self.peak = 0

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def tree_cpu() -> float:
    """CPU seconds used so far by this process and its live children: work done, whatever the box's load."""
    me, total = psutil.Process(), 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def name(rng: random.Random, parts: int) -> str:
    return " ".join("".join(rng.choice(SYL) for _ in range(2)).capitalize() for _ in range(parts))


def write_corpus(folder: Path, words: int, seed: int = 0, circle: int = 12) -> int:
    """Dated entries; each entry draws its names from one circle, so names co-occur in groups."""
    rng = random.Random(seed)
    n_circles = max(4, words // 4000)
    circles = []
    for _ in range(n_circles):
        circles.append({
            "a": [name(rng, 2) for _ in range(circle // 2)],
            "p": [f"{name(rng, 1)} {rng.choice(SUFFIX['geo'])}" for _ in range(3)],
            "o": [f"{name(rng, 1)} {rng.choice(SUFFIX['organization'])}" for _ in range(2)],
            "e": [f"{name(rng, 1)} {rng.choice(SUFFIX['event'])}"],
        })
    folder.mkdir(parents=True, exist_ok=True)
    total, i = 0, 0
    while total < words:
        c = circles[rng.randrange(n_circles)]
        body, count = [], 0
        while count < 400:
            if rng.random() < 0.25:
                s = rng.choice(FILLER)
            else:
                a, b = rng.sample(c["a"], 2)
                s = rng.choice(TEMPLATES).format(a=a, b=b, p=rng.choice(c["p"]), o=rng.choice(c["o"]), e=c["e"][0])
            body.append(s)
            count += len(s.split())
        (folder / f"{2000 + i // 365}-{1 + i % 365 // 31 % 12:02d}-{1 + i % 28:02d}-{i:06d}.md").write_text(
            f"# Entry {i}\n\n" + " ".join(body) + "\n", encoding="utf-8")
        total += count
        i += 1
    return i


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def step(rows: list, mem: PeakRSS, label: str, fn, *args):
    """Run one step, recording wall seconds, CPU seconds of the driver + Ray processes, and its peak RSS."""
    cpu = tree_cpu()
    mem.reset()
    out, t = timed(fn, *args)
    time.sleep(2 * mem.every_s)  # one more sample after the step
    rows.append((label, t, tree_cpu() - cpu, mem.peak))
    return out


def chunk_docs(docs: list[tuple[str, str | None, str | None]], cfg) -> pa.Table:
    """(text, title, date) documents chunked as the chunk stage would, without Ray."""
    tok = load_tokenizer(cfg.chunking.tokenizer)
    rows = []
    for text, title, date in docs:
        text = normalize(text)
        rows += chunk_document({"id": document_id(text), "text": text, "title": title, "date": date}, tok, cfg.chunking)
    return schemas.validate("chunks", pa.Table.from_pylist(rows))


def corpus_docs(shape: str, size: int, folder: Path) -> list[tuple[str, str | None, str | None]]:
    """bench/corpus.py's short reference entries, or the long journal entries written here."""
    if shape == "short":
        return [(r["text"], r["title"], None) for r in entry_records(size)]
    write_corpus(folder, size)
    return [(p.read_text(encoding="utf-8"), None, p.stem[:10]) for p in sorted(folder.glob("*.md"))]


def bench_stages(shape: str, size: int) -> None:
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="bench-graph-"))
    cfg = validate_config({"output": {"path": str(tmp / "run")}})
    start = time.perf_counter()
    docs = corpus_docs(shape, size, tmp / "corpus")
    chunks, n_docs = chunk_docs([(t, title or markdown_title(t), d) for t, title, d in docs], cfg), len(docs)
    tokens = sum(chunks.column("n_tokens").to_pylist())
    print(f"corpus ({shape}): {n_docs:,} documents, {chunks.num_rows:,} chunks, {tokens:,} tokens "
          f"(made and chunked in {time.perf_counter() - start:.1f} s, not part of the stages)")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    run = Run(cfg)
    run.write_table("chunks", chunks)
    rec = StageRecord("graph")
    rows: list = []
    with PeakRSS() as mem:
        order = {c: i for i, c in enumerate(chunks.column("id").to_pylist())}
        types, voice = step(rows, mem, "entity types (voice from the chunks)", resolve_entity_types,
                            cfg.graph.entity_types, (t.as_py() for t in chunks.column("text")))
        ex = step(rows, mem, "extract (rules, Ray Data)", extract_graph, run, rec, types)
        merged, ents, rels = step(rows, mem, "merge + entity/relationship tables",
                                  lambda: (m := merge(ex, cfg.graph, True, types, order), *finalize(m.graph)))
        comms, cstats = step(rows, mem, "communities (hierarchical Leiden + cover)", build_communities,
                             merged.graph, cfg.graph.max_cluster_size, cfg.graph.seed, True, order)
        step(rows, mem, "write graph tables",
             lambda: [run.write_table(n, tab) for n, tab in (("entities", ents), ("relationships", rels), ("communities", comms))])
        step(rows, mem, "reports (rules, per level on Ray Data)", write_reports, run, StageRecord("reports"))
    print(f"voice {voice}, types {types}; graph: {ents.num_rows:,} entities, {rels.num_rows:,} relationships, "
          f"{comms.num_rows:,} communities ({cstats['levels']} levels, largest leaf {cstats['largest_leaf']}, "
          f"{cstats['joined_nearest']:,} entities joined to the nearest leaf, {cstats['residual_entities']:,} residual)")
    print(f"merge stats {merged.stats}")
    print(f"\nload average while running: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("| step | wall s | CPU s (driver + Ray) | peak RSS GiB | tokens / wall s |\n| --- | ---: | ---: | ---: | ---: |")
    for label, t, cpu, peak in rows:
        print(f"| {label} | {t:.1f} | {cpu:.1f} | {peak / 2**30:.2f} | {tokens / t:,.0f} |")
    graph_rows = rows[:-1]
    for label, part in (("graph stage", graph_rows), ("graph + reports", rows)):
        t, cpu = sum(r[1] for r in part), sum(r[2] for r in part)
        print(f"| **{label}** | **{t:.1f}** | {cpu:.1f} | {max(r[3] for r in part) / 2**30:.2f} | {tokens / t:,.0f} |")
    print(f"\ndriver alone, peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    ray.shutdown()


def planted(n: int, m: int, block: int = 50, p_in: float = 0.8, seed: int = 0) -> list[tuple[int, int]]:
    rnd, edges = random.Random(seed), set()
    while len(edges) < m:
        u = rnd.randrange(n)
        v = (u // block) * block + rnd.randrange(block) if rnd.random() < p_in else rnd.randrange(n)
        if u != v:
            edges.add((min(u, v), max(u, v)))
    return sorted(edges)


def bench_clustering(n: int, m: int) -> None:
    import igraph as ig
    import leidenalg

    edges = planted(n, m)
    weights = [1.0] * len(edges)
    g = ig.Graph(n=n, edges=edges)
    g.es["weight"] = weights
    part, t_base = timed(lambda: leidenalg.find_partition(g, leidenalg.ModularityVertexPartition, weights="weight",
                                                          n_iterations=2, seed=42))
    (clusters, over), t_ours = timed(hierarchical_leiden, n, edges, weights, 10, 42)
    (again, _), _ = timed(hierarchical_leiden, n, edges, weights, 10, 42)
    same = [c.nodes for c in clusters] == [c.nodes for c in again]
    leaves = [c for c in clusters if not c.children]
    print(f"\nclustering {n:,} nodes / {len(edges):,} edges")
    print("| method | seconds | communities | levels | largest leaf |\n| --- | ---: | ---: | ---: | ---: |")
    print(f"| leidenalg, one flat level, n_iterations=2 (baseline) | {t_base:.1f} | {len(part)} | 1 | {max(len(c) for c in part)} |")
    print(f"| hierarchical_leiden, max size 10 (igraph Leiden to convergence) | {t_ours:.1f} | {len(clusters)} | "
          f"{1 + max(c.level for c in clusters)} | {max(len(c.nodes) for c in leaves)} |")
    print(f"ratio ours / baseline: {t_ours / t_base:.2f}; deterministic across two runs: {same}; oversized: {over}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=("short", "long"), default="short")
    ap.add_argument("--size", type=int, default=None, help="entries (short, default 10,000) or words (long, default 800,000)")
    ap.add_argument("--skip-corpus", action="store_true")
    ap.add_argument("--skip-clustering", action="store_true")
    ap.add_argument("--nodes", type=int, default=50_000)
    ap.add_argument("--edges", type=int, default=250_000)
    args = ap.parse_args()
    if not args.skip_corpus:
        bench_stages(args.shape, args.size or (10_000 if args.shape == "short" else 800_000))
    if not args.skip_clustering:
        bench_clustering(args.nodes, args.edges)


if __name__ == "__main__":
    main()
