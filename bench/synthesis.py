"""Synthesis in no-LLM mode on a generated corpus: rows/s per kind and retrieval queries/s.

    python bench/synthesis.py --words 800000        # ≈1M WordPiece tokens

The corpus comes from bench/corpus.py, chunked by factory.chunking; its graph
tables are built from the generator's known names (entities = names found in
chunks, relationships = co-occurring pairs, communities of five entities with
reports), so the benchmark measures synthesis alone. Baselines in the same run:
local answering as one plain Python loop (retrieve + extract, no Ray) against
the stage's Ray actor pool, and bm25s against a brute-force word-overlap scan.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pyarrow as pa  # noqa: E402

import schemas  # noqa: E402
from bench.corpus import PEOPLE, PLACES, THINGS, write_corpus  # noqa: E402
from factory.chunking import chunk_document, load_tokenizer  # noqa: E402
from factory.config import validate_config  # noqa: E402
from factory.ingest import document_id, markdown_title, normalize  # noqa: E402
from factory.pipeline import Run, Stage, run_stage  # noqa: E402
from factory.synth.answers import extract_answer  # noqa: E402
from factory.synth.retrieval import Retriever  # noqa: E402
from factory.text import content_words  # noqa: E402


def chunk_corpus(folder: Path, cfg) -> pa.Table:
    tok = load_tokenizer(cfg.chunking.tokenizer)
    rows = []
    for path in sorted(folder.glob("*.md")):
        text = normalize(path.read_text(encoding="utf-8"))
        rows += chunk_document({"id": document_id(text), "text": text, "title": markdown_title(text), "date": path.stem[:10]},
                               tok, cfg.chunking)
    return schemas.validate("chunks", pa.Table.from_pylist(rows))


def graph_tables(chunks: pa.Table) -> dict[str, pa.Table]:
    """Entities, relationships, communities and reports from the generator's name lists."""
    names = [(n, "person") for n in PEOPLE] + [(n, "geo") for n in PLACES] + [(n, "object") for n in THINGS]
    units: dict[str, list[str]] = {n: [] for n, _ in names}
    for c in chunks.select(["id", "text"]).to_pylist():
        for n, _ in names:
            if n in c["text"]:
                units[n].append(c["id"])
    ents = [{"id": f"e{i}", "title": n, "type": t, "text_unit_ids": units[n], "frequency": len(units[n]),
             "description": f"{n} comes up in {len(units[n])} passages of the journal."} for i, (n, t) in enumerate(names)]
    rels = []
    for a, b in itertools.combinations([n for n, _ in names], 2):
        both = sorted(set(units[a]) & set(units[b]))
        if len(both) >= 20:
            rels.append({"id": f"r{len(rels)}", "source": a, "target": b, "weight": float(len(both)), "text_unit_ids": both,
                         "description": f"{a} and {b} appear together in {len(both)} passages."})
    comms, reports = [], []
    for k in range(0, len(ents), 5):
        group = ents[k:k + 5]
        cid = k // 5
        comms.append({"id": f"c{cid}", "community": cid, "level": 0, "parent": -1, "title": f"Community {cid}",
                      "entity_ids": [e["id"] for e in group], "text_unit_ids": sorted({u for e in group for u in e["text_unit_ids"]}),
                      "size": len(group)})
        reports.append({"id": f"cr{cid}", "community": cid, "level": 0, "title": " and ".join(e["title"] for e in group[:3]),
                        "summary": " ".join(e["description"] for e in group), "rank": float(10 - cid % 10),
                        "findings": [{"summary": e["title"], "explanation": e["description"]} for e in group]})
    return {"entities": pa.Table.from_pylist(ents), "relationships": pa.Table.from_pylist(rels),
            "communities": pa.Table.from_pylist(comms), "community_reports": pa.Table.from_pylist(reports)}


