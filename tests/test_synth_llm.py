"""Synthesis with a scripted teacher and judge over loopback HTTP: parse, retry, filter."""

from __future__ import annotations

import json
import re
import threading
from collections import Counter

import pytest

from factory.config import validate_config
from factory.pipeline import Run, Stage
from factory.synth import synthesize
from tests.conftest import JOURNAL
from tests.support.openai_server import FakeOpenAIServer, Fault
from tests.test_synth import journal_chunks  # noqa: F401  (module fixture: chunks + stand-in graph)

SYSTEM_OPENINGS = {
    "You write training questions": "local_question",
    "You answer questions about a person's": "local_answer",
    "You answer questions about one subject": "entity_answer",
    "You answer questions about how two": "relationship_answer",
    "You write evaluation and training": "global_questions",
    "You help answer a question": "global_map",
    "You are an assistant with a personal memory of a private corpus as a whole": "global_reduce",
    "You judge training data": "groundedness",
}


def task_of(request: dict) -> str:
    system = request["messages"][0]["content"]
    for opening, task in SYSTEM_OPENINGS.items():
        if opening in system:
            return task
    raise AssertionError(f"unknown prompt: {system[:80]}")


def first_line_after(text: str, marker: str) -> str:
    return text.split(marker, 1)[1].strip().split("\n", 1)[0].strip()


class Teacher:
    """Scripted replies per task; the first call of every local answer fails once with a 500."""

    def __init__(self):
        self.lock = threading.Lock()
        self.failed: set[str] = set()
        self.calls = Counter()

    def __call__(self, req: dict):
        task = task_of(req)
        user = req["messages"][-1]["content"]
        with self.lock:
            self.calls[task] += 1
            if task == "local_answer" and user not in self.failed:
                self.failed.add(user)
                return Fault(status=500)
        return getattr(self, task)(user)

    def local_question(self, user: str) -> str:
        label = first_line_after(user, "Passage (").rstrip("):")
        focus = first_line_after(user, "Focus:").split(" (")[0]
        if "February" in label:
            return json.dumps({"declined": True, "question": "", "reasoning": "too thin"})
        if "Aunt Rosa" in focus:
            return "I would rather not answer in JSON."
        return json.dumps({"declined": False, "question": f"What did I do with {focus} in {label}?", "reasoning": "it says so"})

    def local_answer(self, user: str) -> str:
        passage = user.split("Retrieved passages:", 1)[1].strip().split("\n")
        # The first sentence of the first retrieved passage (line 0 is its "[chunk id] label" header).
        body = next(line for line in passage[1:] if line.strip() and not line.startswith("#"))
        sentence = re.split(r"(?<=[.!?])\s+", body)[0]
        return json.dumps({"reasoning": f"The passage says: {sentence}", "answer": sentence})

    def entity_answer(self, user: str) -> str:
        desc = first_line_after(user, "Description:")
        return json.dumps({"reasoning": f"My notes describe it: {desc}", "answer": desc})

    def relationship_answer(self, user: str) -> str:
        desc = first_line_after(user, "Relationship description:")
        return "```json\n" + json.dumps({"reasoning": f"Both appear: {desc}", "answer": desc}) + "\n```"

    def global_questions(self, user: str) -> str:
        persona = first_line_after(user, "Persona:")
        return json.dumps({"questions": [f"As {persona}, how did my walks and meals change over time?"]})

    def global_map(self, user: str) -> str:
        reports = re.findall(r"\[report (\d+)\] ([^\n]+)\n([^\n]*)", user)
        points = [{"description": f"{title.split(' (')[0]}: {summary}", "score": 60 if i == 0 else 0, "reports": [int(n)]}
                  for i, (n, title, summary) in enumerate(reports)]
        return json.dumps({"points": points})

    def global_reduce(self, user: str) -> str:
        point = first_line_after(user, "(score 0-100):")
        return json.dumps({"reasoning": "One point stands out.", "answer": f"Overall: {point}"})

    def groundedness(self, user: str) -> str:
        answer = user.split("Answer:", 1)[1].strip()
        if answer.startswith("Overall"):
            return "no score today"  # invalid output: the judge fails on global rows
        return json.dumps({"score": len(answer) % 11, "reason": "scripted"})


