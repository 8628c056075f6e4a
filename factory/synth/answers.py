"""Answers written the way RAG and GraphRAG would answer, with the teacher or extractively.

Public API (the evaluation job reuses answer_global). `engine` is an EngineConfig; None or
`engine: none` takes the extractive no-LLM path (extractive.py). Both functions take a Ray
Dataset of questions and return one with these columns added:

    answer (str | null: null when no answer could be made; see `error`), reasoning (str | null),
    evidence (str: the text the answer must be supported by), engine, model, prompt_hash,
    error (str | null)

answer_from_chunks(run, rec, questions, retriever, engine, voice, *, k=5) -> Dataset
    Rows of questions.QUESTION_SCHEMA, answered on one actor pool that holds `retriever`, by `task`:
    - describe: the template question's answer is the subject's description (the authors' pair).
    - local: the source chunk answers. The top-k chunks retrieved for the question are recorded
      (retrieved_source: whether the source was among them) and, with a teacher, shown beside the
      source chunk, the focus's description and the question writer's reasoning, as RAG would see
      them. Without one, the answer is the source's sentences naming the focus. The evidence is the
      source chunk alone: an answer it does not support is dropped later (quality.py).
    - entity_qa / relationship_qa (teacher only): the teacher writes a question and a long chain of
      thought over the description and up to `max_source_chunks` source chunks.
    Adds evidence_chunk_ids (list[str]) and retrieved_source (bool | null).

answer_global(run, rec, questions, reports, engine, *, level=0, batch_tokens=4000, voice="reference",
              title_types=None) -> Dataset
    GraphRAG global search per question: map over the community reports of `level` (or of the row's
    `scope`) in batches of at most `batch_tokens` estimated tokens -> key points scored 0-100 ->
    zeros dropped, the rest sorted -> one reduced answer. Without a teacher the map scores findings
    by the row's `cues`/`types` (templates) and its own words. Adds community_ids (list[str]).
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field, field_validator

from factory.config import EngineConfig
from factory.engines import enabled
from factory.engines.task import LLMTask
from factory.pipeline import Run, StageRecord
from factory.synth import extractive as X
from factory.synth.questions import DESCRIBE, ENTITY_QA, LOCAL, RELATIONSHIP_QA
from factory.synth.retrieval import Retriever
from factory.synth.rows import MESSAGES, apply_rows, collect, map_rows, to_dataset
from factory.synth.templates import load_templates
from factory.text import estimate_tokens
from schemas import STRS

ANSWER_FIELDS = {
    "answer": pa.string(),
    "reasoning": pa.string(),
    "evidence": pa.string(),
    "engine": pa.string(),
    "model": pa.string(),
    "prompt_hash": pa.string(),
    "error": pa.string(),
}
REFUSED = "refused"


class LocalAnswerOut(BaseModel):
    answerable: bool = True
    reasoning: str = ""
    answer: str = ""


class SubjectQAOut(BaseModel):
    question: str
    reasoning: str = ""
    answer: str


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


class Answer(LLMTask):
    """A prompted row -> the teacher's answer and reasoning (and, for entity_qa and relationship_qa, the
    question it wrote); a declared refusal becomes error "refused", an empty answer "empty_answer"."""

    fields = {"question": pa.string(), "answer": pa.string(), "reasoning": pa.string()}
    keep_failed = True
    prompted = True  # _Prompter and answer_global build the prompt beside the retriever and the key points

    def __init__(self, name: str, output_model: type[BaseModel]):
        self.name, self.output_model = name, output_model

    def parse(self, row: dict, reply: BaseModel) -> dict:
        if getattr(reply, "answerable", True) is False:
            return {"error": f"{REFUSED}: the teacher found no answer in the source"}
        out = {"answer": reply.answer.strip() or None, "reasoning": reply.reasoning.strip() or None}
        if "question" in self.output_model.model_fields:
            out["question"] = reply.question.strip() or None
        return out if out["answer"] else {**out, "error": "empty_answer"}


# The teacher's task (prompt file and call-cache folder) per answering task.
ANSWER_TASKS = {LOCAL: Answer("local_answer", LocalAnswerOut), ENTITY_QA: Answer("entity_qa", SubjectQAOut),
                RELATIONSHIP_QA: Answer("relationship_qa", SubjectQAOut)}
GLOBAL_REDUCE = Answer("global_reduce", AnswerOut)
POINT = pa.struct([("description", pa.string()), ("score", pa.int64()), ("reports", pa.list_(pa.int64()))])


class GlobalMap(LLMTask):
    """A question and one batch of community reports -> key points scored 0-100. Citations must name
    reports of this batch; an uncited point stands on the whole batch."""

    name = "global_map"
    output_model = MapOut
    fields = {"points": pa.list_(POINT)}
    lineage = False
    drop = ("question", "reports")

    def parse(self, row: dict, reply: MapOut) -> dict:
        batch = json.loads(row["batch"])
        return {"points": [{**p.model_dump(), "reports": [c for c in p.reports if c in batch] or batch} for p in reply.points]}


# ---- local, entity, relationship: answers from chunks --------------------------------------------
def describe_rows(questions, voice: str):
    """Template questions answered by the subject's description (the authors' short pair): a plain map."""
    fields = {"evidence_chunk_ids": STRS, "retrieved_source": pa.bool_(), **ANSWER_FIELDS}

    def describe(row: dict) -> dict:
        description = row.get("description") or ""
        answer = X.voiced(X.describe(description), voice) if description.strip() else None
        return {"evidence_chunk_ids": row.get("text_unit_ids") or [], "retrieved_source": None, "evidence": description,
                **extracted(answer, None, "no_description")}

    return map_rows(questions, describe, fields)


def answer_from_chunks(run: Run, rec: StageRecord, questions, retriever: Retriever, engine: EngineConfig, voice: str, *,
                       k: int = 5):
    """The teacher's answers to local rows and its questions + chains of thought about subjects (see the
    module docstring). One actor pool holds the retriever for every task; rows that already failed
    (a declined question) pass through unanswered."""
    import ray.data

    from factory.cluster import cpu_actors

    prompted = questions.map_batches(
        _Prompter,
        fn_constructor_kwargs={"retriever": retriever, "k": k, "voice": voice},
        compute=ray.data.ActorPoolStrategy(size=cpu_actors(run.cfg)),
        batch_format="pyarrow",
        batch_size=512,
    ).materialize()
    # Each task has its own prompt, so its own call-cache folder and stats in the engine layer.
    asked = collect(prompted.select_columns(["task", "error"]))
    parts = [prompted.map_batches(_where_task, fn_kwargs={"task": None}, batch_format="pyarrow")]
    for task, answering in ANSWER_TASKS.items():
        if asked.num_rows and pc.sum(pc.and_kleene(pc.equal(asked.column("task"), task), pc.is_null(asked.column("error")))).as_py():
            rows = prompted.map_batches(_where_task, fn_kwargs={"task": task}, batch_format="pyarrow")
            parts.append(answering.run(run, rec, rows, engine))
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def _where_task(batch: pa.Table, task: str | None) -> pa.Table:
    """The rows to send for `task`, or (None) the rows that failed before they could be asked."""
    failed = pc.is_valid(batch.column("error"))
    keep = failed if task is None else pc.and_(pc.invert(failed), pc.equal(batch.column("task"), task))
    out = batch.filter(keep)
    return out.drop_columns(["messages"]) if task is None else out


class _Prompter:
    """Per row, the teacher's prompt and the evidence its answer must be supported by."""

    def __init__(self, retriever: Retriever, k: int, voice: str):
        self.retriever, self.k = retriever, k
        self.t = load_templates(voice)
        self.prompts = {task: answering.prompt for task, answering in ANSWER_TASKS.items()}
        self.fields = {"evidence_chunk_ids": STRS, "retrieved_source": pa.bool_(), **ANSWER_FIELDS, "messages": MESSAGES}

    def __call__(self, batch: pa.Table) -> pa.Table:
        if "error" not in batch.column_names:
            batch = batch.append_column("error", pa.nulls(batch.num_rows, pa.string()))
        tasks, errors = batch.column("task").to_pylist(), batch.column("error").to_pylist()
        local = [q for q, task, e in zip(batch.column("question").to_pylist(), tasks, errors) if task == LOCAL and not e]
        hits = iter(self.retriever.search(local, self.k))

        def prompt(row: dict) -> dict:
            if row["error"]:
                return {"error": row["error"], "evidence_chunk_ids": row.get("text_unit_ids") or []}
            if row["task"] == LOCAL:
                return self._local(row, [cid for cid, _ in next(hits)])
            return self._subject_qa(row)

        return apply_rows(batch, prompt, self.fields)

    def _passage(self, chunk_id: str, n: int | None = None) -> str:
        """A passage as a prompt shows it: its document's title and date, never its id."""
        label = self.retriever.label(chunk_id)
        head = f"Passage {n}" if n is not None else "Passage"
        return f"{head}{f' ({label})' if label else ''}:\n{self.retriever.text(chunk_id)}"

    def _local(self, row: dict, ids: list[str]) -> dict:
        source = row["source_chunk_id"]
        others = [c for c in ids if c != source]
        context = "\n\n".join(self._passage(c, i + 1) for i, c in enumerate(others)) or "(none)"
        return {"retrieved_source": source in ids, "evidence": self.retriever.text(source) if self.retriever.has(source) else "",
                "evidence_chunk_ids": [source] + others, "messages": self.prompts[LOCAL].messages(
                    question=row["question"], question_reasoning=row.get("question_reasoning") or "(none)",
                    source=self._passage(source), focus=" and ".join(row["names"]),
                    description=row.get("description") or "(none)", context=context, answer_style=self.t.answer_style)}

    def _subject_qa(self, row: dict) -> dict:
        ids = [c for c in row.get("text_unit_ids") or [] if self.retriever.has(c)]
        description = row.get("description") or ""
        return {"evidence_chunk_ids": ids, "retrieved_source": None,
                "evidence": "\n\n".join([description] + [self.retriever.text(c) for c in ids]),
                "messages": self.prompts[row["task"]].messages(
                    name=" and ".join(row["names"]), kind=row.get("entity_type") or row["kind"], description=description or "(none)",
                    sources="\n\n".join(self._passage(c, i + 1) for i, c in enumerate(ids)) or "(none)",
                    question_style=self.t.question_style, answer_style=self.t.answer_style)}


