"""Synthesis in no-LLM mode on examples/journal (real chunk, graph and report functions) and on the glossary
(a reference corpus, the whole generate): every kind, answers from the right evidence, clean targets, a split
without leakage, the quality targets."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from factory.config import validate_config
from factory.pipeline import Run, Stage, StageRecord, run_stage
from factory.synth import synthesize
from factory.synth.retrieval import Retriever
from factory.synth.templates import load_templates
from tests.conftest import JOURNAL
from tests.support.runs import journal_chunk_table


def make_cfg(journal, out, **synth):
    return validate_config({
        "corpus": {"path": str(journal)},
        "output": {"path": str(out)},
        "ray": {"cpu_actors": 1},
        "synth": {"unanswerable_fraction": 0.1, "test_fraction": 0.2, **synth},
    })


def synth_run(journal, src, dest, **synth) -> Run:
    run = Run(make_cfg(journal, dest, **synth))
    for name in ("chunks", "entities", "relationships", "communities", "community_reports"):
        run.write_table(name, Run(make_cfg(journal, src)).read_arrow(name))
    run_stage(run, Stage("synthesis", synthesize))
    return run


@pytest.fixture(scope="module")
def no_llm_run(journal_chunks, tmp_path_factory):
    return synth_run(JOURNAL, journal_chunks, tmp_path_factory.mktemp("synth"))


# The answer speaks to the journal's owner: "I"/"we" in a passage become "you", "my"/"our" "your"...
SECOND_PERSON = {"you": "(?:i|me|we|us|you)", "your": "(?:my|our|your)", "yours": "(?:mine|ours|yours)",
                 "yourself": "(?:myself|ourselves|yourself)", "were": "(?:was|were)", "are": "(?:am|are)",
                 "you're": "(?:i'm|we're|you're)", "you've": "(?:i've|we've|you've)", "you'd": "(?:i'd|we'd|you'd)",
                 "you'll": "(?:i'll|we'll|you'll)"}


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower())


def unquoted(answer: str, source: str) -> list[str]:
    """The answer's sentences that are not a run of the source's words (in the owner's voice turned to the
    second person): checked here without the synthesis code's own support measure."""
    text = f" {' '.join(words(source))} "
    sentences = [s for s in re.split(r"(?<=[.!?])\s+|\n+", answer) if words(s)]
    return [s for s in sentences if not re.search(f" {' '.join(SECOND_PERSON.get(w, re.escape(w)) for w in words(s))} ", text)]


def rows_of(run: Run) -> list[dict]:
    return run.read_arrow("qa", "train").to_pylist() + run.read_arrow("qa", "test").to_pylist()


def test_no_llm_run_yields_every_kind_from_the_right_evidence(no_llm_run):
    run = no_llm_run
    rows = rows_of(run)
    kinds = Counter(r["kind"] for r in rows)
    assert set(kinds) == {"local", "global", "entity", "relationship", "unanswerable"}, kinds
    chunks = {c["id"]: c["text"] for c in run.read_arrow("chunks").to_pylist()}
    entities = run.read_arrow("entities").to_pylist()
    descriptions, titles = {e["id"]: e["description"] for e in entities}, {e["id"]: e["title"] for e in entities}
    for r in rows:
        roles = [m["role"] for m in r["messages"]]
        assert roles == ["system", "user", "assistant"] and r["messages"][1]["content"] == r["question"]
        assert r["messages"][0]["content"] == load_templates("personal").system_prompt
        assert r["messages"][2]["content"].endswith(r["answer"])
        if r["kind"] == "local":
            # Every local answer comes from the chunk its question names, never from another entry.
            assert not unquoted(r["answer"], chunks[r["source_chunk_id"]]), (r["question"], r["answer"])
            assert r["evidence_chunk_ids"] == [r["source_chunk_id"]] and r["retrieved_source"] is not None
            assert any(titles[e].lower() in r["answer"].lower() for e in r["entity_ids"]), (r["question"], r["answer"])
        elif r["kind"] == "entity":  # the authors' pair: a template question answered by the description
            assert r["question_source"] == "template" and not unquoted(r["answer"], descriptions[r["entity_ids"][0]])
        elif r["kind"] == "global":
            assert r["community_ids"] and r["answer"].count("\n- ") >= 1
        if r["kind"] != "unanswerable":
            assert r["groundedness"] >= run.cfg.synth.min_groundedness
    # Questions in the owner's voice, answers speaking to them.
    local = [r for r in rows if r["kind"] == "local"]
    personal = [r for r in local if re.search(r"\b(?:I|my)\b", r["question"])]
    assert len(personal) >= len(local) / 2
    assert not [r for r in local if re.search(r"\bI (?:was|am|had|went)\b", r["answer"])]


