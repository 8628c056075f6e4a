"""Local rows: per chunk, a question about each entity and relationship it names, answered from that chunk.

One Ray map over the chunks table (the driver never holds the local rows):

    FocusIndex(entities, relationships)   per chunk, the entities and relationships citing it
    LocalRows(index, ...)                 a chunk batch -> its local rows
    local_rows(chunks, index, ...)        the chunks dataset -> its local rows, as plain Ray tasks

Without a teacher a row's question is a template naming the chunk's entry and its answer is
the chunk's sentences naming the focus (extractive.source_sentences). Two focuses of one chunk
that would get the same sentences make one row, not two with the same answer. Retrieval is
not part of such an answer; it only measures whether RAG would have found the source, on a
seeded sample of `recall_sample` questions. With a teacher, a row carries the prompt of the
`local_question` task; the teacher writes the question and its reasoning (or declines) and
answers.py answers it from the source chunk and what retrieval finds.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from factory.engines.task import LLMTask
from factory.synth import extractive as X
from factory.synth.questions import LOCAL, QUESTION_SCHEMA, entity_ids_by_title, pick, question_id, rng_for
from factory.synth.rows import MESSAGES
from factory.synth.templates import load_templates
from schemas import STRS

# Columns of an answered local row beside QUESTION_SCHEMA's (answers.ANSWER_FIELDS and lineage).
ANSWERED = pa.schema(list(QUESTION_SCHEMA) + [
    ("answer", pa.string()), ("reasoning", pa.string()), ("evidence", pa.string()), ("engine", pa.string()),
    ("model", pa.string()), ("prompt_hash", pa.string()), ("error", pa.string()),
    ("evidence_chunk_ids", STRS), ("retrieved_source", pa.bool_()),
])
ASKING = pa.schema(list(QUESTION_SCHEMA) + [("error", pa.string()), ("messages", MESSAGES)])


class LocalQuestionOut(BaseModel):
    declined: bool = False
    question: str = ""
    reasoning: str = ""


class WriteLocalQuestion(LLMTask):
    """A chunk and one focus it names -> the teacher's question about it and its reasoning, or "question_declined"."""

    name = "local_question"
    output_model = LocalQuestionOut
    fields = {"question": pa.string(), "question_reasoning": pa.string()}
    keep_failed = True
    lineage = False
    prompted = True  # LocalRows builds the prompt beside the chunk

    def parse(self, row: dict, reply: LocalQuestionOut) -> dict:
        if reply.declined or not reply.question.strip():
            return {"error": "question_declined"}
        return {"question": reply.question.strip(), "question_reasoning": reply.reasoning.strip() or None}


