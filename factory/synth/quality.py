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
from pydantic import BaseModel, field_validator

from factory.engines.structured import BUDGET, INVALID_OUTPUT, LLM_ERROR
from factory.engines.task import LLMTask
from factory.pipeline import Run, StageRecord
from factory.synth.answers import REFUSED
from factory.synth.extractive import question_terms
from factory.synth.near import NUM_PERM, NearIndex, band_keys, signatures
from factory.synth.rows import collect
from factory.text import clean_target, is_refusal, relevance, support
from schemas import STRS

# Error kinds the engine layer counts itself (the first word of `error`).
ENGINE_ERRORS = (LLM_ERROR, INVALID_OUTPUT, BUDGET)
SIG = pa.binary(NUM_PERM * 4)  # fixed size: a column is one buffer of signatures

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


def score_rows(ds, limits: Limits):
    """Scores and the first failed check of every row (see the module docstring), on Ray."""
    return ds.map_batches(score_batch, fn_kwargs={"limits": limits}, batch_format="pyarrow", batch_size=4096)


def score_batch(batch: pa.Table, limits: Limits) -> pa.Table:
    """Column by column: only the texts the checks read become Python values."""
    t = conform(batch)
    kinds, questions, evidence, errors, cues = (t.column(c).to_pylist() for c in ("kind", "question", "evidence", "error", "cues"))
    answers = [clean_target(a) for a in t.column("answer").to_pylist()]
    reasonings = [clean_target(r) for r in t.column("reasoning").to_pylist()]
    checked = [_check(*row, limits) for row in zip(kinds, questions, answers, evidence, errors, cues)]
    t = (t.set_column(t.schema.get_field_index("answer"), "answer", pa.array(answers, pa.string()))
          .set_column(t.schema.get_field_index("reasoning"), "reasoning", pa.array(reasonings, pa.string())))
    new = {
        "groundedness": pa.array([c[1] for c in checked], pa.float64()),
        "relevance": pa.array([c[2] for c in checked], pa.float64()),
        "judge_score": pa.nulls(t.num_rows, pa.float64()),
        "drop": pa.array([c[0] for c in checked], pa.string()),
        "answer_sig": _sig_array(signatures([a or "" for a in answers])),
        "question_sig": _sig_array(signatures([q or "" for q in questions])),
    }
    for name, column in new.items():
        t = t.append_column(pa.field(name, SCORE_FIELDS[name]), column)
    return t


def _sig_array(sigs: np.ndarray) -> pa.Array:
    """Signatures as a fixed-size binary column, straight from their buffer."""
    return pa.FixedSizeBinaryArray.from_buffers(SIG, len(sigs), [None, pa.py_buffer(np.ascontiguousarray(sigs))])


def _check(kind: str, question: str | None, answer: str | None, evidence: str | None, error: str | None,
           cues: list[str] | None, lim: Limits) -> tuple[str | None, float | None, float | None]:
    """(the first failed check or None, groundedness, relevance)."""
    if error:
        return error.split(":", 1)[0], None, None
    if not answer or not question:
        return "no_answer", None, None
    if kind != "unanswerable" and is_refusal(answer):
        return "refusal", None, None
    if not lim.min_question_chars <= len(question) <= lim.max_question_chars:
        return "question_length", None, None
    if len(answer) < lim.min_answer_chars:
        return "answer_too_short", None, None
    if len(answer) > lim.max_answer_chars:
        return "answer_too_long", None, None
    if kind == "unanswerable":
        return None, None, None  # written and checked against the chunks when it was made
    grounded = round(support(answer, evidence or ""), 4)
    if grounded < (lim.min_source_support if kind == "local" else lim.min_groundedness):
        return "ungrounded", grounded, None
    relevant = relevance(question_terms(question, cues), answer)
    if relevant is not None and lim.min_relevance is not None and relevant < lim.min_relevance:
        return "off_topic", grounded, relevant
    return None, grounded, relevant


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


