"""Synthesis stage: the graph and chunks -> the `qa` table (train and test), by RAG principles.

    questions (questions.py)  entity, relationship and local rows per chunk x mention; global rows
                              per community and corpus-wide; a hard global test set; unanswerable
    answers (answers.py)      local rows from their source chunk (and, with a teacher, the passages
                              retrieval finds); entity/relationship rows from description and
                              sources; global rows by map-reduce over community reports
    quality (quality.py)      targets cleaned, groundedness, relevance, judge; near-duplicate answers
                              and questions removed corpus-wide
    split (split.py)          whole groups of related rows to test; hard global questions too

Rows stay in Ray Datasets from answering to the written table: the driver sees only ids,
kinds, scores, MinHash signatures and group keys (what corpus-wide decisions need), never the
rows' texts. The voice (factory/voice.py) decides how questions and answers speak.
"""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data

from factory.engines import enabled
from factory.errors import UserError
from factory.pipeline import Run, StageRecord
from factory.pipeline.manifest import update_manifest
from factory.synth import questions as Q
from factory.synth import quality
from factory.synth.answers import answer_from_chunks, answer_global, describe_rows
from factory.synth.local import FocusIndex, local_rows, written_questions
from factory.synth.report import quality_report
from factory.synth.retrieval import Retriever
from factory.synth.rows import from_table, in_blocks, target
from factory.synth.split import split_rows
from factory.synth.templates import load_templates
from factory.voice import resolve_voice

def synthesize(run: Run, rec: StageRecord) -> None:
    cfg, s = run.cfg, run.cfg.synth
    chunks = run.read_arrow("chunks", columns=["id", "text", "title", "date"])
    if chunks.num_rows == 0:
        raise UserError("synthesis: the run has no chunks; run the chunk stage first (is the corpus empty?)")
    entities, relationships = run.read_arrow("entities"), run.read_arrow("relationships")
    reports = run.read_arrow("community_reports")
    voice = resolve_voice(s.voice, chunks.column("text").to_pylist())
    t = load_templates(voice)
    rec.stats["voice"] = voice
    clock = _Clock(rec)
    retriever = Retriever.build(chunks, s.retriever)
    clock.lap("retriever_index")

    llm = cfg.teacher.enabled
    subjects = pa.Table.from_pylist(Q.subject_questions(entities, relationships, t, cfg.seed, llm, s.max_source_chunks),
                                    schema=Q.QUESTION_SCHEMA)
    is_template = pc.equal(subjects.column("task"), Q.DESCRIBE)
    templates = subjects.filter(is_template)
    parts = [describe_rows(from_table(templates, rows=in_blocks(templates, 1024)), voice)]
    # A block of chunks per task, a few per CPU: the local rows are most of the stage's work.
    per_task = in_blocks(chunks, 256)
    local = local_rows(from_table(chunks, rows=per_task), FocusIndex(entities, relationships, descriptions=llm), per_task,
                       voice=voice, seed=cfg.seed, per_chunk=s.local_per_chunk, teacher=llm,
                       teacher_questions=s.llm_local_questions, retriever=None if llm else retriever,
                       k=s.top_k, recall_sample=s.recall_sample)
    if llm:
        if s.llm_local_questions:
            local = written_questions(run, rec, local, cfg.teacher)
        teach = subjects.filter(pc.invert(is_template))
        parts.append(answer_from_chunks(run, rec, local.union(from_table(teach)) if teach.num_rows else local,
                                        retriever, cfg.teacher, voice, k=s.top_k))
    else:
        parts.append(local)
    clock.lap("questions_from_chunks")

    top = Q.level_reports(reports, s.global_level)
    if not top:
        Q.log_no_reports(rec, s.global_level, reports)
    global_questions = Q.global_questions(run, rec, top, t) + Q.hard_global_questions(
        run, rec, top, t, entities.column("title").to_pylist()) if top else []
    if global_questions:
        title_types = {e["title"].lower(): e["type"] for e in entities.select(["title", "type"]).to_pylist() if e["type"]}
        parts.append(answer_global(run, rec, from_table(pa.Table.from_pylist(global_questions, schema=Q.GLOBAL_SCHEMA)),
                                   reports, cfg.teacher, level=s.global_level, batch_tokens=s.map_batch_tokens,
                                   voice=voice, title_types=title_types))
    clock.lap("global")

    judged = enabled(cfg.judge)
    limits = quality.Limits.of(s, judged=judged)
    # Each part scored by its own map, so the scores fuse into the tasks that answer (a union between
    # them would stop the fusion).
    scored = [quality.score_rows(part, limits, keep_evidence=judged) for part in parts]
    scored = scored[0].union(*scored[1:]).materialize()
    rows = quality.compact(scored)
    clock.lap("answers_and_scores")
    # Unanswerable rows make up their share of the answerable ones; they are written and checked here.
    answerable = rows.column("drop").null_count
    unanswerable = Q.unanswerable_questions(Q.unanswerable_count(answerable, s.unanswerable_fraction),
                                            entities, relationships, retriever.texts, t, cfg.seed)
    if unanswerable:
        refusals = quality.score_batch(pa.Table.from_pylist([{**u, "engine": "none"} for u in unanswerable]), limits,
                                       keep_evidence=judged)
        scored = scored.union(ray.data.from_arrow(refusals))
        rows = pa.concat_tables([rows, refusals.select(quality.COMPACT)])
    clock.lap("unanswerable")
    rec.stats["questions"] = quality.kind_counts(rows)
    rec.rows_in = rows.num_rows
    if not rec.rows_in:
        raise UserError("synthesis: no questions could be made: the graph has no entities and no community reports "
                        "(see the graph stage's counts in manifest.json; a larger or richer corpus is needed)")
    if judged:
        rows = quality.with_judgement(rows, quality.judge_rows(run, rec, scored, s.min_judge_score))
    _record_scores(rec, s, rows)
    # One name for the rows still in the running, so each filter's input is freed once it has its output:
    # at 10x the corpus every copy of these columns (two 512-byte signatures a row) is a gigabyte.
    rows = quality.count_drops(rec, rows)
    rows = quality.dedup(rec, rows, s.answer_dedup_threshold, s.dedup_threshold)
    rows = quality.keep_top(rec, rows, s.keep_top_fraction)
    decisions = split_rows(rec, rows, s.test_fraction, cfg.seed, s.test_overlap_threshold)
    del rows
    clock.lap("filters_and_split")

    system_prompt = s.system_prompt or t.system_prompt
    qa = scored.map_batches(qa_batch, fn_kwargs={"decisions": [ray.put(decisions)], "reasoning": s.reasoning,
                                                 "system_prompt": system_prompt}, batch_format="pyarrow")
    counts = run.write_splits("qa", qa, ("train", "test"))
    clock.lap("write")
    rec.rows_out = sum(counts.values())
    rec.stats["rows"] = {split: quality.kind_counts(decisions.filter(pc.equal(decisions.column("split"), split)))
                         for split in ("train", "test")}
    rec.stats["reasoning"] = s.reasoning
    update_manifest(run, quality=quality_report(run, rec))


