"""Synthesis stage: the graph and chunks → the `qa` table (train and test), by RAG principles.

Questions of five kinds (see questions.py) are answered the way RAG and GraphRAG
would answer them (answers.py): local ones from chunks retrieved for the
question, entity/relationship ones from descriptions and source chunks,
global ones by map-reduce over community reports, unanswerable ones with a
polite refusal. Rows then pass the quality filters (quality.py) and the
held-out split (split.py). Per-row work runs on Ray Data; filtering and the
split run on the driver, over rows that carry their evidence text (groundedness
and the judge read it; the qa table does not publish it).
"""

from __future__ import annotations

import time

import pyarrow as pa

from factory.errors import UserError
from factory.pipeline import Run, StageRecord
from factory.synth import questions as Q
from factory.synth.answers import answer_from_chunks, answer_global
from factory.synth.quality import filter_rows
from factory.synth.report import quality_report
from factory.synth.retrieval import Retriever
from factory.synth.rows import collect, from_table, to_dataset
from factory.synth.split import split_rows
from factory.synth.text import words

KINDS = ("local", "global", "entity", "relationship", "unanswerable")


def synthesize(run: Run, rec: StageRecord) -> None:
    cfg, s = run.cfg, run.cfg.synth
    chunks = run.read_arrow("chunks")
    if chunks.num_rows == 0:
        raise UserError("synthesis: the run has no chunks; run the chunk stage first (is the corpus empty?)")
    entities, relationships = run.read_arrow("entities"), run.read_arrow("relationships")
    communities, reports = run.read_arrow("communities"), run.read_arrow("community_reports")
    clock = _Clock(rec)
    retriever = Retriever.build(chunks, s.retriever)
    clock.lap("retriever_index")

    questions = {
        "entity": Q.entity_questions(entities, cfg.seed),
        "relationship": Q.relationship_questions(relationships, entities, cfg.seed),
        "local": Q.local_questions(run, rec, chunks, entities, relationships),
    }
    rec.stats["questions"] = {kind: len(qs) for kind, qs in questions.items()}
    clock.lap("questions_from_chunks")
    rows: list[dict] = []
    if any(questions.values()):
        table = pa.Table.from_pylist([q for qs in questions.values() for q in qs], schema=Q.CHUNK_QUESTION_SCHEMA)
        rows = collect(answer_from_chunks(run, rec, from_table(table), retriever, cfg.teacher,
                                          k=s.top_k, max_source_chunks=s.max_source_chunks)).to_pylist()
    hits = [r["retrieved_source"] for r in rows if r.get("retrieved_source") is not None]
    rec.stats["retrieval"] = {"method": s.retriever, "k": s.top_k, "questions": len(hits),
                              "recall_at_k": round(sum(hits) / len(hits), 4) if hits else None}
    clock.lap("answers_from_chunks")

    glob = Q.global_questions(run, rec, reports)
    rec.stats["questions"]["global"] = len(glob)
    if glob:
        answered = collect(answer_global(run, rec, to_dataset(glob, Q.GLOBAL_SCHEMA), reports, cfg.teacher,
                                         level=s.global_level, batch_tokens=s.map_batch_tokens)).to_pylist()
        rows += _trace_communities(answered, communities)
    clock.lap("global")

    vocabulary = {w for t in chunks.column("text").to_pylist() for w in words(t)}
    unanswerable = Q.unanswerable_questions(Q.unanswerable_count(len(rows), s.unanswerable_fraction), vocabulary, cfg.seed)
    rec.stats["questions"]["unanswerable"] = len(unanswerable)
    rows += [{**u, "engine": "none"} for u in unanswerable]
    clock.lap("unanswerable")

    # Questions that reached answering (declined or failed question calls are drops before that).
    rec.rows_in = sum(rec.stats["questions"].values())
    if not rec.rows_in:
        raise UserError("synthesis: no questions could be made: the graph has no entities and no community reports "
                        "(see the graph stage's counts in manifest.json; a larger or richer corpus is needed)")
    kept = filter_rows(run, rec, rows)
    train, test = split_rows(rec, kept, s.test_fraction, cfg.seed, s.test_overlap_threshold)
    clock.lap("quality_and_split")
    n_train = run.write_table("qa", qa_table(train, s.reasoning, s.system_prompt), split="train")
    n_test = run.write_table("qa", qa_table(test, s.reasoning, s.system_prompt), split="test")
    rec.rows_out = n_train + n_test
    rec.stats["rows"] = {split: {k: sum(r["kind"] == k for r in part) for k in KINDS} for split, part in (("train", train), ("test", test))}
    rec.stats["reasoning"] = s.reasoning
    run.update_manifest(quality=quality_report(run, rec))


class _Clock:
    """Seconds per phase into rec.stats["seconds"] (question writing and answering per kind)."""

    def __init__(self, rec: StageRecord):
        self.seconds = rec.stats.setdefault("seconds", {})
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self.last, 3)
        self.last = now


def _trace_communities(rows: list[dict], communities: pa.Table) -> list[dict]:
    """A global answer's evidence chunks: those of the communities it used."""
    units = {}
    if communities.num_rows:
        for c in communities.select(["community", "text_unit_ids"]).to_pylist():
            units[str(c["community"])] = c["text_unit_ids"] or []
    for r in rows:
        r["evidence_chunk_ids"] = sorted({u for c in r.get("community_ids") or [] for u in units.get(c, [])})
    return rows


def target(answer: str, reasoning: str | None, mode: str) -> str:
    """The assistant turn: the answer, with the reasoning inline or in <think> tags before it."""
    if mode == "none" or not reasoning:
        return answer
    if mode == "think_tags":
        return f"<think>\n{reasoning}\n</think>\n\n{answer}"
    return f"{reasoning}\n\nAnswer: {answer}"


QA_COLUMNS = ("id", "kind", "question", "answer", "reasoning", "evidence_chunk_ids", "source_chunk_id", "retrieved_source",
              "entity_ids", "relationship_ids", "community_ids", "level", "question_source", "engine", "model",
              "prompt_hash", "groundedness", "judge_score", "split")


def qa_table(rows: list[dict], reasoning: str, system_prompt: str) -> pa.Table:
    out = []
    for r in rows:
        row = {c: r.get(c) for c in QA_COLUMNS}
        for c in ("evidence_chunk_ids", "entity_ids", "relationship_ids", "community_ids"):
            row[c] = row[c] or []
        row["messages"] = [
            {"role": "system", "content": system_prompt},
            {"role": "user", "content": r["question"]},
            {"role": "assistant", "content": target(r["answer"], r.get("reasoning"), reasoning)},
        ]
        out.append(row)
    import schemas

    return schemas.validate("qa", pa.Table.from_pylist(out, schema=schemas.schema_of("qa")))
