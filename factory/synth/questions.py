"""Questions of every kind, as lists of rows ready to be answered.

    entity        one template per entity (six phrasings per type, seeded choice)
    relationship  one template per relationship (nine phrasings)
    local         per chunk x entity/relationship found in it: the teacher writes a
                  question the chunk answers (or declines), or a template in no-LLM mode
    global        corpus-wide questions the teacher writes from the reports of one level,
                  one batch per persona (templates in no-LLM mode), plus a template
                  question per community scoped to its report
    unanswerable  questions about invented names absent from the corpus

Every random choice is seeded by (config seed, the row's own key), so a row's
question does not depend on which other rows exist.
"""

from __future__ import annotations

import hashlib
import json
import math
import random

import pyarrow as pa
from pydantic import BaseModel, Field

from factory.pipeline import Run, StageRecord, log
from factory.prompts import load as load_prompt
from factory.synth.answers import llm_enabled
from factory.synth.rows import MESSAGES, collect, to_dataset
from factory.synth.text import estimate_tokens, words
from schemas import STRS

ENTITY_TEMPLATES: dict[str, list[str]] = {
    "person": [
        "What can you tell me about the person {name}?", "Who is {name}?", "What do I know about {name}?",
        "Tell me about {name}.", "What role does {name} play in my life?", "How would you describe {name}?",
    ],
    "organization": [
        "What can you tell me about the organization {name}?", "What is {name}?", "What do I know about {name}?",
        "Tell me about the organization {name}.", "What is my connection to {name}?", "How would you describe {name}?",
    ],
    "geo": [
        "What can you tell me about the place {name}?", "Where is {name}, and what happened there?",
        "What do I know about {name}?", "Tell me about the place {name}.", "What is {name} like?",
        "Why does {name} matter to me?",
    ],
    "event": [
        "What can you tell me about the event {name}?", "What happened at {name}?", "When was {name}, and what happened?",
        "Tell me about the event {name}.", "What do I remember about {name}?", "Why was {name} significant?",
    ],
    "activity": [
        "What can you tell me about the activity {name}?", "How often do I do {name}?", "What do I know about {name}?",
        "Tell me about {name} in my life.", "What role does {name} play for me?", "How did {name} go over time?",
    ],
    "object": [
        "What can you tell me about the object {name}?", "What is {name}?", "What do I know about {name}?",
        "Tell me about {name}.", "Why does {name} matter to me?", "Where does {name} come up in my notes?",
    ],
}
DEFAULT_ENTITY_TEMPLATES = [
    "What can you tell me about {name}?", "What is {name}?", "What do I know about {name}?",
    "Tell me about {name}.", "What role does {name} play in my notes?", "How would you describe {name}?",
]
RELATIONSHIP_TEMPLATES = [
    "What is the relationship between {a} and {b}?", "How are {a} and {b} connected?", "How is {a} related to {b}?",
    "What links {a} and {b}?", "What do {a} and {b} have to do with each other?", "How did {a} and {b} interact?",
    "Tell me about {a} and {b}.", "What role does {a} play for {b}?", "In what way are {a} and {b} involved with each other?",
]
LOCAL_ENTITY_TEMPLATES = [
    "What do my notes in {where} say about {name}?", "What happened with {name} in {where}?",
    "What did I write about {name} in {where}?",
]
LOCAL_RELATIONSHIP_TEMPLATES = [
    "What happened between {a} and {b} in {where}?", "What did I note about {a} and {b} in {where}?",
]
GLOBAL_TEMPLATES = [
    "What are the main themes across all of my notes?", "How did my life change over the whole period?",
    "Who are the most important people in my life, and how do they relate to each other?",
    "What places come up most often, and why do they matter?", "What were my biggest challenges and how did I handle them?",
    "What recurring activities and habits run through my notes?", "What were the high points and low points overall?",
    "How did my work and my personal life influence each other?", "What projects did I pursue, and how did they turn out?",
    "What patterns show up in how I spent my time?",
]
GLOBAL_TOPIC_TEMPLATES = [
    "How did things around {topic} change over time?", "What role does {topic} play across my notes?",
    "What is the overall story of {topic}?",
]
COMMUNITY_TEMPLATES = [
    "What can you tell me about {title}?", "What is the overall story of {title}?",
    "Summarize what I know about {title}.", "What are the key points about {title}?",
]
UNANSWERABLE_TEMPLATES = {
    "person": ["What can you tell me about the person {name}?", "When did I last see {name}?", "What did {name} tell me?"],
    "geo": ["What did I write about my trip to {name}?", "What happened when I visited {name}?"],
    "event": ["What happened at the {name}?", "How did the {name} go?"],
    "organization": ["What do I know about the company {name}?", "What is my connection to {name}?"],
}
_SYLLABLES = "ka lo ren vi tor mi zan del quo bri fen gol hu sar ny pe dro ul ix wen ost cav lim rad".split()
_SUFFIX = {"person": "", "geo": "holm", "event": " Festival", "organization": " Industries"}
REFUSALS = [
    "I'm sorry, but I don't have anything about {name} in my memory of your notes, so I can't answer that.",
    "I don't recall {name} anywhere in your notes, so I can't tell you about it. Could you be thinking of something else?",
    "Nothing in what I remember of your notes mentions {name}, so I'd rather not guess.",
]


