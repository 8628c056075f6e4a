"""Every job through `ray job submit --working-dir .` on a real two-node Ray cluster on loopback.

The cluster (`ray start --head` with its dashboard, plus one worker node) is
started here and stopped by pid even when a job fails. The jobs run the way
jobs/README.md tells users to: generate (no LLM) → publish → finetune (tiny
Llama, from the published copy) → evaluate (tiny Llama + its adapter, judged by
a scripted judge over loopback HTTP).
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import pyarrow.parquet as pq
import pytest
from ray.job_submission import JobSubmissionClient

from tests.support.openai_server import FakeOpenAIServer, prefers_longer
from tests.support.ray_cluster import BIN, RayCluster
from tests.support.runs import ROOT, journal_corpus, sets, user_error_lines

pytestmark = pytest.mark.slow

# What `--working-dir .` must not upload (the venv is GBs; runs are outputs).
RUNTIME_ENV = {"excludes": [".venv", "runs", ".git", "*.egg-info"], "env_vars": {"OMP_NUM_THREADS": "1"}}


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """The walkthrough's tiny student: drawn wide enough that its answers are words, not blank lines
    (evaluate counts blank answers as failed, and a failed answer is not judged)."""
    from examples.tiny_student import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("student"), init_std=0.1)


@pytest.fixture(scope="module")
def cluster():
    with RayCluster(num_cpus=1, workers=1, dashboard=True) as c:
        yield c
    c.cleanup()


def submit(cluster: RayCluster, job: str, *args: str, timeout: float = 900) -> tuple[str, str]:
    """`ray job submit` the job and wait; returns (final status, the job's logs)."""
    sid = f"{job}-{uuid.uuid4().hex[:8]}"
    cmd = [str(BIN / "ray"), "job", "submit", "--address", cluster.dashboard_url, "--submission-id", sid,
           "--working-dir", ".", "--runtime-env-json", json.dumps(RUNTIME_ENV), "--", "python", "-m", f"jobs.{job}", *args]
    deadline = time.monotonic() + 120
    while True:  # the head's job agent registers a little after the node is up
        r = subprocess.run(cmd, cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=timeout, check=False)
        if "No available agent" not in r.stderr or time.monotonic() > deadline:
            break
        time.sleep(2)
    client = JobSubmissionClient(cluster.dashboard_url)
    try:
        info = client.get_job_info(sid)
        # Ray's own word on a job that failed before its driver printed anything (e.g. its runtime env).
        return str(info.status.value), client.get_job_logs(sid) or f"(no logs) {info.message}"
    except RuntimeError:  # the submission itself failed: no such job
        return "NOT SUBMITTED", r.stdout + r.stderr


def test_generate_publish_finetune_evaluate_as_submitted_jobs(cluster, student, tmp_path):
    corpus = journal_corpus(tmp_path / "corpus", 8, start=12)
    run, published = tmp_path / "run", tmp_path / "published"
    common = ("chunking.size=200", "chunking.overlap=40", "synth.test_fraction=0.25")

    state, logs = submit(cluster, "generate", *sets(f"corpus.path={corpus}", f"output.path={run}", *common))
    assert state == "SUCCEEDED", logs[-3000:]
    assert f"generate finished: {run} " in logs
    # A log a person can read: ragtune's lines, no tracebacks, no Ray progress blocks or worker output.
    assert "Traceback" not in logs and "logging_progress" not in logs and "(pid=" not in logs, logs[-3000:]
    assert len(logs.splitlines()) <= 30, logs
    # The driver ran on the cluster and finished every stage.
    markers = {p.stem for p in (run / "_stages").glob("*.json")}
    assert {"ingest", "chunk", "graph", "reports", "synthesis"} <= markers
    assert pq.read_table(run / "qa").num_rows > 10

    state, logs = submit(cluster, "publish", "--run", str(run), "--to", str(published))
    assert state == "SUCCEEDED", logs[-3000:]
    m = json.loads((published / "manifest.json").read_text())
    qa_rows = sum(f["rows"] for f in m["files"] if f["table"] == "qa")
    assert qa_rows > 10 and pq.read_table(published / "qa").num_rows == qa_rows
    assert (published / "README.md").is_file()

    tuned = tmp_path / "student"
    state, logs = submit(cluster, "finetune", *sets(
        f"train.dataset={published}", f"train.model={student}", f"train.output={tuned}", "train.max_steps=2",
        "train.batch_tokens=256", "train.max_seq_len=256", "train.checkpoint_every=1", "ray.cpu_actors=1"))
    assert state == "SUCCEEDED", logs[-3000:]
    assert f"adapter in {tuned / 'student' / 'export' / 'adapter'}" in logs
    assert "Traceback" not in logs and "TrainingReport" not in logs, logs[-3000:]
    summary = json.loads((tuned / "student" / "export" / "summary.json").read_text())
    assert summary["step"] == 2 and (tuned / "student" / "export" / "adapter" / "adapter_config.json").is_file()

    with FakeOpenAIServer(prefers_longer) as judge:
        state, logs = submit(cluster, "evaluate", *sets(
            f"output.path={run}", *common, "student.engine=hf", f"student.model={student}",
            f"student.adapter={summary['adapter']}", "student.max_tokens=16", "judge.engine=openai", "judge.model=judge",
            f"judge.base_url={judge.base_url}", "judge.max_retries=0", "evaluate.systems=[student,base]",
            "evaluate.max_questions=3", "evaluate.bootstrap=100", f"evaluate.output={tmp_path / 'eval'}",
            "ray.cpu_actors=1"))
        judged = len(judge.requests)
    assert state == "SUCCEEDED", logs[-3000:]
    assert judged > 0 and (tmp_path / "eval" / "report.html").is_file()
    results = pq.read_table(tmp_path / "eval" / "results.parquet").to_pylist()
    assert any(r["metric"] == "win_rate" for r in results)


def test_a_relative_output_on_several_nodes_is_refused_at_start(cluster):
    """Under `--working-dir .` the job runs in Ray's copy of the checkout, a different folder on each node."""
    state, logs = submit(cluster, "generate", "--config", "configs/quickstart.yaml", timeout=300)
    assert state == "FAILED", logs[-3000:]
    errors = user_error_lines(logs)
    assert len(errors) == 1 and "output.path: 'runs/quickstart' is a relative local path" in errors[0], logs[-3000:]
    assert "on a cluster of 2 nodes" in errors[0] and "s3://" in errors[0]
    assert "[ingest] started" not in logs and "Traceback" not in logs
