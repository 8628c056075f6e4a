"""Quality filters: per-row scores on Ray workers, corpus-wide decisions on the driver.

`score_rows` (a Ray map, per batch) cleans every target of citations and ids, then marks a
row's first failing check in `drop`:
    the answering step's error (engine errors were counted by run_llm; "refused" = the teacher
    declared no answer), a refusal written as an answer (only unanswerable rows may refuse),
    question/answer length bounds, groundedness (share of the answer's content words found in its
    evidence: for a local row its source chunk alone) below `min_groundedness`, and relevance (share
    of the answer's sentences that mention what the question asks about, text.relevance) below
    `min_relevance` (when no judge is configured: then the judge decides). It also adds MinHash signatures of answer and question (near.py).

`judge_rows` (when a judge engine is configured) asks it to rate support and whether the answer
answers the question, 0-10 each; either below `min_judge_score` drops the row.

`dedup` then runs on the driver over ids, scores and signatures only: near-duplicate answers
(`answer_dedup_threshold`) and questions (`dedup_threshold`), the better-scored row staying, and
keep-top-fraction per kind. Every drop is counted by reason in the stage record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, field_validator

from factory.engines.structured import BUDGET, INVALID_OUTPUT, LLM_ERROR
from factory.engines.task import LLMTask
from factory.pipeline import Run, StageRecord
from factory.synth.lexical import MinHash, Vocabulary, evidence_words, relevance, support
from factory.synth.rows import collect
from factory.text import MAYBE_REFUSAL, MAYBE_SCAFFOLDING, clean_target, is_refusal
from schemas import STRS

# Error kinds the engine layer counts itself (the first word of `error`).
ENGINE_ERRORS = (LLM_ERROR, INVALID_OUTPUT, BUDGET)
# Answers and questions near-equal at 0.8-0.9 Jaccard. 128 values, as the quality report measures: with 64
# the estimate's spread (~0.04) let a few pairs at ~0.87 pass as below 0.8 on 100k rows. 20 bands of 6
# make a pair at 0.8 a candidate with p ~ 0.998, at 0.3 ~ 0.015 (the signatures then decide).
FILTER = MinHash(num_perm=128, bands=20, rows=6, seed=20250601)
SIG = pa.binary(FILTER.num_perm * 4)  # fixed size: a column is one buffer of signatures
KINDS = ("local", "global", "entity", "relationship", "unanswerable")
HARD = "hard_global"  # the question set of the separately written test questions

# Every answered row, whatever made it, conformed to one shape before scoring.
ANSWERED_SCHEMA = pa.schema([
    ("id", pa.string()), ("kind", pa.string()), ("question", pa.string()), ("question_source", pa.string()),
    ("question_set", pa.string()), ("answer", pa.string()), ("reasoning", pa.string()), ("evidence", pa.string()),
    ("evidence_chunk_ids", STRS), ("source_chunk_id", pa.string()), ("retrieved_source", pa.bool_()),
    ("entity_ids", STRS), ("relationship_ids", STRS), ("community_ids", STRS), ("level", pa.int64()), ("cues", STRS),
    ("engine", pa.string()), ("model", pa.string()), ("prompt_hash", pa.string()), ("error", pa.string()),
])
SCORE_FIELDS = {"groundedness": pa.float64(), "relevance": pa.float64(), "judge_score": pa.float64(),
                "drop": pa.string(), "answer_sig": SIG, "question_sig": SIG}
SCORED_SCHEMA = pa.schema(list(ANSWERED_SCHEMA) + [pa.field(n, t) for n, t in SCORE_FIELDS.items()])


@dataclass(frozen=True)
class Limits:
    min_question_chars: int
    max_question_chars: int
    min_answer_chars: int
    max_answer_chars: int
    min_groundedness: float
    min_source_support: float  # local rows: their evidence is the source chunk alone
    # None: the judge decides whether an answer answers its question (judge_rows), not the lexical score.
    min_relevance: float | None

    @classmethod
    def of(cls, s, judged: bool = False) -> "Limits":
        return cls(s.min_question_chars, s.max_question_chars, s.min_answer_chars, s.max_answer_chars,
                   s.min_groundedness, s.min_source_support, None if judged else s.min_relevance)


def conform(batch: pa.Table) -> pa.Table:
    """`batch` with exactly ANSWERED_SCHEMA's columns (missing ones null, others dropped)."""
    n = batch.num_rows
    cols = [batch.column(f.name).cast(f.type) if f.name in batch.column_names else pa.nulls(n, f.type)
            for f in ANSWERED_SCHEMA]
    return pa.Table.from_arrays(cols, schema=ANSWERED_SCHEMA)


