"""Questions of every kind, as rows ready to be answered (answers.py) or already answered (unanswerable).

    entity        per entity: a template question answered by its description (the authors' short
                  pair), and with a teacher a question + chain-of-thought answer over its sources
    relationship  the same per relationship
    local         per chunk x each entity/relationship it names (local.py, on Ray)
    global        corpus-wide questions (the voice's templates with the cues that answer them, or
                  teacher-written per persona) and one question per important community, scoped to
                  its report; plus the separately written hard test set (question_set hard_global)
    unanswerable  real entities asked about what the corpus never says, and plausible names made
                  from the corpus's own names; kept only when retrieval finds no support

Templates and phrasing come from the voice's file (templates.py). Every random choice is seeded
by (config seed, the row's own key), so a row does not depend on which other rows exist.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import re

import pyarrow as pa
from pydantic import BaseModel, Field

from factory.engines.task import LLMTask
from factory.pipeline import Run, StageRecord
from factory.synth.templates import GlobalTemplate, Templates
from factory.text import estimate_tokens, words
from schemas import STRS

logger = logging.getLogger(__name__)

# How a chunk-grounded row is answered (answers.py): its description, its source chunk, or the teacher
# writing question and chain of thought together over the subject's sources.
DESCRIBE, LOCAL, ENTITY_QA, RELATIONSHIP_QA = "describe", "local", "entity_qa", "relationship_qa"

QUESTION_SCHEMA = pa.schema([
    ("id", pa.string()), ("kind", pa.string()), ("task", pa.string()),
    ("question", pa.string()),  # null for ENTITY_QA/RELATIONSHIP_QA rows: the teacher writes it
    ("question_source", pa.string()), ("question_reasoning", pa.string()),
    ("names", STRS), ("entity_type", pa.string()), ("description", pa.string()),
    ("entity_ids", STRS), ("relationship_ids", STRS), ("text_unit_ids", STRS),
    ("source_chunk_id", pa.string()), ("where", pa.string()),
])
GLOBAL_SCHEMA = pa.schema([
    ("id", pa.string()), ("kind", pa.string()), ("question", pa.string()), ("question_source", pa.string()),
    ("question_set", pa.string()), ("scope", STRS), ("level", pa.int64()), ("cues", STRS), ("types", STRS),
])


class QuestionsOut(BaseModel):
    questions: list[str] = Field(default_factory=list)


def _digest(*key: object) -> bytes:
    return hashlib.blake2b("\x1f".join(map(str, key)).encode(), digest_size=8).digest()


def rng_for(seed: int, *key: object) -> random.Random:
    return random.Random(int.from_bytes(_digest(seed, *key), "big"))


def pick(options: list[str], seed: int, *key: object) -> str:
    """A seeded choice by the row's own key (cheaper than a Random per row, which most rows need once)."""
    return options[int.from_bytes(_digest(seed, *key), "big") % len(options)]


def question_id(kind: str, question: str | None, *provenance: object) -> str:
    """Stable content hash of kind + question + provenance."""
    return _digest(kind, question, *provenance).hex()


def entity_ids_by_title(entities: pa.Table) -> dict[str, str]:
    """Entity id by title (relationships name their ends by title)."""
    return dict(zip(entities.column("title").to_pylist(), entities.column("id").to_pylist())) if entities.num_rows else {}


def _row(**values) -> dict:
    return {f.name: values.get(f.name) for f in QUESTION_SCHEMA}


# ---- entity / relationship ------------------------------------------------------------------
def subject_questions(entities: pa.Table, relationships: pa.Table, t: Templates, seed: int, llm: bool,
                      max_sources: int) -> list[dict]:
    """Per entity and relationship: the template -> description row, and with a teacher a CoT row."""
    rows = []
    for e in entities.to_pylist():
        q = pick(t.entity_templates(e.get("type")), seed, "entity", e["id"]).format(name=e["title"])
        common = {"kind": "entity", "names": [e["title"]], "entity_type": e.get("type"), "description": e.get("description"),
                  "entity_ids": [e["id"]], "relationship_ids": [], "text_unit_ids": (e.get("text_unit_ids") or [])[:max_sources]}
        rows.append(_row(id=question_id("entity", q, e["id"]), task=DESCRIBE, question=q, question_source="template", **common))
        if llm:
            rows.append(_row(id=question_id("entity", None, e["id"]), task=ENTITY_QA, question_source="llm", **common))
    ids = entity_ids_by_title(entities)
    for r in relationships.to_pylist():
        a, b = r["source"], r["target"]
        q = pick(t.relationship, seed, "relationship", r["id"]).format(a=a, b=b)
        common = {"kind": "relationship", "names": [a, b], "description": r.get("description"),
                  "entity_ids": [ids[n] for n in (a, b) if n in ids], "relationship_ids": [r["id"]],
                  "text_unit_ids": (r.get("text_unit_ids") or [])[:max_sources]}
        rows.append(_row(id=question_id("relationship", q, r["id"]), task=DESCRIBE, question=q, question_source="template", **common))
        if llm:
            rows.append(_row(id=question_id("relationship", None, r["id"]), task=RELATIONSHIP_QA, question_source="llm", **common))
    return rows


