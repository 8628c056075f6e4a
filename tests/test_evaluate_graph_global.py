"""graph_global, the evaluated GraphRAG global search, with a scripted LLM over loopback HTTP on the journal's
real community reports: answered questions are built from the reports' key points; a question whose map calls
all fail is an error that says how many failed. (The walkthrough's tiny random student writes no JSON, so
there every graph_global question fails; this is where an answered one is checked.)"""

from __future__ import annotations

from collections import Counter

from factory.config import EngineConfig, validate_config
from factory.evaluate.systems import graph_global_answers
from factory.pipeline import Run, StageRecord
from tests.support import teacher
from tests.support.openai_server import FakeOpenAIServer

QUESTIONS = [{"id": "q1", "question": "What changed most over the whole period?"},
             {"id": "q2", "question": "Which patterns recur across everything?"},
             {"id": "q3", "question": "What is never written down?"}]


def question_of(request: dict) -> str:
    return teacher.line_after(request["messages"][-1]["content"], "Question:")


def map_fails_for_q3(request: dict) -> str:
    if teacher.schema_name(request) == "MapOut" and question_of(request) == QUESTIONS[2]["question"]:
        return "Nothing in these reports, sorry."  # not JSON: every map call of q3 fails
    return teacher.reply(request)


def test_graph_global_answers_from_the_community_reports_and_counts_failed_map_calls(journal_chunks, tmp_path):
    src = Run(validate_config({"output": {"path": str(journal_chunks)}}))
    run = Run(validate_config({"output": {"path": str(tmp_path / "eval")}}))
    summaries = [r["summary"] for r in src.read_arrow("community_reports").to_pylist()]
    with FakeOpenAIServer(map_fails_for_q3) as server:
        engine = EngineConfig(engine="openai", model="m", base_url=server.base_url, backoff_s=0.01, max_retries=0)
        out = graph_global_answers(run.cfg, run, src, QUESTIONS, engine, StageRecord("answer"))
        maps = Counter(question_of(r) for r in server.requests if teacher.schema_name(r) == "MapOut")
    for q in QUESTIONS[:2]:
        # The scripted map keeps each report's summary as a point; the reduce answers with the first two.
        answer, used = out[q["id"]]["answer"], [s for s in summaries if s in out[q["id"]]["answer"]]
        assert out[q["id"]]["error"] is None and len(used) == 2, answer
        assert not answer.replace(used[0], "").replace(used[1], "").strip()
    failed, total = maps[QUESTIONS[2]["question"]], sum(maps.values())
    assert failed and total > failed and out["q3"]["answer"] is None
    assert out["q3"]["error"] == ("no_key_points: the map step over the community reports found no key points "
                                  f"({failed} of {total} map calls failed)")