def score_rows(ds, limits: Limits, keep_evidence: bool):
    """Scores and the first failed check of every row (see the module docstring), on Ray."""
    # Whole blocks: fused into the task that answered them, a batch size of its own would regroup its blocks.
    return ds.map_batches(score_batch, fn_kwargs={"limits": limits, "keep_evidence": keep_evidence},
                          batch_format="pyarrow", batch_size=None)


def score_batch(batch: pa.Table, limits: Limits, keep_evidence: bool) -> pa.Table:
    """Column by column: only the texts the checks read become Python values. The evidence texts
    (the larger part of a row) are dropped after scoring unless the judge is to read them."""
    t = conform(batch)
    answers, reasonings = _clean_targets(t.column("answer")), _clean_targets(t.column("reasoning"))
    answer_column = pa.array(answers, pa.string())
    vocab = Vocabulary()
    answer_words = vocab.encode(answer_column)  # for groundedness and the signatures alike
    grounded = _groundedness(answer_words, t.column("evidence"), vocab)
    drop, groundedness, relevant = _checks(t, answers, answer_column, grounded, vocab, limits)
    t = (t.set_column(t.schema.get_field_index("answer"), "answer", answer_column)
          .set_column(t.schema.get_field_index("reasoning"), "reasoning", pa.array(reasonings, pa.string())))
    new = {
        "groundedness": groundedness,
        "relevance": relevant,
        "judge_score": pa.nulls(t.num_rows, pa.float64()),
        "drop": drop,
        "answer_sig": _sig_array(FILTER.of_words(*answer_words, t.num_rows, vocab)),
        "question_sig": _sig_array(FILTER.signatures(t.column("question"), vocab)),
    }
    for name, column in new.items():
        t = t.append_column(pa.field(name, SCORE_FIELDS[name]), column)
    return t if keep_evidence else t.drop_columns(["evidence", "cues"])


def _clean_targets(texts: pa.ChunkedArray) -> list[str | None]:
    """clean_target of every text; only those Arrow finds scaffolding in go through its regexes."""
    maybe = pc.fill_null(pc.match_substring_regex(texts, MAYBE_SCAFFOLDING), False).to_numpy(zero_copy_only=False)
    return [clean_target(x) if m else x and x.strip() or None for x, m in zip(texts.to_pylist(), maybe.tolist())]


def _sig_array(sigs: np.ndarray) -> pa.Array:
    """Signatures as a fixed-size binary column, straight from their buffer."""
    return pa.FixedSizeBinaryArray.from_buffers(SIG, len(sigs), [None, pa.py_buffer(np.ascontiguousarray(sigs))])


def _groundedness(answer_words: tuple[np.ndarray, np.ndarray], evidence: pa.ChunkedArray, vocab: Vocabulary) -> np.ndarray:
    """text.support() of every answer (its words as `vocab` encoded them) against its evidence, for the
    whole batch: the distinct evidence texts (a source chunk backs every question asked of it) are
    split into words once."""
    distinct = pc.dictionary_encode(pc.fill_null(evidence, "").combine_chunks())
    number = distinct.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    row, word = vocab.encode(distinct.dictionary)
    in_evidence = evidence_words(np.arange(len(distinct.dictionary)), row, word, vocab)
    row, word = answer_words
    content = vocab.content[word]
    return np.round(support(row[content], word[content], number, in_evidence), 4)


