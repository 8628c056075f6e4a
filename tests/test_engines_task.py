"""LLMTask's contract, through run_llm and the openai backend against a loopback server: rows become
messages from the task's prompt file, replies become the task's columns, and a failed call is counted
once (by run_llm) and then kept with its error or left out, as the task says."""

from __future__ import annotations

import json
import re

import pyarrow as pa
from pydantic import BaseModel

from factory.config import EngineConfig
from factory.engines import enabled
from factory.engines.task import LLMTask
from factory.pipeline import StageRecord
from tests.support.openai_server import FakeOpenAIServer, Fault
from tests.support.llm_calls import engine, empty_run


class Note(BaseModel):
    ok: bool
    note: str = ""


class Summarize(LLMTask):
    name = "task_demo"
    prompt_file = "summarize_descriptions"
    output_model = Note
    fields = {"note": pa.string()}
    drop = ("descriptions",)

    def parse(self, row: dict, reply: Note) -> dict | None:
        if row["title"] == "skip":
            return None
        return {"note": reply.note} if reply.ok else {"error": "declined: not ok"}


class SummarizeKeepingFailures(Summarize):
    keep_failed = True
    lineage = False


def reply(request: dict) -> str | Fault:
    title = re.search(r'describe "([^"]+)"', request["messages"][-1]["content"]).group(1)
    if title == "garbage":
        return "no JSON here"
    if title == "down":
        return Fault(status=400)
    return json.dumps({"ok": title != "no", "note": f"about {title}"})


TITLES = ["a", "b", "garbage", "down", "no", "skip"]


def rows() -> list[dict]:
    return [{"id": f"r{i}", "title": t, "kind": "thing", "max_words": 9, "descriptions": f"- {t} notes", "other": i}
            for i, t in enumerate(TITLES)]


def test_rows_become_messages_and_replies_become_columns(ray_session, tmp_path):
    with FakeOpenAIServer(reply) as server:
        rec = StageRecord("t")
        out = {r["title"]: r for r in Summarize().run_rows(empty_run(tmp_path), rec, rows(), engine(server, max_retries=0))}
        sent = server.requests
    # The prompt file filled with each row's values; its hash in every row it produced.
    users = sorted(r["messages"][-1]["content"] for r in sent)
    assert len(sent) == len(TITLES) and 'describe "a" (thing)' in users[0] and "at most 9 words" in users[0]
    assert sent[0]["response_format"]["json_schema"]["name"] == "Note"
    # Failed calls are left out, so is the row parse refused; a declared refusal keeps its own error.
    assert set(out) == {"a", "b", "no"}
    assert out["a"]["note"] == "about a" and out["a"]["error"] is None and out["a"]["other"] == 0
    assert out["no"]["note"] is None and out["no"]["error"] == "declined: not ok"
    assert (out["a"]["engine"], out["a"]["model"]) == ("openai", "m") and out["a"]["prompt_hash"]
    assert not {"messages", "generated_text", "parsed", "descriptions"} & set(out["a"])
    # Engine errors counted once, by kind, by run_llm.
    assert rec.drops == {"invalid_output": 1, "llm_error": 1}
    assert rec.stats["llm"]["task_demo"] == {"rows": 6, "cache_hits": 0, "errors": 2}


def test_kept_failures_carry_their_error_and_calls_come_from_the_cache(ray_session, tmp_path):
    run = empty_run(tmp_path)
    with FakeOpenAIServer(reply) as server:
        cfg = engine(server, max_retries=0)
        Summarize().run_rows(run, StageRecord("t"), rows(), cfg)
        first = len(server.requests)
        rec = StageRecord("t")
        out = {r["title"]: r for r in SummarizeKeepingFailures().run_rows(run, rec, rows(), cfg)}
        # Successes and invalid outputs are cached; only the failed transport call is sent again.
        assert len(server.requests) == first + 1
    assert set(out) == {"a", "b", "garbage", "down", "no"}
    assert out["garbage"]["error"].startswith("invalid_output:") and out["garbage"]["note"] is None
    assert out["down"]["error"].startswith("llm_error: HTTP 400")
    assert not {"engine", "model", "prompt_hash"} & set(out["a"])
    assert rec.drops == {"invalid_output": 1, "llm_error": 1}


def test_enabled_is_the_one_answer_to_is_there_an_llm():
    assert not enabled(None) and not enabled(EngineConfig())
    assert enabled(EngineConfig(engine="hf", model="m")) and EngineConfig(engine="hf", model="m").enabled
