"""Synthesis on examples/journal in no-LLM mode (real chunk, graph and report functions): every kind,
grounded answers, split, qa table."""

from __future__ import annotations

import re
from collections import Counter

import pyarrow as pa
import pytest

import schemas
from factory.config import validate_config
from factory.pipeline import Run, Stage, StageRecord
from factory.synth import synthesize
from factory.synth.retrieval import Retriever
from factory.synth.text import support
from tests.conftest import JOURNAL


def make_cfg(journal, out, **synth):
    return validate_config({
        "corpus": {"path": str(journal)},
        "output": {"path": str(out)},
        "ray": {"cpu_actors": 1},
        "synth": {"global_questions": 6, "unanswerable_fraction": 0.1, "test_fraction": 0.2, **synth},
    })


def journal_chunk_table(cfg) -> pa.Table:
    """The journal's chunks as the chunk stage makes them (same functions, without Ray)."""
    from factory.chunking import chunk_document, load_tokenizer
    from factory.ingest import document_id, markdown_title, normalize

    tok = load_tokenizer(cfg.chunking.tokenizer)
    rows = []
    for path in sorted(JOURNAL.glob("*.md")):
        text = normalize(path.read_text(encoding="utf-8"))
        doc = {"id": document_id(text), "text": text, "title": markdown_title(text), "date": path.stem}
        rows += chunk_document(doc, tok, cfg.chunking)
    return schemas.validate("chunks", pa.Table.from_pylist(rows))


@pytest.fixture(scope="module")
def journal_chunks(ray_session, tmp_path_factory):
    """The journal's chunks and the real no-LLM graph and report stages over them, in a run folder."""
    from factory.generate import STAGES

    out = tmp_path_factory.mktemp("journal-run")
    run = Run(make_cfg(JOURNAL, out))
    run.write_table("chunks", journal_chunk_table(run.cfg))
    run.run_stages([s for s in STAGES if s.name in ("graph", "reports")])
    return out


def synth_run(journal, src, dest, **synth) -> Run:
    run = Run(make_cfg(journal, dest, **synth))
    for name in ("chunks", "entities", "relationships", "communities", "community_reports"):
        run.write_table(name, Run(make_cfg(journal, src)).read_arrow(name))
    run.run_stage(Stage("synthesis", synthesize), "test")
    return run


@pytest.fixture(scope="module")
def no_llm_run(journal_chunks, tmp_path_factory):
    return synth_run(JOURNAL, journal_chunks, tmp_path_factory.mktemp("synth"))


def test_no_llm_run_yields_every_kind_with_grounded_answers(no_llm_run):
    run = no_llm_run
    train, test = run.read_arrow("qa", "train").to_pylist(), run.read_arrow("qa", "test").to_pylist()
    rows = train + test
    kinds = Counter(r["kind"] for r in rows)
    assert set(kinds) == {"local", "global", "entity", "relationship", "unanswerable"}, kinds
    chunks = {c["id"]: c["text"] for c in run.read_arrow("chunks").to_pylist()}
    units = {e["id"]: e["text_unit_ids"] for e in run.read_arrow("entities").to_pylist()}
    for r in rows:
        assert r["split"] in ("train", "test")
        roles = [m["role"] for m in r["messages"]]
        assert roles == ["system", "user", "assistant"] and r["messages"][1]["content"] == r["question"]
        assert r["answer"] in r["messages"][2]["content"]
        if r["kind"] == "unanswerable":
            assert not r["evidence_chunk_ids"]
            continue
        # Every answered row traces back to chunks, and its answer's words come from them.
        assert r["evidence_chunk_ids"] and all(c in chunks for c in r["evidence_chunk_ids"])
        evidence = " ".join(chunks[c] for c in r["evidence_chunk_ids"])
        if r["kind"] == "entity":  # the description stands on all of the entity's chunks
            evidence += " ".join(chunks[c] for e in r["entity_ids"] for c in units[e])
        if r["kind"] in ("local", "entity"):
            quoted = re.sub(r"In [^:]*\(\d{4}-\d\d-\d\d\): ", " ", r["answer"])  # drop the "In <entry>:" labels
            assert support(quoted, evidence) >= 0.95, (r["question"], r["answer"])
        assert r["groundedness"] >= run.cfg.synth.min_groundedness
    local = [r for r in rows if r["kind"] == "local"]
    assert all(r["source_chunk_id"] in chunks and r["retrieved_source"] is not None for r in local)
    glob = [r for r in rows if r["kind"] == "global"]
    assert all(r["community_ids"] and "[Data: Reports (" in r["answer"] for r in glob)
    # Answers extracted from the evidence sentences that match the question.
    for r in local:
        name_words = set(re.findall(r"[A-Z][a-z]+", r["question"])) - {"What", "In"}
        assert any(w in r["answer"] for w in name_words), (r["question"], r["answer"])


