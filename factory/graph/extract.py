"""Per-chunk extraction on Ray Data: the teacher LLM (with gleaning) or the rules.

Both paths return one table of per-chunk rows (EXTRACTION) that merge reads
without caring which extractor ran. LLM rows whose output could not be parsed
(or whose call failed) keep their `error` and contribute nothing; the caller
counts them.
"""

from __future__ import annotations


import pyarrow as pa
from pydantic import BaseModel, Field, field_validator

from factory import prompts
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


def _parsed_batch(batch: pa.Table) -> pa.Table:
    """run_llm output rows -> EXTRACTION rows (ids are chunk ids)."""
    rows = {"chunk_id": [], "entities": [], "relationships": [], "error": []}
    parsed = batch.column("parsed").to_pylist()
    errors = batch.column("error").to_pylist()
    for cid, p, err in zip(batch.column("id").to_pylist(), parsed, errors):
        ents, rels = [], []
        if p is not None and err is None:
            data = Extraction.model_validate_json(p)
            ents = [
                {"title": e.title.strip(), "type": e.type.strip().lower(), "description": e.description.strip(),
                 "initial_only": False}
                for e in data.entities if e.title.strip()
            ]
            rels = [
                {"source": r.source.strip(), "target": r.target.strip(), "description": r.description.strip(), "weight": r.strength}
                for r in data.relationships if r.source.strip() and r.target.strip()
            ]
        rows["chunk_id"].append(cid)
        rows["entities"].append(ents)
        rows["relationships"].append(rels)
        rows["error"].append(err if err is not None else (None if p is not None else "unparseable output"))
    rows["lowercase_words"] = [None] * len(rows["chunk_id"])
    return pa.table(rows, schema=EXTRACTION)


def _collect(ds, schema: pa.Schema = EXTRACTION) -> pa.Table:
    """A (small enough) Ray Dataset as one Arrow table on the driver."""
    import ray

    parts = [p for p in ray.get(ds.to_arrow_refs()) if p.num_rows]
    return pa.concat_tables(parts).select(schema.names) if parts else schema.empty_table()


def extract_graph(run: Run, rec: StageRecord, entity_types: list[str]) -> pa.Table:
    """EXTRACTION rows for every chunk: one row per chunk and per gleaning round (LLM)."""
    chunks = run.read_ray("chunks").select_columns(["id", "text"])
    if run.cfg.teacher.engine == "none":
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

    from factory.engines import run_llm

    g, teacher = run.cfg.graph, run.cfg.teacher
    types = ", ".join(entity_types)
    first, glean = prompts.load("extract_graph"), prompts.load("glean_graph")

    def to_messages(batch: pa.Table) -> pa.Table:
        texts = batch.column("text").to_pylist()
        return pa.table({"id": batch.column("id"), "messages": [first.messages(entity_types=types, text=t) for t in texts]})

    ds = chunks.map_batches(to_messages, batch_format="pyarrow")
    out = run_llm(run, rec, ds, teacher, "extract_graph", output_model=Extraction).materialize()
    results = [_collect(out.map_batches(_parsed_batch, batch_format="pyarrow"))]
    # Gleaning continues each successful conversation: the model sees its own answer and is asked for what it missed.
    for _ in range(g.gleaning):
        last = _collect(out, _LAST).to_pylist()
        ok = [r for r in last if r["error"] is None and r["generated_text"]]
        if not ok:
            break
        convo = [
            r["messages"] + [{"role": "assistant", "content": r["generated_text"]}, *glean.messages(entity_types=types)]
            for r in ok
        ]
        ds = ray.data.from_arrow(pa.table({"id": [r["id"] for r in ok], "messages": convo}))
        out = run_llm(run, rec, ds, teacher, "glean_graph", output_model=Extraction).materialize()
        results.append(_collect(out.map_batches(_parsed_batch, batch_format="pyarrow")))
    return pa.concat_tables(results)
