"""Publishing: validation, the card, the loadable run folder, local and S3 destinations, atomicity.

The runs here are built through the real `Run.write_table` and the real stage
markers of every stage in `factory.generate.STAGES` (with stand-in stage
functions), so completeness and fingerprints are checked exactly as for a run
that `generate` made, without depending on the other stages' code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import schemas
from factory.card import write_card
from factory.config import S3Config
from factory.errors import UserError
from factory.generate import STAGES
from factory.pipeline import Run, open_run, run_stages
from factory.pipeline.folder import ReadOnlyRun
from factory.publish import data_files, publish
from factory.snapshot import snapshot
from tests.support.finished_run import GRAPH, finished_run, qa_rows, rewrite_qa
from tests.support.flaky_s3 import FlakyS3

@pytest.fixture
def run(tmp_path, journal) -> Run:
    return finished_run(tmp_path / "run", journal)


def test_snapshot_validates_and_counts(run):
    snap = snapshot(run)
    rows = snap.rows()
    assert rows["qa"] == {"test": 5, "train": 23}
    assert set(rows) == {"qa", *GRAPH}
    # 23 train rows at 10 rows per shard: three Hub-style shards.
    assert [s.name.split("-of-")[0] for s in snap.shards if s.table == "qa" and s.split == "train"] == [
        "qa/train-00000", "qa/train-00001", "qa/train-00002"]
    assert snap.kinds["local"] == {"train": 6, "test": 2}
    assert len(snap.samples) == 3 and len({r["kind"] for r in snap.samples}) == 3


def test_run_folder_loads_with_datasets(run):
    from datasets import load_dataset

    write_card(run)
    root = run.root
    qa = load_dataset(root, "qa")
    assert {k: v.num_rows for k, v in qa.items()} == {"train": 23, "test": 5}
    assert qa["train"][0]["messages"][1]["role"] == "user"
    assert load_dataset(root)["train"].num_rows == 23  # qa is the default config
    for table in GRAPH:
        assert load_dataset(root, table)["train"].num_rows == run.read_arrow(table).num_rows


def test_card_front_matter_and_body(run):
    write_card(run)
    text = Path(run.root, "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["license"] == "cc-by-4.0" and meta["language"] == ["en"]
    assert meta["size_categories"] == ["n<1K"]
    assert "question-answering" in meta["task_categories"]
    qa = next(c for c in meta["configs"] if c["config_name"] == "qa")
    assert qa["default"] is True
    assert {d["split"]: d["path"] for d in qa["data_files"]} == {"train": "qa/train-*.parquet", "test": "qa/test-*.parquet"}
    for needle in ("journal", "rule-based (no LLM)", "openai/teacher-7b", "too_short", "retrieval_recall@5",
                   "| local | 6 | 2 |", "How to load", "zstd"):
        assert needle in body, needle


def test_empty_split_is_left_out_of_the_configs(run):
    from datasets import load_dataset

    run.write_table("qa", schemas.schema_of("qa").empty_table(), "test")
    run.write_table("relationships", schemas.schema_of("relationships").empty_table())
    snap = write_card(run)
    assert snap.rows()["qa"]["test"] == 0
    assert {k: v.num_rows for k, v in load_dataset(run.root, "qa").items()} == {"train": 23}
    meta = yaml.safe_load(Path(run.root, "README.md").read_text().split("---\n")[1])
    assert "relationships" not in {c["config_name"] for c in meta["configs"]}


def test_refuses_incomplete_run(run, tmp_path, capsys):
    from jobs.publish import main

    os.remove(Path(run.root, "_stages", f"{STAGES[-1].name}.json"))
    with pytest.raises(UserError, match=f"incomplete run: stage '{STAGES[-1].name}' has not finished"):
        publish(open_run(run.root), str(tmp_path / "out"))
    assert main(["--run", run.root, "--to", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ragtune: error:") and "\n" not in err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_refuses_stale_stage(run, tmp_path):
    m = json.loads(Path(run.root, "_stages", f"{STAGES[0].name}.json").read_text())
    m["fingerprint"] = "0" * 16
    Path(run.root, "_stages", f"{STAGES[0].name}.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match="out of date"):
        snapshot(open_run(run.root))


@pytest.mark.parametrize("damage, message", [
    ("null", "column 'question' has 1 nulls"),
    ("extra", "undeclared columns"),
    ("garbage", "not a readable Parquet file"),
    ("missing_shard", "has 2 shards, expected 3"),
])
def test_refuses_invalid_table(run, damage, message):
    folder = Path(run.root, "qa")
    shard = folder / "train-00001-of-00003.parquet"
    good = pq.read_table(shard)
    if damage == "null":
        bad = good.set_column(good.schema.get_field_index("question"), "question",
                              pa.array([None] + good.column("question").to_pylist()[1:], pa.string()))
        pq.write_table(bad.cast(bad.schema.remove_metadata()), shard)
    elif damage == "extra":
        pq.write_table(good.append_column("secret", pa.array(["x"] * good.num_rows)), shard)
    elif damage == "garbage":
        shard.write_bytes(b"not parquet at all")
    else:
        shard.unlink()
    with pytest.raises(UserError, match=message):
        snapshot(open_run(run.root))


def test_refuses_row_count_disagreeing_with_manifest(run):
    shard = Path(run.root, "qa", "test-00000-of-00001.parquet")
    pq.write_table(pq.read_table(shard).slice(0, 2), shard)
    with pytest.raises(UserError, match="has 2 rows, the manifest says 5"):
        snapshot(open_run(run.root))


def test_publishes_with_its_corpus_gone_and_opened_read_only(tmp_path, journal):
    corpus = tmp_path / "journal"
    shutil.copytree(journal, corpus)
    run = finished_run(tmp_path / "run", corpus)
    shutil.rmtree(corpus)  # the run's own files are all publish reads
    ro = open_run(run.root)
    assert publish(ro, str(tmp_path / "out")).changed
    with pytest.raises(ReadOnlyRun):
        ro.write_table("qa", qa_rows(1, "train", "x"))


def test_refuses_a_stage_older_than_the_stage_it_reads(tmp_path, journal):
    corpus = tmp_path / "journal"
    shutil.copytree(journal, corpus)
    run = finished_run(tmp_path / "run", corpus)
    (corpus / "2030-01-01.md").write_text("# A new day\n\nA new entry.\n")
    # `generate --until ingest` after the corpus changed: chunk and the rest were made from the old documents.
    run_stages(run, [dataclasses.replace(s, fn=lambda run, rec: None) for s in STAGES], until="ingest")
    with pytest.raises(UserError, match="stage 'chunk' is out of date"):
        snapshot(open_run(run.root))


def test_publish_local_is_atomic_versioned_and_idempotent(run, tmp_path, journal):
    from datasets import load_dataset

    dest = tmp_path / "pub"
    first = publish(open_run(run.root), str(dest))
    assert first.changed
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["version"] == first.version
    for key in ("schema_versions", "config_hash", "config", "packages", "prompts", "roles", "stages", "counts"):
        assert key in manifest, key
    assert {"ragtune", "ray", "transformers", "peft"} <= set(manifest["packages"])
    assert manifest["roles"]["teacher"]["engine"] == "none"
    assert {f["path"] for f in manifest["files"]} == {
        str(p.relative_to(dest)) for p in dest.rglob("*.parquet")}
    assert load_dataset(str(dest), "qa")["test"].num_rows == 5
    assert [p.rsplit("/", 1)[1][:20] for p in data_files(str(dest))["train"]] == [
        "train-00000-of-00003", "train-00001-of-00003", "train-00002-of-00003"]
    assert data_files(run.root)["test"] == [f"{run.root}/qa/test-00000-of-00001.parquet"]

    # The same run again: nothing is written.
    mtimes = {p: p.stat().st_mtime_ns for p in dest.rglob("*")}
    again = publish(open_run(run.root), str(dest))
    assert not again.changed and again.version == first.version
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*")} == mtimes

    # New qa rows: a new version; unchanged graph shards keep their names, old qa shards go.
    rewrite_qa(run, "v2", n_train=12)
    second = publish(open_run(run.root), str(dest))
    assert second.changed and second.version != first.version
    qa = load_dataset(str(dest), "qa")
    assert qa["train"].num_rows == 12 and qa["train"][0]["id"].startswith("v2-")
    assert len(list((dest / "qa").glob("train-*.parquet"))) == 2
    assert all(p.exists() for p in mtimes if p.suffix == ".parquet" and p.parent.name in GRAPH)
    assert not list(dest.glob(".staging-*"))


def test_refuses_foreign_destination(run, tmp_path):
    dest = tmp_path / "someone-else"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a ragtune dataset"):
        publish(open_run(run.root), str(dest))
    with pytest.raises(UserError, match="is the run folder itself"):
        publish(open_run(run.root), run.root)


# ---- S3 ------------------------------------------------------------------------------
def _s3(endpoint: str) -> S3Config:
    return S3Config(endpoint_url=endpoint)


def _read_s3_glob(endpoint: str, pattern: str) -> pa.Table:
    """What a plain pyarrow reader of the glob sees."""
    import pyarrow.dataset as pds
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True, use_listings_cache=False)
    files = sorted(fs.glob(pattern[len("s3://"):]))
    return pds.dataset(files, filesystem=fs, format="parquet").to_table() if files else None


def test_publish_to_s3_reads_back_with_datasets_and_pyarrow(run, s3_bucket):
    from datasets import load_dataset

    endpoint, bucket = s3_bucket
    dest = f"s3://{bucket}/datasets/journal"
    done = publish(open_run(run.root), dest, _s3(endpoint))
    assert done.changed
    opts = {"client_kwargs": {"endpoint_url": endpoint}}
    qa = load_dataset("parquet", data_files={"train": f"{dest}/qa/train-*.parquet",
                                             "test": f"{dest}/qa/test-*.parquet"}, storage_options=opts)
    assert {k: v.num_rows for k, v in qa.items()} == {"train": 23, "test": 5}
    for table in ("qa", *GRAPH):
        got = _read_s3_glob(endpoint, f"{dest}/{table}/*.parquet")
        local = pa.concat_tables([run.read_arrow(table, s) for s in ("train", "test") if run.has_table(table, s)])
        assert got.num_rows == local.num_rows, table
        assert got.schema.remove_metadata().equals(schemas.schema_of(table).remove_metadata()), table
    assert not publish(open_run(run.root), dest, _s3(endpoint)).changed


class Refusing:
    """Which writes the loopback S3 refuses (503 SlowDown, to every retry), switched on between publishes."""

    def __init__(self, path_has: str, staging: bool):
        self.path_has, self.staging, self.on = path_has, staging, False

    def __call__(self, method: str, path: str) -> bool:
        return self.on and method == "PUT" and self.path_has in path and ("/.staging-" in path) == self.staging


@pytest.fixture
def refusing_s3(monkeypatch, request):
    """(FlakyS3 server, a fresh bucket on it, its Refusing switch): an upload into the staging folder
    (`staging=True`) or a copy into place (`staging=False`) of the qa train shard 2 keeps failing while on."""
    import s3fs

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries: s3fs still retries a 503 five times
    refuse = Refusing("/qa/train-00002", staging=request.param)
    with FlakyS3(refuse, times=10**6) as s3:
        bucket = f"refusing-{request.node.name[5:25].replace('_', '-')}"
        s3fs.S3FileSystem(endpoint_url=s3.endpoint, skip_instance_cache=True).mkdir(bucket)
        yield s3, bucket, refuse


@pytest.mark.parametrize("refusing_s3", [True], indirect=True)
def test_s3_upload_failing_halfway_keeps_previous_version(run, refusing_s3):
    """A publish that cannot upload one shard: the previous version stays whole and nothing new shows."""
    import s3fs
    from datasets import load_dataset

    s3, bucket, refuse = refusing_s3
    endpoint, dest = s3.endpoint, f"s3://{bucket}/journal"
    v1 = publish(open_run(run.root), dest, _s3(endpoint)).version
    rewrite_qa(run, "v2", n_train=31)

    refuse.on = True
    with pytest.raises(UserError, match="reduce your request rate"):
        publish(open_run(run.root), dest, _s3(endpoint))
    assert len({p for _, p in s3.injected}) == 1 and "/qa/train-00002-of-00004-" in s3.injected[0][1]

    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True, use_listings_cache=False)
    manifest = json.loads(fs.cat_file(f"{bucket}/journal/manifest.json"))
    assert manifest["version"] == v1
    # Every reader still sees v1: the manifest's files, the card's configs and a bare glob.
    assert {f["path"] for f in manifest["files"]} == {
        p.split("/journal/", 1)[1] for p in fs.find(f"{bucket}/journal") if p.endswith(".parquet") and "/.staging-" not in p}
    glob_rows = _read_s3_glob(endpoint, f"{dest}/qa/train-*.parquet").column("id").to_pylist()
    assert len(glob_rows) == 23 and all(i.startswith("v1-") for i in glob_rows)

    refuse.on = False
    v2 = publish(open_run(run.root), dest, _s3(endpoint))
    assert v2.changed and v2.version != v1
    qa = load_dataset("parquet", data_files=f"{dest}/qa/train-*.parquet",
                      storage_options={"client_kwargs": {"endpoint_url": endpoint}})["train"]
    assert qa.num_rows == 31 and set(qa["id"][:1])  == {"v2-train-0"}
    assert not [p for p in fs.find(f"{bucket}/journal") if "/.staging-" in p]


@pytest.mark.parametrize("refusing_s3", [False], indirect=True)
def test_s3_crash_while_moving_into_place_keeps_manifest_readers_on_previous(run, refusing_s3):
    """Failing after the upload, while moving new shards into their folders: readers that follow the
    manifest or the card still get exactly the previous version (bare globs may see the extra new
    files until the next publish sweeps them: docs/publishing.md), and a retry completes."""
    import s3fs
    from datasets import load_dataset

    s3, bucket, refuse = refusing_s3
    endpoint, dest = s3.endpoint, f"s3://{bucket}/journal"
    opts = {"client_kwargs": {"endpoint_url": endpoint}}
    v1 = publish(open_run(run.root), dest, _s3(endpoint)).version
    v1_files = data_files(dest, "qa", _s3(endpoint))
    rewrite_qa(run, "v2", n_train=31)

    refuse.on = True
    with pytest.raises(UserError, match="reduce your request rate"):
        publish(open_run(run.root), dest, _s3(endpoint))
    assert len({p for _, p in s3.injected}) == 1 and "/qa/train-00002-of-00004-" in s3.injected[0][1]
    assert data_files(dest, "qa", _s3(endpoint)) == v1_files
    qa = load_dataset("parquet", data_files=v1_files, storage_options=opts)
    assert qa["train"].num_rows == 23 and set(qa["train"]["id"]) == {f"v1-train-{i}" for i in range(23)}

    refuse.on = False
    v2 = publish(open_run(run.root), dest, _s3(endpoint))
    assert v2.version != v1
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True, use_listings_cache=False)
    listed = sorted(f"s3://{p}" for p in fs.glob(f"{bucket}/journal/qa/*.parquet"))
    assert listed == sorted(sum(data_files(dest, "qa", _s3(endpoint)).values(), []))


def test_run_on_s3_publishes_to_a_local_folder(s3_bucket, journal, tmp_path):
    from datasets import load_dataset

    endpoint, bucket = s3_bucket
    run = finished_run(f"s3://{bucket}/runs/journal", journal, s3={"endpoint_url": endpoint})
    done = publish(open_run(run.root, _s3(endpoint)), str(tmp_path / "pub"))
    assert done.rows["qa"] == {"train": 23, "test": 5}
    qa = load_dataset(str(tmp_path / "pub"), "qa")
    assert qa["train"].num_rows == 23 and qa["test"][0]["id"] == "v1-test-0"


def test_cli_publish_and_card_in_place(run, tmp_path, capsys):
    from factory.cli import main

    assert main(["publish", "--run", run.root]) == 0
    assert Path(run.root, "README.md").exists()
    assert main(["publish", "--run", run.root, "--to", str(tmp_path / "out")]) == 0
    assert "published (version" in capsys.readouterr().err
    assert main(["publish", "--run", str(tmp_path / "nope"), "--to", str(tmp_path / "out")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
