"""Faults during a whole `generate`: a teacher that answers 30% of structured calls with
malformed JSON, a server that answers 429/500 or drops the connection, and an S3 store
that refuses one write. The run completes, every drop is counted in the manifest, and
the published qa table holds no row built from a malformed reply.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import pyarrow.parquet as pq
import pytest
import s3fs

from factory.config import load_config
from factory.generate import generate
from factory.pipeline import open_run
from factory.publish import publish
from tests.support import teacher
from tests.support.flaky_s3 import FlakyS3
from tests.support.openai_server import FakeOpenAIServer
from tests.support.runs import journal_corpus, teacher_settings
from tests.support.serve_openai import MALFORMED, FaultyTeacher

pytestmark = pytest.mark.slow


def test_run_survives_bad_teacher_bad_network_and_flaky_s3(ray_session, tmp_path):
    corpus = journal_corpus(tmp_path / "corpus", 6, start=30)
    with FlakyS3(lambda method, path: method == "PUT" and "/entities/" in path) as s3, \
            FakeOpenAIServer(FaultyTeacher()) as server:
        fs = s3fs.S3FileSystem(endpoint_url=s3.endpoint, skip_instance_cache=True)
        fs.mkdir("faults")
        cfg = load_config(None, [f"corpus.path={corpus}", "output.path=s3://faults/run", f"s3.endpoint_url={s3.endpoint}",
                                 "chunking.size=200", "chunking.overlap=40",
                                 *teacher_settings(server.base_url, max_retries=2, backoff_s=0.01)])
        run = generate(cfg)
        requests = list(server.requests)
        done = publish(open_run("s3://faults/run", cfg.s3), str(tmp_path / "published"), cfg.s3)
        manifest = run.manifest  # read from the run folder, while its S3 store is up

    # The S3 store refused one write; the client's retry wrote it.
    assert len(s3.injected) == 1

    # What the server did to each distinct call.
    first: dict[str, dict] = {}
    attempts: Counter = Counter()
    for r in requests:
        d = teacher.digest(r)
        first.setdefault(d, r)
        attempts[d] += 1
    kinds = defaultdict(set)
    for d, r in first.items():
        kinds[FaultyTeacher().kind(r)[0]].add(d)
    assert kinds["malformed"] and kinds["always_500"] and kinds["429"] and kinds["500"] and kinds["cut"]
    # Transient faults were retried (and succeeded); a call that always fails used every attempt (max_retries=2).
    # Each distinct prompt is one call: a malformed reply was requested once, an always-500 call 3 times.
    assert all(attempts[d] >= 2 for k in ("429", "500", "cut") for d in kinds[k])
    assert all(attempts[d] == 3 for d in kinds["always_500"]), attempts
    assert all(attempts[d] == 1 for d in kinds["malformed"]), attempts

    # Every drop is in the manifest: drops count rows, and no two rows of this corpus share a prompt,
    # so one invalid_output per malformed reply and one llm_error per exhausted call.
    drops: Counter = Counter()
    for stage in manifest["stages"].values():
        drops.update(stage["drops"])
    assert drops["invalid_output"] == len(kinds["malformed"]), (drops, len(kinds["malformed"]))
    assert drops["llm_error"] == len(kinds["always_500"]), (drops, len(kinds["always_500"]))

    # The published qa rows are whole, and none was built from a malformed or failed reply.
    qa = pq.read_table(tmp_path / "published" / "qa").to_pylist()
    assert qa and done.rows["qa"]["train"] + done.rows["qa"].get("test", 0) == len(qa)
    for row in qa:
        assert row["question"] and row["answer"], row["id"]
        assert MALFORMED not in repr(row) and "injected 500" not in repr(row)
