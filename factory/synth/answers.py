"""Answers written the way RAG and GraphRAG would answer, with an LLM or extractively.

Public API (the evaluation job reuses it). `engine` is an EngineConfig; None
or `engine: none` takes the extractive no-LLM path. Every function takes a Ray
Dataset of questions (`id`, `question`, other columns pass through) and returns
a Ray Dataset with these columns added:

    answer (str | null: null when no answer could be made; see `error`),
    reasoning (str | null), evidence (str: the text the answer rests on),
    engine, model, prompt_hash (null on the extractive path), error (str | null)

answer_from_chunks(run, rec, questions, retriever, engine, *, k=5, max_source_chunks=30) -> Dataset
    One pass over questions of three kinds (the `kind` column), on one actor pool
    that holds `retriever`; adds evidence_chunk_ids (list[str]) and
    retrieved_source (bool | null).
    - local: naive RAG. The top-k chunks that `retriever` finds FOR THE QUESTION,
      then an answer from them (extractive: the evidence sentences that best match
      the question). retrieved_source: `source_chunk_id` among them (null without one).
    - entity / relationship: a long chain of thought from the description plus up
      to `max_source_chunks` of its source chunks. Rows carry `names` (list[str]:
      the entity titles to look for), `description` and `text_unit_ids`.

answer_global(run, rec, questions, reports, engine, *, level=0, batch_tokens=4000) -> Dataset
    GraphRAG global search: map over the community reports of `level` in
    batches of at most `batch_tokens` estimated tokens → key points scored
    0-100 → zeros dropped, the rest sorted → one reduced answer citing
    communities. An optional `scope` column (list of community numbers as
    strings) restricts a question to those reports at any level. Adds
    community_ids (list[str]: community numbers the answer used).
"""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field, field_validator

from factory.config import EngineConfig
from factory.pipeline import Run, StageRecord
from factory.prompts import load as load_prompt
from factory.synth.retrieval import Retriever
from factory.synth.rows import MESSAGES, apply_rows, collect, from_table, map_rows, to_dataset
from factory.synth.text import content_words, estimate_tokens, sentence_words
from schemas import STRS

# Extractive answers quote at most this many sentences.
MAX_SENTENCES = 3
# Reduce prompts and extractive reduces use at most this many key points.
MAX_POINTS = 12
# Words that frame a corpus-wide question without naming its topic; they match no finding.
GLOBAL_FRAMING = frozenset(
    """main theme themes recurring overall change changed changes changing time times across corpus whole pattern
    patterns trend trends big picture important common biggest key period months weeks year life memory evolve
    evolved compare compared comparison different differ most least""".split()
)

ANSWER_FIELDS = {
    "answer": pa.string(),
    "reasoning": pa.string(),
    "evidence": pa.string(),
    "engine": pa.string(),
    "model": pa.string(),
    "prompt_hash": pa.string(),
    "error": pa.string(),
}


class AnswerOut(BaseModel):
    reasoning: str = ""
    answer: str


class KeyPoint(BaseModel):
    description: str
    score: int = 0
    reports: list[int] = Field(default_factory=list)

    @field_validator("score", mode="before")
    @classmethod
    def _clamp(cls, v):
        return max(0, min(100, int(float(v))))


class MapOut(BaseModel):
    points: list[KeyPoint] = Field(default_factory=list)


def llm_enabled(engine: EngineConfig | None) -> bool:
    return engine is not None and engine.engine != "none"


# ---- local, entity, relationship: answers from chunks --------------------------------------
# The prompt (and call-cache task) of each kind answered from chunks.
CHUNK_TASKS = {"local": "local_answer", "entity": "entity_answer", "relationship": "relationship_answer"}