def _checks(t: pa.Table, answers: list[str | None], answer_column: pa.Array, grounded: np.ndarray, vocab: Vocabulary,
            lim: Limits) -> tuple[pa.Array, pa.Array, pa.Array]:
    """(the first failed check or null, groundedness, relevance) of every row, the checks in the module
    docstring's order; a row's groundedness is kept once that check was reached, its relevance likewise."""
    n = t.num_rows
    undecided = np.ones(n, bool)
    drop = np.full(n, None, object)

    def fail(failed: np.ndarray, reason) -> None:
        failed = failed & undecided
        drop[failed] = reason if isinstance(reason, str) else reason[failed]
        undecided[failed] = False

    errors = t.column("error")
    if errors.null_count < n:
        error_kinds = np.array([e.split(":", 1)[0] if e else None for e in errors.to_pylist()], object)
        fail(error_kinds != None, error_kinds)  # noqa: E711 (elementwise)
    q_chars = pc.fill_null(pc.utf8_length(t.column("question")), 0).to_numpy(zero_copy_only=False)
    a_chars = pc.fill_null(pc.utf8_length(answer_column), 0).to_numpy(zero_copy_only=False)
    fail((q_chars == 0) | (a_chars == 0), "no_answer")
    answerable = ~pc.equal(t.column("kind"), "unanswerable").to_numpy(zero_copy_only=False)
    maybe = pc.fill_null(pc.match_substring_regex(answer_column, MAYBE_REFUSAL, ignore_case=True), False)
    asked = undecided & answerable & maybe.to_numpy(zero_copy_only=False)
    fail(np.array([bool(u and is_refusal(a)) for u, a in zip(asked.tolist(), answers)], bool), "refusal")
    fail((q_chars < lim.min_question_chars) | (q_chars > lim.max_question_chars), "question_length")
    fail(a_chars < lim.min_answer_chars, "answer_too_short")
    fail(a_chars > lim.max_answer_chars, "answer_too_long")
    undecided &= answerable  # unanswerable rows were written and checked against the chunks when they were made
    scored = undecided.copy()
    local = pc.equal(t.column("kind"), "local").to_numpy(zero_copy_only=False)
    fail(grounded < np.where(local, lim.min_source_support, lim.min_groundedness), "ungrounded")
    measured = undecided.copy()
    rel = relevance(t.column("question"), t.column("cues"), [a if m else None for a, m in zip(answers, measured.tolist())],
                    vocab)
    if lim.min_relevance is not None:
        fail(rel < lim.min_relevance, "off_topic")  # NaN (nothing to match) fails nothing
    return (pa.array(drop, pa.string()), pa.array(grounded, pa.float64(), mask=~scored),
            pa.array(rel, pa.float64(), mask=~measured | np.isnan(rel)))


# ---- the judge ------------------------------------------------------------------------------------
class JudgeOut(BaseModel):
    support: float
    answers_question: float
    reason: str = ""

    @field_validator("support", "answers_question", mode="before")
    @classmethod
    def _clamp(cls, v):
        return max(0.0, min(10.0, float(v)))


class JudgeGroundedness(LLMTask):
    """A kept row's question, evidence and answer -> the judge's 0-10 support and answers-the-question scores."""

    name = "groundedness"
    output_model = JudgeOut
    fields = {"support": pa.float64(), "answers_question": pa.float64()}
    keep_failed = True
    lineage = False
    drop = ("question", "evidence", "answer")

    def messages(self, row: dict) -> list[dict]:
        return self.prompt.messages(question=row["question"], evidence=row["evidence"] or "", answer=row["answer"])

    def parse(self, row: dict, reply: JudgeOut) -> dict:
        return {"support": reply.support, "answers_question": reply.answers_question}


