"""The Parquet contracts: one Arrow schema per table the product writes.

Column names follow GraphRAG's output tables where they overlap (id, title,
text, text_unit_ids, description, community, level, ...). Every writer calls
`validate(table_name, table)`; it checks required columns, casts compatible
types, fills nullable missing columns with nulls and rejects anything else.
Bump a table's version whenever its columns change.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

STR = pa.string()
STRS = pa.list_(pa.string())
I64 = pa.int64()
F64 = pa.float64()
MESSAGE = pa.struct([("role", STR), ("content", STR)])
FINDING = pa.struct([("summary", STR), ("explanation", STR)])


@dataclass(frozen=True)
class TableSchema:
    name: str
    version: int
    schema: pa.Schema
    description: str


def _f(name: str, type_: pa.DataType, nullable: bool = True, doc: str = "") -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"doc": doc} if doc else None)


TABLES: dict[str, TableSchema] = {}


def _table(name: str, version: int, description: str, *fields: pa.Field) -> None:
    TABLES[name] = TableSchema(name, version, pa.schema(list(fields)), description)


_table(
    "documents", 1, "Normalized, deduplicated source documents.",
    _f("id", STR, False, "content hash of the normalized text"),
    _f("title", STR),
    _f("text", STR, False),
    _f("source", STR, doc="path or dataset the document came from"),
    _f("date", STR, doc="ISO date when known"),
    _f("n_chars", I64, False),
    _f("metadata", STR, doc="JSON of the remaining source fields"),
)
_table(
    "chunks", 1, "Token-aware overlapping chunks (GraphRAG: text_units).",
    _f("id", STR, False, "content hash of document id + chunk text"),
    _f("document_id", STR, False),
    _f("chunk_index", I64, False),
    _f("text", STR, False),
    _f("n_tokens", I64, False),
    _f("title", STR),
    _f("date", STR),
)
_table(
    "entities", 1, "Merged entities of the knowledge graph.",
    _f("id", STR, False),
    _f("human_readable_id", I64),
    _f("title", STR, False),
    _f("type", STR),
    _f("description", STR),
    _f("text_unit_ids", STRS),
    _f("frequency", I64),
    _f("degree", I64),
)
_table(
    "relationships", 1, "Merged relationships (one per entity pair).",
    _f("id", STR, False),
    _f("human_readable_id", I64),
    _f("source", STR, False, "entity title"),
    _f("target", STR, False, "entity title"),
    _f("description", STR),
    _f("weight", F64),
    _f("combined_degree", I64),
    _f("text_unit_ids", STRS),
)
_table(
    "communities", 1, "Hierarchical Leiden communities.",
    _f("id", STR, False),
    _f("human_readable_id", I64),
    _f("community", I64, False),
    _f("level", I64, False),
    _f("parent", I64, doc="-1 at the top level"),
    _f("children", pa.list_(I64)),
    _f("title", STR),
    _f("entity_ids", STRS),
    _f("relationship_ids", STRS),
    _f("text_unit_ids", STRS),
    _f("size", I64),
)
_table(
    "community_reports", 2, "One report per community.",
    _f("id", STR, False),
    _f("human_readable_id", I64),
    _f("community", I64, False),
    _f("level", I64, False),
    _f("title", STR),
    _f("summary", STR),
    _f("full_content", STR),
    _f("rank", F64, doc="importance rating 0-10"),
    _f("rating_explanation", STR),
    _f("findings", pa.list_(FINDING)),
    _f("size", I64),
    _f("engine", STR),
    _f("model", STR),
    _f("prompt_hash", STR),
    _f("entity_ids", STRS, doc="entities the findings cite"),
    _f("relationship_ids", STRS, doc="relationships the findings cite"),
    _f("text_unit_ids", STRS, doc="chunks the findings cite"),
)
_table(
    "qa", 2, "The training dataset: questions with RAG-principled answers.",
    _f("id", STR, False, "content hash of kind + question + provenance"),
    _f("kind", STR, False, "local | global | entity | relationship | unanswerable"),
    _f("question", STR, False),
    _f("answer", STR, False),
    _f("reasoning", STR),
    _f("messages", pa.list_(MESSAGE), False, "system/user/assistant, for conversational SFT"),
    _f("evidence_chunk_ids", STRS, doc="chunks the answer was written from"),
    _f("source_chunk_id", STR, doc="a local question's chunk"),
    _f("retrieved_source", pa.bool_(), doc="whether retrieval for the question found its source chunk"),
    _f("entity_ids", STRS),
    _f("relationship_ids", STRS),
    _f("community_ids", STRS, doc="community numbers (communities.community) a global answer drew on"),
    _f("level", I64),
    _f("question_source", STR, doc="template | llm"),
    _f("question_set", STR, doc="main | hard_global (separately written global test questions, test split only)"),
    _f("group_id", STR, doc="rows sharing a source chunk, entity set or community; a group is never split"),
    _f("engine", STR),
    _f("model", STR),
    _f("prompt_hash", STR),
    _f("groundedness", F64, doc="share of the answer's content words in its evidence"),
    _f("relevance", F64, doc="share of the answer's sentences about what the question asks"),
    _f("judge_score", F64),
    _f("split", STR, False, "train | test"),
)
_table(
    "llm_calls", 2, "Cache of every finished LLM call, keyed by a hash of engine, model, messages and sampling.",
    _f("key", STR, False),
    _f("task", STR, False),
    _f("engine", STR),
    _f("model", STR),
    _f("generated_text", STR, False),
    _f("parsed", STR, doc="JSON of the validated structured output"),
    _f("error", STR, doc="invalid_output: ... when the text did not parse; transport errors are never cached"),
    _f("input_tokens", I64),
    _f("output_tokens", I64),
    _f("finish_reason", STR),
)
_table(
    "eval_answers", 2, "Each system's answer to each held-out question (split test) or benchmark item (split benchmark).",
    _f("question_id", STR, False),
    _f("kind", STR),
    _f("system", STR, False),
    _f("question", STR),
    _f("answer", STR),
    _f("reference", STR),
    _f("token_f1", F64),
    _f("rouge_l", F64),
    _f("refused", pa.bool_()),
    _f("n_tokens", I64, doc="answer length in whitespace words, reasoning removed"),
    _f("correct", pa.bool_(), doc="benchmark items: whether the reply is right"),
    _f("error", STR),
)
_table(
    "eval_judgments", 1, "One pairwise verdict per question, system pair and criterion, judged in both orders.",
    _f("question_id", STR, False),
    _f("kind", STR),
    _f("system_a", STR, False),
    _f("system_b", STR, False),
    _f("criterion", STR, False),
    _f("winner_ab", STR, doc="A | B | tie with system_a shown as answer A"),
    _f("winner_ba", STR, doc="A | B | tie with system_b shown as answer A"),
    _f("outcome", STR, doc="a | b | tie: a side wins only when both orders agree; null on error"),
    _f("reason_ab", STR),
    _f("reason_ba", STR),
    _f("error", STR),
)
_table(
    "eval_results", 1, "Pairwise judge win rates and judge-free metrics.",
    _f("metric", STR, False, "win_rate | judge_agreement | token_f1 | rouge_l | refusal_accuracy | "
       "false_refusal_rate | answer_tokens | benchmark | benchmark_change"),
    _f("system_a", STR, False),
    _f("system_b", STR),
    _f("criterion", STR),
    _f("kind", STR),
    _f("n", I64),
    _f("wins_a", I64),
    _f("wins_b", I64),
    _f("ties", I64),
    _f("value", F64),
    _f("ci_low", F64),
    _f("ci_high", F64),
)


class SchemaError(ValueError):
    pass


def schema_of(name: str) -> pa.Schema:
    try:
        return TABLES[name].schema
    except KeyError:
        raise SchemaError(f"unknown table '{name}'") from None


def validate(name: str, table: pa.Table) -> pa.Table:
    """Return `table` conformed to the declared schema of `name` (column order, types).

    Raises SchemaError naming the table and column on a missing required column,
    an undeclared column, a null in a non-nullable column, or an impossible cast.
    """
    schema = schema_of(name)
    extra = [c for c in table.column_names if schema.get_field_index(c) < 0]
    if extra:
        raise SchemaError(f"table '{name}': undeclared columns {extra}")
    columns = []
    for field in schema:
        if field.name in table.column_names:
            col = table.column(field.name)
            if not col.type.equals(field.type):
                try:
                    col = col.cast(field.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise SchemaError(
                        f"table '{name}': column '{field.name}' is {col.type}, expected {field.type}: {exc}"
                    ) from None
        elif field.nullable:
            col = pa.nulls(table.num_rows, field.type)
        else:
            raise SchemaError(f"table '{name}': missing required column '{field.name}'")
        if not field.nullable and col.null_count:
            raise SchemaError(f"table '{name}': column '{field.name}' has {col.null_count} nulls")
        columns.append(col)
    meta = {b"ragtune.table": name.encode(), b"ragtune.schema_version": str(TABLES[name].version).encode()}
    return pa.Table.from_arrays(columns, schema=schema.with_metadata(meta))


def versions() -> dict[str, int]:
    return {name: t.version for name, t in TABLES.items()}