def answer_from_chunks(run: Run, rec: StageRecord, questions, retriever: Retriever, engine: EngineConfig | None, *,
                       k: int = 5, max_source_chunks: int = 30):
    """See the module docstring. One actor pool for every kind: starting a pool and shipping
    it the retriever costs seconds, more than answering a few hundred questions."""
    import ray.data

    from factory.cluster import cpu_actors

    llm = llm_enabled(engine)
    ds = questions.map_batches(
        _Answerer,
        fn_constructor_kwargs={"retriever": retriever, "llm": llm, "k": k, "max_source_chunks": max_source_chunks},
        compute=ray.data.ActorPoolStrategy(size=cpu_actors(run.cfg)),
        batch_format="pyarrow",
        batch_size=256,
    )
    if not llm:
        return ds
    # Each kind has its own prompt, so its own task in the engine layer (stats and call cache).
    prompted = collect(ds)
    kinds = prompted.column("kind")
    parts = [_llm_answers(run, rec, from_table(prompted.filter(pc.equal(kinds, kind))), engine, task)
             for kind, task in CHUNK_TASKS.items() if pc.any(pc.equal(kinds, kind)).as_py()]
    return parts[0].union(*parts[1:])


class _Answerer:
    """Per row: the evidence chunks (retrieved for the question, or the subject's sources),
    then the prompt (LLM path) or the extractive answer."""

    def __init__(self, retriever: Retriever, llm: bool, k: int = 5, max_source_chunks: int = 30):
        self.retriever, self.llm, self.k, self.max_source_chunks = retriever, llm, k, max_source_chunks
        self.prompts = {kind: load_prompt(task) for kind, task in CHUNK_TASKS.items()}
        self.fields = {"evidence_chunk_ids": STRS, "retrieved_source": pa.bool_(), **_fields(llm)}

    def __call__(self, batch: pa.Table) -> pa.Table:
        local = [str(q) for q, kind in zip(batch.column("question").to_pylist(), batch.column("kind").to_pylist())
                 if kind == "local"]
        hits = iter(self.retriever.search(local, self.k))

        def answer(row: dict) -> dict:
            if row["kind"] == "local":
                return self._local(row, [cid for cid, _ in next(hits)])
            return self._grounded(row)

        return apply_rows(batch, answer, self.fields)

    def _passages(self, ids: list[str]) -> list[tuple[str, str]]:
        return [(self.retriever.label(c), self.retriever.text(c)) for c in ids]

    def _local(self, row: dict, ids: list[str]) -> dict:
        passages = self._passages(ids)
        source = row.get("source_chunk_id")
        out = {"evidence_chunk_ids": ids, "retrieved_source": (source in ids) if source else None,
               "evidence": "\n\n".join(t for _, t in passages)}
        if self.llm:
            return {**out, "messages": self.prompts["local"].messages(question=row["question"], context=format_passages(ids, passages))}
        return {**out, **_extracted(*extract_answer(row["question"], passages))}

    def _grounded(self, row: dict) -> dict:
        ids = [c for c in (row.get("text_unit_ids") or []) if self.retriever.has(c)][: self.max_source_chunks]
        passages = self._passages(ids)
        description = row.get("description") or ""
        out = {"evidence_chunk_ids": ids, "evidence": "\n\n".join([description] + [t for _, t in passages])}
        if self.llm:
            return {**out, "messages": self.prompts[row["kind"]].messages(
                question=row["question"], name=" and ".join(row["names"]), description=description,
                sources=format_passages(ids, passages),
            )}
        return {**out, **_extracted(*extract_grounded(row["names"], description, passages))}


def format_passages(ids: list[str], passages: list[tuple[str, str]]) -> str:
    return "\n\n".join(f"[chunk {cid}] {label}\n{text}" for cid, (label, text) in zip(ids, passages))


