"""Pairwise LLM judge, debiased for position: every pair is judged in both orders.

A system wins a criterion only when both orders pick it; any disagreement (or a
tie in either order) is a tie. The authors' code judged one fixed order, which
rewards whatever sits in position A. Win rate = (wins + ties / 2) / n, with a
95% bootstrap interval over questions.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, create_model, field_validator

from factory import prompts
from factory.config import EngineConfig
from factory.engines.task import LLMTask
from factory.errors import UserError
from factory.evaluate.metrics import bootstrap_ci, final_answer, groups_of
from factory.pipeline import Run, StageRecord

CRITERIA = ("usefulness", "richness", "insightfulness", "user_friendliness")
GRAPHRAG_CRITERIA = ("comprehensiveness", "diversity", "empowerment", "directness")
TASK = "judge_pairwise"
MAX_REASON_CHARS = 300


class Verdict(BaseModel):
    winner: Literal["A", "B", "tie"]
    reason: str

    @field_validator("winner", mode="before")
    @classmethod
    def _canonical(cls, v: object) -> object:
        if isinstance(v, str):
            v = v.strip().strip(".").replace("Answer ", "").replace("answer ", "")
            return {"a": "A", "b": "B", "tie": "tie", "draw": "tie", "equal": "tie"}.get(v.lower(), v)
        return v

    @field_validator("reason")
    @classmethod
    def _short(cls, v: str) -> str:
        return v.strip()[:MAX_REASON_CHARS]


def verdict_model(criteria: list[str]) -> type[BaseModel]:
    """The judge's JSON schema: one Verdict per criterion asked."""
    return create_model("PairwiseVerdict", **{c: (Verdict, ...) for c in criteria})


class JudgePair(LLMTask):
    """A question and two answers shown in one order -> a verdict per criterion (JSON of verdict_model)."""

    name = TASK
    fields = {"verdict": pa.string()}
    keep_failed = True
    lineage = False
    prompted = True  # `requests` writes both orders of every pair

    def __init__(self, criteria: list[str]):
        self.output_model = verdict_model(criteria)

    def parse(self, row: dict, reply: BaseModel) -> dict:
        return {"verdict": reply.model_dump_json()}


def criteria_of(names: list[str], graphrag: bool) -> list[str]:
    known = set(CRITERIA) | set(GRAPHRAG_CRITERIA)
    unknown = [c for c in names if c not in known]
    if unknown:
        raise UserError(f"evaluate.criteria: unknown {unknown}; known: {sorted(known)}")
    out = list(dict.fromkeys(names))
    return out + [c for c in GRAPHRAG_CRITERIA if graphrag and c not in out]


def system_pairs(systems: list[str], anchor: str, all_pairs: bool) -> list[tuple[str, str]]:
    """The anchor (the student) against every other system, or every pair."""
    if all_pairs or anchor not in systems:
        return list(itertools.combinations(systems, 2))
    return [(anchor, s) for s in systems if s != anchor]


def combine(first: str | None, second: str | None) -> str:
    """Outcome of a pair (a, b): `first` is the verdict with a shown as A, `second` with b shown as A.

    Returns 'a' or 'b' only when both orders agree, else 'tie'.
    """
    v1 = {"A": "a", "B": "b"}.get(first or "", "tie")
    v2 = {"A": "b", "B": "a"}.get(second or "", "tie")
    return v1 if v1 == v2 else "tie"


def _shape(criteria: list[str]) -> str:
    body = ", ".join(f'"{c}": {{"winner": "A|B|tie", "reason": "..."}}' for c in criteria)
    return "{" + body + "}"


def evidence_texts(questions: list[dict], chunks: pa.Table, reports: pa.Table, budget_tokens: int) -> dict[str, str]:
    """question id -> what its reference answer was written from: the source and evidence chunks, else
    (a global answer) its communities' report summaries; cut to about budget_tokens (estimated: the
    judge is usually a server whose tokenizer is not at hand)."""
    text = dict(zip(chunks.column("id").to_pylist(), chunks.column("text").to_pylist()))
    summaries = {str(r["community"]): f"{r['title'] or ''}: {r['summary'] or ''}" for r in
                 reports.select(["community", "title", "summary"]).to_pylist()}
    out = {}
    for q in questions:
        ids = dict.fromkeys([q.get("source_chunk_id"), *(q.get("evidence_chunk_ids") or [])])
        parts = [text[c] for c in ids if c in text] or [summaries[c] for c in q.get("community_ids") or [] if c in summaries]
        joined, limit = "\n\n".join(parts), 4 * budget_tokens
        if joined:
            out[q["id"]] = joined if len(joined) <= limit else joined[:limit] + " [...]"
    return out


