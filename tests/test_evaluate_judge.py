"""The pairwise judge through the real engine layer, against a scripted judge on loopback HTTP."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pytest

import schemas
from factory.config import EngineConfig, validate_config
from factory.evaluate import judge
from factory.pipeline import Run, StageRecord
from tests.support.openai_server import FakeOpenAIServer

CRITERIA = ["usefulness", "insightfulness"]


def _answers(n: int) -> pa.Table:
    rows = []
    for i in range(n):
        for system, text in (("student", f"GOOD answer {i}"), ("base", f"plain answer {i}"), ("naive_rag", f"rag {i}")):
            rows.append({"question_id": f"q{i}", "kind": "local" if i % 2 else "global", "system": system,
                         "question": f"Question {i}?", "answer": text, "reference": "ref", "error": None})
    rows.append({"question_id": "q0", "kind": "global", "system": "broken", "question": "Question 0?", "answer": None,
                 "reference": "ref", "error": "llm_error: down"})
    return pa.Table.from_pylist(rows, schema=schemas.schema_of("eval_answers"))


def _shown(request: dict) -> tuple[list[str], str, str]:
    text = request["messages"][-1]["content"]
    criteria = re.search(r"Judge these criteria: (.+)", text).group(1).split(", ")
    a = re.search(r"Answer A:\n(.*?)\n\nAnswer B:", text, re.S).group(1)
    b = re.search(r"Answer B:\n(.*?)\n\nJudge these", text, re.S).group(1)
    return criteria, a, b


def always_a(request: dict) -> str:
    criteria, _, _ = _shown(request)
    return json.dumps({c: {"winner": "A", "reason": "It comes first."} for c in criteria})


def prefers_good(request: dict) -> str:
    criteria, a, b = _shown(request)
    if "rag" in a or "rag" in b:  # malformed verdicts for this pair: must not count as anything
        return "I think A is better, no JSON here"
    winner = "A" if "GOOD" in a else "B" if "GOOD" in b else "tie"
    return json.dumps({c: {"winner": winner, "reason": "Marked good."} for c in criteria})


def _judge(tmp_path, responder, name: str) -> tuple[pa.Table, StageRecord, FakeOpenAIServer]:
    cfg = validate_config({"output": {"path": str(tmp_path / "run")}})
    run = Run(cfg, root=str(tmp_path / name))
    rec = StageRecord("judge")
    pairs = judge.system_pairs(["student", "base", "naive_rag", "broken"], "student", False)
    with FakeOpenAIServer(responder) as server:
        engine = EngineConfig(engine="openai", model="fake-judge", base_url=server.base_url, max_retries=0)
        table = judge.judge(run, rec, _answers(4), pairs, CRITERIA, engine)
    return table, rec, server


def test_a_judge_that_always_prefers_position_a_yields_ties(ray_session, tmp_path):
    table, rec, server = _judge(tmp_path, always_a, "eval")
    # 4 questions x 2 pairs with answers on both sides (broken failed) x 2 orders
    assert len(server.requests) == 16
    rows = table.to_pylist()
    assert len(rows) == 4 * 2 * len(CRITERIA)
    assert {r["winner_ab"] for r in rows} == {"A"} and {r["winner_ba"] for r in rows} == {"A"}
    assert {r["outcome"] for r in rows} == {"tie"} and all(r["reason_ab"] == "It comes first." for r in rows)
    results = judge.win_rates(table, 200)
    wins = [r for r in results if r["metric"] == "win_rate"]
    assert wins and all(r["wins_a"] == 0 and r["wins_b"] == 0 and r["value"] == 0.5 for r in wins)
    assert all(r["value"] == 0.0 for r in results if r["metric"] == "judge_agreement")


def test_a_content_judge_gives_wins_and_bad_json_is_an_error(ray_session, tmp_path):
    table, rec, server = _judge(tmp_path, prefers_good, "eval2")
    rows = table.to_pylist()
    vs_base = [r for r in rows if r["system_b"] == "base"]
    vs_rag = [r for r in rows if r["system_b"] == "naive_rag"]
    assert {r["outcome"] for r in vs_base} == {"a"} and {(r["winner_ab"], r["winner_ba"]) for r in vs_base} == {("A", "B")}
    assert all(r["outcome"] is None and r["error"].startswith("invalid_output") for r in vs_rag)
    assert rec.drops["judge_error"] == 4 * len(CRITERIA)
    results = judge.win_rates(table, 200)
    every = {(r["system_b"], r["criterion"]): r for r in results if r["metric"] == "win_rate" and r["kind"] == "all"}
    assert set(every) == {("base", c) for c in CRITERIA}
    assert every[("base", "usefulness")]["value"] == 1.0 and every[("base", "usefulness")]["wins_a"] == 4
    # a rerun is answered from the run's call cache: no new request reaches the server
    again, _, server2 = _judge(tmp_path, prefers_good, "eval2")
    assert len(server2.requests) == 0
    assert again.column("outcome").to_pylist() == table.column("outcome").to_pylist()


def test_requests_skip_pairs_with_a_failed_answer():
    reqs = judge.requests(_answers(1), [("student", "broken"), ("student", "base")], CRITERIA, with_reference=True)
    assert len(reqs) == 2 and "Reference answer" in reqs[0]["messages"][-1]["content"]


@pytest.fixture(autouse=True)
def _no_network_proxy(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