def test_targets_are_clean_and_refusals_are_right(no_llm_run):
    rows = rows_of(no_llm_run)
    corpus = "\x00".join(c["text"] for c in no_llm_run.read_arrow("chunks").to_pylist()).lower()
    for r in rows:
        target = r["messages"][2]["content"]
        assert "[Data:" not in target and "[chunk" not in target and not re.search(r"\(\d{4}-\d\d-\d\d\):", target)
        assert not any(cid in target for cid in r["evidence_chunk_ids"])
    refusals = [r for r in rows if r["kind"] == "unanswerable"]
    assert refusals
    titles = no_llm_run.read_arrow("entities").column("title").to_pylist()
    for r in refusals:
        names = re.findall(r"(?<!^)(?<!\? )\b([A-Z][\w'&.-]*(?: (?:&|of|[A-Z][\w'&.-]*))+)", r["question"])
        invented = [n for n in names if n not in titles]
        if invented:  # a name built from the corpus's own names, absent from it
            assert all(n.lower() not in corpus for n in invented), r["question"]
        else:  # two real entities the corpus never mentions together
            pair = [t for t in titles if t in r["question"]]
            pair = [t for t in pair if not any(t != o and t in o for o in pair)]
            assert len(pair) == 2 and not any(all(n.lower() in c for n in pair) for c in corpus.split("\x00")), r["question"]
        assert r["answer"] and r["reasoning"] and not r["evidence_chunk_ids"]


def test_split_keeps_related_rows_together_and_answers_apart(no_llm_run):
    train, test = no_llm_run.read_arrow("qa", "train").to_pylist(), no_llm_run.read_arrow("qa", "test").to_pylist()
    assert {r["kind"] for r in test} >= {"local", "entity", "unanswerable", "global"}
    hard = [r for r in test if r["question_set"] == "hard_global"]
    assert hard and not [r for r in train if r["question_set"] == "hard_global"]
    main_test = [r for r in test if r["question_set"] == "main"]
    for key in ("source_chunk_id", "group_id"):
        assert not {r[key] for r in train if r[key]} & {r[key] for r in main_test if r[key]}, key
    subjects = lambda part: {tuple(sorted(r["entity_ids"])) for r in part if r["kind"] in ("entity", "relationship")}  # noqa: E731
    assert not subjects(train) & subjects(main_test)
    communities = lambda part: {c for r in part if r["kind"] == "global" for c in r["community_ids"]}  # noqa: E731
    assert not communities(train) & communities(main_test)
    # Exact Jaccard of the answers' word sets (not the MinHash estimate the filters use)
    jaccard = lambda a, b: len(a & b) / len(a | b)  # noqa: E731
    test_words, train_words = ([set(r["answer"].lower().split()) for r in part] for part in (test, train))
    assert max(jaccard(a, b) for a in test_words for b in train_words) < 0.9
    answers = Counter(" ".join(r["answer"].split()) for r in train + test)
    assert answers.most_common(1)[0][1] == 1  # no two questions share an answer
    ids = [r["id"] for r in train + test]
    assert len(ids) == len(set(ids))


def test_manifest_records_recall_drops_and_quality(no_llm_run):
    stage = no_llm_run.manifest["stages"]["synthesis"]
    retrieval = stage["stats"]["retrieval"]
    assert retrieval["method"] == "bm25" and retrieval["k"] == 5 and 0.5 <= retrieval["recall_at_k"] <= 1.0
    assert stage["stats"]["voice"] == "personal" and stage["stats"]["groundedness"]["quantiles"]["local"]["n"] > 0
    assert stage["rows_out"] == no_llm_run.manifest["counts"]["qa/train"] + no_llm_run.manifest["counts"]["qa/test"]
    assert stage["rows_in"] == stage["rows_out"] + sum(stage["drops"].values())
    targets = {t["name"]: t["holds"] for t in no_llm_run.manifest["quality"]["targets"]}
    assert targets == {"local_supported": True, "duplicate_answers": True, "citations": True,
                       "cross_split_overlap": True, "personal_voice": None}


def test_a_reference_corpus_gets_neutral_questions_and_meets_the_targets(ray_session, tmp_path):
    from factory.generate import generate

    cfg = validate_config({"corpus": {"path": str(JOURNAL.parent / "glossary")}, "output": {"path": str(tmp_path)},
                           "ray": {"cpu_actors": 1}})
    run = generate(cfg)
    assert run.manifest["stages"]["synthesis"]["stats"]["voice"] == "reference"
    rows = rows_of(run)
    assert len(rows) > 300
    personal = [r["question"] for r in rows if re.search(r"\b(?:I|my|me)\b", r["question"])]
    assert not personal, personal[:5]
    assert rows[0]["messages"][0]["content"] == load_templates("reference").system_prompt
    targets = {t["name"]: t["holds"] for t in run.manifest["quality"]["targets"]}
    assert all(targets.values()), run.manifest["quality"]["targets"]


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
