"""The per-run call cache: `_cache/llm/<task>/part-*.parquet`, table schema `llm_calls`.

Every finished call (a generated text, parsed or not) is appended by the
backend worker that made it, when it finishes (`CallJournal`), not when its
block reaches the driver: part files written via a temporary name and a
rename, so a killed run loses only the calls that were in flight (and, on an
object store, those of the last half second). Transport errors are not
cached: a rerun tries those calls again. The key hashes what determines the
answer (engine, model, messages, sampling); the stage fingerprint is not part
of it, so changing an unrelated setting reuses calls.
"""

from __future__ import annotations

import hashlib
import json
import threading
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
COMPACTED = "-compact.parquet"
# Least seconds between two journal writes of one worker: on an object store every write is a
# request (fewer, larger ones); a local disk takes each finished call at once.
JOURNAL_EVERY_S = {"local": 0.0, "remote": 0.5}


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
    """One task's cache folder. Picklable (a filesystem and a path): backend workers append to it."""

    def __init__(self, run: Any, task: str):
        self.fs = run.fs
        self.folder = run.uri("_cache", "llm", task)
        self.task = task

    def files(self) -> list[str]:
        if not self.fs.exists(self.folder):
            return []
        names = self.fs.ls(self.folder, detail=False)
        return sorted(p for p in names if p.endswith(".parquet") and not p.rsplit("/", 1)[-1].startswith("."))

    def load(self) -> pa.Table:
        """Every cached call, one row per key (the latest wins)."""
        return self._read(self.files())

    def _read(self, files: list[str]) -> pa.Table:
        parts = []
        for p in files:
            with self.fs.open(p, "rb") as f:
                parts.append(pq.read_table(f))
        if not parts:
            return schemas.schema_of(TABLE).empty_table()
        return latest_per_key(schemas.validate(TABLE, pa.concat_tables(parts, promote_options="default")))

    def append(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._write(schemas.validate(TABLE, table), f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet")

    def compact(self, journal_only: bool = False) -> None:
        """Rewrite many small parts as one; a crash in between leaves duplicates, which load() drops.

        `journal_only` merges only the parts written since the last compaction (while workers still
        append, so a long run's folder stays small without rewriting everything again and again)."""
        old = self.files()
        if journal_only:
            old = [p for p in old if not p.endswith(COMPACTED)]
        if len(old) < COMPACT_AT:
            return
        self._write(self._read(old), f"part-{time.time_ns():020d}{COMPACTED}")
        for p in old:
            self.fs.rm(p)

    def _write(self, table: pa.Table, name: str) -> None:
        self.fs.makedirs(self.folder, exist_ok=True)
        tmp = f"{self.folder}/.{name}.tmp"
        with self.fs.open(tmp, "wb") as f:
            pq.write_table(table, f, compression="zstd")
        self.fs.mv(tmp, f"{self.folder}/{name}")


class CallJournal:
    """A backend worker's finished calls, appended to the cache as they finish.

    `add` queues result rows (RESULT_SCHEMA); a background thread writes what is queued as one
    part file as soon as there is something (group commit: calls that finish during a write go
    into the next), at most every JOURNAL_EVERY_S. `flush` writes the rest now: a worker calls it
    before it returns a block, so every call the driver has seen is in the cache.
    """

    def __init__(self, cache: CallCache, engine: str, model: str, background: bool = True):
        from factory.storage import is_local_fs

        self.cache, self.engine, self.model = cache, engine, model
        self.every_s = JOURNAL_EVERY_S["local" if is_local_fs(cache.fs) else "remote"]
        self._queued: list[pa.Table] = []
        self._lock = threading.Lock()  # guards _queued
        self._writing = threading.Lock()  # one write at a time, in order
        self._wake = threading.Event()
        if background:  # without it, only flush() writes
            threading.Thread(target=self._run, daemon=True, name="call-journal").start()

    def add(self, results: pa.Table) -> None:
        done = results.filter(pc.is_valid(results.column("generated_text")))
        if done.num_rows:
            with self._lock:
                self._queued.append(done)
            self._wake.set()

    def flush(self) -> None:
        with self._writing:
            with self._lock:
                queued, self._queued = self._queued, []
            if not queued:
                return
            done = pa.concat_tables(queued)
            n = done.num_rows
            try:
                self.cache.append(done.append_column("task", pa.array([self.cache.task] * n, pa.string()))
                                  .append_column("engine", pa.array([self.engine] * n, pa.string()))
                                  .append_column("model", pa.array([self.model] * n, pa.string())))
            except Exception:
                with self._lock:  # kept for the next write; the block's own flush reports the error
                    self._queued[:0] = queued
                raise

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # a transient storage error: try again with the next call
                self._wake.set()
            time.sleep(self.every_s)


def latest_per_key(table: pa.Table, key: str = "key") -> pa.Table:
    if table.num_rows == 0:
        return table
    idx = pa.array(range(table.num_rows), pa.int64())
    last = pa.table({key: table.column(key), "_i": idx}).group_by(key, use_threads=False).aggregate([("_i", "max")])
    keep = last.column("_i_max").combine_chunks()
    return table.take(pc.take(keep, pc.array_sort_indices(keep)))
