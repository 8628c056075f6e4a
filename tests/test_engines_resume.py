"""A driver killed with SIGKILL mid-run: the rerun sends only the calls that never reached the cache."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from factory.engines import run_llm
from factory.engines.cache import CallCache
from factory.pipeline import StageRecord
from tests.conftest import ROOT
from tests.support.openai_server import FakeOpenAIServer, Fault
from tests.support.llm_calls import by_id, engine, empty_run, prompts, row_of

ROWS = 40
DRIVER = """
import sys
import ray
sys.path.insert(0, {root!r})
ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir={tmp!r}, logging_level="ERROR")
from factory.engines import run_llm
from factory.pipeline import StageRecord
from tests.support.openai_server import FakeOpenAIServer
from tests.support.llm_calls import engine, empty_run, prompts
import pathlib

class Server:  # only base_url is needed: the real server lives in the test process
    base_url = {url!r}

run_llm(empty_run(pathlib.Path({path!r})), StageRecord("t"), prompts(ray, {rows}), engine(Server, concurrency=2, batch_size=2), "kill").take_all()
"""


@pytest.mark.slow
def test_sigkill_mid_run_repeats_only_in_flight_calls(ray_session, tmp_path):
    run = empty_run(tmp_path)
    cache = CallCache(run, "kill")
    with FakeOpenAIServer(lambda req: Fault(delay_s=0.15, content="done")) as server:
        script = tmp_path / "driver.py"
        ray_tmp = tempfile.mkdtemp(prefix="rk-")  # short: Ray's socket paths must fit 107 bytes
        script.write_text(textwrap.dedent(DRIVER.format(
            root=str(ROOT), tmp=ray_tmp, url=server.base_url, path=str(tmp_path), rows=ROWS)))
        proc = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 240
        try:
            while len(cache.files()) < 4:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "the driver never wrote to the cache"
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
            proc.wait()
            shutil.rmtree(ray_tmp, ignore_errors=True)
        time.sleep(1.0)  # requests already in the server's socket buffers are still recorded
        first = [row_of(r) for r in server.requests]
        cached = cache.load().num_rows
        assert 0 < cached < ROWS and len(first) < ROWS

        rec = StageRecord("t")
        out = by_id(run_llm(run, rec, prompts(ray_session, ROWS), engine(server, concurrency=2, batch_size=2), "kill"))
        again = [row_of(r) for r in server.requests[len(first):]]
    assert all(r["generated_text"] == "done" for r in out.values()) and len(out) == ROWS
    assert len(again) == ROWS - cached and rec.stats["llm"]["kill"]["cache_hits"] == cached
    # Repeated calls are those sent before the kill whose block had not reached the cache:
    # at most two batches of two per actor plus a block on its way to the driver.
    repeated = set(first) & set(again)
    assert len(repeated) == len(first) - cached <= 8
