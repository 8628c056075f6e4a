"""The run folder (Ray writes keep row order, so reruns are byte-comparable; a read-only mode) and the
stage scheduler (fingerprints, markers, the skip rule, stage declarations)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factory.config import load_config
from factory.errors import UserError
from factory.pipeline import Run, Stage, check_finished, plan, run_stage, run_stages
from factory.pipeline.folder import ReadOnlyRun

DOCS = pa.Table.from_pylist([{"id": f"d{i}", "text": "text", "n_chars": 4} for i in range(2)])


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


def test_one_pass_writes_each_row_to_its_split_in_order(ray_session, tmp_path):
    import ray.data

    cfg = load_config(None, [f"output.path={tmp_path / 'run'}", "output.rows_per_shard=70"])
    run = Run(cfg)
    message = [{"role": "user", "content": "q"}]
    # Blocks of uneven size whose rows alternate between the splits irregularly; one block all train.
    rows = [{"id": f"q{i:03d}", "kind": "local", "question": "q", "answer": "a", "messages": message,
             "split": "test" if (i % 7 in (2, 5) and i >= 40) else "train"} for i in range(300)]
    blocks = [pa.Table.from_pylist(rows[lo:hi]) for lo, hi in ((0, 40), (40, 41), (41, 150), (150, 300))]
    counts = run.write_splits("qa", ray.data.from_arrow(blocks), ("train", "test"))

    for split in ("train", "test"):
        expected = [r["id"] for r in rows if r["split"] == split]
        files = run.table_files("qa", split)
        assert counts[split] == len(expected) and len(files) == -(-len(expected) // 70)
        got = pq.read_table(files)
        assert got.column("id").to_pylist() == expected and set(got.column("split").to_pylist()) == {split}
    assert run.manifest["counts"] == {"qa/train": counts["train"], "qa/test": counts["test"]}

    stray = pa.Table.from_pylist([{**rows[0], "split": "validation"}])
    with pytest.raises(Exception, match="none of"):  # a row no split takes is an error, never dropped
        run.write_splits("qa", ray.data.from_arrow(stray), ("train", "test"))
    assert run.count_rows("qa") == 300 and not [p for p in run.fs.ls(run.uri("qa")) if ".tmp-" in p]


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


def test_read_only_run_needs_the_folder_creates_nothing_and_refuses_writes(tmp_path):
    cfg = load_config(None, [f"output.path={tmp_path / 'run'}"])
    with pytest.raises(UserError, match="no such file or folder"):
        Run(cfg, read_only=True)
    Run(cfg)  # a writable run also creates nothing until its first write
    assert not (tmp_path / "run").exists()
    Run(cfg).write_table("documents", DOCS)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    ro = Run(cfg, read_only=True)
    assert ro.read_arrow("documents").num_rows == 2 and ro.manifest["counts"] == {"documents/train": 2}
    for write in (lambda: ro.write_table("documents", DOCS), lambda: ro.write_json("x.json", {}),
                  lambda: run_stage(ro, Stage("s", lambda run, rec: None))):
        with pytest.raises(ReadOnlyRun):
            write()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_skip_rule_fingerprints_and_markers(tmp_path):
    cfg = load_config(None, [f"output.path={tmp_path / 'run'}"])
    run = Run(cfg)
    calls: list[str] = []

    def stage(name: str, **kw) -> Stage:
        return Stage(name, lambda run, rec: calls.append(name), **kw)

    stages = [stage("a", sections=("corpus",), writes=("documents",)),
              stage("b", sections=("chunking",), inputs=("a",), reads=("documents",), writes=("chunks",)),
              stage("c", sections=("seed",))]
    run_stages(run, stages)
    assert calls == ["a", "b", "c"] and run.manifest["stage_order"] == ["a", "b", "c"]
    assert not any(step.runs for step in plan(run, stages))
    check_finished(run, ["a", "b", "c"])
    # A missing marker reruns its stage and every stage downstream of it, not the others.
    run.remove("_stages/a.json")
    assert [s.stage.name for s in plan(run, stages) if s.runs] == ["a", "b"]
    # A changed config section reruns its stage; a downstream stage's fingerprint follows the upstream's.
    run_stages(run, stages)
    changed = Run(load_config(None, [f"output.path={tmp_path / 'run'}", "corpus.path=elsewhere"]))
    steps = {s.stage.name: s for s in plan(changed, stages)}
    assert steps["a"].runs and steps["b"].runs and steps["b"].fingerprint != run.marker("b")["fingerprint"]
    # The run's own files tell a stage older than its input, with no access to the input.
    run_stages(changed, stages, until="a")
    with pytest.raises(UserError, match="stage 'b' is out of date"):
        check_finished(changed, ["a", "b"])
    # A stage must not read a table no stage upstream of it writes.
    with pytest.raises(ValueError, match="stage c reads documents, written by a, which is not upstream of it"):
        plan(run, [stages[0], stage("c", reads=("documents",))])