def extracted(answer: str | None, reasoning: str | None, missing: str = "no_evidence") -> dict:
    return {"answer": answer, "reasoning": reasoning, "engine": "none", "model": None, "prompt_hash": None,
            "error": None if answer else missing}


# ---- global: map-reduce over community reports ------------------------------------------------
def answer_global(run: Run, rec: StageRecord, questions, reports: pa.Table, engine: EngineConfig | None, *,
                  level: int | None = 0, batch_tokens: int = 4000, voice: str = "reference",
                  title_types: dict[str, str] | None = None):
    import ray.data

    llm = enabled(engine)
    t = load_templates(voice)
    qtable = collect(questions)
    report_rows = [_report(r) for r in reports.to_pylist()]
    titles = X.TitleTypes(title_types or {})
    findings: dict[int, list[X.Finding]] = {}  # filled as pools need them: most questions share one pool

    def findings_of(r: dict) -> list[X.Finding]:
        if r["community"] not in findings:
            findings[r["community"]] = X.report_findings(r, titles)
        return findings[r["community"]]

    def pool_of(q: dict) -> list[dict]:
        scope = set(q.get("scope") or [])
        return [r for r in report_rows if (str(r["community"]) in scope if scope else level is None or r["level"] == level)]

    qrows = qtable.to_pylist()
    if llm:
        points_by_q = _llm_map(run, rec, qrows, pool_of, engine, batch_tokens)
    else:
        points_by_q = {q["id"]: _extract_map(q, pool_of(q), findings_of) for q in qrows}

    schema = qtable.schema
    for name, type_ in {"community_ids": STRS, **ANSWER_FIELDS}.items():
        if schema.get_field_index(name) < 0:
            schema = schema.append(pa.field(name, type_))
    done, todo = [], []
    for q in qrows:
        points = select_points(points_by_q.get(q["id"], []), batch_tokens)
        row = {**q, "community_ids": [str(c) for c in sorted({c for p in points for c in p["reports"]})],
               "evidence": "\n".join(p["description"] for p in points)}
        if not points:
            done.append({**row, **extracted(None, None, "no_key_points")})
        elif llm:
            todo.append({**row, "messages": GLOBAL_REDUCE.prompt.messages(
                question=row["question"], points=format_points(points), answer_style=t.answer_style)})
        else:
            pool = pool_of(q)
            intro = t.phrases.community_intro.format(title=pool[0]["title"]) if q.get("scope") and len(pool) == 1 \
                else t.phrases.global_intro
            answer, reasoning = X.reduce_points(points, voice, intro, t.phrases.global_reasoning, len(pool))
            done.append({**row, **extracted(answer, reasoning)})
    out = pa.Table.from_pylist(done, schema=schema)
    if todo:
        ask_schema = pa.schema([f for f in schema if f.name not in ANSWER_FIELDS or f.name == "evidence"] + [pa.field("messages", MESSAGES)])
        asked = collect(GLOBAL_REDUCE.run(run, rec, to_dataset(todo, ask_schema), engine))
        out = pa.concat_tables([out, asked.select(out.column_names).cast(out.schema)])
    return ray.data.from_arrow(out)