# ---- corpus-wide decisions on the driver ---------------------------------------------------------
COMPACT = ["id", "kind", "question_set", "drop", "groundedness", "judge_score", "answer_sig", "question_sig",
           "source_chunk_id", "retrieved_source", "entity_ids", "community_ids"]


def rank_key(r: dict) -> tuple:
    """Best first: the separately written test questions, then the judge's score or groundedness."""
    if r.get("judge_score") is not None:
        score = r["judge_score"] / 10
    else:
        score = r["groundedness"] if r.get("groundedness") is not None else 1.0
    return (r.get("question_set") != "hard_global", -score, r["id"])


def count_drops(rec: StageRecord, rows: list[dict]) -> list[dict]:
    """The rows still kept; the others counted by reason (engine errors were counted by run_llm)."""
    kept = []
    for r in rows:
        if r["drop"] is None:
            kept.append(r)
        elif r["drop"] not in ENGINE_ERRORS:
            rec.drop(r["drop"])
    return kept


def dedup(rec: StageRecord, rows: list[dict], answer_threshold: float, question_threshold: float) -> list[dict]:
    """Near-duplicate answers, then near-duplicate questions; the better-ranked row of a pair stays."""
    rows = sorted(rows, key=rank_key)
    answer_sigs, question_sigs = sigs_of(rows, "answer_sig"), sigs_of(rows, "question_sig")
    answer_bands, question_bands = band_keys(answer_sigs).tolist(), band_keys(question_sigs).tolist()
    answers, questions = NearIndex(answer_threshold), NearIndex(question_threshold)
    kept = []
    for i, r in enumerate(rows):
        if answers.similar(answer_sigs[i], answer_bands[i]) is not None:
            rec.drop("duplicate_answer")
        elif questions.similar(question_sigs[i], question_bands[i]) is not None:
            rec.drop("duplicate_question")
        else:
            answers.add(answer_sigs[i], bands=answer_bands[i])
            questions.add(question_sigs[i], bands=question_bands[i])
            kept.append(r)
    return kept


def keep_top(rec: StageRecord, rows: list[dict], fraction: float) -> list[dict]:
    if fraction >= 1:
        return rows
    by_kind: dict[str, list[dict]] = {}
    for r in rows:
        by_kind.setdefault(r["kind"], []).append(r)
    kept = []
    for kind, group in sorted(by_kind.items()):
        if kind == "unanswerable":
            kept += group
            continue
        group.sort(key=rank_key)
        n = math.ceil(fraction * len(group))
        rec.drop("below_keep_top_fraction", len(group) - n)
        kept += group[:n]
    return kept


def sigs_of(rows: list[dict], column: str) -> np.ndarray:
    """The rows' signatures in `column` as one (n, NUM_PERM) array."""
    return np.frombuffer(b"".join(r[column] for r in rows), dtype=np.uint32).reshape(len(rows), NUM_PERM)


def compact(scored) -> list[dict]:
    """What the driver decides on: ids, kinds, scores, signatures and group keys, never the texts."""
    return compact_table(collect(scored.select_columns(COMPACT)))


def compact_table(table: pa.Table) -> list[dict]:
    return table.select(COMPACT).to_pylist() if table.num_rows else []


def groundedness_quantiles(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per kind, quantiles of groundedness over every scored row (dropped ones included): what
    `min_groundedness` cuts, so the threshold can be checked against real rows."""
    out = {}
    by_kind: dict[str, list[float]] = {}
    for r in rows:
        if r.get("groundedness") is not None:
            by_kind.setdefault(r["kind"], []).append(r["groundedness"])
    for kind, values in sorted(by_kind.items()):
        q = np.quantile(np.asarray(values), [0.05, 0.25, 0.5, 0.75, 0.95])
        out[kind] = {"n": len(values), **{f"p{p}": round(float(v), 3) for p, v in zip((5, 25, 50, 75, 95), q)}}
    return out
