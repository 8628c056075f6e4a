"""Synthesis units without Ray: templates, refusals, filters, split, targets, map-reduce pieces."""

from __future__ import annotations

import pyarrow as pa

from factory.config import validate_config
from factory.pipeline import StageRecord
from factory.synth import qa_table, target
from factory.synth import questions as Q
from factory.synth.answers import extract_answer, extract_points, pack_reports, question_terms, select_points
from factory.synth.quality import NearDuplicates, _dedup, _keep_top, filter_rows
from factory.synth.split import split_rows


class FakeRun:
    def __init__(self, **synth):
        self.cfg = validate_config({"synth": synth})


def test_entity_templates_are_seeded_per_entity_and_typed():
    ents = pa.table({"id": ["e1", "e2"], "title": ["Priya Nair", "Harwick Marathon"], "type": ["person", "event"],
                     "description": ["a colleague", "a race"], "text_unit_ids": [["c1"], ["c2"]]})
    a, b = Q.entity_questions(ents, 7), Q.entity_questions(ents.slice(1), 7)
    assert a[1] == b[0]  # a row's question does not depend on the other rows
    assert a[0]["question"].format() in [t.format(name="Priya Nair") for t in Q.ENTITY_TEMPLATES["person"]]
    assert a[1]["question"] in [t.format(name="Harwick Marathon") for t in Q.ENTITY_TEMPLATES["event"]]
    assert len({Q.entity_questions(ents, s)[0]["question"] for s in range(40)}) == 6
    assert len(Q.RELATIONSHIP_TEMPLATES) == 9 and all(len(t) == 6 for t in Q.ENTITY_TEMPLATES.values())


def test_unanswerable_names_are_absent_from_the_corpus():
    vocab = {"ka", "lo", "kalo", "festival"}
    rows = Q.unanswerable_questions(20, vocab, 3)
    assert len(rows) == 20 and len({r["question"] for r in rows}) == 20
    for r in rows:
        assert r["kind"] == "unanswerable" and r["answer"] and r["reasoning"]
        assert not ({w.lower() for w in r["question"].replace("?", "").split()} & {"kalo"})
    assert Q.unanswerable_count(95, 0.05) == 5 and Q.unanswerable_count(10, 0) == 0


def test_extractive_local_answer_quotes_matching_sentences_in_order():
    passages = [("Mon (2025-01-06)", "# Mon\n\nI ran by the river. Priya sent the drawings late. Rain all day."),
                ("Tue (2025-01-07)", "Priya and I fixed the drawings for the bid.")]
    answer, reasoning = extract_answer("What happened with Priya's drawings on Mon?", passages)
    assert answer.startswith("In Mon (2025-01-06): Priya sent the drawings late.")
    assert "fixed the drawings" in answer and "river" not in answer and "Rain" not in answer
    assert "Priya sent the drawings late." in reasoning
    assert extract_answer("zebra?", passages) == (None, None)


def test_map_scores_drop_unrelated_findings_and_pack_within_budget():
    reports = [{"community": i, "level": 0, "title": f"T{i}", "summary": "s", "rank": float(i),
                "findings": [{"summary": "Baking bread", "explanation": "sourdough with Tomas"} if i % 2 else
                             {"summary": "Running", "explanation": "the half marathon"}]} for i in range(6)]
    q = question_terms("How did my baking change over time?", reports)
    assert q == {"baking"}
    points = extract_points(q, reports)
    assert {p["reports"][0] for p in points if p["score"] > 0} == {1, 3, 5}
    best = select_points(points, 1000)
    assert [p["reports"][0] for p in best] == [5, 3, 1]
    generic = extract_points(question_terms("What are the main themes?", reports), reports)
    assert all(p["score"] == round(10 * r["rank"]) for p, r in zip(generic, reports))
    batches = pack_reports(reports, 40)
    assert sorted(r["community"] for b in batches for r in b) == list(range(6)) and len(batches) > 1
    assert batches[0][0]["community"] == 5  # most important first


