"""The run folder: tables, small JSON files, atomic writes and reads.

Layout of `output.path` (local or s3://), loadable by `datasets.load_dataset`:

    <table>/<split>-00000-of-00002.parquet   one folder per table, Hub-style shard names
    _stages/<stage>.json                      completion marker (factory.pipeline.stages)
    _cache/llm/<task>/*.parquet               every finished LLM call (see factory.engines.cache)
    manifest.json                             provenance and per-stage stats (factory.pipeline.manifest)

`Run` knows files, not stages: which stages run and when is the scheduler's
(`factory.pipeline.stages`). Opened `read_only` (publish, evaluate's source run,
finetune's dataset), it needs only read access and refuses every write.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import json
import uuid
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import schemas
from factory.config import Config, S3Config, validate_config
from factory.errors import UserError
from factory.pipeline.manifest import update_manifest
from factory.storage import (arrow_filesystem, check_readable, check_writable, filesystem, is_remote,
                             remove_empty_folders, write_atomic)

PARQUET_ARGS = {"compression": "zstd"}
MIN_BLOCK_ROWS = 64


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


def _write_shard(fs: Any, path: str, row_group_rows: int, slices: list[tuple[int, int]], *blocks: pa.Table) -> None:
    """Consecutive blocks, `slices[i]` = (offset, length) of blocks[i], as one Parquet file (a Ray task)."""
    table = pa.concat_tables([b.slice(offset, length) for b, (offset, length) in zip(blocks, slices)])
    with fs.open(path, "wb") as f:
        pq.write_table(table, f, row_group_size=row_group_rows, **PARQUET_ARGS)


def _split_counts(block: pa.Table, splits: tuple[str, ...]) -> list[int]:
    """Rows of each split in a block sorted by split (one split: all its rows)."""
    # An empty block can reach here without the map that conforms blocks having seen it (Ray Data
    # skips empty ones; an upstream step may make them without columns).
    if len(splits) == 1 or not block.num_rows:
        return [block.num_rows] + [0] * (len(splits) - 1)
    column = block.column("split")
    counts = [pc.sum(pc.equal(column, s)).as_py() or 0 for s in splits]
    if sum(counts) != block.num_rows:
        raise ValueError(f"rows whose split is none of {splits}")  # a caller's bug: they would be lost
    return counts


class ReadOnlyRun(RuntimeError):
    """A write into a run folder opened read-only: a bug, not something a user can fix."""


class Run:
    """A run folder: its tables and small files. Creates nothing until the first write."""

    def __init__(self, cfg: Config, root: str | None = None, read_only: bool = False):
        self.cfg = cfg
        self.root = root or cfg.output.path
        self.read_only = read_only
        self.fs, self.path = (check_readable if read_only else check_writable)(self.root, cfg.s3)
        self.arrow_fs = arrow_filesystem(self.fs)

    # ---- paths and small files -------------------------------------------------
    def uri(self, *parts: str) -> str:
        """Path as the filesystem names it (no scheme)."""
        return "/".join([self.path, *parts])

    def read_json(self, rel: str) -> dict | None:
        """`rel` parsed, or None when there is no such file."""
        p = self.uri(rel)
        if not self.fs.exists(p):
            return None
        with self.fs.open(p, "r") as f:
            return json.load(f)

    def write_json(self, rel: str, data: dict) -> None:
        """Write JSON atomically: a reader sees the old file or the new one, never half."""
        self.write_bytes(rel, json.dumps(data, indent=2, sort_keys=True, default=str).encode())

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a small file atomically."""
        self._check_writable(rel)
        write_atomic(self.fs, self.uri(rel), data)

    def remove(self, rel: str) -> None:
        """Remove a file if it is there."""
        self._check_writable(rel)
        if self.fs.exists(self.uri(rel)):
            self.fs.rm(self.uri(rel))

    @property
    def manifest(self) -> dict:
        """manifest.json as it is now ({} before the first stage); written by factory.pipeline.manifest."""
        return self.read_json("manifest.json") or {}

    def marker(self, stage: str) -> dict | None:
        """`stage`'s completion marker, or None while it has not finished."""
        return self.read_json(f"_stages/{stage}.json")

    def _check_writable(self, what: str) -> None:
        if self.read_only:
            raise ReadOnlyRun(f"{self.root}: opened read-only; refusing to write {what}")

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
        if isinstance(data, pa.Table):
            return self._write(table, (split,), lambda tmps: {split: self._write_arrow(table, data, tmps[split])})[split]
        return self.write_splits(table, data, (split,))[split]

    def write_splits(self, table: str, ds: Any, splits: tuple[str, ...]) -> dict[str, int]:
        """Write a Ray Dataset as `table`, each row into the split its `split` column names (one
        split: every row), in one pass over the dataset. Returns the rows written per split."""
        return self._write(table, splits, lambda tmps: self._write_ray(table, ds, tmps))

    def _write(self, table: str, splits: tuple[str, ...], write: Any) -> dict[str, int]:
        for split in splits:
            self._check_writable(f"{table}/{split}")
        tmps = {split: self.uri(table, f".tmp-{split}-{uuid.uuid4().hex[:8]}") for split in splits}
        for tmp in tmps.values():
            self.fs.makedirs(tmp, exist_ok=True)
        try:
            counts = write(tmps)
        except BaseException:
            for tmp in tmps.values():
                if self.fs.exists(tmp):  # a half-written table is no use to a rerun
                    self.fs.rm(tmp, recursive=True)
            raise
        for split, tmp in tmps.items():
            self._commit(table, split, tmp)
        update_manifest(self, counts={f"{table}/{split}": n for split, n in counts.items()})
        return counts

    def _write_arrow(self, table: str, data: pa.Table, tmp: str) -> int:
        data = schemas.validate(table, data)
        data = data.replace_schema_metadata({**(data.schema.metadata or {}), b"ragtune.config_hash": self.cfg.hash.encode()})
        step = self.cfg.output.rows_per_shard
        offsets = range(0, max(data.num_rows, 1), step)
        for i, off in enumerate(offsets):
            with self.fs.open(f"{tmp}/part-{i:05d}.parquet", "wb") as f:
                pq.write_table(data.slice(off, step), f, row_group_size=self.cfg.output.row_group_rows, **PARQUET_ARGS)
        return data.num_rows

    def _write_ray(self, table: str, ds: Any, tmps: dict[str, str]) -> dict[str, int]:
        import ray

        config_hash = self.cfg.hash.encode()
        splits = tuple(tmps)

        def conform(batch: pa.Table) -> pa.Table:
            out = schemas.validate(table, batch)
            if len(splits) > 1:  # each split's rows together, in their order: a shard slices them out
                rank = pc.index_in(out.column("split"), value_set=pa.array(splits))
                out = out.take(pc.sort_indices(pa.table({"rank": rank}), sort_keys=[("rank", "ascending")]))
            return out.replace_schema_metadata({**(out.schema.metadata or {}), b"ragtune.config_hash": config_hash})

        # Shards of rows_per_shard rows are cut from the blocks in order, each written by one task:
        # Ray's own write_parquet (2.60) reordered rows within a file, even from a materialized
        # dataset, and reruns must be byte-comparable.
        refs = ds.map_batches(conform, batch_format="pyarrow", zero_copy_batch=True).materialize().to_arrow_refs()
        count = ray.remote(num_cpus=0)(_split_counts)
        per_block = ray.get([count.remote(r, splits) for r in refs])
        # A shard write is idempotent (same path, same bytes): retry it on a transient storage error.
        write = ray.remote(max_retries=3, retry_exceptions=True)(_write_shard)
        tasks, counts = [], {}
        for k, split in enumerate(splits):
            # This split's rows: the slice (offset, length) of each block that holds any, in order.
            pieces = [(ref, sum(c[:k]), c[k]) for ref, c in zip(refs, per_block) if c[k]]
            starts = list(itertools.accumulate((n for _, _, n in pieces), initial=0))
            counts[split] = n = starts[-1]
            if n == 0:
                self._write_arrow(table, schemas.schema_of(table).empty_table(), tmps[split])
            for i, lo in enumerate(range(0, n, self.cfg.output.rows_per_shard)):
                hi = min(lo + self.cfg.output.rows_per_shard, n)
                first, last = bisect.bisect_right(starts, lo) - 1, bisect.bisect_left(starts, hi)
                slices = [(offset + max(lo - start, 0), min(hi, start + length) - max(lo, start))
                          for (_, offset, length), start in zip(pieces[first:last], starts[first:last])]
                tasks.append(write.remote(self.fs, f"{tmps[split]}/part-{i:05d}.parquet", self.cfg.output.row_group_rows,
                                          slices, *(ref for ref, _, _ in pieces[first:last])))
        ray.get(tasks)
        return counts

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


def open_run(path: str, s3: S3Config | None = None, read_only: bool = True) -> Run:
    """The run at `path` with the config it was generated with (from its manifest): how a job that
    did not make a run opens it (publish, the quality report). Read-only unless the caller writes
    into it (the card in place)."""
    fs, fpath = check_readable(path, s3)
    mpath = f"{fpath.rstrip('/')}/manifest.json"
    if not fs.exists(mpath):
        raise UserError(f"{path}: not a run folder (no manifest.json); run generate first")
    with fs.open(mpath, "r") as f:
        manifest = json.load(f)
    try:
        cfg = validate_config(manifest.get("config") or {}, f"{path}/manifest.json")
    except UserError as exc:
        raise UserError(f"{path}: the run's config no longer validates ({exc}); rerun generate") from None
    # The manifest holds masked secrets; storage access uses the publisher's.
    cfg.s3 = s3 or S3Config()
    return Run(cfg, root=path, read_only=read_only)