def _record_scores(rec: StageRecord, s, rows: pa.Table) -> None:
    """Retrieval recall of local questions' sources, and the groundedness distribution the threshold cuts."""
    hits = rows.column("retrieved_source").drop_null()
    rec.stats["retrieval"] = {"method": s.retriever, "k": s.top_k, "questions": len(hits),
                              "recall_at_k": round(pc.sum(hits.cast(pa.int64())).as_py() / len(hits), 4) if len(hits) else None}
    rec.stats["groundedness"] = {"min_groundedness": s.min_groundedness, "quantiles": quality.groundedness_quantiles(rows)}


class _Clock:
    """Seconds per phase into rec.stats["seconds"]."""

    def __init__(self, rec: StageRecord):
        self.seconds = rec.stats.setdefault("seconds", {})
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self.last, 3)
        self.last = now


QA_COLUMNS = ("id", "kind", "question", "answer", "reasoning", "evidence_chunk_ids", "source_chunk_id", "retrieved_source",
              "entity_ids", "relationship_ids", "community_ids", "level", "question_source", "question_set", "engine",
              "model", "prompt_hash", "groundedness", "relevance")


def qa_batch(batch: pa.Table, decisions: list, reasoning: str, system_prompt: str) -> pa.Table:
    """The kept rows as qa rows: their split, lineage columns, scores, and the chat messages. `decisions`
    holds the ref of an Arrow table (id, split, group_id, judge_score of the kept rows), read zero-copy
    in every task."""
    import ray

    import schemas

    chosen = ray.get(decisions[0])
    at = pc.index_in(batch.column("id"), value_set=chosen.column("id"))
    mask = pc.is_valid(at)
    rows, at = batch.filter(mask), at.filter(mask)
    n, qa = rows.num_rows, schemas.schema_of("qa")
    out = {c: rows.column(c) if c in rows.column_names else pa.nulls(n, qa.field(c).type) for c in QA_COLUMNS}
    for c in ("evidence_chunk_ids", "entity_ids", "relationship_ids", "community_ids"):
        out[c] = pc.fill_null(out[c], pa.scalar([], pa.list_(pa.string())))
    out["question_set"] = pc.fill_null(out["question_set"], "main")
    out["group_id"], out["judge_score"] = pc.take(chosen.column("group_id"), at), pc.take(chosen.column("judge_score"), at)
    out["split"] = pc.take(chosen.column("split"), at)
    targets = [target(a, r, reasoning) for a, r in zip(rows.column("answer").to_pylist(), rows.column("reasoning").to_pylist())]
    # Three turns per row, built as flat struct columns and cut into lists: no Python dict per message.
    roles = pa.array(["system", "user", "assistant"] * n, pa.string())
    contents = pa.array([x for q, t in zip(rows.column("question").to_pylist(), targets) for x in (system_prompt, q, t)],
                        pa.string())
    messages = pa.StructArray.from_arrays([roles, contents], names=["role", "content"])
    out["messages"] = pa.ListArray.from_arrays(pa.array(range(0, 3 * n + 1, 3), pa.int32()), messages)
    table = pa.table({f.name: out[f.name] for f in qa})
    return schemas.validate("qa", table)