def brute_force_search(chunk_words: list[set[str]], ids: list[str], query: str, k: int) -> list[str]:
    q = set(content_words(query))
    scored = sorted(((len(q & w), i) for i, w in enumerate(chunk_words)), reverse=True)[:k]
    return [ids[i] for s, i in scored if s]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--words", type=int, default=800_000)
    ap.add_argument("--dense-queries", type=int, default=500)
    # MiniLM on 2 CPUs embeds tens of chunks per second: dense indexes cover the first N chunks.
    ap.add_argument("--dense-chunks", type=int, default=1000)
    args = ap.parse_args()

    import ray

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        write_corpus(corpus, args.words)
        cfg = validate_config({"output": {"path": str(Path(tmp) / "run")}, "synth": {"global_questions": 20}})
        t = time.perf_counter()
        chunks = chunk_corpus(corpus, cfg)
        tokens = sum(chunks.column("n_tokens").to_pylist())
        print(f"corpus: {tokens:,} tokens, {chunks.num_rows:,} chunks ({time.perf_counter() - t:.1f} s to chunk)")

        ray.init(include_dashboard=False, logging_level="ERROR")
        ray.data.DataContext.get_current().enable_progress_bars = False
        run = Run(cfg)
        run.write_table("chunks", chunks)
        for name, table in graph_tables(chunks).items():
            run.write_table(name, table)

        from factory.synth import synthesize

        t = time.perf_counter()
        rec = run_stage(run, Stage("synthesis", synthesize))
        total = time.perf_counter() - t
        ray.shutdown()

        secs, questions = rec.stats["seconds"], rec.stats["questions"]
        print(f"\nsynthesis stage: {total:.1f} s, {rec.rows_out:,} qa rows kept of {rec.rows_in:,}; drops {dict(rec.drops)}")
        from_chunks = sum(questions.get(k, 0) for k in ("entity", "relationship", "local"))
        phases = [
            ("questions from chunks (entity, relationship, local)", from_chunks, secs["questions_from_chunks"]),
            ("answers from chunks (one actor pool)", from_chunks, secs["answers_from_chunks"]),
            ("global (map-reduce over reports)", questions.get("global", 0), secs.get("global", 0.0)),
            ("unanswerable", questions.get("unanswerable", 0), secs.get("unanswerable", 0.0)),
        ]
        print("\n| phase | questions | seconds | rows/s |\n| --- | ---: | ---: | ---: |")
        for name, n, s in phases:
            print(f"| {name} | {n:,} | {s:.1f} | {n / s if s else float('nan'):,.0f} |")
        print(f"| retriever index ({cfg.synth.retriever}) | | {secs['retriever_index']:.1f} | |")
        print(f"| quality + split + write | {rec.rows_in:,} | {secs['quality_and_split']:.1f} | {rec.rows_in / secs['quality_and_split']:,.0f} |")
        print(f"recall@{cfg.synth.top_k} of the source chunk: {rec.stats['retrieval']['recall_at_k']}")

        # Baseline for local answering: the same work in one plain loop on the driver.
        local_q = [r["question"] for r in run.read_arrow("qa").to_pylist() if r["kind"] == "local"]
        retriever = Retriever.build(chunks, "bm25")
        t = time.perf_counter()
        hits = retriever.search(local_q, cfg.synth.top_k)
        for q, h in zip(local_q, hits):
            extract_answer(q, [(retriever.label(c), retriever.text(c)) for c, _ in h])
        loop = time.perf_counter() - t
        stage_rate = from_chunks / secs["answers_from_chunks"]
        print(f"\nlocal answering, plain loop: {len(local_q) / loop:,.0f} rows/s; stage (answers from chunks, "
              f"Ray actor pool, all three kinds): {stage_rate:,.0f} rows/s; ratio {stage_rate / (len(local_q) / loop):.2f}x")

        # Retrieval queries/s.
        print("\n| retriever | index s | queries | queries/s |\n| --- | ---: | ---: | ---: |")
        chunk_words = [set(content_words(x)) for x in chunks.column("text").to_pylist()]
        ids = chunks.column("id").to_pylist()
        sample = local_q[:200]
        t = time.perf_counter()
        for q in sample:
            brute_force_search(chunk_words, ids, q, cfg.synth.top_k)
        brute = len(sample) / (time.perf_counter() - t)
        print(f"| brute-force word overlap (baseline) | - | {len(sample)} | {brute:,.0f} |")
        rates = {}
        dense_chunks = chunks.slice(0, args.dense_chunks)
        for method, table, queries in (("bm25", chunks, local_q), ("dense", dense_chunks, local_q[: args.dense_queries]),
                                       ("hybrid", dense_chunks, local_q[: args.dense_queries])):
            t = time.perf_counter()
            r = Retriever.build(table, method)
            built = time.perf_counter() - t
            t = time.perf_counter()
            r.search(queries, cfg.synth.top_k)
            rates[method] = len(queries) / (time.perf_counter() - t)
            print(f"| {method} ({table.num_rows:,} chunks) | {built:.1f} | {len(queries):,} | {rates[method]:,.0f} |")
        print(f"bm25s vs brute force: {rates['bm25'] / brute:.0f}x")


if __name__ == "__main__":
    main()