class FocusIndex:
    """Entities and relationships by the chunks they cite (GraphRAG's text_unit_ids): one focus per
    entity or relationship, shared by every chunk it cites (an entity can cite thousands).

    Held as Arrow columns and numpy arrays, not Python dicts: it is shipped to every task, and a
    dict per focus took longer to unpickle (0.6 s for 13k entities) than a task's own work on it."""

    def __init__(self, entities: pa.Table, relationships: pa.Table, descriptions: bool = True):
        """`descriptions`: keep each focus's description (the teacher reads it; without one, leaving them
        out makes the index a third the size)."""
        ids = entity_ids_by_title(entities)
        names, entity_ids, relationship_ids, notes, cited = [], [], [], [], []
        for e in entities.select(["id", "title", "description", "text_unit_ids"]).to_pylist():
            names.append([e["title"]]), entity_ids.append([e["id"]]), relationship_ids.append([])
            notes.append(e["description"]), cited.append(e["text_unit_ids"] or ())
        for r in relationships.select(["id", "source", "target", "description", "text_unit_ids"]).to_pylist():
            pair = [r["source"], r["target"]]
            names.append(pair), entity_ids.append([ids[n] for n in pair if n in ids]), relationship_ids.append([r["id"]])
            notes.append(r["description"]), cited.append(r["text_unit_ids"] or ())
        self.focuses = pa.table({"names": pa.array(names, STRS), "entity_ids": pa.array(entity_ids, STRS),
                                 "relationship_ids": pa.array(relationship_ids, STRS),
                                 "description": pa.array(notes if descriptions else [None] * len(notes), pa.string())})
        # Chunk -> its focuses in focus order (entities first), as offsets into one array.
        by_chunk: dict[str, list[int]] = {}
        for i, chunk_ids in enumerate(cited):
            for c in chunk_ids:
                by_chunk.setdefault(c, []).append(i)
        self.chunk_ids = pa.array(list(by_chunk), pa.string())
        self.offsets = np.cumsum([0, *map(len, by_chunk.values())])
        self.members = np.fromiter((i for m in by_chunk.values() for i in m), np.int64, count=int(self.offsets[-1]))

    def pairs(self) -> int:
        return len(self.members)

    def of(self, chunks: list[dict], per_chunk: int | None, seed: int) -> list[list[dict]]:
        """Per chunk, the focuses it really names (a question about it must be answerable from it),
        entities first; all of them, or a seeded `per_chunk`."""
        at = pc.fill_null(pc.index_in(pa.array([c["id"] for c in chunks], pa.string()), value_set=self.chunk_ids), -1)
        spans = [(self.offsets[a], self.offsets[a + 1]) if a >= 0 else (0, 0) for a in at.to_numpy()]
        wanted = np.unique(np.concatenate([np.empty(0, np.int64), *(self.members[lo:hi] for lo, hi in spans)]))
        records = self.focuses.take(wanted).to_pylist()
        focus = {int(i): {**r, "lowered": [n.lower() for n in r["names"]]} for i, r in zip(wanted, records)}
        out = []
        for chunk, (lo, hi) in zip(chunks, spans):
            text = chunk["text"].lower()
            found = [f for f in (focus[i] for i in self.members[lo:hi].tolist()) if all(n in text for n in f["lowered"])]
            if per_chunk is not None and len(found) > per_chunk:
                found = rng_for(seed, "local", chunk["id"]).sample(found, per_chunk)
            out.append(found)
        return out


