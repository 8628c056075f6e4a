"""Synthesis units without Ray: voice, templates, extractive answers, targets, scores, dedup, split."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from factory.config import validate_config
from factory.pipeline import StageRecord
from factory.synth import qa_batch, target
from factory.synth import extractive as X
from factory.synth import questions as Q
from factory.synth import quality
from factory.synth.split import DECISIONS, split_rows
from factory.synth.templates import load_templates
from factory.text import clean_target, is_refusal, relevance, topic_terms
from factory.voice import detect_voice, to_second_person

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


# ---- voice and templates ---------------------------------------------------------------------
def test_voice_is_read_from_the_corpus():
    journal = [p.read_text() for p in sorted((EXAMPLES / "journal").glob("*.md"))]
    manual = [p.read_text() for p in sorted((EXAMPLES / "manual").glob("*.md"))]
    glossary = [json.loads(line)["text"] for line in (EXAMPLES / "glossary" / "entries.jsonl").read_text().splitlines()]
    assert detect_voice(journal) == "personal"
    assert detect_voice(manual) == detect_voice(glossary) == "reference"


def test_second_person_rewrites_the_owner_not_the_others():
    assert to_second_person("I was tired, so my brother drove me home. I'm fine.") == \
        "You were tired, so your brother drove you home. You're fine."
    assert to_second_person("Tonight I glazed it and we ate.") == "Tonight you glazed it and you ate."
    assert to_second_person("Helen said she was tired.") == "Helen said she was tired."


def test_templates_name_the_passage_and_questions_are_seeded_per_row():
    personal, reference = load_templates("personal"), load_templates("reference")
    assert personal.where.of("Monday 3 February 2025", "2025-02-03") == "on Monday 3 February 2025"
    assert personal.where.of("Pottery", None) == 'in my entry "Pottery"'
    assert reference.where.of("Descaling", None) == 'in "Descaling"'
    assert personal.where.of(None, None) == "in my notes"
    ents = pa.table({"id": ["e1", "e2"], "title": ["Priya Nair", "descaling"], "type": ["person", "concept"],
                     "description": ["A colleague.", "Removing scale."], "text_unit_ids": [["c1"], ["c2"]]})
    rels = pa.table({"id": ["r1"], "source": ["Priya Nair"], "target": ["descaling"], "description": ["d"],
                     "text_unit_ids": [["c1"]]})
    a = Q.subject_questions(ents, rels, reference, 7, llm=False, max_sources=30)
    b = Q.subject_questions(ents.slice(1), rels.slice(0, 0), reference, 7, llm=False, max_sources=30)
    assert a[1] == b[0]  # a row's question does not depend on the other rows
    assert a[0]["question"] in [t.format(name="Priya Nair") for t in reference.entity["person"]]
    assert [r["kind"] for r in a] == ["entity", "entity", "relationship"] and {r["task"] for r in a} == {Q.DESCRIBE}
    with_teacher = Q.subject_questions(ents, rels, reference, 7, llm=True, max_sources=30)
    assert [r["task"] for r in with_teacher].count(Q.ENTITY_QA) == 2 and with_teacher[-1]["task"] == Q.RELATIONSHIP_QA
    # Reference questions never speak as the corpus's owner.
    for t in reference.local["entity"] + reference.relationship + [g.question for g in reference.global_ + reference.hard_global]:
        assert not set(t.lower().replace("?", "").split()) & {"i", "my", "me"}, t


# ---- local answers: the source chunk, nothing else -----------------------------------------------
def test_local_answers_quote_the_source_sentences_that_name_the_focus():
    text = ("# Saturday 8 February 2025\n\nRain all day. Tomas spent the whole day at the unit on Quay Road. "
            "I stayed home with Felix.\n\n| Code | Meaning |\n|---|---|\n| E02 | Quay Road sensor fault |")
    assert X.source_sentences(["Quay Road"], text) == ["Tomas spent the whole day at the unit on Quay Road.",
                                                       "E02; Quay Road sensor fault."]
    assert X.source_sentences(["Tomas", "Felix"], text) == ["Tomas spent the whole day at the unit on Quay Road.",
                                                           "I stayed home with Felix."]  # any when none names both
    assert X.source_sentences(["Saturday 8 February 2025"], text) == ["Rain all day."]  # a heading: the sentence under it
    assert X.source_sentences(["Priya"], text) == []
    assert X.describe("Brandt was an engineer.\nHe received the medal in 2002.") == "Brandt was an engineer."
    assert X.describe("He received the medal in 2002.") == "He received the medal in 2002."


# ---- global answers: findings chosen per question -------------------------------------------------
def _reports():
    return [{"community": i, "level": 0, "title": f"T{i}", "summary": "s", "rank": float(i),
             "findings": [{"summary": "Bread (organization)" if i % 2 else "Running",
                           "explanation": "Tomas baked sourdough at Flour & Ember. It was hard work." if i % 2 else
                                          "I ran the half marathon. I felt proud."}]} for i in range(6)]


def test_global_points_differ_by_question_and_carry_no_type_labels():
    types = {"flour & ember": "organization"}
    findings = [f for r in _reports() for f in X.report_findings(r, X.TitleTypes(types))]
    assert findings[1].summary == "Bread"
    baking = [X.finding_point(f, X.question_terms("How did my baking change?", None), frozenset()) for f in findings]
    proud = [X.finding_point(f, X.question_terms("What were the high points?", ["proud"]), frozenset()) for f in findings]
    orgs = [X.finding_point(f, X.question_terms("Which organizations matter most?", None), frozenset({"organization"}))
            for f in findings]
    assert [p["reports"][0] for p in baking if p] == [1, 3, 5] and baking[1]["sentences"] == ["Tomas baked sourdough at Flour & Ember."]
    assert [p["reports"][0] for p in proud if p] == [0, 2, 4] and proud[0]["sentences"] == ["I felt proud."]
    assert [p["reports"][0] for p in orgs if p] == [1, 3, 5]
    generic = [X.finding_point(f, X.question_terms("What are the main themes?", None), frozenset()) for f in findings]
    assert [p["score"] for p in generic] == [max(1, round(10 * i)) for i in range(6)]


def test_a_sentence_is_said_once_per_answer():
    points = [{"summary": "A and B", "sentences": ["They met.", "B moved."], "score": 90, "reports": [1]},
              {"summary": "B", "sentences": ["B moved."], "score": 80, "reports": [1]},
              {"summary": "B and C", "sentences": ["B moved.", "C stayed."], "score": 70, "reports": [2]}]
    assert [p["description"] for p in X.distinct_points(points)] == ["A and B: They met. B moved.", "B and C: C stayed."]


def test_points_are_selected_within_budget_and_reports_packed_by_importance():
    from factory.synth.answers import _report, pack_reports, select_points

    points = [{"description": f"point {i}", "score": s, "reports": [i]} for i, s in enumerate([10, 0, 90, 50])]
    assert [p["reports"][0] for p in select_points(points, 1000)] == [2, 3, 0]
    reports = [_report(r) for r in _reports()]
    batches = pack_reports(reports, 40)
    assert sorted(r["community"] for b in batches for r in b) == list(range(6)) and len(batches) > 1
    assert batches[0][0]["community"] == 5


# ---- targets and scores ---------------------------------------------------------------------------
def test_targets_are_clean_of_citations_ids_and_passage_labels():
    dirty = ("In Sunday 22 June 2025 (2025-06-22): The train leaves at 9 [Data: Reports (57); Entities (2, 3)]. "
             "See chunk c243f196aa4e3f16 [chunk 1a2b3c4d5e6f7a8b] and Monday 3 February (2025-02-03) says: hello.")
    assert clean_target(dirty) == "The train leaves at 9. See chunk and Monday 3 February says: hello."
    assert clean_target("Version 2025 of the DB-2 shipped.") == "Version 2025 of the DB-2 shipped."


def test_refusals_and_relevance():
    assert is_refusal("I don't recall anything about that.") and is_refusal("The passages do not mention it.")
    assert not is_refusal("Tomas signed the lease on Quay Road.")
    terms = topic_terms("What did I write about Quay Road on Saturday 8 February 2025?")
    assert terms == {"quay", "road"}
    assert relevance(terms, "Tomas signed the lease on Quay Road. It rained.") == 0.5
    assert relevance(topic_terms("What are the main themes across my notes?", X.GLOBAL_FRAMING), "Anything.") is None


def test_arrow_prefilters_find_every_text_the_python_patterns_do():
    """score_batch runs is_refusal and clean_target's regexes only where Arrow's RE2 finds MAYBE_REFUSAL
    and MAYBE_SCAFFOLDING: those must miss nothing that re (Unicode \\b, its case folds) would find."""
    from factory.text import MAYBE_REFUSAL, MAYBE_SCAFFOLDING, clean_target

    phrases = ["I do not know", "I don't recall", "I cannot answer", "I can't say", "I could not find", "I couldn't tell",
               "it does not mention", "they did not include", "it doesn't contain", "we didn't say", "no information",
               "No record", "not stated in", "not provided anywhere", "cannot be determined", "can't tell",
               "unable to answer", "I'd rather not guess", "never comes up", "Doesn't mention", "does not come up",
               "nothing in your notes mentions", "Nothing you wrote links", "not mentioned anywhere", "has no information"]
    texts = [f"{pre}{p}{post}" for p in phrases for pre, post in (("", "."), ("Sadly, ", " here"), ("«", "»"))]
    texts += [t.upper() for t in texts] + [t.replace("i", "ı").replace("I", "İ") for t in texts]
    texts += ["éno information", "Tomas signed the lease.", "[Data: Reports (3)]", "id 0123456789abcdef0123", "(2025-02-03)"]
    refusal = pc.match_substring_regex(pa.array(texts), MAYBE_REFUSAL, ignore_case=True).to_pylist()
    scaffolding = pc.match_substring_regex(pa.array(texts), MAYBE_SCAFFOLDING).to_pylist()
    assert sum(map(is_refusal, texts)) > 2 * len(phrases)  # the variants are refusals to re too
    assert all(found for t, found in zip(texts, refusal) if is_refusal(t))
    assert all(found for t, found in zip(texts, scaffolding) if clean_target(t) != (t.strip() or None))


def _answered(**row) -> dict:
    base = {"id": "x", "kind": "local", "question": "What did Tomas sign on Quay Road?", "question_set": "main",
            "answer": "Tomas signed the lease on Quay Road.", "reasoning": "The entry says so [Data: Reports (1)].",
            "evidence": "Tomas signed the lease on his unit on Quay Road this afternoon.", "cues": [], "error": None}
    return {**base, **row}


def test_scoring_marks_the_first_failed_check():
    limits = quality.Limits.of(validate_config({}).synth)
    rows = [
        _answered(id="ok"),
        _answered(id="refusal", answer="I don't remember what Tomas signed on Quay Road."),
        _answered(id="ungrounded", answer="Tomas bought a boat and sailed to Norway on Quay Road."),
        _answered(id="off_topic", answer="The unit has a red door. It faces the harbour.",
                  evidence="The unit has a red door. It faces the harbour."),
        _answered(id="engine", answer=None, error="llm_error: timeout"),
        _answered(id="refused", answer=None, error="refused: no answer in the source"),
        _answered(id="short", answer="Yes."),
        _answered(id="unanswerable", kind="unanswerable", answer="Nothing in your notes mentions Zed, so I can't say.",
                  evidence=None),
    ]
    scored = {r["id"]: r for r in quality.score_batch(pa.Table.from_pylist(rows), limits, keep_evidence=False).to_pylist()}
    assert {i: r["drop"] for i, r in scored.items()} == {
        "ok": None, "refusal": "refusal", "ungrounded": "ungrounded", "off_topic": "off_topic", "engine": "llm_error",
        "refused": "refused", "short": "answer_too_short", "unanswerable": None}
    assert scored["ok"]["reasoning"] == "The entry says so." and scored["ok"]["groundedness"] == 1.0
    assert len(scored["ok"]["answer_sig"]) == 4 * quality.FILTER.num_perm and "evidence" not in scored["ok"]  # kept for a judge only
    rec = StageRecord("t")
    kept = quality.count_drops(rec, quality.score_batch(pa.Table.from_pylist(rows), limits, keep_evidence=True))
    assert set(kept.column("id").to_pylist()) == {"ok", "unanswerable"} and "llm_error" not in rec.drops  # run_llm counted it


def test_near_duplicates_are_found_from_signatures():
    a = "Tomas Eriksen signed the lease on his unit on Quay Road this afternoon."
    sigs = quality.FILTER.signatures(pa.array([a, a.replace("afternoon", "evening"), "Pottery class was cancelled.", a]))
    same = (sigs[:, None] == sigs[None]).mean(axis=2)
    assert same[0, 3] == 1.0 and 0.6 <= same[0, 1] < 1.0 and same[0, 2] < 0.2
    group, near = quality.FILTER.near_pairs(sigs, 0.6)
    assert group[0] == group[3] and near[group[0]] == {group[1]} and group[2] not in near


def _compact(i: str, kind: str, question: str, answer: str, score: float = 1.0, **keys) -> dict:
    q, a = quality.FILTER.signatures(pa.array([question, answer]))
    return {"id": i, "kind": kind, "question_set": keys.pop("question_set", "main"), "drop": None, "groundedness": score,
            "judge_score": None, "answer_sig": a.tobytes(), "question_sig": q.tobytes(), "source_chunk_id": None,
            "entity_ids": [], "community_ids": [], **keys}


def _table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=quality.COMPACT_SCHEMA)


def test_dedup_keeps_the_better_row_of_equal_answers_or_questions():
    rows = [_compact("a", "local", "What did I cook on Sunday?", "Shakshuka with bread.", 0.7),
            _compact("b", "entity", "Who is Tomas?", "Shakshuka with bread.", 0.9),
            _compact("c", "local", "What did I cook on Sunday ?", "A roast.", 0.8),
            _compact("d", "global", "Main themes?", "Work and bread.", 0.5, question_set="hard_global"),
            _compact("e", "local", "What did I bake on Sunday?", "Shakshuka with bread.", 0.95)]
    rec = StageRecord("t")
    kept = quality.dedup(rec, _table(rows), 0.8, 0.9)
    # e outranks b and a (same answer); c keeps its question, a's twin, because a went for its answer
    assert kept.column("id").to_pylist() == ["d", "e", "c"] and dict(rec.drops) == {"duplicate_answer": 2}
    many = [_compact(str(i), "local" if i < 4 else "unanswerable", f"q{i}", f"a{i}", i / 10) for i in range(6)]
    kept = quality.keep_top(rec, quality.dedup(rec, _table(many), 0.8, 0.9), 0.5)
    assert sorted(kept.column("id").to_pylist()) == ["2", "3", "4", "5"] and rec.drops["below_keep_top_fraction"] == 2


def test_split_keeps_groups_whole_and_puts_hard_questions_in_test():
    rows = []
    for c in range(10):  # two local rows per chunk: a chunk's rows share a group
        rows += [_compact(f"l{c}{j}", "local", f"What did I write about subject {c} number {j}?", f"answer {c} {j}",
                          source_chunk_id=f"c{c}") for j in range(2)]
    for e in range(10):  # template and teacher-written row of one entity share its entity set
        rows += [_compact(f"e{e}{j}", "entity", f"Question {j} about entity {e}?", f"about {e} {j}", entity_ids=[f"E{e}"])
                 for j in range(2)]
    rows += [_compact(f"g{i}", "global", f"Global question {i}?", f"g {i}", community_ids=[str(i % 2), str(i % 2 + 2)])
             for i in range(6)]  # communities {0,2} and {1,3}: two groups
    rows += [_compact(f"r{j}", "relationship", f"How are the two linked, take {j}?", f"linked {j}", entity_ids=pair)
             for j, pair in enumerate((["E1", "E2"], ["E2", "E1"], ["E1", "E3"]))]  # an entity set, in any order
    rows += [_compact("h", "global", "Hard question?", "h", question_set="hard_global", community_ids=["0"])]
    rows += [_compact("near", "local", "What did I write about subject 0 number 0 ?", "other", source_chunk_id="c99")]
    as_dict = lambda t: {r["id"]: (r["split"], r["group_id"]) for r in t.to_pylist()}  # noqa: E731
    decided = as_dict(split_rows(StageRecord("t"), _table(rows), 0.2, 3, 0.9))
    again = as_dict(split_rows(StageRecord("t"), _table(list(reversed(rows))), 0.2, 3, 0.9))
    assert decided == again  # seeded, independent of row order
    split = {i: d[0] for i, d in decided.items()}
    assert split["h"] == "test"
    for key in ("source_chunk_id", "entity_ids"):
        groups: dict = {}
        for r in rows:
            if r["id"] in split and r.get(key):
                groups.setdefault(str(r[key]), set()).add(split[r["id"]])
        assert all(len(s) == 1 for s in groups.values()), key
    assert sum(s == "test" for i, s in split.items() if i.startswith("l")) == 4  # 20% of 20 local rows, two groups
    assert sum(s == "test" for i, s in split.items() if i.startswith("g")) in (0, 3)
    if split["l00"] == "test":
        assert "near" not in decided  # a train question near a test question is dropped
    assert len({d[1] for i, d in decided.items() if i.startswith("l0")}) == 1  # one group id per group
    assert decided["r0"][1] == decided["r1"][1] != decided["r2"][1]


# ---- unanswerable -----------------------------------------------------------------------------------
def test_unanswerable_rows_use_real_entities_and_corpus_like_names_that_no_chunk_holds():
    chunks = pa.table({"id": ["c1", "c2", "c3"], "title": ["a", "b", "c"], "date": [None] * 3,
                       "text": ["Tomas Eriksen and Priya Nair met at Quay Road.", "Jonah Webb swims at Portobello Beach.",
                                "Aunt Rosa lives in Brackley Cross near Old Mill Gardens."]})
    ents = pa.table({"id": ["e1", "e2", "e3", "e4", "e5"], "title": ["Tomas Eriksen", "Priya Nair", "Jonah Webb", "Quay Road",
                                                                     "Portobello Beach"],
                     "type": ["person", "person", "person", "geo", "geo"],
                     "text_unit_ids": [["c1"], ["c1"], ["c2"], ["c1"], ["c2"]]})
    rels = pa.table({"source": ["Tomas Eriksen"], "target": ["Priya Nair"]})
    rows = Q.unanswerable_questions(6, ents, rels, chunks.column("text").to_pylist(), load_templates("personal"), 5)
    assert Q.chunks_holding(["Tomas met Priya.", "Priya swam."], [["Tomas", "Priya"], ["Tomas", "swam"], ["Jo"]]) == \
        [True, False, False]
    assert rows and len({r["question"] for r in rows}) == len(rows)
    corpus = " ".join(chunks.column("text").to_pylist()).lower()
    for r in rows:
        assert r["kind"] == "unanswerable" and is_refusal(r["answer"]) and r["reasoning"]
        named = [n for n in ("Tomas Eriksen", "Priya Nair", "Jonah Webb", "Quay Road", "Portobello Beach") if n in r["question"]]
        if len(named) == 2:  # a real pair: never in one chunk
            assert not any(all(n.lower() in c.lower() for n in named) for c in chunks.column("text").to_pylist())
        else:  # a name made of the corpus's own names, absent from it
            invented = [n for _, n in [(0, f"{a} {b}") for a in ("Tomas", "Priya", "Jonah", "Quay", "Portobello")
                                        for b in ("Eriksen", "Nair", "Webb", "Road", "Beach")] if n in r["question"]]
            assert invented and all(n.lower() not in corpus for n in invented), r["question"]
    assert Q.unanswerable_count(95, 0.05) == 5 and Q.unanswerable_count(10, 0) == 0


# ---- the qa rows ------------------------------------------------------------------------------------
def test_targets_and_qa_rows(ray_session):
    assert target("A.", "R.", "none") == "A."
    assert target("A.", "R.", "think_tags") == "<think>\nR.\n</think>\n\nA."
    assert target("A.", "R.", "inline") == "R.\n\nAnswer: A."
    assert target("A.", None, "think_tags") == "A."
    import ray

    rows = [{**_answered(id=i), "evidence_chunk_ids": ["c"], "source_chunk_id": "c", "retrieved_source": True,
             "question_source": "template", "groundedness": 1.0, "relevance": 1.0} for i in ("a", "b", "c")]
    decisions = ray.put(pa.table({"id": ["a", "b"], "kind": ["local", "local"], "question_set": ["main", "main"],
                                  "split": ["train", "test"], "group_id": ["g1", "g2"], "judge_score": [None, 7.0]},
                                 schema=DECISIONS))
    table = pa.Table.from_pylist(rows)
    train, test = qa_batch(table, [decisions], "think_tags", "sys").to_pylist()  # "c" was dropped
    assert (train["id"], train["split"], test["id"], test["split"]) == ("a", "train", "b", "test")
    assert [m["role"] for m in train["messages"]] == ["system", "user", "assistant"]
    assert train["messages"][0]["content"] == "sys" and train["group_id"] == "g1" and train["entity_ids"] == []
    assert train["messages"][2]["content"] == target(train["answer"], train["reasoning"], "think_tags")
    assert test["judge_score"] == 7.0
    assert qa_batch(table, [decisions], "none", "sys").to_pylist()[1]["messages"][2]["content"] == test["answer"]
