"""The `graph` stage: chunks → entities, relationships, communities (GraphRAG's index).

Extraction runs per chunk on Ray Data (`extract`); merging, description
summaries' bookkeeping and Leiden clustering run on the driver (`merge`,
`communities`). Reports are their own stage (`reports.write_reports`).

Empty graph: when no entity survives (no chunks, nothing extracted, or
everything pruned), the stage still succeeds: it writes empty `entities`,
`relationships` and `communities` tables, logs one line saying why and with
what counts, and sets `stats.empty_graph`. The reports stage then writes an
empty `community_reports` table, so later stages see empty tables rather than
missing ones and decide for themselves (global questions have nothing to use).
"""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING

import pyarrow as pa

import schemas
from factory.engines.task import LLMTask
from factory.graph.extract import extract_graph
from factory.pipeline import Run, StageRecord
from factory.voice import detect_voice

if TYPE_CHECKING:
    import networkx as nx

logger = logging.getLogger(__name__)

# GraphRAG's default entity types; reference corpora (manuals, glossaries) add concept.
DEFAULT_ENTITY_TYPES = ("person", "organization", "geo", "event")


def resolve_entity_types(setting: list[str] | None, texts) -> tuple[list[str], str]:
    """The run's entity types (`graph.entity_types`, or the defaults for the corpus's voice) and that voice."""
    voice = detect_voice(texts)
    if setting:
        return list(setting), voice
    return [*DEFAULT_ENTITY_TYPES, *(["concept"] if voice == "reference" else [])], voice


def build_graph(run: Run, rec: StageRecord) -> None:
    """Stage `graph`: extract per chunk, merge, cluster, write the three graph tables."""
    # Merge and clustering (networkx, igraph, which pulls in matplotlib: seconds) load here, not when
    # the package does: Ray workers import it for extraction and reports and need neither.
    from factory.graph.communities import build_communities
    from factory.graph.merge import finalize, merge

    cfg = run.cfg.graph
    rules = not run.cfg.teacher.enabled
    table = run.read_arrow("chunks").select(["id", "document_id", "chunk_index", "date", "text"])
    types, voice = resolve_entity_types(cfg.entity_types, (t.as_py() for t in table.column("text")))
    rec.stats.update(entity_types=types, voice=voice)
    chunks = table.drop_columns(["text"]).to_pylist()
    rec.rows_in = len(chunks)
    chunks.sort(key=lambda c: (c["date"] or "", c["document_id"], c["chunk_index"]))
    order = {c["id"]: i for i, c in enumerate(chunks)}

    extractions = extract_graph(run, rec, types) if chunks else None
    failed = _count_failures(extractions, rec) if extractions is not None else 0
    merged = merge(extractions, cfg, rules, types, order) if extractions is not None else None
    if merged is None or merged.graph.number_of_nodes() == 0:
        _write_empty(run, rec, len(chunks), failed, merged.stats if merged else {})
        return
    summaries = _summarize(run, rec, merged) if merged.long_descriptions else {}
    entities, relationships = finalize(merged.graph, summaries)
    communities, cstats = build_communities(merged.graph, cfg.max_cluster_size, cfg.seed, cfg.keep_all_components, order)
    rec.stats.update(merge=merged.stats, communities=cstats)
    if cstats["oversized"]:
        logger.info(f"[{rec.name}] {cstats['oversized']} communities stay larger than max_cluster_size={cfg.max_cluster_size} "
                   f"(dense cores Leiden will not split; largest leaf {cstats['largest_leaf']}); their reports pack a budgeted context")
    run.write_table("entities", entities)
    run.write_table("relationships", relationships)
    run.write_table("communities", communities)
    rec.rows_out = entities.num_rows
    if cfg.graphml:
        _write_graphml(run, merged.graph)


def _count_failures(extractions: pa.Table, rec: StageRecord) -> int:
    """Chunks whose extraction failed in every round (LLM errors or unparseable output)."""
    ok = {c for c, e in zip(extractions.column("chunk_id").to_pylist(), extractions.column("error").to_pylist()) if e is None}
    failed = set(extractions.column("chunk_id").to_pylist()) - ok
    rec.stats["extraction"] = {"rows": extractions.num_rows, "chunks_failed": len(failed)}
    if failed:
        rec.drop("chunk_extraction_failed", len(failed))
    return len(failed)


def _write_empty(run: Run, rec: StageRecord, n_chunks: int, failed: int, stats: dict) -> None:
    detail = ", ".join(f"{k} {v}" for k, v in sorted(stats.items()) if v) or "nothing extracted"
    logger.info(f"[{rec.name}] the graph is empty: no entities in {n_chunks} chunks ({failed} failed; {detail}); "
               "writing empty entities/relationships/communities tables")
    rec.stats.update(empty_graph=True, merge=stats)
    for table in ("entities", "relationships", "communities"):
        run.write_table(table, schemas.schema_of(table).empty_table())


class SummarizeDescriptions(LLMTask):
    """One entity's or relationship's pooled descriptions -> one summary (free text)."""

    name = "summarize_descriptions"
    fields = {"summary": pa.string()}
    keep_failed = True
    drop = ("title", "kind", "max_words", "descriptions")

    def parse(self, row: dict, reply: str | None) -> dict:
        return {"summary": (reply or "").strip() or None}


def _summarize(run: Run, rec: StageRecord, merged) -> dict[str, str]:
    """LLM summaries of pooled descriptions over the limit; a failed one is ranked and cut instead."""
    from factory.graph.merge import rank_and_cut

    cfg = run.cfg.graph
    max_words = max(16, cfg.max_description_tokens * 3 // 4)
    items = merged.long_descriptions
    rows = [{"id": i, "title": t, "kind": k, "max_words": max_words, "descriptions": "\n".join(f"- {d}" for d in pool)}
            for i, (t, k, pool) in items.items()]
    out = {}
    for row in SummarizeDescriptions().run_rows(run, rec, rows, run.cfg.teacher):
        text = row["summary"]
        if row["error"] or not text:
            rec.stats["summaries_failed"] = rec.stats.get("summaries_failed", 0) + 1
            text = rank_and_cut(items[row["id"]][2], cfg.max_description_tokens)
        out[row["id"]] = text
    return out


def _write_graphml(run: Run, graph: nx.Graph) -> None:
    """graph.graphml beside the tables: scalar attributes only, as GraphML requires."""
    import networkx as nx

    g = nx.Graph()
    for t, d in graph.nodes(data=True):
        g.add_node(t, id=d["id"], type=d["type"], description=d["description"], frequency=d["frequency"])
    for u, v, d in graph.edges(data=True):
        g.add_edge(u, v, id=d["id"], weight=d["weight"], description=d["description"])
    buf = io.BytesIO()
    nx.write_graphml(g, buf)
    with run.fs.open(run.uri("graph.graphml"), "wb") as f:
        f.write(buf.getvalue())