def test_filters_count_every_drop_by_reason():
    run = FakeRun(min_answer_chars=5, min_groundedness=0.5)
    rec = StageRecord("t")
    base = {"kind": "local", "evidence": "Tomas opened the bakery Flour and Ember on Quay Road."}
    rows = [
        {**base, "id": "a", "question": "What did Tomas open?", "answer": "Tomas opened Flour and Ember."},
        {**base, "id": "b", "question": "What did Tomas open on Quay Road?", "answer": "The moon landing happened."},
        {**base, "id": "c", "question": "What did Tomas open?", "answer": "Tomas opened the bakery."},
        {**base, "id": "d", "question": "Where?", "answer": "Quay Road"},
        {**base, "id": "e", "question": "What did Tomas open today?", "answer": None, "error": "no_evidence"},
        {**base, "id": "f", "question": "What did Tomas cook?", "answer": None, "error": "invalid_output: no JSON"},
        {"id": "g", "kind": "unanswerable", "question": "Who is Zanquo Vitor?", "answer": "I don't know Zanquo Vitor."},
    ]
    kept = filter_rows(run, rec, rows)
    assert sorted(r["id"] for r in kept) == ["a", "g"]
    # "c" repeats "a"'s question and is less grounded; "f" was counted by the engine layer already.
    assert dict(rec.drops) == {"ungrounded": 1, "duplicate_question": 1, "question_length": 1, "no_evidence": 1}


def test_dedup_keeps_the_better_row_and_keep_top_is_per_kind():
    rec = StageRecord("t")
    rows = [{"id": "x", "kind": "local", "question": "What did I cook on Sunday?", "groundedness": 0.6},
            {"id": "y", "kind": "local", "question": "What did I cook on Sunday ?", "groundedness": 0.9}]
    assert [r["id"] for r in _dedup(rec, rows, 0.9)] == ["y"]
    rows = [{"id": str(i), "kind": k, "question": f"q{i}", "judge_score": float(i)} for i, k in enumerate("aaaabbu")]
    rows[-1]["kind"] = "unanswerable"
    kept = _keep_top(rec, rows, 0.5)
    assert sorted(r["id"] for r in kept) == ["2", "3", "5", "6"]
    assert rec.drops == {"duplicate_question": 1, "below_keep_top_fraction": 3}


def test_split_is_stratified_seeded_and_decontaminated():
    rows = [{"id": f"{k}{i}", "kind": k, "question": f"What happened with subject number {k}{i} in the garden?"}
            for k in ("local", "global", "entity") for i in range(10)]
    rows.append({"id": "dup", "kind": "local", "question": "What happened with subject number local3 in the garden ?"})
    rec = StageRecord("t")
    train, test = split_rows(rec, [dict(r) for r in rows], 0.2, 1, 0.9)
    assert sorted(r["kind"] for r in test) == ["entity"] * 2 + ["global"] * 2 + ["local"] * 2
    again = split_rows(StageRecord("t"), [dict(r) for r in reversed(rows)], 0.2, 1, 0.9)[1]
    assert sorted(r["id"] for r in again) == sorted(r["id"] for r in test)
    index = NearDuplicates(0.9)
    for r in test:
        index.add(r["question"])
    assert not any(index.seen(r["question"], add=False) for r in train)
    assert len(train) + len(test) + rec.drops["near_test_question"] == len(rows)


def test_targets_and_qa_table():
    assert target("A.", "R.", "none") == "A."
    assert target("A.", "R.", "think_tags") == "<think>\nR.\n</think>\n\nA."
    assert target("A.", "R.", "inline") == "R.\n\nAnswer: A."
    assert target("A.", None, "think_tags") == "A."
    table = qa_table([{"id": "1", "kind": "local", "question": "Q?", "answer": "A.", "reasoning": "R.", "split": "train",
                       "evidence_chunk_ids": ["c"], "source_chunk_id": "c", "retrieved_source": True}], "think_tags", "sys")
    row = table.to_pylist()[0]
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    assert row["messages"][0]["content"] == "sys" and row["entity_ids"] == [] and row["community_ids"] == []


def test_sentences_keep_abbreviations_and_initials_inside():
    from factory.synth.text import sentences

    text = "First session with Dr. Helen Okafor today. J. R. Hartley rang!\n\nNew paragraph without a stop"
    assert sentences(text) == ["First session with Dr. Helen Okafor today.", "J. R. Hartley rang!", "New paragraph without a stop"]