def extract_answer(question: str, passages: list[tuple[str, str]], max_sentences: int = MAX_SENTENCES) -> tuple[str | None, str | None]:
    """The evidence sentences sharing the most content words with the question, in reading order."""
    q = set(content_words(question))
    # Words naming passages (titles, dates) locate an entry but answer nothing: a sentence
    # must match the question's other words, and among equals the entry the question names wins.
    label_words = [set(content_words(label)) for label, _ in passages]
    topic = q.difference(*label_words)
    scored = []
    for rank, (label, text) in enumerate(passages):
        terms = topic or q - label_words[rank]
        named = len(q & label_words[rank])
        for pos, (sent, sent_words) in enumerate(sentence_words(text)):
            overlap = len(terms & sent_words)
            if overlap:
                scored.append((-overlap, -named, rank, pos, label, sent))
    picked = sorted(sorted(scored)[:max_sentences], key=lambda s: (s[2], s[3]))
    if not picked:
        return None, None
    by_label: dict[str, list[str]] = {}
    for *_, label, sent in picked:
        by_label.setdefault(label, []).append(sent)
    answer = " ".join(f"In {label}: {' '.join(sents)}" if label else " ".join(sents) for label, sents in by_label.items())
    about = ", ".join(sorted(topic or q)[:8])
    quoted = " ".join(f'{label or "A passage"} says: "{s}"' for *_, label, s in picked)
    reasoning = f"The question is about {about}. Searching my memory for these, {quoted} These passages answer it."
    return answer, reasoning


# ---- entity / relationship: description + source chunks, long chain of thought ----------
def extract_grounded(names: list[str], description: str, passages: list[tuple[str, str]]) -> tuple[str | None, str | None]:
    """Restate the description and the source sentences naming the subject, then conclude."""
    pattern = re.compile("|".join(re.escape(n) for n in names if n), re.IGNORECASE) if any(names) else None
    quotes = []
    for label, text in passages:
        hits = [s for s, _ in sentence_words(text) if pattern and pattern.search(s)]
        if hits:
            quotes.append((label, hits[0]))
    if not description and not quotes:
        return None, None
    subject = " and ".join(names)
    description = " ".join(description.split())
    steps = []
    if description:
        steps.append(f"What I hold about {subject}: {description}")
    steps += [f'{label or "One passage"} says: "{s}"' for label, s in quotes]
    reasoning = " ".join(steps) + f" Putting these {len(steps)} pieces together gives the picture of {subject}."
    extra = [s for _, s in quotes if s not in description][:MAX_SENTENCES]
    answer = " ".join(([description] if description else []) + extra)
    return answer, reasoning


# ---- global: map-reduce over community reports -------------------------------------------
def answer_global(run: Run, rec: StageRecord, questions, reports: pa.Table, engine: EngineConfig | None, *, level: int | None = 0, batch_tokens: int = 4000):
    llm = llm_enabled(engine)
    qtable = collect(questions)
    qrows = qtable.to_pylist()
    report_rows = [_report(r) for r in reports.to_pylist()]

    # Map: one row per (question, batch of reports).
    map_rows_ = []
    for q in qrows:
        scope = set(q.get("scope") or [])
        pool = [r for r in report_rows if (str(r["community"]) in scope if scope else level is None or r["level"] == level)]
        terms = json.dumps(sorted(question_terms(q["question"], pool)))
        for b, batch in enumerate(pack_reports(pool, batch_tokens)):
            map_rows_.append({"id": f"{q['id']}#{b}", "qid": q["id"], "question": q["question"], "terms": terms, "reports": json.dumps(batch)})
    map_schema = pa.schema([("id", pa.string()), ("qid", pa.string()), ("question", pa.string()), ("terms", pa.string()), ("reports", pa.string())])
    points_by_q: dict[str, list[dict]] = {q["id"]: [] for q in qrows}
    if map_rows_:
        for qid, points in _map(run, rec, to_dataset(map_rows_, map_schema), engine):
            points_by_q[qid] += points

    # Reduce: zeros dropped, best first, within the token budget.
    schema = qtable.schema
    for name, type_ in {"community_ids": STRS, **ANSWER_FIELDS}.items():
        if schema.get_field_index(name) < 0:
            schema = schema.append(pa.field(name, type_))
    done, todo = [], []
    for q in qrows:
        points = select_points(points_by_q[q["id"]], batch_tokens)
        row = {**q, "community_ids": [str(c) for c in sorted({c for p in points for c in p["reports"]})],
               "evidence": format_points(points)}
        if not points:
            done.append({**row, **_extracted(None, None, "no_key_points")})
        elif llm:
            todo.append({**row, "messages": load_prompt("global_reduce").messages(question=row["question"], points=row["evidence"])})
        else:
            done.append({**row, **_extracted(*extract_reduce(points))})
    out = pa.Table.from_pylist(done, schema=schema)
    if todo:
        ask_schema = pa.schema([f for f in schema if f.name not in ANSWER_FIELDS or f.name == "evidence"] + [pa.field("messages", MESSAGES)])
        asked = collect(_llm_answers(run, rec, to_dataset(todo, ask_schema), engine, "global_reduce"))
        out = pa.concat_tables([out, asked.select(out.column_names).cast(out.schema)])
    import ray.data

    return ray.data.from_arrow(out)