def test_reasoning_in_think_tags_and_unanswerable_refusals(no_llm_run):
    rows = no_llm_run.read_arrow("qa").to_pylist()
    for r in rows:
        target = r["messages"][2]["content"]
        assert target.startswith("<think>\n") and "\n</think>\n\n" in target and target.endswith(r["answer"])
    refusals = [r for r in rows if r["kind"] == "unanswerable"]
    corpus = set(re.findall(r"[a-z0-9']+", " ".join(c["text"] for c in no_llm_run.read_arrow("chunks").to_pylist()).lower()))
    assert refusals
    for r in refusals:
        invented = [w for w in re.findall(r"\b[A-Z][a-z]+", r["question"])[1:] if w not in ("Festival", "Industries")]
        assert invented and not [w for w in invented if w.lower() in corpus], r["question"]
        assert all(w in r["answer"] for w in invented) and ("don't" in r["answer"] or "Nothing" in r["answer"])


def test_split_is_stratified_and_decontaminated(no_llm_run):
    from factory.synth.quality import NearDuplicates

    train = no_llm_run.read_arrow("qa", "train").to_pylist()
    test = no_llm_run.read_arrow("qa", "test").to_pylist()
    assert {r["kind"] for r in test} == {"local", "global", "entity", "relationship", "unanswerable"}
    index = NearDuplicates(no_llm_run.cfg.synth.test_overlap_threshold)
    for r in test:
        index.add(r["question"])
    assert not [r["question"] for r in train if index.seen(r["question"], add=False)]
    ids = [r["id"] for r in train + test]
    assert len(ids) == len(set(ids))


def test_manifest_records_recall_and_drops(no_llm_run):
    stage = no_llm_run.manifest["stages"]["synthesis"]
    retrieval = stage["stats"]["retrieval"]
    assert retrieval["method"] == "bm25" and retrieval["k"] == 5
    assert 0.5 <= retrieval["recall_at_k"] <= 1.0
    assert stage["rows_out"] == no_llm_run.manifest["counts"]["qa/train"] + no_llm_run.manifest["counts"]["qa/test"]
    assert stage["rows_in"] == stage["rows_out"] + sum(stage["drops"].values())


def test_retriever_methods_find_the_right_chunk(journal_chunks, journal):
    chunks = Run(make_cfg(journal, journal_chunks)).read_arrow("chunks")
    target = next(c for c in chunks.to_pylist() if "Flour & Ember" in c["text"])
    for method in ("bm25", "hybrid"):
        r = Retriever.build(chunks, method)
        hits = r.search(["What will Tomas call his bakery on Quay Road?"], 5)[0]
        assert len(hits) == 5 and any("Flour & Ember" in r.text(cid) for cid, _ in hits), method
        assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    assert Retriever.build(chunks, "bm25").search(["xyzzy plugh"], 3) == [[]]
    assert target["id"] in {c for c, _ in Retriever.build(chunks, "bm25").search([target["text"][:300]], 1)[0]}


def test_an_empty_graph_is_one_clear_error(tmp_path):
    from factory.errors import UserError

    run = Run(make_cfg(JOURNAL, tmp_path))
    run.write_table("chunks", journal_chunk_table(run.cfg).slice(0, 3))
    with pytest.raises(UserError, match="no questions could be made"):
        synthesize(run, StageRecord("synthesis"))
    with pytest.raises(UserError, match="no chunks"):
        synthesize(Run(make_cfg(JOURNAL, tmp_path / "empty")), StageRecord("synthesis"))