class LocalRows:
    """A batch of chunks -> its local rows (see the module docstring). A Ray map_batches class: the
    index (and the retriever, without a teacher) load once per worker.

    teacher=False: template questions with extractive answers (ANSWERED rows). teacher=True: rows to
    ask (ASKING), with the `local_question` prompt when `teacher_questions`, else a template question.
    """

    def __init__(self, index: FocusIndex, voice: str, seed: int, per_chunk: int | None, teacher: bool,
                 teacher_questions: bool = True, retriever=None, k: int = 5, recall_sample: int = 0):
        self.index, self.voice, self.seed, self.per_chunk, self.teacher = index, voice, seed, per_chunk, teacher
        self.t = load_templates(voice)
        self.retriever, self.k = retriever, k
        # Share of questions whose retrieval is measured: a seeded sample by row id.
        self.recall_rate = min(1.0, recall_sample / max(1, index.pairs()))
        self.prompt = WriteLocalQuestion().prompt if teacher and teacher_questions else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        chunks = batch.select(["id", "text", "title", "date"]).to_pylist()
        for chunk, focuses in zip(chunks, self.index.of(chunks, self.per_chunk, self.seed)):
            if not focuses:
                continue
            chunk["where"] = self.t.where.of(chunk["title"], chunk["date"])
            chunk["where_answer"] = self.t.phrases.where_answer.of(chunk["title"], chunk["date"])
            rows += self._asks(chunk, focuses) if self.teacher else self._answered(chunk, focuses)
        if self.teacher:
            return pa.Table.from_pylist(rows, schema=ASKING)
        self._measure_retrieval(rows)
        return pa.Table.from_pylist(rows, schema=ANSWERED)

    def _base(self, chunk: dict, focus: dict, question: str | None, source: str) -> dict:
        return {"id": question_id("local", question, chunk["id"], *focus["entity_ids"], "|", *focus["relationship_ids"]),
                "kind": "local", "task": LOCAL, "question": question, "question_source": source,
                "names": focus["names"], "description": focus["description"] if self.teacher else None,
                "entity_ids": focus["entity_ids"], "relationship_ids": focus["relationship_ids"],
                "text_unit_ids": [chunk["id"]], "source_chunk_id": chunk["id"], "where": chunk["where_answer"]}

    def template_question(self, chunk: dict, names: list[str]) -> str:
        if len(names) == 2:
            return pick(self.t.local["relationship"], self.seed, "local-q", chunk["id"], *names).format(
                a=names[0], b=names[1], where=chunk["where"])
        return pick(self.t.local["entity"], self.seed, "local-q", chunk["id"], *names).format(name=names[0], where=chunk["where"])

    def _asks(self, chunk: dict, focuses: list[dict]) -> list[dict]:
        if self.prompt is None:
            return [self._base(chunk, f, self.template_question(chunk, f["names"]), "template") for f in focuses]
        return [{**self._base(chunk, f, None, "llm"), "messages": self.prompt.messages(
            where=chunk["where"], text=chunk["text"], focus=" and ".join(f["names"]),
            description=(f["description"] or "(none)")[:600], question_style=self.t.question_style)} for f in focuses]

    def _answered(self, chunk: dict, focuses: list[dict]) -> list[dict]:
        rows, seen = [], set()
        sents = X.Sentences(chunk["text"])
        for f in focuses:
            quoted = tuple(sents.naming(f["lowered"]))
            if quoted in seen:
                continue  # another focus of this chunk gets these very sentences: one row says them
            seen.add(quoted)
            row = self._base(chunk, f, self.template_question(chunk, f["names"]), "template")
            answer = " ".join(X.voiced(s, self.voice) for s in quoted) or None
            reasoning = self.t.phrases.local_reasoning.format(
                focus=" and ".join(f["names"]), where_answer=row["where"], quotes=" ".join(f'"{s}"' for s in quoted))
            rows.append({**row, "answer": answer, "reasoning": reasoning if answer else None, "evidence": chunk["text"],
                         "engine": "none", "error": None if answer else "no_evidence",
                         "evidence_chunk_ids": [chunk["id"]], "retrieved_source": None})
        return rows

    def _measure_retrieval(self, rows: list[dict]) -> None:
        sample = [r for r in rows if int(r["id"][:8], 16) < self.recall_rate * 0x100000000]
        if not sample or self.retriever is None:
            return
        for r, hits in zip(sample, self.retriever.search([r["question"] for r in sample], self.k)):
            r["retrieved_source"] = r["source_chunk_id"] in {c for c, _ in hits}


def local_rows(chunks, index: FocusIndex, batch_chunks: int, **kwargs):
    """The chunks dataset -> its local rows: LocalRows as plain Ray tasks, `batch_chunks` chunks each.
    Tasks, not an actor pool: the next map (the scores) fuses into them, every CPU runs both, and
    no actor holds a CPU while the next step waits for one. The index travels once, by reference."""
    import ray

    shared = [ray.put(index)]
    return chunks.map_batches(_local_block, fn_kwargs={"shared": shared, **kwargs}, batch_format="pyarrow",
                              batch_size=batch_chunks)


def _local_block(batch: pa.Table, shared: list, **kwargs) -> pa.Table:
    import ray

    return LocalRows(ray.get(shared[0]), **kwargs)(batch)


def written_questions(run, rec, asks, teacher):
    """The teacher's local questions for rows of `LocalRows(teacher=True)`; a declined or failed call
    leaves the row with `error` set ("question_declined", or the engine's kind), counted later."""
    return WriteLocalQuestion().run(run, rec, asks, teacher)