def requests(answers: pa.Table, pairs: list[tuple[str, str]], criteria: list[str], with_reference: bool,
             evidence: dict[str, str] | None = None) -> list[dict]:
    """One judge call per question, pair and order; answers that failed are left out (the report counts them).
    `evidence`: question id -> the corpus text the reference answer was written from."""
    prompt = prompts.load(TASK)
    by_q: dict[str, dict[str, dict]] = defaultdict(dict)
    for row in answers.to_pylist():
        if row["error"] is None:
            by_q[row["question_id"]][row["system"]] = row
    shape, names = _shape(criteria), ", ".join(criteria)
    out = []
    for qid, rows in by_q.items():
        any_row = next(iter(rows.values()))
        ref = f"\nReference answer (written from the source; may be incomplete):\n{any_row['reference']}\n" if (
            with_reference and any_row["reference"]) else ""
        shown = (evidence or {}).get(qid)
        ev = f"\nEvidence from the corpus (what the reference was written from):\n{shown}\n" if shown else ""
        for a, b in pairs:
            if a not in rows or b not in rows:
                continue
            for order, (x, y) in (("ab", (a, b)), ("ba", (b, a))):
                out.append({
                    "id": f"{qid}|{a}|{b}|{order}",
                    "messages": prompt.messages(
                        question=any_row["question"], reference=ref, evidence=ev, criteria=names, shape=shape,
                        answer_a=final_answer(rows[x]["answer"]), answer_b=final_answer(rows[y]["answer"]),
                    ),
                })
    return out


def judge(run: Run, rec: StageRecord, answers: pa.Table, pairs: list[tuple[str, str]], criteria: list[str],
          judge_cfg: EngineConfig, with_reference: bool = False, evidence: dict[str, str] | None = None) -> pa.Table:
    """Judge every pair in both orders through the engine layer; one row per question, pair and criterion."""
    reqs = requests(answers, pairs, criteria, with_reference, evidence)
    rec.rows_in = len(reqs)
    if not reqs:
        return _judgments([])
    replies = {r["id"]: r for r in JudgePair(criteria).run_rows(run, rec, reqs, judge_cfg)}
    kinds = {r["question_id"]: r["kind"] for r in answers.select(["question_id", "kind"]).to_pylist()}
    rows = []
    for req in reqs:
        qid, a, b, order = req["id"].split("|")
        if order == "ba":
            continue
        first, second = replies.get(req["id"]), replies.get(f"{qid}|{a}|{b}|ba")
        v1, v2 = _verdict(first), _verdict(second)
        error = None if v1 and v2 else "; ".join(
            e for e in ((first or {}).get("error"), (second or {}).get("error")) if e) or "no valid verdict"
        if error:
            rec.drop("judge_error", len(criteria))
            rec.stats["judge_errors"] = rec.stats.get("judge_errors", 0) + 1
        for c in criteria:
            w1 = v1[c]["winner"] if v1 else None
            w2 = v2[c]["winner"] if v2 else None
            rows.append({
                "question_id": qid, "kind": kinds.get(qid), "system_a": a, "system_b": b, "criterion": c,
                "winner_ab": w1, "winner_ba": w2, "outcome": None if error else combine(w1, w2),
                "reason_ab": v1[c]["reason"] if v1 else None, "reason_ba": v2[c]["reason"] if v2 else None,
                "error": error,
            })
    rec.rows_out = sum(r["error"] is None for r in rows)
    return _judgments(rows)


def _verdict(reply: dict | None) -> dict | None:
    return json.loads(reply["verdict"]) if reply and reply["verdict"] else None


def _judgments(rows: list[dict]) -> pa.Table:
    import schemas

    return schemas.validate("eval_judgments", pa.Table.from_pylist(rows, schema=schemas.schema_of("eval_judgments")))


def win_rates(judgments: pa.Table, n_boot: int, seed: int = 0, sets: dict[str, str] | None = None) -> list[dict]:
    """eval_results rows: win rate of system_a over system_b per criterion and group (all, kind,
    question set), plus how often the two orders agreed (a position-bias check)."""
    rows = [r for r in judgments.to_pylist() if r["outcome"] is not None]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        for kind in groups_of(r["kind"], (sets or {}).get(r["question_id"])):
            groups[(r["system_a"], r["system_b"], r["criterion"], kind)].append(r)
    out = []
    for (a, b, crit, kind), rs in sorted(groups.items()):
        score = np.array([{"a": 1.0, "b": 0.0, "tie": 0.5}[r["outcome"]] for r in rs])
        wins_a = sum(r["outcome"] == "a" for r in rs)
        wins_b = sum(r["outcome"] == "b" for r in rs)
        low, high = bootstrap_ci(score, n_boot, seed)
        base = {"system_a": a, "system_b": b, "criterion": crit, "kind": kind, "n": len(rs),
                "wins_a": wins_a, "wins_b": wins_b, "ties": len(rs) - wins_a - wins_b}
        out.append({**base, "metric": "win_rate", "value": float(score.mean()), "ci_low": low, "ci_high": high})
        agree = np.array([float(combine(r["winner_ab"], r["winner_ba"]) != "tie"
                                or (r["winner_ab"] == "tie" and r["winner_ba"] == "tie")) for r in rs])
        low, high = bootstrap_ci(agree, n_boot, seed)
        out.append({**base, "metric": "judge_agreement", "value": float(agree.mean()), "ci_low": low, "ci_high": high})
    return out
