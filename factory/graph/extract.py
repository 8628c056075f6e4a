"""Per-chunk extraction on Ray Data: the teacher LLM (with gleaning) or the rules.

Both paths return one table of per-chunk rows (EXTRACTION) that merge reads
without caring which extractor ran. LLM rows whose output could not be parsed
(or whose call failed) keep their `error` and contribute nothing; the caller
counts them.
"""

from __future__ import annotations


import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field, field_validator

from factory.engines.task import LLMTask
from factory.graph.rules import extract_rules
from factory.pipeline import Run, StageRecord
from schemas import MESSAGE

ENTITY = pa.struct([("title", pa.string()), ("type", pa.string()), ("description", pa.string()), ("initial_only", pa.bool_())])
RELATIONSHIP = pa.struct([("source", pa.string()), ("target", pa.string()), ("description", pa.string()), ("weight", pa.float64())])
EXTRACTION = pa.schema([
    ("chunk_id", pa.string()),
    ("entities", pa.list_(ENTITY)),
    ("relationships", pa.list_(RELATIONSHIP)),
    ("error", pa.string()),
    # Rules only: the chunk's lower-case words, so merge can tell common words from names corpus-wide.
    ("lowercase_words", pa.list_(pa.string())),
])


# What a gleaning round needs of the round before: the conversation sent and the reply.
_LAST = pa.schema([("id", pa.string()), ("messages", pa.list_(MESSAGE)), ("generated_text", pa.string()), ("error", pa.string())])


class ExtractedEntity(BaseModel):
    title: str
    type: str = ""
    description: str = ""


class ExtractedRelationship(BaseModel):
    source: str
    target: str
    description: str = ""
    strength: float = 1.0

    @field_validator("strength", mode="before")
    @classmethod
    def _clamp(cls, v: object) -> float:
        # A model that says 0 or 12 still meant "weak" or "strong": clamp instead of rejecting the chunk.
        try:
            return min(10.0, max(1.0, float(v)))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return 1.0


class Extraction(BaseModel):
    entities: list[ExtractedEntity] = Field(default_factory=list)
    relationships: list[ExtractedRelationship] = Field(default_factory=list)


def _rules_batch(batch: pa.Table, entity_types: list[str], noun_phrases: bool) -> pa.Table:
    rows = {"chunk_id": [], "entities": [], "relationships": [], "error": [], "lowercase_words": []}
    for cid, text in zip(batch.column("id").to_pylist(), batch.column("text").to_pylist()):
        ents, rels, lower = extract_rules(text or "", entity_types, noun_phrases)
        rows["chunk_id"].append(cid)
        rows["entities"].append(ents)
        rows["relationships"].append(rels)
        rows["error"].append(None)
        rows["lowercase_words"].append(lower)
    return pa.table(rows, schema=EXTRACTION)


class ExtractGraph(LLMTask):
    """A chunk -> its entities and relationships; a failed chunk keeps its `error` and contributes nothing."""

    name = "extract_graph"
    output_model = Extraction
    fields = {"entities": pa.list_(ENTITY), "relationships": pa.list_(RELATIONSHIP)}
    keep_failed = True
    lineage = False
    # Gleaning continues each conversation: the model sees its own answer and is asked for what it missed.
    keep_reply = True
    drop = ("text",)

    def __init__(self, entity_types: str):
        self.entity_types = entity_types

    def messages(self, row: dict) -> list[dict]:
        return self.prompt.messages(entity_types=self.entity_types, text=row["text"])

    def parse(self, row: dict, reply: Extraction) -> dict:
        return {
            "entities": [{"title": e.title.strip(), "type": e.type.strip().lower(), "description": e.description.strip(),
                          "initial_only": False} for e in reply.entities if e.title.strip()],
            "relationships": [{"source": r.source.strip(), "target": r.target.strip(), "description": r.description.strip(),
                               "weight": r.strength} for r in reply.relationships if r.source.strip() and r.target.strip()],
        }


class GleanGraph(ExtractGraph):
    """The conversation of the round before, continued: what did the extraction miss?"""

    name = "glean_graph"
    drop = ()

    def messages(self, row: dict) -> list[dict]:
        return row["messages"] + [{"role": "assistant", "content": row["generated_text"]},
                                  *self.prompt.messages(entity_types=self.entity_types)]


def _extraction_rows(batch: pa.Table) -> pa.Table:
    """A task's output rows -> EXTRACTION rows (ids are chunk ids)."""
    n = batch.num_rows
    return pa.table({"chunk_id": batch.column("id"), "entities": batch.column("entities"),
                     "relationships": batch.column("relationships"), "error": batch.column("error"),
                     "lowercase_words": pa.nulls(n, pa.list_(pa.string()))}, schema=EXTRACTION)


def _collect(ds, schema: pa.Schema = EXTRACTION) -> pa.Table:
    """A (small enough) Ray Dataset as one Arrow table on the driver."""
    import ray

    parts = [p for p in ray.get(ds.to_arrow_refs()) if p.num_rows]
    return pa.concat_tables(parts).select(schema.names) if parts else schema.empty_table()


def extract_graph(run: Run, rec: StageRecord, entity_types: list[str]) -> pa.Table:
    """EXTRACTION rows for every chunk: one row per chunk and per gleaning round (LLM)."""
    chunks = run.read_ray("chunks").select_columns(["id", "text"])
    if not run.cfg.teacher.enabled:
        import ray

        # A block per CPU: a chunks table of one Parquet row group reads as one block, which would run
        # the rules on one CPU. A split-based repartition (no shuffle) is cheap next to the rules.
        chunks = chunks.repartition(int(ray.cluster_resources().get("CPU", 1)))
        return _collect(chunks.map_batches(
            _rules_batch, batch_format="pyarrow", batch_size=64,
            fn_kwargs={"entity_types": entity_types, "noun_phrases": run.cfg.graph.noun_phrases},
        ))
    return _extract_llm(run, rec, chunks, entity_types)


def _extract_llm(run: Run, rec: StageRecord, chunks, entity_types: list[str]) -> pa.Table:
    import ray

    g, teacher = run.cfg.graph, run.cfg.teacher
    types = ", ".join(entity_types)
    out = ExtractGraph(types).run(run, rec, chunks, teacher).materialize()
    results = [_collect(out.map_batches(_extraction_rows, batch_format="pyarrow"))]
    for _ in range(g.gleaning):
        last = _collect(out, _LAST)
        ok = last.filter(pc.and_(pc.is_null(last.column("error")), pc.invert(pc.equal(last.column("generated_text"), ""))))
        if not ok.num_rows:
            break
        out = GleanGraph(types).run(run, rec, ray.data.from_arrow(ok.select(["id", "messages", "generated_text"])),
                                    teacher).materialize()
        results.append(_collect(out.map_batches(_extraction_rows, batch_format="pyarrow")))
    return pa.concat_tables(results)