def llm_cfg(out, server, **synth):
    engine = {"engine": "openai", "model": "teacher", "base_url": server.base_url, "backoff_s": 0.01,
              "max_retries": 2, "concurrency": 4, "batch_size": 8}
    return validate_config({
        "corpus": {"path": str(JOURNAL)}, "output": {"path": str(out)}, "ray": {"cpu_actors": 1},
        "teacher": engine, "judge": {**engine, "model": "judge"},
        "synth": {"global_questions": 2, "unanswerable_fraction": 0.1, "test_fraction": 0.2, "reasoning": "inline",
                  "personas": ["a friend", "a coach"], "keep_top_fraction": 0.5, "min_groundedness": 0.0, **synth},
    })


@pytest.fixture(scope="module")
def llm_run(journal_chunks, tmp_path_factory):  # noqa: F811
    teacher = Teacher()
    with FakeOpenAIServer(teacher) as server:
        run = Run(llm_cfg(tmp_path_factory.mktemp("synth-llm"), server))
        src = Run(validate_config({"output": {"path": str(journal_chunks)}}))
        for name in ("chunks", "entities", "relationships", "communities", "community_reports"):
            run.write_table(name, src.read_arrow(name))
        run.run_stage(Stage("synthesis", synthesize), "test")
        requests = list(server.requests)
    return run, teacher, requests


def test_llm_paths_parse_retry_and_filter(llm_run):
    run, teacher, requests = llm_run
    rows = run.read_arrow("qa").to_pylist()
    stage = run.manifest["stages"]["synthesis"]
    drops = stage["drops"]
    kinds = Counter(r["kind"] for r in rows)
    # Global rows all lost their judge call (invalid output), so none survive; the rest do.
    assert set(kinds) == {"local", "entity", "relationship", "unanswerable"}, kinds
    assert drops["question_declined"] > 0  # the February passages
    assert drops["invalid_output"] > 0  # Aunt Rosa questions and the judge's global replies
    assert drops["below_keep_top_fraction"] > 0
    assert stage["stats"]["llm"]["groundedness"]["errors"] == stage["stats"]["questions"]["global"] > 0
    # Every local answer call failed once with a 500 and was retried to success.
    assert stage["stats"]["llm"]["local_answer"]["errors"] == 0
    assert teacher.calls["local_answer"] == 2 * stage["stats"]["llm"]["local_answer"]["rows"]
    for r in rows:
        assert r["messages"][2]["content"].endswith(f"\n\nAnswer: {r['answer']}")  # reasoning inline
        if r["kind"] == "unanswerable":
            continue
        assert (r["engine"], r["model"], r["question_source"]) == ("openai", "teacher", "llm" if r["kind"] == "local" else "template")
        assert r["prompt_hash"] and r["judge_score"] is not None
    local = [r for r in rows if r["kind"] == "local"]
    assert local and all("February" not in r["question"] and "Aunt Rosa" not in r["question"] for r in local)


def test_local_answers_come_from_chunks_retrieved_for_the_question(llm_run):
    run, _, requests = llm_run
    chunks = {c["id"]: c["text"] for c in run.read_arrow("chunks").to_pylist()}
    asked = {}
    for req in requests:
        if task_of(req) == "local_answer":
            user = req["messages"][-1]["content"]
            asked[first_line_after(user, "Question:")] = re.findall(r"\[chunk ([^\]]+)\]", user)
    local = [r for r in run.read_arrow("qa").to_pylist() if r["kind"] == "local"]
    for r in local:
        assert asked[r["question"]] == r["evidence_chunk_ids"] and len(r["evidence_chunk_ids"]) == run.cfg.synth.top_k
        assert r["retrieved_source"] == (r["source_chunk_id"] in r["evidence_chunk_ids"])
        assert r["answer"] in chunks[r["evidence_chunk_ids"][0]]