def _extract_map(q: dict, pool: list[dict], findings_of) -> list[dict]:
    """No-LLM map: every finding of the pool as a key point for the question (extractive.finding_point)."""
    terms, wanted = X.question_terms(q["question"], q.get("cues")), frozenset(q.get("types") or ())
    points = (X.finding_point(f, terms, wanted) for r in pool for f in findings_of(r))
    return X.distinct_points([p for p in points if p])


def _llm_map(run: Run, rec: StageRecord, qrows: list[dict], pool_of, engine: EngineConfig, batch_tokens: int) -> dict[str, list[dict]]:
    """Key points of each (question, report batch) from the teacher; failed calls add no points
    (run_llm counts them in stats.llm.global_map)."""
    rows = [{"id": f"{q['id']}#{b}", "qid": q["id"], "batch": json.dumps(sorted(r["community"] for r in batch)),
             "question": q["question"], "reports": format_reports(batch)}
            for q in qrows for b, batch in enumerate(pack_reports(pool_of(q), batch_tokens))]
    points_by_q: dict[str, list[dict]] = {q["id"]: [] for q in qrows}
    for r in sorted(GlobalMap().run_rows(run, rec, rows, engine), key=lambda r: r["id"]):
        points_by_q[r["qid"]] += r["points"]
    return points_by_q


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
        lines = [f"Report {r['community']}: {r['title']} (importance {r['rank']:g}/10)", r["summary"]]
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


def select_points(points: list[dict], budget: int) -> list[dict]:
    """The best-scored points (zeros dropped) within `budget` estimated tokens, at most MAX_POINTS."""
    kept = sorted((p for p in points if p["score"] > 0), key=lambda p: (-p["score"], p["description"]))
    out, used = [], 0
    for p in kept[: X.MAX_POINTS]:
        used += estimate_tokens(p["description"])
        if out and used > budget:
            break
        out.append(p)
    return out


def format_points(points: list[dict]) -> str:
    """Key points as the reduce prompt shows them: importance, no report numbers to copy."""
    return "\n".join(f"- (importance {p['score']}) {p['description']}" for p in points)
