"""A finished run folder built directly (every table written, every stage of generate marked done),
for tests of what reads a run: publish, the card, the snapshot, consumers of the published copy."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pyarrow as pa

from factory.config import validate_config
from factory.generate import STAGES
from factory.pipeline import Run, run_stages

GRAPH = ("documents", "chunks", "entities", "relationships", "communities", "community_reports")
KINDS = ("local", "global", "entity", "relationship")


def qa_rows(n: int, split: str, tag: str) -> pa.Table:
    rows = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        q, a = f"{tag} question {i} about the garden?", f"{tag} answer {i}: the tomatoes came up in May. " * 3
        rows.append({
            "id": f"{tag}-{split}-{i}", "kind": kind, "question": q, "answer": a, "split": split,
            "messages": [{"role": "system", "content": "You remember the journal."},
                         {"role": "user", "content": q}, {"role": "assistant", "content": a}],
            "evidence_chunk_ids": [f"c{i % 5}"], "entity_ids": [f"e{i % 3}"], "level": 0,
        })
    return pa.Table.from_pylist(rows)


def graph_tables() -> dict[str, pa.Table]:
    t = pa.Table.from_pylist
    return {
        "documents": t([{"id": f"d{i}", "title": f"day {i}", "text": "text " * 20, "n_chars": 100} for i in range(3)]),
        "chunks": t([{"id": f"c{i}", "document_id": f"d{i % 3}", "chunk_index": i, "text": "chunk", "n_tokens": 3}
                     for i in range(5)]),
        "entities": t([{"id": f"e{i}", "title": f"E{i}", "type": "person", "text_unit_ids": ["c0"]} for i in range(3)]),
        "relationships": t([{"id": "r0", "source": "E0", "target": "E1", "weight": 2.0}]),
        "communities": t([{"id": "k0", "community": 0, "level": 0, "parent": -1, "children": [], "entity_ids": ["e0"]}]),
        "community_reports": t([{"id": "k0", "community": 0, "level": 0, "title": "Garden",
                                 "findings": [{"summary": "s", "explanation": "x"}]}]),
    }


def finished_run(root: Path | str, journal: Path, tag: str = "v1", n_train: int = 23, n_test: int = 5,
             s3: dict | None = None) -> Run:
    """A complete run: every table written, every stage of generate marked done."""
    cfg = validate_config({
        "corpus": {"path": str(journal)}, "s3": s3 or {},
        "output": {"path": str(root), "rows_per_shard": 10, "row_group_rows": 4, "license": "cc-by-4.0"},
    })
    run = Run(cfg)
    rewrite_qa(run, tag, n_train, n_test)
    for name, table in graph_tables().items():
        run.write_table(name, table)

    def done(run: Run, rec) -> None:
        rec.rows_in, rec.rows_out = 10, 8
        rec.drop("too_short", 2)
        rec.add_tokens("openai/teacher-7b", 1000, 400, 5)
        rec.stats["retrieval_recall@5"] = 0.8

    run_stages(run, [dataclasses.replace(s, fn=done) for s in STAGES])
    return run


def rewrite_qa(run: Run, tag: str, n_train: int = 23, n_test: int = 5) -> None:
    run.write_table("qa", qa_rows(n_train, "train", tag), "train")
    run.write_table("qa", qa_rows(n_test, "test", tag), "test")