# ---- global -----------------------------------------------------------------------------------
def _global_row(question: str, source: str, level: int, scope: list[str], question_set: str = "main",
                template: GlobalTemplate | None = None) -> dict:
    return {"id": question_id("global", question, level, scope), "kind": "global", "question": question,
            "question_source": source, "question_set": question_set, "scope": scope, "level": level,
            "cues": template.cues if template else [], "types": template.types if template else []}


def level_reports(reports: pa.Table, level: int) -> list[dict]:
    """The reports of one level, most important first."""
    return sorted((r for r in reports.to_pylist() if r["level"] == level), key=lambda r: (-(r.get("rank") or 0), r["community"]))


def global_questions(run: Run, rec: StageRecord, reports: list[dict], t: Templates) -> list[dict]:
    """Training questions: one per important community (scoped to its report), and corpus-wide ones."""
    s, seed = run.cfg.synth, run.cfg.seed
    rows = [_global_row(pick(t.community, seed, "community", r["community"]).format(title=r["title"]),
                        "template", s.global_level, [str(r["community"])])
            for r in reports[: s.community_questions] if r.get("title")]
    if not s.global_questions:
        return rows
    if run.cfg.teacher.enabled:
        written = _written_questions(run, rec, reports, t, "global_questions", s.global_questions, names=())
        return rows + [_global_row(q, "llm", s.global_level, []) for q in written]
    return rows + [_global_row(g.question, "template", s.global_level, [], template=g) for g in t.global_[: s.global_questions]]


def hard_global_questions(run: Run, rec: StageRecord, reports: list[dict], t: Templates, names: list[str]) -> list[dict]:
    """The separately written held-out test set: questions about the corpus as a whole that name no entity
    (the authors wrote theirs from a corpus summary, to be hard for RAG)."""
    s = run.cfg.synth
    if not s.hard_global_questions:
        return []
    if run.cfg.teacher.enabled:
        written = _written_questions(run, rec, reports, t, "hard_global_questions", s.hard_global_questions, names)
        return [_global_row(q, "llm", s.global_level, [], "hard_global") for q in written]
    return [_global_row(g.question, "template", s.global_level, [], "hard_global", template=g)
            for g in t.hard_global[: s.hard_global_questions]]


def corpus_summary(reports: list[dict], budget: int) -> str:
    """Report titles and summaries, most important first, within `budget` estimated tokens."""
    parts, used = [], 0
    for r in reports:
        part = f"- {r.get('title') or ''}: {r.get('summary') or ''}"
        used += estimate_tokens(part)
        if parts and used > budget:
            break
        parts.append(part)
    return "\n".join(parts)


def names_entity(question: str, names: list[str]) -> bool:
    """Whether `question` names one of the corpus's entities (names of a capital or of two words and more)."""
    lowered = question.lower()
    return any(n.lower() in lowered for n in names if len(n) > 3 and (n[:1].isupper() or " " in n))


class WriteQuestions(LLMTask):
    """The corpus summary and one persona -> at most `n` questions (tasks global_questions, hard_global_questions)."""

    output_model = QuestionsOut
    fields = {"questions": pa.list_(pa.string())}
    lineage = False
    drop = ("summary", "persona", "question_style")

    def __init__(self, name: str):
        self.name = name

    def parse(self, row: dict, reply: QuestionsOut) -> dict:
        return {"questions": [q.strip() for q in reply.questions[: row["n"]] if q.strip()]}


def _written_questions(run: Run, rec: StageRecord, reports: list[dict], t: Templates, task: str, n_total: int,
                       names: list[str] | tuple) -> list[str]:
    """Questions the teacher writes per persona from the corpus summary; ones naming an entity are dropped
    when `names` are given (the hard set must not be answerable by looking one name up)."""
    s = run.cfg.synth
    summary = corpus_summary(reports, s.summary_tokens)
    personas = s.personas or t.personas
    n = math.ceil(n_total / len(personas))
    rows = [{"id": f"persona-{i}", "summary": summary, "persona": p, "n": n, "question_style": t.question_style}
            for i, p in enumerate(personas)]
    questions = []
    for r in sorted(WriteQuestions(task).run_rows(run, rec, rows, run.cfg.teacher), key=lambda r: r["id"]):
        for q in r["questions"]:
            if names_entity(q, list(names)):
                rec.drop(f"{task}_names_entity")
            else:
                questions.append(q)
    return questions[:n_total]


# ---- unanswerable -------------------------------------------------------------------------------
UNANSWERABLE_SCHEMA = pa.schema([
    ("id", pa.string()), ("kind", pa.string()), ("question", pa.string()), ("question_source", pa.string()),
    ("answer", pa.string()), ("reasoning", pa.string()), ("entity_ids", STRS),
])
_WORD = re.compile(r"[A-Za-z][A-Za-z'’\-]*")


def unanswerable_count(answerable: int, fraction: float) -> int:
    """So that unanswerable rows make up `fraction` of all rows."""
    return 0 if fraction <= 0 else round(answerable * fraction / (1 - fraction)) if fraction < 1 else answerable


