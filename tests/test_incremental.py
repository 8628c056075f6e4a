"""Incremental update: 5% more documents, rerun; only what they touch costs LLM calls.

The teacher is the scripted one (tests.support.teacher) on loopback HTTP; its
request count is the bill. Every stage downstream of ingest reruns (the input
changed) and reads the call cache (`_cache/llm`): unchanged chunks reuse their
extraction calls, communities are re-clustered, a community whose records did
not change keeps its report (its prompt is byte-identical), old qa rows keep
their ids.
"""

from __future__ import annotations

import shutil

import pytest

from factory.config import load_config
from factory.generate import generate
from tests.support import teacher
from tests.support.openai_server import FakeOpenAIServer
from tests.support.runs import (
    JOURNAL,
    journal_corpus,
    manifest,
    rows_by_id,
    teacher_settings,
)

pytestmark = pytest.mark.slow
TABLES = ("chunks", "entities", "relationships", "communities", "community_reports", "qa")


def calls(m: dict) -> dict[str, dict]:
    """Per LLM task: rows and cache hits, from the manifest's stage stats."""
    out = {}
    for stage in m["stages"].values():
        out.update(stage.get("stats", {}).get("llm") or {})
    return out


@pytest.fixture(scope="module")
def update(ray_session, tmp_path_factory):
    """A finished run of 20 journal entries, then the same run after a 21st entry was added."""
    tmp = tmp_path_factory.mktemp("incremental")
    corpus = journal_corpus(tmp / "corpus", 20)
    out = tmp / "run"
    with FakeOpenAIServer(teacher.reply) as server:
        cfg = load_config(None, [f"corpus.path={corpus}", f"output.path={out}", "chunking.size=200",
                                 "chunking.overlap=40", *teacher_settings(server.base_url)])
        generate(cfg)
        first_calls = len(server.requests)
        before = {t: rows_by_id(out, t) for t in TABLES}
        first = manifest(out)

        new = sorted(JOURNAL.glob("*.md"))[20]
        shutil.copy(new, corpus / new.name)  # 21 documents: 5% more
        generate(cfg)
        second_calls = len(server.requests) - first_calls
    m = manifest(out)
    sent = {task: t["rows"] - t["cache_hits"] for task, t in calls(m).items()}
    print(f"LLM calls: full run {first_calls}, update {second_calls}; rows not served by the cache: {sent}")
    return {"before": before, "after": {t: rows_by_id(out, t) for t in TABLES}, "first": first, "manifest": m,
            "first_calls": first_calls, "second_calls": second_calls}


def test_update_costs_a_small_fraction_of_the_calls(update):
    m, first = update["manifest"], update["first"]
    assert all(m["stages"][s]["finished_at"] >= first["stages"][s]["finished_at"] for s in first["stages"])
    assert update["second_calls"] <= 0.25 * update["first_calls"], (update["second_calls"], update["first_calls"])
    # The manifest says what was reused; rows sharing a prompt share one call.
    llm = calls(m)
    reused, rows = sum(t["cache_hits"] for t in llm.values()), sum(t["rows"] for t in llm.values())
    assert 0.7 * rows <= reused and reused + update["second_calls"] <= rows, (reused, update["second_calls"], rows)


def test_unchanged_chunks_keep_ids_and_reuse_their_extraction(update):
    before, after = update["before"]["chunks"], update["after"]["chunks"]
    assert set(before) < set(after)
    assert all(after[i]["text"] == before[i]["text"] for i in before)
    llm = calls(update["manifest"])
    assert llm["extract_graph"]["rows"] == len(after) and llm["extract_graph"]["cache_hits"] == len(before)


def test_old_qa_rows_keep_their_ids(update):
    before, after = update["before"]["qa"], update["after"]["qa"]
    kept = set(before) & set(after)
    assert set(after) - set(before), "the new document added no qa rows"
    assert len(kept) >= 0.8 * len(before), (len(kept), len(before))
    changed = [i for i in kept if after[i]["answer"] != before[i]["answer"]]
    assert len(changed) <= 0.2 * len(kept), (len(changed), len(kept))


def test_an_untouched_community_keeps_its_report_from_the_cache(update):
    """Same members with the same records: same prompt, cached report. One the new entry touched is written again.

    A member the new entry mentions gains a description line and a passage, so
    its community's report is rightly redone even though its members stayed.
    """
    def members(c: dict) -> tuple:
        return tuple(sorted(c["entity_ids"])), tuple(sorted(c["relationship_ids"]))

    def records(tables: dict, c: dict) -> list:
        # human_readable_id is a run-wide counter: it shifts when entities arrive and is not in the prompt.
        rows = [tables["entities"][i] for i in members(c)[0]] + [tables["relationships"][i] for i in members(c)[1]]
        return [{k: v for k, v in r.items() if k != "human_readable_id"} for r in rows]

    before, after = update["before"], update["after"]
    old_by_members = {members(c): c for c in before["communities"].values()}
    same = [(old_by_members[members(c)], c) for c in after["communities"].values() if members(c) in old_by_members]
    untouched = [(old, new) for old, new in same if records(before, old) == records(after, new)]
    touched = len(same) - len(untouched)
    assert untouched and touched, (len(untouched), touched)
    old_reports = {r["community"]: r["full_content"] for r in before["community_reports"].values()}
    new_reports = {r["community"]: r["full_content"] for r in after["community_reports"].values()}
    assert all(new_reports[new["community"]] == old_reports[old["community"]] for old, new in untouched)
    llm = calls(update["manifest"])["community_report"]
    assert llm["cache_hits"] >= len(untouched) and llm["rows"] - llm["cache_hits"] >= touched, (llm, len(untouched), touched)