def _map(run: Run, rec: StageRecord, mapped, engine: EngineConfig | None) -> list[tuple[str, list[dict]]]:
    """Key points of each (question, report batch): the LLM's, or the extractive ones."""
    if not llm_enabled(engine):
        fn = lambda r: {"points": json.dumps(extract_points(set(json.loads(r["terms"])), json.loads(r["reports"])))}  # noqa: E731
        out = collect(map_rows(mapped, fn, {"points": pa.string()}, drop=("reports",)))
        return [(r["qid"], json.loads(r["points"])) for r in out.to_pylist()]
    from factory.engines import run_llm

    prompt = load_prompt("global_map")
    fn = lambda r: {"messages": prompt.messages(question=r["question"], reports=format_reports(json.loads(r["reports"])))}  # noqa: E731
    out = collect(run_llm(run, rec, map_rows(mapped, fn, {"messages": MESSAGES}), engine, "global_map", output_model=MapOut))
    results = []
    for r in out.to_pylist():
        # Failed calls are counted by run_llm (stats.llm.global_map); their batch adds no points.
        if not r.get("error") and r.get("parsed"):
            batch = sorted(x["community"] for x in json.loads(r["reports"]))
            points = []
            for p in MapOut.model_validate_json(r["parsed"]).points:
                # Citations must name reports of this batch; an uncited point stands on the whole batch.
                cited = [c for c in p.reports if c in batch] or batch
                points.append({**p.model_dump(), "reports": cited})
            results.append((r["qid"], points))
    return results


def _report(r: dict) -> dict:
    findings = [f for f in (r.get("findings") or []) if f and (f.get("summary") or f.get("explanation"))]
    rank = r.get("rank")
    return {
        "community": int(r["community"]),
        "level": int(r["level"]),
        "title": r.get("title") or f"Community {r['community']}",
        "summary": r.get("summary") or "",
        "rank": 5.0 if rank is None else float(rank),
        "findings": [{"summary": f.get("summary") or "", "explanation": f.get("explanation") or ""} for f in findings],
    }


def format_reports(batch: list[dict]) -> str:
    parts = []
    for r in batch:
        lines = [f"[report {r['community']}] {r['title']} (importance {r['rank']:g}/10)", r["summary"]]
        lines += [f"- {f['summary']}: {f['explanation']}" for f in r["findings"]]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def pack_reports(reports: list[dict], budget: int) -> list[list[dict]]:
    """Reports by importance, packed into batches of at most `budget` estimated tokens
    (a report larger than the budget travels alone)."""
    batches: list[list[dict]] = []
    used = budget + 1
    for r in sorted(reports, key=lambda r: (-r["rank"], r["community"])):
        cost = estimate_tokens(format_reports([r]))
        if used + cost > budget:
            batches.append([])
            used = 0
        batches[-1].append(r)
        used += cost
    return batches


def _report_text(r: dict) -> str:
    return " ".join([r["title"], r["summary"]] + [f"{f['summary']} {f['explanation']}" for f in r["findings"]])


