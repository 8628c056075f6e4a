"""The per-run call cache: `_cache/llm/<task>/part-*.parquet`, table schema `llm_calls`.

Every finished call (a generated text, parsed or not) is appended as soon as
its block comes back, one file per block written via a temporary name and a
rename, so a killed run loses only the calls that were in flight. Transport
errors are not cached: a rerun tries those calls again. The key hashes what
determines the answer (engine, model, messages, sampling); the stage
fingerprint is not part of it, so changing an unrelated setting reuses calls.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import schemas

TABLE = "llm_calls"
# Compact a task's folder into one file once it holds this many parts.
COMPACT_AT = 32


def call_key(engine: str, model: str, messages: list[dict], params: dict[str, Any]) -> str:
    material = {
        "engine": engine,
        "model": model,
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        "params": params,
    }
    blob = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class CallCache:
    def __init__(self, run: Any, task: str):
        self.fs = run.fs
        self.folder = run.uri("_cache", "llm", task)

    def files(self) -> list[str]:
        if not self.fs.exists(self.folder):
            return []
        names = self.fs.ls(self.folder, detail=False)
        return sorted(p for p in names if p.endswith(".parquet") and not p.rsplit("/", 1)[-1].startswith("."))

    def load(self) -> pa.Table:
        """Every cached call, one row per key (the latest wins)."""
        parts = []
        for p in self.files():
            with self.fs.open(p, "rb") as f:
                parts.append(pq.read_table(f))
        if not parts:
            return schemas.schema_of(TABLE).empty_table()
        return latest_per_key(schemas.validate(TABLE, pa.concat_tables(parts, promote_options="default")))

    def append(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._write(schemas.validate(TABLE, table), f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet")

    def compact(self) -> None:
        """Rewrite many small parts as one; a crash in between leaves duplicates, which load() drops."""
        old = self.files()
        if len(old) < COMPACT_AT:
            return
        self._write(self.load(), f"part-{time.time_ns():020d}-compact.parquet")
        for p in old:
            self.fs.rm(p)

    def _write(self, table: pa.Table, name: str) -> None:
        self.fs.makedirs(self.folder, exist_ok=True)
        tmp = f"{self.folder}/.{name}.tmp"
        with self.fs.open(tmp, "wb") as f:
            pq.write_table(table, f, compression="zstd")
        self.fs.mv(tmp, f"{self.folder}/{name}")


def latest_per_key(table: pa.Table, key: str = "key") -> pa.Table:
    if table.num_rows == 0:
        return table
    idx = pa.array(range(table.num_rows), pa.int64())
    last = pa.table({key: table.column(key), "_i": idx}).group_by(key, use_threads=False).aggregate([("_i", "max")])
    keep = last.column("_i_max").combine_chunks()
    return table.take(pc.take(keep, pc.array_sort_indices(keep)))
