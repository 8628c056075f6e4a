"""Ingest + chunk on a real local Ray: formats, dedup, bad input, S3, HF datasets, resume."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from factory.config import load_config
from factory.errors import UserError
from factory.generate import generate
from jobs.generate import main as generate_main


def cfg_for(corpus, out, *extra):
    return load_config(None, [f"corpus.path={corpus}", f"output.path={out}", *extra])


def read(out, table):
    return pq.read_table(out / table).to_pylist()


def run_main(capsys, *args):
    code = generate_main(list(args))
    return code, capsys.readouterr().err


@pytest.fixture
def mixed_corpus(tmp_path):
    c = tmp_path / "corpus"
    c.mkdir()
    (c / "2025-03-03.md").write_text("# Monday 3 March 2025\n\nI cooked a lentil and squash curry with Tomas Eriksen.\n")
    (c / "copy.md").write_text("# Monday 3 March 2025\n\nI cooked a lentil and squash curry with Tomas Eriksen.\n")
    (c / "note.txt").write_text("Priya Nair sent the Old Mill Gardens drawings   to Greenline Studio.\r\n\r\n\r\n\r\nDone.")
    (c / "page.html").write_text(
        "<html><head><title>Saltmarsh Bay</title><script>var hidden = 1;</script></head>"
        "<body><h1>Trip</h1><p>We walked along Saltmarsh Bay at dawn with Felix.</p></body></html>"
    )
    (c / "records.jsonl").write_text(
        json.dumps({"text": "Jonah Webb called from Edinburgh about his graduation in June.", "title": "call", "date": "2025-06-01", "mood": "happy"})
        + "\n{not json\n"
        + json.dumps({"body": "no text field here"}) + "\n"
    )
    (c / "latin1.txt").write_bytes("caf\xe9 au lait with Aunt Rosa in Brackley Cross".encode("latin-1"))
    (c / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200))
    return c


def test_formats_normalization_dedup_and_counts(ray_session, mixed_corpus, tmp_path):
    out = tmp_path / "run"
    run = generate(cfg_for(mixed_corpus, out), until="chunk")
    docs = {d["source"].rsplit("/", 1)[-1]: d for d in read(out, "documents")}
    assert set(docs) == {"2025-03-03.md", "note.txt", "page.html", "records.jsonl:1"}
    md = docs["2025-03-03.md"]
    assert md["title"] == "Monday 3 March 2025" and md["date"] == "2025-03-03"
    assert docs["note.txt"]["text"] == "Priya Nair sent the Old Mill Gardens drawings to Greenline Studio.\n\nDone."
    html = docs["page.html"]
    assert html["title"] == "Saltmarsh Bay" and "Saltmarsh Bay at dawn" in html["text"] and "hidden" not in html["text"]
    rec = docs["records.jsonl:1"]
    assert rec["date"] == "2025-06-01" and json.loads(rec["metadata"]) == {"mood": "happy"}
    assert all(d["id"].startswith("doc-") and d["n_chars"] == len(d["text"]) for d in docs.values())

    stage = run.marker("ingest")
    assert stage["drops"] == {
        "exact_duplicate": 1, "malformed_jsonl": 1, "missing_text": 1, "not_utf8": 1, "unsupported_file": 1,
    }
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["ingest"]["drops"]["not_utf8"] == 1
    assert manifest["config_hash"] == run.cfg.hash
    chunks = read(out, "chunks")
    assert {c["document_id"] for c in chunks} == {d["id"] for d in docs.values()}
    meta = pq.read_schema(next((out / "chunks").glob("*.parquet"))).metadata
    assert meta[b"ragtune.config_hash"] == run.cfg.hash.encode()


def test_near_duplicates_removed(ray_session, tmp_path):
    c = tmp_path / "c"
    c.mkdir()
    base = " ".join(f"On day {i} Mara walked Felix along the Calder River and wrote notes." for i in range(40))
    (c / "a.txt").write_text(base)
    (c / "b.txt").write_text(base.replace("day 39", "day 41"))
    (c / "c.txt").write_text("A completely different entry about pottery class on Thursday with Bea Sutherland.")
    out = tmp_path / "run"
    run = generate(cfg_for(c, out), until="ingest")
    assert sorted(d["source"].rsplit("/", 1)[-1] for d in read(out, "documents")) == ["a.txt", "c.txt"]
    assert run.marker("ingest")["drops"] == {"near_duplicate": 1}
    generate(cfg_for(c, tmp_path / "run2", "dedup.near=false"), until="ingest")
    assert len(read(tmp_path / "run2", "documents")) == 3


def test_signatures_and_near_duplicates_match_datasketch():
    """The batch MinHash and the banding on the signature array decide what datasketch's MinHash and
    MinHashLSH decide (a datasketch release that changes its scheme fails here, not silently)."""
    import random

    import numpy as np
    from datasketch import MinHash, MinHashLSH

    from factory.ingest import dedup_keys, minhash_signatures

    rng = random.Random(3)
    words = [f"w{i}" for i in range(300)]
    texts = [" ".join(rng.choices(words, k=rng.randint(1, 120))) for _ in range(150)] + ["", "one two"]
    for i in range(60):  # near copies: a word or two changed
        w = texts[i].split()
        w[rng.randrange(len(w))] = "changed"
        texts.append(" ".join(w))
    cfg = load_config(None, [])
    n, k = cfg.dedup.num_perm, cfg.dedup.shingle_words
    sigs = minhash_signatures(texts, n, k)
    for text, sig in zip(texts, sigs):
        words_ = text.lower().split()
        mh = MinHash(num_perm=n, seed=1, scheme="affine64")
        mh.update_batch([" ".join(words_[i:i + k]).encode() for i in range(max(1, len(words_) - k + 1))])
        assert np.array_equal(mh.hashvalues, sig)

    ids = [f"d{i % 200}" for i in range(len(texts))]  # some exact duplicates too
    sources = [f"s{i:04d}" for i in range(len(texts))]
    lsh, keep, exact, near = MinHashLSH(threshold=cfg.dedup.threshold, num_perm=n), set(), 0, 0
    seen = set()
    for i in range(len(texts)):
        if ids[i] in seen:
            exact += 1
            continue
        mh = MinHash(num_perm=n, seed=1, hashvalues=sigs[i], scheme="affine64")
        if lsh.query(mh):
            near += 1
            continue
        lsh.insert(sources[i], mh)
        seen.add(ids[i])
        keep.add(f"{ids[i]}@{sources[i]}")
    assert near > 10 and exact > 0
    assert dedup_keys(ids, sources, sigs, cfg) == (keep, exact, near)


def test_resume_skips_and_changes_rerun(ray_session, journal, tmp_path, capsys):
    corpus = tmp_path / "journal"
    shutil.copytree(journal, corpus)
    out = tmp_path / "run"
    generate(cfg_for(corpus, out), until="chunk")
    first = {p: (out / "_stages" / p).read_text() for p in ("ingest.json", "chunk.json")}
    capsys.readouterr()
    generate(cfg_for(corpus, out), until="chunk")
    err = capsys.readouterr().err
    assert "[ingest] up to date" in err and "[chunk] up to date" in err
    # A chunking change reruns chunk only.
    generate(cfg_for(corpus, out, "chunking.size=200", "chunking.overlap=50"), until="chunk")
    err = capsys.readouterr().err
    assert "[ingest] up to date" in err and "[chunk] started" in err
    assert max(c["n_tokens"] for c in read(out, "chunks")) <= 200
    # A changed input reruns both.
    (corpus / "2025-07-01.md").write_text("# Tuesday 1 July 2025\n\nA new entry about the Ferryman pub with Tomas.\n")
    generate(cfg_for(corpus, out, "chunking.size=200", "chunking.overlap=50"), until="chunk")
    err = capsys.readouterr().err
    assert "[ingest] started" in err and len(read(out, "documents")) == 61
    assert (out / "_stages" / "ingest.json").read_text() != first["ingest.json"]


def test_on_error_fail_names_the_file(ray_session, mixed_corpus, tmp_path, capsys):
    code, err = run_main(capsys, "--set", f"corpus.path={mixed_corpus}", "--set", f"output.path={tmp_path / 'r'}",
                         "--set", "corpus.on_error=fail")
    assert code == 2
    errors = [l for l in err.splitlines() if l.startswith("ragtune: error:")]
    assert len(errors) == 1 and "(corpus.on_error=fail)" in errors[0] and str(mixed_corpus) in errors[0]
    assert not (tmp_path / "r" / "_stages" / "ingest.json").exists()


@pytest.mark.parametrize("case", ["missing", "empty", "binary_only", "not_utf8_only"])
def test_bad_input_is_one_line(ray_session, tmp_path, capsys, case):
    c = tmp_path / "c"
    if case != "missing":
        c.mkdir()
    if case == "binary_only":
        (c / "blob.txt").write_bytes(bytes(range(256)) * 10)
    if case == "not_utf8_only":
        (c / "x.txt").write_bytes(b"\xff\xfe\xfa not utf8 at all \xe9\xe9")
    code, err = run_main(capsys, "--set", f"corpus.path={c}", "--set", f"output.path={tmp_path / 'r'}")
    assert code == 2, err
    lines = [l for l in err.splitlines() if l.startswith("ragtune: error:")]
    assert len(lines) == 1 and str(c) in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "r" / "_stages" / "ingest.json").exists()


def test_huge_single_line_file_is_skipped_and_counted(ray_session, tmp_path):
    c = tmp_path / "c"
    c.mkdir()
    with open(c / "huge.txt", "w") as f:
        for _ in range(50):
            f.write("x" * (1 << 20))  # 50 MB, one line
    (c / "ok.txt").write_text("A normal note about the Old Mill Gardens and silver birch trees.")
    out = tmp_path / "r"
    run = generate(cfg_for(c, out), until="chunk")
    assert run.marker("ingest")["drops"] == {"too_large": 1}
    assert len(read(out, "documents")) == 1


def test_s3_corpus_and_output(ray_session, s3_bucket, journal, tmp_path, monkeypatch):
    import s3fs

    endpoint, bucket = s3_bucket
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    fs = s3fs.S3FileSystem(endpoint_url=endpoint)
    for p in sorted(journal.glob("*.md"))[:5]:
        fs.put(str(p), f"{bucket}/corpus/{p.name}")
    cfg = cfg_for(f"s3://{bucket}/corpus", f"s3://{bucket}/runs/r1")
    run = generate(cfg, until="chunk")
    assert run.marker("chunk") is not None
    files = fs.ls(f"{bucket}/runs/r1/documents")
    assert [f.rsplit("/", 1)[-1] for f in files] == ["train-00000-of-00001.parquet"]
    with fs.open(files[0], "rb") as f:
        assert pq.read_table(f).num_rows == 5


def test_s3_missing_bucket_and_no_credentials(ray_session, s3_server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    code, err = run_main(capsys, "--set", "corpus.path=s3://no-such-bucket-here/x", "--set", f"output.path={tmp_path / 'r'}")
    assert code == 2 and "no-such-bucket-here" in err and "does not exist" in err
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    code, err = run_main(capsys, "--set", "corpus.path=s3://some-bucket/x", "--set", f"output.path={tmp_path / 'r'}")
    assert code == 2 and "credentials" in err and "Traceback" not in err


def test_hf_dataset_saved_to_disk(ray_session, tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({
        "content": ["Tomas Eriksen opened Flour & Ember on Quay Road.", "Mara ran the Harwick Half Marathon in 2:04:37."],
        "day": ["2025-04-12", "2025-05-18"],
    })
    ds.save_to_disk(str(tmp_path / "hf"))
    out = tmp_path / "r"
    generate(cfg_for(tmp_path / "hf", out, "corpus.text_field=content", "corpus.date_field=day"), until="chunk")
    docs = sorted(read(out, "documents"), key=lambda d: d["date"])
    assert [d["date"] for d in docs] == ["2025-04-12", "2025-05-18"]
    assert [d["source"] for d in docs] == [f"{tmp_path / 'hf'}#0", f"{tmp_path / 'hf'}#1"]
    assert "Flour & Ember" in docs[0]["text"]


def test_parquet_corpus_with_wrong_text_field(ray_session, tmp_path, capsys):
    import pyarrow as pa

    pq.write_table(pa.table({"body": ["one two three four five six"]}), tmp_path / "x.parquet")
    code, err = run_main(capsys, "--set", f"corpus.path={tmp_path / 'x.parquet'}", "--set", f"output.path={tmp_path / 'r'}")
    assert code == 2 and "corpus.text_field 'text' is not a column" in err


def in_a_task(ray, fn) -> None:
    ray.get(ray.remote(fn).remote(None))


def in_a_ray_data_udf(ray, fn) -> None:
    ray.data.range(2).map_batches(fn).materialize()


@pytest.mark.parametrize("where", [in_a_task, in_a_ray_data_udf])
def test_a_user_error_raised_in_a_ray_worker_is_one_line_and_other_errors_propagate(ray_session, capsys, where):
    """What every stage relies on: a UserError raised on a Ray worker, which Ray wraps, reaches the
    user as one `ragtune: error:` line and exit 2; any other exception is not swallowed."""
    from factory.errors import cli_entry

    def unreadable(_):
        raise UserError("corpus/a.md: cannot read:\n  permission denied")

    def broken(_):
        raise ValueError("a bug")

    @cli_entry
    def job(fn) -> int:
        where(ray_session, fn)
        return 0

    with pytest.raises(ValueError, match="a bug") as raised:
        job(broken)
    assert not isinstance(raised.value, UserError)
    assert job(unreadable) == 2
    assert capsys.readouterr().err == "ragtune: error: corpus/a.md: cannot read: permission denied\n"


def test_parquet_sources_are_file_rows_across_row_groups(ray_session, tmp_path):
    """Each record's source is its row in the file, across row groups, so two identical texts
    in different row groups never share a dedup key: the exact duplicate is dropped."""
    import pyarrow as pa

    texts = [f"Entry {i}: I walked to the harbour with Mina and counted {i} boats." for i in range(9)]
    texts[7] = texts[1]  # same text, other row group, same position within it
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    pq.write_table(pa.table({"text": texts}), corpus / "notes.parquet", row_group_size=3)
    out = tmp_path / "run"
    generate(cfg_for(corpus, out, "dedup.near=false"), until="ingest")
    docs = read(out, "documents")
    sources = sorted(d["source"] for d in docs)
    assert sources == sorted(f"{corpus / 'notes.parquet'}#{i}" for i in range(9) if i != 7)
    marker = json.loads((out / "_stages" / "ingest.json").read_text())
    assert marker["drops"] == {"exact_duplicate": 1}


def test_unreadable_parquet_file_is_skipped_and_counted(ray_session, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "broken.parquet").write_bytes(b"not a parquet file")
    (corpus / "2025-03-03.md").write_text("# Monday\n\nI cooked a lentil curry with Tomas Eriksen.\n")
    out = tmp_path / "run"
    generate(cfg_for(corpus, out), until="ingest")
    assert [d["source"] for d in read(out, "documents")] == [str(corpus / "2025-03-03.md")]
    assert json.loads((out / "_stages" / "ingest.json").read_text())["drops"] == {"unreadable_parquet": 1}

    code, err = run_main(capsys, "--set", f"corpus.path={corpus}", "--set", f"output.path={tmp_path / 'r'}",
                         "--set", "corpus.on_error=fail")
    errors = [line for line in err.splitlines() if line.startswith("ragtune: error:")]
    assert code == 2 and errors == [f"ragtune: error: {corpus / 'broken.parquet'}: unreadable parquet (corpus.on_error=fail)"]
    assert "Traceback" not in err