def question_terms(question: str, reports: list[dict]) -> set[str]:
    """The question's topic words that some report contains: framing words ("themes", "over
    time") and words no report has cannot tell one finding from another."""
    vocabulary = {w for r in reports for w in content_words(_report_text(r))}
    return (set(content_words(question)) - GLOBAL_FRAMING) & vocabulary


def extract_points(q: set[str], batch: list[dict]) -> list[dict]:
    """No-LLM map: each finding scored 0-100 by its overlap with the question's terms `q` and
    its report's importance; a finding sharing no term scores 0. A generic question (no
    terms) scores findings by importance alone."""
    points = []
    for r in batch:
        items = r["findings"] or [{"summary": r["title"], "explanation": r["summary"]}]
        for f in items:
            text = f"{f['summary']}: {f['explanation']}" if f["explanation"] else f["summary"]
            if q:
                overlap = len(q & set(content_words(f"{r['title']} {text}"))) / len(q)
                score = round(100 * (0.7 * overlap + 0.03 * r["rank"])) if overlap else 0
            else:
                score = round(10 * r["rank"])
            points.append({"description": text, "score": min(100, score), "reports": [r["community"]]})
    return points


def select_points(points: list[dict], budget: int) -> list[dict]:
    kept = sorted((p for p in points if p["score"] > 0), key=lambda p: (-p["score"], p["description"]))
    out, used = [], 0
    for p in kept[:MAX_POINTS]:
        used += estimate_tokens(p["description"])
        if out and used > budget:
            break
        out.append(p)
    return out


def format_points(points: list[dict]) -> str:
    return "\n".join(f"- (score {p['score']}) {p['description']} [Data: Reports ({', '.join(map(str, p['reports']))})]" for p in points)


def extract_reduce(points: list[dict]) -> tuple[str, str]:
    """No-LLM reduce: the strongest key points, best first, each citing its reports."""
    lines = [f"- {p['description']} [Data: Reports ({', '.join(map(str, p['reports']))})]" for p in points]
    n_reports = len({c for p in points for c in p["reports"]})
    answer = "Looking across my memory as a whole, these are the main points:\n" + "\n".join(lines)
    reasoning = (
        f"I went through the community summaries in batches and kept {len(points)} key points from "
        f"{n_reports} communities that bear on the question, strongest first: "
        + " ".join(f"({p['score']}) {p['description']}" for p in points[:3])
    )
    return answer, reasoning


# ---- shared -----------------------------------------------------------------------------
def _fields(llm: bool) -> dict[str, pa.DataType]:
    """Columns a per-row step adds: the prompt on the LLM path, the whole answer on the extractive one."""
    return {"evidence": pa.string(), "messages": MESSAGES} if llm else ANSWER_FIELDS


def _extracted(answer: str | None, reasoning: str | None, missing: str = "no_evidence") -> dict:
    return {"answer": answer, "reasoning": reasoning, "engine": "none", "model": None, "prompt_hash": None,
            "error": None if answer else missing}


def _llm_answers(run: Run, rec: StageRecord, ds, engine: EngineConfig, task: str):
    """Send rows with `messages` to the engine and turn the parsed JSON into answer/reasoning."""
    from factory.engines import run_llm

    prompt_hash = load_prompt(task).hash

    def parse(row: dict) -> dict:
        out = {"engine": row.get("engine") or engine.engine, "model": row.get("model") or engine.model,
               "prompt_hash": row.get("prompt_hash") or prompt_hash, "answer": None, "reasoning": None,
               "error": row.get("error")}
        if not out["error"] and row.get("parsed"):
            parsed = AnswerOut.model_validate_json(row["parsed"])
            out.update(answer=parsed.answer.strip() or None, reasoning=parsed.reasoning.strip() or None)
        if not out["answer"] and not out["error"]:
            out["error"] = "empty_answer"
        return out

    answered = run_llm(run, rec, ds, engine, task, output_model=AnswerOut)
    return map_rows(answered, parse, {k: v for k, v in ANSWER_FIELDS.items() if k != "evidence"},
                    drop=("messages", "generated_text", "parsed", "input_tokens", "output_tokens"))
