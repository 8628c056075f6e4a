"""The run folder: tables, stage markers, manifest and resume.

Layout of `output.path` (local or s3://), loadable by `datasets.load_dataset`:

    <table>/<split>-00000-of-00002.parquet   one folder per table, Hub-style shard names
    _stages/<stage>.json                      completion marker: fingerprint, counts, timings
    _cache/llm/<task>/*.parquet               every finished LLM call (see factory.engines.cache)
    manifest.json                             provenance: config + hash, versions, per-stage stats

A stage is skipped when its marker's fingerprint equals the fingerprint it
would have now: a hash of its config sections, its upstream fingerprints and,
for the first stage, a listing of the input files. A stage deletes its marker
before it starts and writes it only after all its tables are committed, so a
crash never leaves a half-written stage that looks finished.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import hashlib
import itertools
import json
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from factory import __version__, progress, provenance
from factory.config import Config, S3Config
from factory.storage import arrow_filesystem, check_writable, filesystem, is_remote, remove_empty_folders

PARQUET_ARGS = {"compression": "zstd"}
MIN_BLOCK_ROWS = 64


@dataclass
class StageRecord:
    """What a stage reports: counts, drops by reason, tokens, extra statistics."""

    name: str
    rows_in: int = 0
    rows_out: int = 0
    drops: Counter = field(default_factory=Counter)
    tokens: dict[str, dict[str, int]] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def drop(self, reason: str, n: int = 1) -> None:
        if n:
            self.drops[reason] += n

    def add_tokens(self, engine_model: str, input_tokens: int, output_tokens: int, calls: int) -> None:
        t = self.tokens.setdefault(engine_model, {"input": 0, "output": 0, "calls": 0})
        t["input"] += input_tokens
        t["output"] += output_tokens
        t["calls"] += calls

    def summary(self) -> str:
        drops = ", ".join(f"{k} {v}" for k, v in sorted(self.drops.items())) or "none"
        return (
            f"[{self.name}] {self.rows_in} rows in -> {self.rows_out} rows out; "
            f"drops: {drops}; {self.seconds:.1f} s"
        )


@dataclass(frozen=True)
class Stage:
    """One step of a job. `sections` are the config sections its output depends on."""

    name: str
    fn: Callable[["Run", StageRecord], None]
    sections: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    # Extra fingerprint material, e.g. a listing of the input files.
    fingerprint_extra: Callable[["Run"], str] | None = None


def log(message: str) -> None:
    progress.emit(f"ragtune: {message}", sys.stderr)


@contextlib.contextmanager
def no_empty_folder_left(path: str, s3: S3Config | None = None) -> Iterator[None]:
    """A job that fails leaves no empty folder at `path` (or under it); whatever it wrote stays,
    for the rerun to resume from. A folder that was there before stays too. (Object stores have
    no empty folders.)"""
    if is_remote(path):
        yield
        return
    fs, fpath = filesystem(path, s3)
    existed = fs.exists(fpath)
    try:
        yield
    except BaseException:
        remove_empty_folders(path, s3, keep_root=existed)
        raise


def _write_shard(fs: Any, path: str, row_group_rows: int, offset: int, length: int, *blocks: pa.Table) -> None:
    """Rows [offset, offset + length) of consecutive blocks as one Parquet file (a Ray task)."""
    with fs.open(path, "wb") as f:
        pq.write_table(pa.concat_tables(blocks).slice(offset, length), f, row_group_size=row_group_rows, **PARQUET_ARGS)


def _block_rows(block: pa.Table) -> int:
    return block.num_rows


class Run:
    """A run folder and the stages recorded in it."""

    def __init__(self, cfg: Config, root: str | None = None):
        self.cfg = cfg
        self.root = root or cfg.output.path
        self.fs, self.path = check_writable(self.root, cfg.s3)
        self.arrow_fs = arrow_filesystem(self.fs)
        self.manifest = self._load_json("manifest.json") or {}

    # ---- paths and small files -------------------------------------------------
    def uri(self, *parts: str) -> str:
        """Path as the filesystem names it (no scheme)."""
        return "/".join([self.path, *parts])

    def _load_json(self, rel: str) -> dict | None:
        p = self.uri(rel)
        if not self.fs.exists(p):
            return None
        with self.fs.open(p, "r") as f:
            return json.load(f)

    def write_json(self, rel: str, data: dict) -> None:
        """Write JSON atomically: a reader sees the old file or the new one, never half."""
        p = self.uri(rel)
        self.fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{p}.tmp-{uuid.uuid4().hex[:8]}"
        with self.fs.open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
        self.fs.mv(tmp, p)

    # ---- stages ---------------------------------------------------------------
    def marker(self, stage: str) -> dict | None:
        return self._load_json(f"_stages/{stage}.json")

    def fingerprint(self, stage: Stage) -> str:
        upstream = {}
        for name in stage.inputs:
            m = self.marker(name)
            upstream[name] = m["fingerprint"] if m else None
        material = {
            "stage": stage.name,
            "version": __version__,
            "config": self.cfg.section_hash(*stage.sections),
            "upstream": upstream,
            "extra": stage.fingerprint_extra(self) if stage.fingerprint_extra else None,
        }
        blob = json.dumps(material, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def run_stages(self, stages: Iterable[Stage], force: bool = False) -> dict[str, StageRecord]:
        records = {}
        for stage in stages:
            fp = self.fingerprint(stage)
            done = self.marker(stage.name)
            if done and done.get("fingerprint") == fp and not force:
                log(f"[{stage.name}] up to date, skipped (finished {done.get('finished_at')})")
                continue
            records[stage.name] = self.run_stage(stage, fp)
        return records

    def run_stage(self, stage: Stage, fingerprint: str) -> StageRecord:
        marker = self.uri("_stages", f"{stage.name}.json")
        if self.fs.exists(marker):
            self.fs.rm(marker)
        rec = StageRecord(stage.name)
        start = time.perf_counter()
        log(f"[{stage.name}] started")
        with progress.stage(stage.name):
            stage.fn(self, rec)
        rec.seconds = time.perf_counter() - start
        entry = {
            "fingerprint": fingerprint,
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(rec.seconds, 3),
            "rows_in": rec.rows_in,
            "rows_out": rec.rows_out,
            "drops": dict(rec.drops),
            "tokens": rec.tokens,
            "stats": rec.stats,
        }
        self.write_json(f"_stages/{stage.name}.json", entry)
        self.update_manifest(stages={stage.name: entry})
        log(rec.summary())
        return rec

    # ---- tables ---------------------------------------------------------------
    def table_files(self, table: str, split: str | None = None) -> list[str]:
        folder = self.uri(table)
        if not self.fs.exists(folder):
            return []
        pattern = f"{split}-" if split else ""
        files = [
            p for p in self.fs.ls(folder, detail=False)
            if p.rsplit("/", 1)[-1].startswith(pattern) and p.endswith(".parquet")
        ]
        return sorted(files)

    def has_table(self, table: str, split: str | None = None) -> bool:
        return bool(self.table_files(table, split))

    def write_table(self, table: str, data: "pa.Table | Any", split: str = "train") -> int:
        """Validate and write `data` (a pyarrow Table or a Ray Dataset) as `table`/`split`.

        Shards land in a temporary folder first and replace the old ones only
        when all were written. Returns the number of rows written.
        """
        tmp = self.uri(table, f".tmp-{split}-{uuid.uuid4().hex[:8]}")
        self.fs.makedirs(tmp, exist_ok=True)
        try:
            if isinstance(data, pa.Table):
                n = self._write_arrow(table, data, tmp)
            else:
                n = self._write_ray(table, data, tmp)
        except BaseException:
            if self.fs.exists(tmp):  # a half-written table is no use to a rerun
                self.fs.rm(tmp, recursive=True)
            raise
        self._commit(table, split, tmp)
        self.update_manifest(counts={f"{table}/{split}": n})
        return n

    def _write_arrow(self, table: str, data: pa.Table, tmp: str) -> int:
        data = schemas.validate(table, data)
        data = data.replace_schema_metadata({**(data.schema.metadata or {}), b"ragtune.config_hash": self.cfg.hash.encode()})
        step = self.cfg.output.rows_per_shard
        offsets = range(0, max(data.num_rows, 1), step)
        for i, off in enumerate(offsets):
            with self.fs.open(f"{tmp}/part-{i:05d}.parquet", "wb") as f:
                pq.write_table(data.slice(off, step), f, row_group_size=self.cfg.output.row_group_rows, **PARQUET_ARGS)
        return data.num_rows

    def _write_ray(self, table: str, ds: Any, tmp: str) -> int:
        import ray

        config_hash = self.cfg.hash.encode()

        def conform(batch: pa.Table) -> pa.Table:
            out = schemas.validate(table, batch)
            return out.replace_schema_metadata({**(out.schema.metadata or {}), b"ragtune.config_hash": config_hash})

        # Shards of rows_per_shard rows are cut from the blocks in order, each written by one task:
        # Ray's own write_parquet (2.60) reordered rows within a file, even from a materialized
        # dataset, and reruns must be byte-comparable.
        refs = ds.map_batches(conform, batch_format="pyarrow", zero_copy_batch=True).materialize().to_arrow_refs()
        rows = ray.remote(num_cpus=0)(_block_rows)
        starts = list(itertools.accumulate(ray.get([rows.remote(r) for r in refs]), initial=0))
        n = starts[-1]
        if n == 0:
            return self._write_arrow(table, schemas.schema_of(table).empty_table(), tmp)
        # A shard write is idempotent (same path, same bytes): retry it on a transient storage error.
        write = ray.remote(max_retries=3, retry_exceptions=True)(_write_shard)
        tasks = []
        for i, lo in enumerate(range(0, n, self.cfg.output.rows_per_shard)):
            hi = min(lo + self.cfg.output.rows_per_shard, n)
            first, last = bisect.bisect_right(starts, lo) - 1, bisect.bisect_left(starts, hi)
            tasks.append(write.remote(self.fs, f"{tmp}/part-{i:05d}.parquet", self.cfg.output.row_group_rows,
                                      lo - starts[first], hi - lo, *refs[first:last]))
        ray.get(tasks)
        return n

    def count_rows(self, table: str, split: str | None = None) -> int:
        """Rows of a written table, from the Parquet footers (no data is read)."""
        return self._footer_rows(self.table_files(table, split))

    def _footer_rows(self, files: list[str]) -> int:
        total = 0
        for p in files:
            with self.fs.open(p, "rb") as f:
                total += pq.ParquetFile(f).metadata.num_rows
        return total

    def _commit(self, table: str, split: str, tmp: str) -> None:
        new = sorted(p for p in self.fs.ls(tmp, detail=False) if p.endswith(".parquet"))
        for old in self.table_files(table, split):
            self.fs.rm(old)
        total = len(new)
        for i, p in enumerate(new):
            self.fs.mv(p, self.uri(table, f"{split}-{i:05d}-of-{total:05d}.parquet"))
        if self.fs.exists(tmp):  # object stores have no empty folders: it may be gone already
            self.fs.rm(tmp, recursive=True)

    def read_arrow(self, table: str, split: str | None = None, columns: list[str] | None = None) -> pa.Table:
        """The whole table (validated against its schema), or only `columns` of it."""
        files = self.table_files(table, split)
        if not files:
            empty = schemas.schema_of(table).empty_table()
            return empty.select(columns) if columns else empty
        parts = []
        for p in files:
            with self.fs.open(p, "rb") as f:
                parts.append(pq.read_table(f, columns=columns))
        data = pa.concat_tables(parts, promote_options="default")
        return data if columns else schemas.validate(table, data)

    def read_ray(self, table: str, split: str | None = None):
        """`table` as a Ray Dataset: a block per file, and a table of fewer shards than the cluster has
        CPUs split, up to a block per CPU of at least MIN_BLOCK_ROWS rows (per-row stages over a
        one-shard table would otherwise run on one CPU). The read tasks split their output, in order;
        a repartition after the read would be one more all-to-all step."""
        import ray
        import ray.data

        files = self.table_files(table, split)
        if not files:
            return ray.data.from_arrow(schemas.schema_of(table).empty_table())
        cpus = int(ray.cluster_resources().get("CPU", 1))
        blocks = len(files)
        if len(files) < cpus:
            # Not below MIN_BLOCK_ROWS rows a block: a big cluster would turn a small table into tiny tasks.
            blocks = max(blocks, min(cpus, self._footer_rows(files) // MIN_BLOCK_ROWS))
        return ray.data.read_parquet(files, filesystem=self.arrow_fs, override_num_blocks=blocks)

    # ---- manifest -------------------------------------------------------------
    def update_manifest(self, **sections: dict) -> None:
        m = self.manifest
        m.setdefault("ragtune_version", __version__)
        m["config_hash"] = self.cfg.hash
        m["config"] = self.cfg.public_dict()
        m["schema_versions"] = schemas.versions()
        m.update(provenance.describe(self.cfg))  # packages, prompt hashes, engines per role
        m["updated_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        for key, value in sections.items():
            m.setdefault(key, {}).update(value)
        self.write_json("manifest.json", m)