def judge_rows(run: Run, rec: StageRecord, scored, min_score: float) -> dict[str, tuple[float | None, str | None]]:
    """id -> (the judge's support score, a drop reason or None) for every row still kept that has evidence;
    a failed call's drop reason is its error kind."""
    asked = scored.filter(lambda r: r["drop"] is None and r["kind"] != "unanswerable")
    out = collect(JudgeGroundedness().run(run, rec, asked.select_columns(["id", "question", "evidence", "answer"]), run.cfg.judge))
    verdicts = {}
    for r in out.to_pylist() if out.num_rows else []:
        if r["error"]:
            verdicts[r["id"]] = (None, r["error"].split(":", 1)[0])
            continue
        drop = "judge_ungrounded" if r["support"] < min_score else "judge_off_topic" if r["answers_question"] < min_score else None
        verdicts[r["id"]] = (r["support"], drop)
    return verdicts


# ---- corpus-wide decisions on the driver, over Arrow columns ------------------------------------
COMPACT = ["id", "kind", "question_set", "drop", "groundedness", "judge_score", "answer_sig", "question_sig",
           "source_chunk_id", "retrieved_source", "entity_ids", "community_ids"]


COMPACT_SCHEMA = pa.schema([SCORED_SCHEMA.field(c) for c in COMPACT])


def compact(scored) -> pa.Table:
    """What the driver decides on: ids, kinds, scores, signatures and group keys, never the texts."""
    table = collect(scored.select_columns(COMPACT))
    return table if table.num_rows else COMPACT_SCHEMA.empty_table()


def with_judgement(t: pa.Table, judged: dict[str, tuple[float | None, str | None]]) -> pa.Table:
    """`t` with the judge's score and drop reason (judge_rows) of the rows it judged."""
    if not judged:
        return t
    at = pc.index_in(t.column("id"), value_set=pa.array(list(judged), pa.string()))
    scores = pc.take(pa.array([v[0] for v in judged.values()], pa.float64()), at)
    drops = pc.take(pa.array([v[1] for v in judged.values()], pa.string()), at)
    t = t.set_column(t.schema.get_field_index("judge_score"), "judge_score", scores)
    return t.set_column(t.schema.get_field_index("drop"), "drop", pc.coalesce(t.column("drop"), drops))


def rank_order(t: pa.Table) -> pa.Array:
    """Row indices best first: the separately written test questions, then the judge's score (0-10,
    scaled) or groundedness (1.0 when neither), then the id (a stable order)."""
    judge = pc.divide(t.column("judge_score"), 10.0)
    score = pc.coalesce(judge, t.column("groundedness"), pa.scalar(1.0))
    keys = pa.table({"later": pc.fill_null(pc.not_equal(t.column("question_set"), HARD), True),
                     "score": score, "id": t.column("id")})
    return pc.sort_indices(keys, sort_keys=[("later", "ascending"), ("score", "descending"), ("id", "ascending")])


def count_drops(rec: StageRecord, t: pa.Table) -> pa.Table:
    """The rows still kept; the others counted by reason (engine errors were counted by run_llm)."""
    for reason, n in _counts(t.column("drop").drop_null()).items():
        if reason not in ENGINE_ERRORS:
            rec.drop(reason, n)
    return t.filter(pc.is_null(t.column("drop")))


