"""Synthesis with a scripted teacher and judge over loopback HTTP: what each prompt shows, parsing,
retries, drops. The teacher (tests.support.teacher) answers only from what its prompt shows: a local
answer comes from the prompt's source-passage section alone, so a hidden source chunk would show up
as refusals and unsupported answers here."""

from __future__ import annotations

import json
import re
import threading
from collections import Counter

import pytest

from factory.config import validate_config
from factory.pipeline import Run, Stage, run_stage
from factory.synth import synthesize
from factory.text import support
from tests.conftest import JOURNAL
from tests.support import teacher
from tests.support.openai_server import FakeOpenAIServer, Fault

FRIENDS_GLOBAL = "As a friend, how did things around"
HEX_ID = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{16}\b")


def user_of(request: dict) -> str:
    return request["messages"][-1]["content"]


class Teacher:
    """The scripted teacher behind faults: the first call of every local answer fails with a 500;
    local questions about Aunt Rosa come back as prose (invalid output); passages from February are
    declined; the judge's replies about the global training questions written for the friend persona are
    not JSON (those for the coach are judged, so their answers reach the table and are checked)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.failed: set[str] = set()
        self.calls = Counter()

    def __call__(self, req: dict):
        task = teacher.schema_name(req) or "text"
        user = user_of(req)
        with self.lock:
            self.calls[task] += 1
            if task == "LocalAnswerOut" and user not in self.failed:
                self.failed.add(user)
                return Fault(status=500)
        if task == "LocalQuestionOut":
            if "February" in teacher.line_after(user, "Passage ("):
                return json.dumps({"declined": True, "question": "", "reasoning": "too thin"})
            if teacher.line_after(user, "Focus:").startswith("Aunt Rosa"):
                return "I would rather not answer in JSON."
        if task == "JudgeOut" and teacher.line_after(user, "Question:").startswith(FRIENDS_GLOBAL):
            return "no score today"
        return teacher.reply(req)


def llm_cfg(out, server, **synth):
    engine = {"engine": "openai", "model": "teacher", "base_url": server.base_url, "backoff_s": 0.01,
              "max_retries": 2, "concurrency": 4, "batch_size": 8}
    return validate_config({
        "corpus": {"path": str(JOURNAL)}, "output": {"path": str(out)}, "ray": {"cpu_actors": 1},
        "teacher": engine, "judge": {**engine, "model": "judge"},
        "synth": {"global_questions": 2, "hard_global_questions": 2, "unanswerable_fraction": 0.1, "test_fraction": 0.2,
                  "reasoning": "inline", "personas": ["a friend", "a coach"], "local_per_chunk": 2,
                  "community_questions": 2, **synth},
    })


@pytest.fixture(scope="module")
def llm_run(journal_chunks, tmp_path_factory):
    scripted = Teacher()
    with FakeOpenAIServer(scripted) as server:
        run = Run(llm_cfg(tmp_path_factory.mktemp("synth-llm"), server))
        src = Run(validate_config({"output": {"path": str(journal_chunks)}}))
        for name in ("chunks", "entities", "relationships", "communities", "community_reports"):
            run.write_table(name, src.read_arrow(name))
        run_stage(run, Stage("synthesis", synthesize))
        requests = list(server.requests)
    return run, scripted, requests


def test_local_answers_are_written_from_their_source_chunk(llm_run):
    run, _, requests = llm_run
    chunks = {c["id"]: c["text"] for c in run.read_arrow("chunks").to_pylist()}
    local = [r for r in run.read_arrow("qa").to_pylist() if r["kind"] == "local"]
    assert len(local) >= 20
    prompts = {teacher.line_after(user_of(q), "Question:"): user_of(q) for q in requests
               if teacher.schema_name(q) == "LocalAnswerOut"}
    for r in local:
        source = chunks[r["source_chunk_id"]]
        assert support(r["answer"], source) >= 0.8, (r["question"], r["answer"])
        assert r["question_source"] == "llm" and r["evidence_chunk_ids"][0] == r["source_chunk_id"]
        assert r["retrieved_source"] is not None and len(r["evidence_chunk_ids"]) <= run.cfg.synth.top_k + 1
        # What the answerer saw: the source passage, the focus's description, the question writer's
        # reasoning and the passages retrieved for the question, labelled by title, never by id.
        prompt = prompts[r["question"]]
        shown = teacher.section(prompt, "Source passage", "About ")
        assert shown and source.strip().splitlines()[-1] in shown
        assert "The question writer's reasoning: " in prompt and "(none)" not in teacher.line_after(prompt, "reasoning:")
        assert teacher.section(prompt, "Other passages retrieved") and not HEX_ID.search(prompt)
    assert "refused" not in run.manifest["stages"]["synthesis"]["drops"]


def test_a_prompt_without_its_source_is_refused():
    """The control for the test above: the scripted teacher cannot answer what it is not shown."""
    prompt = ("Question: What happened with Quay Road on Monday 3 February 2025?\n\nThe question writer's reasoning: x\n\n"
              "Source passage (the question was written from it):\nPassage (Monday 3 February 2025):\nRain all day.\n\n"
              "About Quay Road: a street.\n\nOther passages retrieved for the question:\n"
              "Passage 1 (Friday):\nTomas signed the lease on Quay Road.")
    request = {"messages": [{"role": "user", "content": prompt}],
               "response_format": {"json_schema": {"name": "LocalAnswerOut"}}}
    assert json.loads(teacher.reply(request))["answerable"] is False


def test_llm_paths_parse_retry_and_filter(llm_run):
    run, scripted, requests = llm_run
    rows = run.read_arrow("qa").to_pylist()
    stage = run.manifest["stages"]["synthesis"]
    drops, llm = stage["drops"], stage["stats"]["llm"]
    kinds = Counter((r["kind"], r["question_source"]) for r in rows)
    assert kinds[("entity", "template")] and kinds[("entity", "llm")] and kinds[("relationship", "llm")], kinds
    assert not [r for r in rows if r["question"].startswith(FRIENDS_GLOBAL)]  # the judge failed those
    assert drops["question_declined"] > 0  # the February passages
    assert drops["invalid_output"] > 0  # Aunt Rosa questions and the judge's global replies
    friends = {user_of(q) for q in requests if teacher.schema_name(q) == "JudgeOut"
               and teacher.line_after(user_of(q), "Question:").startswith(FRIENDS_GLOBAL)}
    assert friends and llm["groundedness"]["errors"] == len(friends)
    # Every local answer call failed once with a 500 and was retried to success.
    assert llm["local_answer"]["errors"] == 0
    assert scripted.calls["LocalAnswerOut"] == 2 * llm["local_answer"]["rows"]
    for r in rows:
        assert r["messages"][2]["content"].endswith(f"\n\nAnswer: {r['answer']}") or not r["reasoning"]
        assert not HEX_ID.search(r["messages"][2]["content"]) and "[Data:" not in r["messages"][2]["content"]
        if r["kind"] == "unanswerable":
            continue
        assert r["judge_score"] is not None
        if r["kind"] in ("entity", "relationship") and r["question_source"] == "template":
            assert r["engine"] == "none" and not r["reasoning"]  # the authors' short pair: template -> description
            continue
        assert (r["engine"], r["model"]) == ("openai", "teacher") and r["prompt_hash"]
        if r["kind"] in ("entity", "relationship"):
            assert r["question"].startswith("What is known about ") and r["reasoning"]
    assert not [r for r in rows if r["kind"] == "local" and ("February" in r["question"] or "Aunt Rosa" in r["question"])]


def test_global_answers_are_written_from_their_communities_reports(llm_run):
    """The scripted map step keeps each report's summary as a key point and the reduce answers with the
    first two points it is shown, so an LLM-written global answer is two report summaries, and both are
    reports of the communities the row names."""
    run, _, _ = llm_run
    summaries = {str(r["community"]): r["summary"] for r in run.read_arrow("community_reports").to_pylist()}
    written = [r for r in run.read_arrow("qa").to_pylist() if r["kind"] == "global" and r["question_source"] == "llm"]
    main = [r for r in written if r["question_set"] == "main"]
    assert main and all(r["question"].startswith("As a coach, how did things around") for r in main), \
        [(r["question"], r["answer"][:80]) for r in written]
    for r in written:
        used = [summaries[c] for c in r["community_ids"] if summaries[c] in r["answer"]]
        assert len(used) == 2 and not r["answer"].replace(used[0], "").replace(used[1], "").strip(), r["answer"]
        assert r["judge_score"] is not None and (r["engine"], r["model"]) == ("openai", "teacher")


def test_the_hard_global_test_set_names_no_entity(llm_run):
    run, _, _ = llm_run
    titles = run.read_arrow("entities").column("title").to_pylist()
    hard = [r for r in run.read_arrow("qa", "test").to_pylist() if r["question_set"] == "hard_global"]
    asked = run.manifest["stages"]["synthesis"]["stats"]["questions"]["hard_global"]
    assert asked == 2 and hard and all(r["split"] == "test" for r in hard)
    assert not [r for r in hard if any(t in r["question"] for t in titles)]
    assert not [r for r in run.read_arrow("qa", "train").to_pylist() if r["question_set"] == "hard_global"]
