"""run_llm through the openai backend against a real loopback HTTP server with injected faults."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import defaultdict

import pyarrow.compute as pc
import pytest
from pydantic import BaseModel, SecretStr

from factory.config import EngineConfig, load_config, validate_config
from factory.engines import run_llm
from factory.engines.cache import CallCache
from factory.errors import UserError
from factory.pipeline import Run, StageRecord
from factory.pipeline.manifest import update_manifest
from tests.support.llm_calls import by_id, empty_run, engine, prompts, row_of
from tests.support.openai_server import FakeOpenAIServer, Fault


class Answer(BaseModel):
    answer: str
    score: int


def test_plain_run_keys_rows_by_id_and_counts_tokens(ray_session, tmp_path):
    with FakeOpenAIServer() as server:
        rec = StageRecord("t")
        out = by_id(run_llm(empty_run(tmp_path), rec, prompts(ray_session, 20), engine(server), "demo"))
    assert len(out) == 20
    for i in range(20):
        r = out[f"r{i}"]
        assert r["generated_text"] == f"echo: row {i}" and r["keep"] == i
        assert r["error"] is None and r["parsed"] is None
        assert (r["engine"], r["model"], r["input_tokens"], r["output_tokens"]) == ("openai", "m", 2, 3)
    assert rec.tokens == {"openai:m": {"input": 40, "output": 60, "calls": 20}}
    assert not rec.drops
    body = server.requests[0]
    assert body["model"] == "m" and body["max_tokens"] == 1024 and body["temperature"] == 0.0
    assert "response_format" not in body


def test_faults_every_row_ends_with_answer_or_error(ray_session, tmp_path):
    # Per row: the faults its successive attempts meet; after them the server answers.
    plans = {
        0: [Fault(status=429)], 1: [Fault(status=500), Fault(status=503)], 2: [Fault(delay_s=3.0)],
        3: [Fault(cut=True)], 4: [Fault(malformed=True)], 5: [Fault(status=500)] * 10,
        6: [Fault(status=400)] * 10, 7: [Fault(cut=True)] * 10,
    }
    seen: dict[int, int] = defaultdict(int)
    lock = threading.Lock()

    def responder(req):
        i = row_of(req)
        with lock:
            n = seen[i]
            seen[i] += 1
        plan = plans.get(i, [])
        return plan[n] if n < len(plan) else f"ok {i}"

    with FakeOpenAIServer(responder) as server:
        rec = StageRecord("t")
        out = by_id(run_llm(empty_run(tmp_path), rec, prompts(ray_session, 12), engine(server, timeout_s=1.0), "faults"))
    assert len(out) == 12
    for i in (0, 1, 2, 3, 4, 8, 9, 10, 11):
        assert out[f"r{i}"]["generated_text"] == f"ok {i}" and out[f"r{i}"]["error"] is None, out[f"r{i}"]
    assert out["r5"]["error"].startswith("llm_error: HTTP 500") and "gave up after 5 attempts" in out["r5"]["error"]
    assert out["r6"]["error"].startswith("llm_error: HTTP 400")
    assert out["r7"]["error"].startswith("llm_error: connection failed")
    assert all(out[f"r{i}"]["generated_text"] is None for i in (5, 6, 7))
    assert seen[5] == 5 and seen[6] == 1 and seen[0] == 2 and seen[1] == 3
    assert rec.drops == {"llm_error": 3}
    assert rec.tokens["openai:m"]["calls"] == 12


def test_structured_output_schema_repair_and_invalid(ray_session, tmp_path):
    replies = {
        0: '{"answer": "plain", "score": 1}',
        1: '<think>hmm {not this}</think>\n```json\n{"answer": "fenced", "score": 2,}\n```',
        2: 'Sure! Here it is: {"answer": "prose", "score": 3} Hope it helps.',
        3: '{"answer": "wrong type", "score": "high"}',
        4: "I cannot answer that.",
    }
    with FakeOpenAIServer(lambda req: replies[row_of(req)]) as server:
        rec = StageRecord("t")
        out = by_id(run_llm(empty_run(tmp_path), rec, prompts(ray_session, 5), engine(server), "structured", Answer))
    fmt = server.requests[0]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"] == Answer.model_json_schema()
    assert json.loads(out["r0"]["parsed"]) == {"answer": "plain", "score": 1}
    assert json.loads(out["r1"]["parsed"]) == {"answer": "fenced", "score": 2}
    assert json.loads(out["r2"]["parsed"]) == {"answer": "prose", "score": 3}
    for i in (3, 4):
        assert out[f"r{i}"]["parsed"] is None and out[f"r{i}"]["generated_text"] == replies[i]
        assert out[f"r{i}"]["error"].startswith("invalid_output: ")
    assert "score" in out["r3"]["error"]
    assert rec.drops == {"invalid_output": 2}


def test_identical_prompts_are_sent_once_and_answer_every_row(ray_session, tmp_path):
    # 24 rows, 6 distinct prompts, the copies spread over blocks and batches; prompt 5 always fails.
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"row {i % 6}"}]} for i in range(24)]
    random.Random(0).shuffle(rows)
    with FakeOpenAIServer(lambda req: Fault(status=400) if row_of(req) == 5 else f"ok {row_of(req)}") as server:
        rec = StageRecord("t")
        out = by_id(run_llm(empty_run(tmp_path), rec, ray_session.data.from_items(rows).repartition(4), engine(server), "dups"))
        sent = sorted(row_of(r) for r in server.requests)
    assert sent == [0, 1, 2, 3, 4, 5]
    assert len(out) == 24
    for i in range(24):
        r = out[f"r{i}"]
        if i % 6 == 5:
            assert r["generated_text"] is None and r["error"].startswith("llm_error: HTTP 400")
        else:
            assert r["generated_text"] == f"ok {i % 6}" and r["error"] is None
    # Tokens count calls; drops and row stats count rows.
    assert rec.tokens["openai:m"]["calls"] == 6
    assert rec.drops == {"llm_error": 4}
    assert rec.stats["llm"]["dups"] == {"rows": 24, "cache_hits": 0, "errors": 4}


def test_cache_resume_sends_only_missing_calls(ray_session, tmp_path):
    run = empty_run(tmp_path)
    fail = {3}

    def responder(req):
        return Fault(status=500) if row_of(req) in fail else f"a{row_of(req)}"

    with FakeOpenAIServer(responder) as server:
        cfg = engine(server, max_retries=0)
        first = by_id(run_llm(run, StageRecord("t"), prompts(ray_session, 6), cfg, "resume"))
        assert first["r3"]["error"].startswith("llm_error") and len(server.requests) == 6
        fail.clear()
        rec = StageRecord("t")
        # Same 6 rows plus 4 new ones: only the failed call and the new ones are sent.
        second = by_id(run_llm(run, rec, prompts(ray_session, 10), cfg, "resume"))
        sent = sorted(row_of(r) for r in server.requests[6:])
    assert sent == [3, 6, 7, 8, 9]
    assert all(second[f"r{i}"]["generated_text"] == f"a{i}" for i in range(10))
    assert rec.stats["llm"]["resume"] == {"rows": 10, "cache_hits": 5, "errors": 0}
    assert rec.tokens["openai:m"]["calls"] == 5
    cached = CallCache(run, "resume").load()
    assert cached.num_rows == 10 and pc.all(pc.is_null(cached.column("error"))).as_py()


def test_a_call_is_cached_when_it_finishes_not_when_its_batch_does(ray_session, tmp_path):
    run = empty_run(tmp_path)
    cache = CallCache(run, "durable")
    release = threading.Event()

    def responder(req):
        if row_of(req) == 0:  # one slow call holds its batch (and, in one block, the rest)
            release.wait(120)
        return f"a{row_of(req)}"

    out: dict = {}
    with FakeOpenAIServer(responder) as server:
        worker = threading.Thread(target=lambda: out.update(by_id(run_llm(
            run, StageRecord("t"), prompts(ray_session, 8).repartition(1), engine(server, batch_size=4), "durable"))))
        worker.start()
        try:
            deadline = time.monotonic() + 120
            while cache.load().num_rows < 7:
                assert worker.is_alive() and time.monotonic() < deadline, "finished calls never reached the cache"
                time.sleep(0.05)
            # Seven calls are in the cache while the eighth, from the same batch, still waits for its reply.
            early = sorted(cache.load().column("generated_text").to_pylist())
        finally:
            release.set()
            worker.join(120)
    assert early == [f"a{i}" for i in range(1, 8)]
    assert len(out) == 8 and cache.load().num_rows == 8


def test_calls_cached_in_an_s3_run_folder_are_not_sent_again(ray_session, s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    run = Run(validate_config({"output": {"path": f"s3://{bucket}/run"}, "s3": {"endpoint_url": endpoint}}))
    with FakeOpenAIServer() as server:
        first = by_id(run_llm(run, StageRecord("t"), prompts(ray_session, 10), engine(server, batch_size=3), "s3"))
        rec = StageRecord("t")
        again = by_id(run_llm(run, rec, prompts(ray_session, 10), engine(server, batch_size=3), "s3"))
        sent = len(server.requests)
    # The workers wrote every call to the bucket; the rerun found them all there.
    assert sent == 10 and again == first and rec.stats["llm"]["s3"]["cache_hits"] == 10
    assert CallCache(run, "s3").load().num_rows == 10


def test_sampling_overrides_and_prompt_hash_are_per_row(ray_session, tmp_path):
    rows = [
        {"id": "a", "messages": [{"role": "user", "content": "row 1"}], "max_tokens": 7, "temperature": 0.5,
         "prompt_hash": "p1"},
        {"id": "b", "messages": [{"role": "user", "content": "row 1"}], "max_tokens": None, "temperature": None,
         "prompt_hash": None},
    ]
    with FakeOpenAIServer() as server:
        out = by_id(run_llm(empty_run(tmp_path), StageRecord("t"), ray_session.data.from_items(rows),
                            engine(server), "no_such_prompt"))
        bodies = sorted((r["max_tokens"], r["temperature"]) for r in server.requests)
    # Same messages, different sampling: two different calls.
    assert bodies == [(7, 0.5), (1024, 0.0)]
    assert out["a"]["prompt_hash"] == "p1" and out["b"]["prompt_hash"] is None


def test_budget_stops_cleanly_and_keeps_what_finished(ray_session, tmp_path):
    run = empty_run(tmp_path)
    with FakeOpenAIServer(lambda req: Fault(delay_s=0.05, content="five words of answer here")) as server:
        rec = StageRecord("t")
        # Each call costs 2 + 5 = 7 tokens; one batch of 2 in flight at a time.
        cfg = engine(server, concurrency=1, batch_size=2, budget_tokens=30)
        out = by_id(run_llm(run, rec, prompts(ray_session, 20), cfg, "budget"))
        done = [r for r in out.values() if r["error"] is None]
        skipped = [r for r in out.values() if r["error"] is not None]
        assert 30 <= rec.tokens["openai:m"]["input"] + rec.tokens["openai:m"]["output"] < 30 + 7 * 8
        assert len(done) == rec.tokens["openai:m"]["calls"] and 4 <= len(done) < 20
        assert all(r["error"].startswith("budget_exhausted: token budget of 30") for r in skipped)
        assert rec.drops == {"budget_exhausted": len(skipped)} and rec.stats["budget_exhausted"] is True
        # The next call in the same stage sends nothing, and answers from the cache what finished, also
        # the calls that were in flight when the budget stopped the stream; a new stage record (rerun)
        # finishes the rest.
        before = len(server.requests)
        again = by_id(run_llm(run, rec, prompts(ray_session, 20), cfg, "budget"))
        cached = CallCache(run, "budget").load().num_rows
        assert len(server.requests) == before and sum(r["error"] is None for r in again.values()) == cached >= len(done)
        rest = by_id(run_llm(run, StageRecord("t"), prompts(ray_session, 20), cfg.model_copy(update={"budget_tokens": None}), "budget"))
        assert all(r["error"] is None for r in rest.values())
        assert len(server.requests) - before == 20 - cached


def test_qps_limit_spaces_requests(ray_session, tmp_path):
    with FakeOpenAIServer() as server:
        run_llm(empty_run(tmp_path), StageRecord("t"), prompts(ray_session, 11), engine(server, qps=20, concurrency=8), "qps")
        times = sorted(server.times)
    assert len(times) == 11 and times[-1] - times[0] >= 10 / 20 * 0.9


def test_api_key_from_env_sent_and_never_recorded(ray_session, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", "sk-secret-123")
    with FakeOpenAIServer(api_key="sk-secret-123") as server:
        cfg_file = tmp_path / "c.yaml"
        cfg_file.write_text(
            f"output: {{path: {tmp_path / 'run'}}}\n"
            f"teacher: {{engine: openai, model: m, base_url: '{server.base_url}', api_key: '${{TEST_LLM_KEY}}', backoff_s: 0}}\n"
        )
        cfg = load_config(cfg_file)
        run = Run(cfg)
        rec = StageRecord("t")
        out = run_llm(run, rec, prompts(ray_session, 3), cfg.teacher, "keyed").take_all()
        update_manifest(run, stages={"t": {"tokens": rec.tokens}})
        assert all(r["error"] is None for r in out)
        assert server.headers[0]["Authorization"] == "Bearer sk-secret-123"
        files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
        assert files and not any(b"sk-secret-123" in p.read_bytes() for p in files)
        wrong = cfg.teacher.model_copy(update={"api_key": SecretStr("sk-wrong")})
        with pytest.raises(UserError, match="rejected the API key") as err:
            run_llm(run, rec, prompts(ray_session, 3, start=10), wrong, "keyed")
        assert "sk-wrong" not in str(err.value)


def test_unreachable_server_and_engine_none(ray_session, tmp_path):
    from tests.conftest import free_port

    cfg = EngineConfig(engine="openai", model="m", base_url=f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(UserError, match="cannot reach"):
        run_llm(empty_run(tmp_path), StageRecord("t"), prompts(ray_session, 2), cfg, "x")
    with pytest.raises(ValueError, match="engine 'none'"):
        run_llm(empty_run(tmp_path), StageRecord("t"), prompts(ray_session, 2), EngineConfig(), "x")


def test_slow_server_is_used_concurrently(ray_session, tmp_path):
    """Calls overlap up to `concurrency` and no further: the server holds every reply until 8 rows are
    in flight at once (calls sent one by one never get there, and the wait gives up after 20 s; the
    client's timeout is longer, so no retry adds a request)."""
    lock = threading.Condition()
    flight = {"rows": set(), "peak": 0, "full": False}

    def hold_until_full(req):
        with lock:
            flight["rows"].add(row_of(req))
            flight["peak"] = max(flight["peak"], len(flight["rows"]))
            flight["full"] = flight["full"] or len(flight["rows"]) == 8
            lock.notify_all()
            if not lock.wait_for(lambda: flight["full"], timeout=20):
                flight["full"] = True  # gave up: let the rest through and fail below
            flight["rows"].discard(row_of(req))
        return "late"

    with FakeOpenAIServer(hold_until_full) as server:
        out = run_llm(empty_run(tmp_path), StageRecord("t"), prompts(ray_session, 16),
                      engine(server, concurrency=8, batch_size=4, timeout_s=60.0), "slow").take_all()
        sent = len(server.requests)
    assert len(out) == 16 and all(r["generated_text"] == "late" for r in out)
    assert flight["peak"] == 8 and sent == 16
