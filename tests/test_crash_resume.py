"""Crash-resume: `generate` with the openai teacher, SIGKILLed half way through its LLM calls, then rerun:
no row lost or duplicated, and at most 1% of the calls answered before the kill are sent again.

The teacher is a separate process (tests.support.serve_openai) that logs every
call's arrival and reply, so it outlives the killed driver and can say which
calls were sent twice. The drivers connect to one Ray head started for this
module, the way jobs run on a cluster.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from tests.support.ray_cluster import kill_tree
from tests.support.runs import (
    ROOT,
    events,
    job,
    journal_corpus,
    rows_by_id,
    sets,
    teacher_process,
    teacher_settings,
)

pytestmark = pytest.mark.slow


def test_generate_killed_half_way_resumes_without_loss(cluster, tmp_path):
    corpus = journal_corpus(tmp_path / "corpus", 4, start=20)
    log, hold = tmp_path / "requests.jsonl", tmp_path / "hold"
    with teacher_process(log, delay_s=0.2, hold=hold) as url:
        def args(out: str) -> list[str]:
            return sets(f"corpus.path={corpus}", f"output.path={tmp_path / out}", "chunking.size=200",
                        "chunking.overlap=40", *teacher_settings(url, batch_size=8))

        # Batches of eight: a call must be cached when it finishes, not when its batch does.
        # The reference: one uninterrupted run.
        done = job("generate", *args("full"), env=cluster.env)
        assert done.returncode == 0, done.stderr[-3000:]
        full = events(log)
        calls = {e["digest"] for e in full if e["event"] == "arrive"}
        assert len(calls) > 40
        start = len(full)

        # The same run, killed once half of its calls were answered: from then on the teacher holds
        # every new request (in flight at the kill); the kill comes when the calls it was already
        # answering are done and no reply has gone out for half a second.
        proc = subprocess.Popen([sys.executable, "-m", "jobs.generate", *args("crashed")], cwd=ROOT, env=cluster.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            while len({e["digest"] for e in events(log)[start:] if e["event"] == "done"}) < len(calls) // 2:
                assert proc.poll() is None, "generate finished before it could be killed"
                time.sleep(0.05)
            hold.touch()
            held_from = time.time()
            while True:
                now = events(log)[start:]
                quiet = time.time() - max(e["t"] for e in now if e["event"] == "done") >= 0.5
                if quiet and any(e["event"] == "arrive" and e["t"] > held_from for e in now):
                    break
                assert proc.poll() is None, "generate finished before it could be killed"
                time.sleep(0.05)
            killed_at = time.time()
            assert proc.poll() is None, "generate finished before it could be killed"
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            kill_tree([proc.pid])
            proc.wait()
            hold.unlink(missing_ok=True)
        time.sleep(3)  # let the dead job's actors go
        before = events(log)[start:]
        restart = start + len(before)
        resumed = job("generate", *args("crashed"), env=cluster.env)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        after = events(log)[restart:]

    # The resumed run's qa table is the uninterrupted run's, row for row, with no duplicates.
    ref, got = rows_by_id(tmp_path / "full", "qa"), rows_by_id(tmp_path / "crashed", "qa")
    assert len(ref) > 20 and got == ref
    for table in ("chunks", "entities", "relationships", "communities", "community_reports"):
        assert rows_by_id(tmp_path / "crashed", table) == rows_by_id(tmp_path / "full", table), table

    # The server: nothing answered before the crash was asked again, beyond the calls in flight.
    finished = {e["digest"] for e in before if e["event"] == "done" and e["t"] < killed_at}
    in_flight = {e["digest"] for e in before if e["event"] == "arrive"} - finished
    again = Counter(e["digest"] for e in after if e["event"] == "arrive")
    repeated = finished & set(again)
    assert len(finished) >= len(calls) // 2 and in_flight
    summary = [line for line in resumed.stderr.splitlines() if line.startswith("ragtune:")]
    assert len(repeated) <= 0.01 * len(finished), (len(repeated), len(finished), summary)
    assert set(again) == (calls - finished) | repeated  # the rest
    # No call was sent more often than the uninterrupted run sent it (the engine sends identical
    # prompts of one task once per row, so a digest may legitimately arrive more than once).
    reference = Counter(e["digest"] for e in full if e["event"] == "arrive")
    assert all(n <= reference[d] for d, n in again.items())
    sent = sum(1 for e in before + after if e["event"] == "arrive")
    assert sent <= sum(reference.values()) + len(in_flight) + len(repeated)
