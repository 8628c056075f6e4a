"""Row-wise Ray Data helpers with declared output types.

Blocks built from Python rows infer their own Arrow types (an all-empty list
column becomes list<null> in one block and list<string> in the next), which
breaks later unions and writes. `map_rows` fixes the types of the columns it adds.
"""

from __future__ import annotations

from typing import Any, Callable

import pyarrow as pa

from schemas import MESSAGE

MESSAGES = pa.list_(MESSAGE)


def target(answer: str, reasoning: str | None, mode: str) -> str:
    """The assistant turn: the answer, with the reasoning inline or in <think> tags before it."""
    if mode == "none" or not reasoning:
        return answer
    if mode == "think_tags":
        return f"<think>\n{reasoning}\n</think>\n\n{answer}"
    return f"{reasoning}\n\nAnswer: {answer}"


def map_rows(
    ds,
    fn: Callable[[dict], dict | None],
    fields: dict[str, pa.DataType],
    drop: tuple[str, ...] = (),
    **kwargs: Any,
):
    """Apply `fn` to each row of a Ray Dataset; it returns the row's new/changed columns
    (declared in `fields`) or None to remove the row. `kwargs` go to map_batches."""

    return ds.map_batches(lambda batch: apply_rows(batch, fn, fields, drop), batch_format="pyarrow", **kwargs)


def apply_rows(batch: pa.Table, fn: Callable[[dict], dict | None], fields: dict[str, pa.DataType], drop=()) -> pa.Table:
    """The body of `map_rows` for one batch (also used inside actor classes)."""
    keep = [f for f in batch.schema if f.name not in fields and f.name not in drop]
    schema = pa.schema(keep + [pa.field(n, t) for n, t in fields.items()])
    out = []
    for row in batch.to_pylist():
        new = fn(row)
        if new is not None:
            out.append({**{f.name: row[f.name] for f in keep}, **new})
    return pa.Table.from_pylist(out, schema=schema)


def collect(ds) -> pa.Table:
    """Materialize a Ray Dataset on the driver as one Arrow table."""
    import ray

    refs = ds.to_arrow_refs()
    tables = [t for t in ray.get(refs) if t.num_rows]
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="permissive")


# Rows per block of a dataset made on the driver: one block would leave all but one worker idle.
BLOCK_ROWS = 1024


def to_dataset(rows: list[dict], schema: pa.Schema):
    """A Ray Dataset of Python rows with a fixed schema (none of Ray's type guessing)."""
    return from_table(pa.Table.from_pylist(rows, schema=schema))


def from_table(table: pa.Table, rows: int = BLOCK_ROWS):
    """A Ray Dataset of an Arrow table, in blocks of at most `rows` rows."""
    import ray.data

    return ray.data.from_arrow([table.slice(i, rows) for i in range(0, max(table.num_rows, 1), rows)])


def in_blocks(table: pa.Table, min_rows: int) -> int:
    """Rows per block for CPU work on `table`: a few blocks per CPU (cluster.block_count)."""
    from factory.cluster import block_count

    return max(1, -(-table.num_rows // block_count(table.num_rows, min_rows)))
