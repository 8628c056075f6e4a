"""Quality filters over answered rows; every drop is counted by reason in the stage record.

In order: answer missing (by the answering step's reason), question and answer
length bounds, groundedness (lexical support of the answer by its evidence,
0..1) below `min_groundedness`, the judge's 0-10 score when a judge engine is
configured (failed judge calls drop the row; the engine layer counts those,
and failed answer calls, by error kind), near-duplicate questions (the
better-scored row of a pair stays), and keep-top-fraction per kind.
Unanswerable rows carry no evidence: they are length-checked and deduplicated only.
"""

from __future__ import annotations

import math

import pyarrow as pa
from pydantic import BaseModel, field_validator

from factory.engines.structured import BUDGET, INVALID_OUTPUT, LLM_ERROR
from factory.pipeline import Run, StageRecord
from factory.prompts import load as load_prompt
from factory.synth.answers import llm_enabled
from factory.synth.rows import MESSAGES, collect, to_dataset
from factory.synth.text import shingles, support

NUM_PERM = 64
# Error kinds the engine layer reports and counts itself (the first word of `error`).
ENGINE_ERRORS = (LLM_ERROR, INVALID_OUTPUT, BUDGET)


class JudgeOut(BaseModel):
    score: float
    reason: str = ""

    @field_validator("score", mode="before")
    @classmethod
    def _clamp(cls, v):
        return max(0.0, min(10.0, float(v)))


class NearDuplicates:
    """Questions seen so far; `seen(text)` is true when one is at least `threshold` similar
    (Jaccard of words + word bigrams). MinHash LSH finds candidates, the exact Jaccard decides."""

    def __init__(self, threshold: float):
        from datasketch import MinHash, MinHashLSH

        self.threshold = threshold
        # Drawing the hash permutations is most of a MinHash's cost: draw them once.
        template = MinHash(num_perm=NUM_PERM, seed=1)
        self.permutations, self.scheme = template.permutations, template.scheme
        # A lower LSH threshold than the decision one: candidates are cheap, misses are not.
        self.lsh = MinHashLSH(threshold=max(0.05, threshold * 0.8), num_perm=NUM_PERM)
        self.sets: list[set[str]] = []

    def _minhash(self, grams: set[str]):
        from datasketch import MinHash

        mh = MinHash(num_perm=NUM_PERM, seed=1, permutations=self.permutations, scheme=self.scheme)
        mh.update_batch([g.encode() for g in grams] or [b""])
        return mh

    def seen(self, text: str, add: bool = True) -> bool:
        grams = shingles(text)
        mh = self._minhash(grams)
        for key in self.lsh.query(mh):
            other = self.sets[key]
            if len(grams & other) / max(1, len(grams | other)) >= self.threshold:
                return True
        if add:
            self.add_minhash(grams, mh)
        return False

    def add(self, text: str) -> None:
        grams = shingles(text)
        self.add_minhash(grams, self._minhash(grams))

    def add_minhash(self, grams: set[str], mh) -> None:
        self.lsh.insert(len(self.sets), mh)
        self.sets.append(grams)


def filter_rows(run: Run, rec: StageRecord, rows: list[dict]) -> list[dict]:
    """Apply every filter (see the module docstring); rows gain `groundedness` and `judge_score`."""
    s = run.cfg.synth
    kept = []
    for r in rows:
        if (r.get("error") or "").split(":")[0] in ENGINE_ERRORS:
            continue  # run_llm counted it already, by kind
        reason = _bounds(r, s)
        if reason is None and r["kind"] != "unanswerable":
            r["groundedness"] = round(support(r["answer"], r.get("evidence") or ""), 4)
            if r["groundedness"] < s.min_groundedness:
                reason = "ungrounded"
        if reason:
            rec.drop(reason)
        else:
            kept.append(r)
    if llm_enabled(run.cfg.judge):
        kept = judge(run, rec, kept)
    kept = _dedup(rec, kept, s.dedup_threshold)
    return _keep_top(rec, kept, s.keep_top_fraction)


def _bounds(r: dict, s) -> str | None:
    if not r.get("answer"):
        return r.get("error") or "no_answer"
    if not s.min_question_chars <= len(r["question"]) <= s.max_question_chars:
        return "question_length"
    if len(r["answer"]) < s.min_answer_chars:
        return "answer_too_short"
    if len(r["answer"]) > s.max_answer_chars:
        return "answer_too_long"
    return None


def judge(run: Run, rec: StageRecord, rows: list[dict]) -> list[dict]:
    """The judge engine's 0-10 groundedness score for each answered row with evidence."""
    from factory.engines import run_llm

    prompt = load_prompt("groundedness")
    asks = [
        {"id": r["id"], "messages": prompt.messages(question=r["question"], evidence=r.get("evidence") or "", answer=r["answer"])}
        for r in rows if r["kind"] != "unanswerable"
    ]
    if not asks:
        return rows
    schema = pa.schema([("id", pa.string()), ("messages", MESSAGES)])
    out = collect(run_llm(run, rec, to_dataset(asks, schema), run.cfg.judge, "groundedness", output_model=JudgeOut))
    scores = {
        r["id"]: JudgeOut.model_validate_json(r["parsed"]).score
        for r in out.to_pylist() if not r.get("error") and r.get("parsed")
    }
    kept = []
    for r in rows:
        if r["kind"] != "unanswerable":
            if r["id"] not in scores:
                continue  # a failed judge call: run_llm counted it by kind (see stats.llm.groundedness)
            r["judge_score"] = scores[r["id"]]
        kept.append(r)
    return kept


def score(r: dict) -> float:
    """The row's quality for ranking: the judge's score when there is one, else groundedness."""
    if r.get("judge_score") is not None:
        return r["judge_score"] / 10
    return r.get("groundedness") if r.get("groundedness") is not None else 1.0


def _dedup(rec: StageRecord, rows: list[dict], threshold: float) -> list[dict]:
    index = NearDuplicates(threshold)
    kept = []
    for r in sorted(rows, key=lambda r: (-score(r), r["id"])):
        if index.seen(r["question"]):
            rec.drop("duplicate_question")
        else:
            kept.append(r)
    return kept


def _keep_top(rec: StageRecord, rows: list[dict], fraction: float) -> list[dict]:
    if fraction >= 1:
        return rows
    by_kind: dict[str, list[dict]] = {}
    for r in rows:
        by_kind.setdefault(r["kind"], []).append(r)
    kept = []
    for kind, group in by_kind.items():
        if kind == "unanswerable":
            kept += group
            continue
        group.sort(key=lambda r: (-score(r), r["id"]))
        n = math.ceil(fraction * len(group))
        rec.drop("below_keep_top_fraction", len(group) - n)
        kept += group[:n]
    return kept