def dedup(rec: StageRecord, t: pa.Table, answer_threshold: float, question_threshold: float) -> pa.Table:
    """Near-duplicate answers, then near-duplicate questions: walking the rows best first (rank_order), a
    row whose answer, else whose question, is near that of a row kept before it is dropped. The kept
    rows in rank order, without their answer signatures (nothing after this reads them)."""
    order = rank_order(t).to_numpy()
    # One search after the other: run at once (numpy's sorts release the GIL) they saved 0.6 s at 1x
    # but held both searches' working arrays together, 8.2 GiB on the driver at 10x (6.6 one by one).
    a_group, a_near = FILTER.near_pairs(sigs_of(t, "answer_sig"), answer_threshold)
    q_group, q_near = FILTER.near_pairs(sigs_of(t, "question_sig"), question_threshold)
    keep = np.ones(t.num_rows, bool)
    # Only rows that share a signature with, or are near, another row can be dropped: walk those alone.
    contested = _shared(a_group, a_near) | _shared(q_group, q_near)
    kept_a: set[int] = set()
    kept_q: set[int] = set()
    answers = questions = 0
    walk = order[contested[order]]
    for i, a, q in zip(walk.tolist(), a_group[walk].tolist(), q_group[walk].tolist()):
        if a in kept_a or not a_near.get(a, set()).isdisjoint(kept_a):
            keep[i], answers = False, answers + 1
        elif q in kept_q or not q_near.get(q, set()).isdisjoint(kept_q):
            keep[i], questions = False, questions + 1
        else:
            kept_a.add(a)
            kept_q.add(q)
    rec.drop("duplicate_answer", answers)
    rec.drop("duplicate_question", questions)
    # One copy, of the kept rows only (a take of the whole table in rank order was one more of all of them).
    return t.drop_columns(["answer_sig"]).take(order[keep[order]])


def _shared(group: np.ndarray, near: dict[int, set[int]]) -> np.ndarray:
    """Rows whose group has other rows or near neighbours."""
    size = np.bincount(group, minlength=int(group.max()) + 1 if len(group) else 0)
    has_near = np.zeros(len(size), bool)
    has_near[list(near)] = True
    return (size[group] > 1) | has_near[group]


def keep_top(rec: StageRecord, t: pa.Table, fraction: float) -> pa.Table:
    """The best `fraction` of each answerable kind (rows in rank order, as dedup leaves them)."""
    if fraction >= 1:
        return t
    kinds = t.column("kind").to_numpy(zero_copy_only=False)
    keep = np.ones(t.num_rows, bool)
    for kind in np.unique(kinds).tolist():
        if kind == "unanswerable":
            continue
        mine = np.flatnonzero(kinds == kind)
        n = math.ceil(fraction * len(mine))
        keep[mine[n:]] = False
        rec.drop("below_keep_top_fraction", len(mine) - n)
    return t.filter(pa.array(keep))


def sigs_of(t: pa.Table, column: str) -> np.ndarray:
    """The rows' signatures in `column` as one (n, num_perm) array, from the column's buffer."""
    sigs = t.column(column).combine_chunks()
    if not len(sigs):
        return np.zeros((0, FILTER.num_perm), np.uint32)
    data = np.frombuffer(sigs.buffers()[1], np.uint32)
    return data[sigs.offset * FILTER.num_perm:(sigs.offset + len(sigs)) * FILTER.num_perm].reshape(len(sigs), -1)


def _counts(values: pa.Array | pa.ChunkedArray) -> dict:
    return {c["values"].as_py(): c["counts"].as_py() for c in pc.value_counts(values)}


def kind_counts(t: pa.Table) -> dict[str, int]:
    """Rows per kind, the hard global test questions apart."""
    hard = pc.fill_null(pc.equal(t.column("question_set"), HARD), False)
    counts = _counts(t.column("kind").filter(pc.invert(hard)))
    return {**{k: counts.get(k, 0) for k in KINDS}, "hard_global": int(pc.sum(hard).as_py() or 0)}


def groundedness_quantiles(t: pa.Table) -> dict[str, dict[str, float]]:
    """Per kind, quantiles of groundedness over every scored row (dropped ones included): what
    `min_groundedness` cuts, so the threshold can be checked against real rows."""
    kinds = t.column("kind").to_numpy(zero_copy_only=False)
    g = pc.fill_null(t.column("groundedness"), np.nan).to_numpy(zero_copy_only=False)
    out = {}
    for kind in sorted(set(kinds[~np.isnan(g)].tolist())):
        values = g[(kinds == kind) & ~np.isnan(g)]
        q = np.quantile(values, [0.05, 0.25, 0.5, 0.75, 0.95])
        out[kind] = {"n": len(values), **{f"p{p}": round(float(v), 3) for p, v in zip((5, 25, 50, 75, 95), q)}}
    return out