class LocalQuestionOut(BaseModel):
    declined: bool = False
    question: str = ""
    reasoning: str = ""


class GlobalQuestionsOut(BaseModel):
    questions: list[str] = Field(default_factory=list)


def rng_for(seed: int, *key: object) -> random.Random:
    digest = hashlib.sha256(json.dumps([seed, *key], default=str).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def question_id(kind: str, question: str, *provenance: object) -> str:
    """Stable content hash of kind + question + provenance."""
    blob = json.dumps([kind, question, *provenance], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---- entity / relationship ------------------------------------------------------------
GROUNDED_SCHEMA = pa.schema([
    ("id", pa.string()), ("kind", pa.string()), ("question", pa.string()), ("question_source", pa.string()),
    ("names", STRS), ("description", pa.string()), ("text_unit_ids", STRS), ("entity_ids", STRS),
    ("relationship_ids", STRS),
])


def _entity_ids(entities: pa.Table) -> dict[str, str]:
    """Entity id by title (relationships name their ends by title)."""
    return dict(zip(entities.column("title").to_pylist(), entities.column("id").to_pylist())) if entities.num_rows else {}


def entity_questions(entities: pa.Table, seed: int) -> list[dict]:
    rows = []
    for e in entities.to_pylist():
        templates = ENTITY_TEMPLATES.get((e.get("type") or "").lower(), DEFAULT_ENTITY_TEMPLATES)
        q = rng_for(seed, "entity", e["id"]).choice(templates).format(name=e["title"])
        rows.append({
            "id": question_id("entity", q, e["id"]), "kind": "entity", "question": q, "question_source": "template",
            "names": [e["title"]], "description": e.get("description") or "", "text_unit_ids": e.get("text_unit_ids") or [],
            "entity_ids": [e["id"]], "relationship_ids": [],
        })
    return rows


def relationship_questions(relationships: pa.Table, entities: pa.Table, seed: int) -> list[dict]:
    ids = _entity_ids(entities)
    rows = []
    for r in relationships.to_pylist():
        q = rng_for(seed, "relationship", r["id"]).choice(RELATIONSHIP_TEMPLATES).format(a=r["source"], b=r["target"])
        rows.append({
            "id": question_id("relationship", q, r["id"]), "kind": "relationship", "question": q, "question_source": "template",
            "names": [r["source"], r["target"]], "description": r.get("description") or "",
            "text_unit_ids": r.get("text_unit_ids") or [],
            "entity_ids": [ids[t] for t in (r["source"], r["target"]) if t in ids], "relationship_ids": [r["id"]],
        })
    return rows


# ---- local ------------------------------------------------------------------------------
LOCAL_SCHEMA = pa.schema([
    ("id", pa.string()), ("kind", pa.string()), ("question", pa.string()), ("question_source", pa.string()),
    ("source_chunk_id", pa.string()), ("entity_ids", STRS), ("relationship_ids", STRS),
])


def local_focuses(chunks: pa.Table, entities: pa.Table, relationships: pa.Table, per_chunk: int, seed: int) -> list[dict]:
    """Per chunk, up to `per_chunk` entities/relationships it mentions (seeded choice)."""
    # One focus per entity/relationship, shared by every chunk it cites (an entity can cite thousands).
    by_chunk: dict[str, list[tuple[tuple[str, ...], dict]]] = {}

    def add(focus: dict, chunk_ids: list[str] | None) -> None:
        lowered = tuple(n.lower() for n in focus["names"])
        for c in chunk_ids or []:
            by_chunk.setdefault(c, []).append((lowered, focus))

    ent_ids = _entity_ids(entities)
    for e in entities.to_pylist():
        add({"names": [e["title"]], "entity_ids": [e["id"]], "relationship_ids": [], "description": e.get("description") or ""},
            e.get("text_unit_ids"))
    for r in relationships.to_pylist():
        add({"names": [r["source"], r["target"]], "entity_ids": [ent_ids[t] for t in (r["source"], r["target"]) if t in ent_ids],
             "relationship_ids": [r["id"]], "description": r.get("description") or ""}, r.get("text_unit_ids"))
    out = []
    for c in chunks.to_pylist():
        text = c["text"].lower()
        # Only focuses the chunk really names: a question about it must be answerable from it.
        cands = [f for names, f in by_chunk.get(c["id"], []) if all(n in text for n in names)]
        for f in rng_for(seed, "local", c["id"]).sample(cands, min(per_chunk, len(cands))):
            out.append({**f, "chunk": c})
    return out


def where(chunk: dict) -> str:
    title, date = (chunk.get("title") or "").strip(), (chunk.get("date") or "").strip()
    if title:
        return f'the entry "{title}"'
    return f"my notes from {date}" if date else "my notes"


def template_local_question(focus: dict, seed: int) -> str:
    chunk, names = focus["chunk"], focus["names"]
    rng = rng_for(seed, "local-q", chunk["id"], names)
    if len(names) == 2:
        return rng.choice(LOCAL_RELATIONSHIP_TEMPLATES).format(a=names[0], b=names[1], where=where(chunk))
    return rng.choice(LOCAL_ENTITY_TEMPLATES).format(name=names[0], where=where(chunk))


def _local_row(focus: dict, question: str, source: str) -> dict:
    chunk = focus["chunk"]
    return {
        "id": question_id("local", question, chunk["id"]), "kind": "local", "question": question, "question_source": source,
        "source_chunk_id": chunk["id"], "entity_ids": focus["entity_ids"], "relationship_ids": focus["relationship_ids"],
    }


def local_questions(run: Run, rec: StageRecord, chunks: pa.Table, entities: pa.Table, relationships: pa.Table) -> list[dict]:
    cfg = run.cfg
    focuses = local_focuses(chunks, entities, relationships, cfg.synth.local_per_chunk, cfg.seed)
    if not (llm_enabled(cfg.teacher) and cfg.synth.llm_local_questions):
        return [_local_row(f, template_local_question(f, cfg.seed), "template") for f in focuses]
    from factory.engines import run_llm

    prompt = load_prompt("local_question")
    rows = [{
        "id": f"{f['chunk']['id']}:{i}", "i": i,
        "messages": prompt.messages(
            label=where(f["chunk"]), text=f["chunk"]["text"],
            focus=" and ".join(f["names"]) + (f" ({f['description'][:300]})" if f["description"] else ""),
        ),
    } for i, f in enumerate(focuses)]
    schema = pa.schema([("id", pa.string()), ("i", pa.int64()), ("messages", MESSAGES)])
    out = collect(run_llm(run, rec, to_dataset(rows, schema), cfg.teacher, "local_question", output_model=LocalQuestionOut))
    result = []
    for r in out.to_pylist():
        if r.get("error") or not r.get("parsed"):
            continue  # run_llm counted it by error kind
        parsed = LocalQuestionOut.model_validate_json(r["parsed"])
        if parsed.declined or not parsed.question.strip():
            rec.drop("question_declined")
            continue
        result.append(_local_row(focuses[r["i"]], parsed.question.strip(), "llm"))
    return result


# Entity, relationship and local questions travel together to answer_from_chunks.
CHUNK_QUESTION_SCHEMA = pa.unify_schemas([GROUNDED_SCHEMA, LOCAL_SCHEMA])


# ---- global -----------------------------------------------------------------------------
GLOBAL_SCHEMA = pa.schema([
    ("id", pa.string()), ("kind", pa.string()), ("question", pa.string()), ("question_source", pa.string()),
    ("scope", STRS), ("level", pa.int64()),
])


def _global_row(question: str, source: str, level: int, scope: list[str]) -> dict:
    return {"id": question_id("global", question, level, scope), "kind": "global", "question": question,
            "question_source": source, "scope": scope, "level": level}


def global_questions(run: Run, rec: StageRecord, reports: pa.Table) -> list[dict]:
    cfg = run.cfg
    s = cfg.synth
    level_reports = sorted(
        (r for r in reports.to_pylist() if r["level"] == s.global_level),
        key=lambda r: (-(r.get("rank") or 0), r["community"]),
    )
    if not level_reports:
        levels = sorted({r["level"] for r in reports.to_pylist()})
        log(f"[{rec.name}] no community reports at synth.global_level {s.global_level} "
            f"(levels present: {levels or 'none'}); no global questions")
        return []
    rows = [
        _global_row(rng_for(cfg.seed, "community", r["community"]).choice(COMMUNITY_TEMPLATES).format(title=r["title"]),
                    "template", s.global_level, [str(r["community"])])
        for r in level_reports[: s.community_questions] if r.get("title")
    ]
    if s.global_questions == 0:
        return rows
    if llm_enabled(cfg.teacher):
        written = _llm_global_questions(run, rec, level_reports)
        return rows + [_global_row(q, "llm", s.global_level, []) for q in written]
    topics = [f"{r['title']}" for r in level_reports if r.get("title")]
    pool = GLOBAL_TEMPLATES + [t.format(topic=topic) for topic in topics for t in GLOBAL_TOPIC_TEMPLATES]
    rng = rng_for(cfg.seed, "global")
    # Corpus-wide templates first, then topic ones, so small budgets get the broadest questions.
    picked = rng.sample(GLOBAL_TEMPLATES, len(GLOBAL_TEMPLATES)) + rng.sample(pool[len(GLOBAL_TEMPLATES):], len(pool) - len(GLOBAL_TEMPLATES))
    return rows + [_global_row(q, "template", s.global_level, []) for q in picked[: s.global_questions]]


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


def _llm_global_questions(run: Run, rec: StageRecord, reports: list[dict]) -> list[str]:
    from factory.engines import run_llm

    s = run.cfg.synth
    prompt = load_prompt("global_questions")
    summary = corpus_summary(reports, s.summary_tokens)
    n = math.ceil(s.global_questions / len(s.personas))
    rows = [{"id": f"persona-{i}", "messages": prompt.messages(summary=summary, persona=p, n=n)} for i, p in enumerate(s.personas)]
    schema = pa.schema([("id", pa.string()), ("messages", MESSAGES)])
    out = collect(run_llm(run, rec, to_dataset(rows, schema), run.cfg.teacher, "global_questions", output_model=GlobalQuestionsOut))
    questions = []
    for r in sorted(out.to_pylist(), key=lambda r: r["id"]):
        if r.get("error") or not r.get("parsed"):
            continue  # run_llm counted it by error kind
        questions += [q.strip() for q in GlobalQuestionsOut.model_validate_json(r["parsed"]).questions[:n] if q.strip()]
    return questions[: s.global_questions]


# ---- unanswerable -----------------------------------------------------------------------
UNANSWERABLE_SCHEMA = pa.schema([
    ("id", pa.string()), ("kind", pa.string()), ("question", pa.string()), ("question_source", pa.string()),
    ("answer", pa.string()), ("reasoning", pa.string()),
])


def unanswerable_questions(n: int, vocabulary: set[str], seed: int) -> list[dict]:
    """`n` questions about invented names none of whose words occur in the corpus, with refusals."""
    rows, seen = [], set()
    rng = rng_for(seed, "unanswerable")
    attempts = 0
    while len(rows) < n and attempts < 50 * (n + 1):
        attempts += 1
        kind = rng.choice(sorted(UNANSWERABLE_TEMPLATES))
        core = _invented_name(rng, kind)
        name = core + _SUFFIX[kind]
        if name in seen or any(w in vocabulary for w in words(core)):
            continue
        seen.add(name)
        q = rng.choice(UNANSWERABLE_TEMPLATES[kind]).format(name=name)
        rows.append({
            "id": question_id("unanswerable", q), "kind": "unanswerable", "question": q, "question_source": "template",
            "answer": rng.choice(REFUSALS).format(name=name),
            "reasoning": f"I searched my memory of your notes for {name} and found no mention of it, so I should not guess.",
        })
    return rows


def _invented_name(rng: random.Random, kind: str) -> str:
    def word(k: int) -> str:
        return "".join(rng.choice(_SYLLABLES) for _ in range(k)).capitalize()

    return f"{word(2)} {word(3)}" if kind == "person" else word(2 if kind == "geo" else 3)


def unanswerable_count(answerable: int, fraction: float) -> int:
    """So that unanswerable rows make up `fraction` of all rows."""
    return 0 if fraction <= 0 else round(answerable * fraction / (1 - fraction)) if fraction < 1 else answerable