def name_parts(entities: pa.Table) -> dict[str, tuple[list[str], list[str]]]:
    """Per entity type, the first and last words of its multi-word proper names: what a plausible name
    is made of ("Tomas Nair" from "Tomas Eriksen" and "Priya Nair"). What looks like the corpus cannot
    be refused by its look. Two lower-case terms glued together ("stainless cord") make no question."""
    by_type: dict[str, tuple[list[str], list[str]]] = {}
    for title, kind in zip(entities.column("title").to_pylist(), entities.column("type").to_pylist()):
        parts = title.split()
        if len(parts) >= 2 and title[:1].isupper() and all(_WORD.fullmatch(p) for p in (parts[0], parts[-1])):
            heads, tails = by_type.setdefault(kind or "default", ([], []))
            heads.append(parts[0])
            tails.append(parts[-1])
    return {k: (sorted(set(h)), sorted(set(t))) for k, (h, t) in sorted(by_type.items())}


def chunks_holding(texts: list[str], name_sets: list[list[str]]) -> list[bool]:
    """For each set of names, whether some text holds all of them: a lexical retrieval, exact where BM25
    ranks. Only the words of the names asked about are indexed."""
    wanted = {w for names in name_sets for n in names for w in words(n)}
    postings: dict[str, set[int]] = {w: set() for w in wanted}
    for i, text in enumerate(texts):
        for w in wanted.intersection(words(text)):
            postings[w].add(i)
    out = []
    for names in name_sets:
        lists = sorted((postings[w] for n in names for w in words(n)), key=len)
        cands = set.intersection(*lists) if lists else set()
        out.append(any(all(n.lower() in texts[c].lower() for n in names) for c in cands))
    return out


def unanswerable_questions(n: int, entities: pa.Table, relationships: pa.Table, texts: list[str], t: Templates,
                           seed: int) -> list[dict]:
    """`n` questions the corpus cannot answer, half about real entities never mentioned together and
    half about plausible names it never mentions, each kept only when no chunk holds all of its
    names (`texts`: the chunks); answered with a refusal."""
    if n <= 0 or not entities.num_rows:
        return []
    rng = rng_for(seed, "unanswerable")
    titles = entities.column("title").to_pylist()
    known = {x.lower() for x in titles}
    parts = name_parts(entities)
    types = dict(zip(titles, entities.column("type").to_pylist()))
    ids = entity_ids_by_title(entities)
    together = {frozenset((a, b)) for a, b in zip(relationships.column("source").to_pylist(), relationships.column("target").to_pylist())}
    sources = {x: set(u or ()) for x, u in zip(titles, entities.column("text_unit_ids").to_pylist())}
    named = [x for x in titles if x[:1].isupper()] or titles  # a pair of named things reads as a real question

    def pair() -> tuple[str, list[str], str, str] | None:
        a, b = rng.sample(named, 2) if len(named) >= 2 else (None, None)
        if a is None or frozenset((a, b)) in together or sources[a] & sources[b]:
            return None
        q = rng.choice(t.unanswerable["pair"]).format(a=a, b=b)
        return q, [a, b], _sentence(rng.choice(t.refusals["pair"]).format(a=a, b=b)), f"{a} and {b} together"

    # Two words of one real name make a short form of it ("Harwick Council" of "Harwick City Council"):
    # refusing that would teach the student to refuse what it knows.
    aliases = {(a, b) for x in known for ws in [x.split()] for i, a in enumerate(ws) for b in ws[i + 1:]}

    def name() -> tuple[str, list[str], str, str] | None:
        if not parts:
            return None
        kind = rng.choice(sorted(parts))
        head, tail = rng.choice(parts[kind][0]), rng.choice(parts[kind][1])
        who = f"{head} {tail}"
        if who.lower() in known or head == tail or (head.lower(), tail.lower()) in aliases:
            return None
        q = rng.choice(t.unanswerable_templates(kind)).format(name=who)
        return q, [who], _sentence(rng.choice(t.refusals["name"]).format(name=who)), who

    made, seen = [], set()
    for attempt in range(8 * n + 20):
        if len(made) >= 2 * n:
            break
        candidate = (pair if attempt % 2 == 0 else name)()
        if candidate is not None and candidate[0] not in seen:
            seen.add(candidate[0])
            made.append(candidate)
    rows = []
    # The refusal must be right: no chunk may hold every name the question asks about.
    for (q, subject_names, answer, subject), held in zip(made, chunks_holding(texts, [m[1] for m in made])):
        if len(rows) < n and not held:
            rows.append({"id": question_id("unanswerable", q), "kind": "unanswerable", "question": q,
                         "question_source": "template", "answer": answer,
                         "reasoning": t.phrases.unanswerable_reasoning.format(subject=subject),
                         "entity_ids": [ids[x] for x in subject_names if x in ids and x in types]})
    return rows


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def log_no_reports(rec: StageRecord, level: int, reports: pa.Table) -> None:
    levels = sorted(set(reports.column("level").to_pylist())) if reports.num_rows else []
    logger.info(f"[{rec.name}] no community reports at synth.global_level {level} (levels present: {levels or 'none'}); "
               "no global questions")
