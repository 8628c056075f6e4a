"""The run folder's Ray writes keep row order: reruns of a stage are byte-comparable."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from factory.config import load_config
from factory.pipeline import Run


def test_ray_write_keeps_row_order_across_blocks_and_shards(ray_session, tmp_path):
    import ray.data

    cfg = load_config(None, [f"output.path={tmp_path / 'run'}", "output.rows_per_shard=900", "output.row_group_rows=100"])
    run = Run(cfg)
    n_docs = 600

    def expand(batch: pa.Table) -> pa.Table:
        # Many small output blocks of varying size, as the chunk stage makes.
        ids = batch.column("id").to_pylist()
        rows = [(d, i) for d in ids for i in range(1 + d % 3)]
        return pa.table({
            "id": [f"c-{d:04d}-{i}" for d, i in rows], "document_id": [f"d-{d:04d}" for d, _ in rows],
            "chunk_index": [i for _, i in rows], "text": ["x"] * len(rows), "n_tokens": [1] * len(rows),
            "title": [None] * len(rows), "date": [None] * len(rows),
        })

    # Read from Parquet as the stages read their inputs (Ray 2.60's own writer reordered these rows).
    pq.write_table(pa.table({"id": list(range(n_docs))}), tmp_path / "docs.parquet")
    source = ray.data.read_parquet(str(tmp_path / "docs.parquet")).map_batches(expand, batch_format="pyarrow", batch_size=5)
    n = run.write_table("chunks", source)
    expected = [f"c-{d:04d}-{i}" for d in range(n_docs) for i in range(1 + d % 3)]
    files = run.table_files("chunks")
    assert n == len(expected) == 1200
    assert [f.rsplit("/", 1)[-1] for f in files] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    assert pq.read_table(files).column("id").to_pylist() == expected
    assert run.count_rows("chunks") == n
    assert all(pq.ParquetFile(f).metadata.row_group(0).num_rows <= 100 for f in files)


def test_a_one_shard_table_is_read_in_a_block_per_cpu_in_order(ray_session, tmp_path):
    cfg = load_config(None, [f"output.path={tmp_path / 'run'}"])
    run = Run(cfg)
    rows = [{"id": f"c-{i:04d}", "document_id": "d", "chunk_index": i, "text": "x", "n_tokens": 1} for i in range(1000)]
    run.write_table("chunks", pa.Table.from_pylist(rows))
    ds = run.read_ray("chunks").materialize()
    assert len(run.table_files("chunks")) == 1 and ds.num_blocks() == 2  # the session's Ray has 2 CPUs
    assert [r["id"] for r in ds.take_all()] == [r["id"] for r in rows]

    run.write_table("chunks", pa.Table.from_pylist(rows[:100]))
    assert run.read_ray("chunks").materialize().num_blocks() == 1  # too small to be worth a split
