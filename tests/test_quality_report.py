"""The quality report (factory/synth/report.py): each measure on hand-made qa and chunk tables
whose right answer is known, and on a real no-LLM run of the journal: the manifest's `quality`
section, the card's table and plots, and a published copy that carries them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pytest

import schemas
from factory.config import validate_config
from factory.pipeline import Run, StageRecord
import factory.synth.report as synth_report
from factory.synth import target
from factory.synth.report import final_answer, figures, quality_report
from tests.support.texts import TRICKY

GARDEN = "Maya planted tomatoes in the allotment on Saturday and watered the seedlings twice before the rain came."
FERRY = "The ferry to Harwick was cancelled because of the storm, so Tomas stayed home and repaired the kitchen shelves."
CHUNKS = {"chunk-garden": GARDEN, "chunk-ferry": FERRY, "chunk-office": "Nothing of note happened at the office today."}
# A long answer and its near twin (one word more): the Jaccard of their shingles is about 0.97.
MAYA = ("Maya Lindqvist keeps an allotment beside the river where she grows tomatoes, runner beans, squash and "
        "sweet peas, swaps seedlings with her neighbours every spring, writes down the first frost each autumn, "
        "and cycles there most evenings after work to water and weed.")


def qa(id: str, kind: str, question: str, answer: str, split: str = "train", reasoning: str | None = None,
       mode: str = "think_tags", **columns) -> dict:
    return {"id": id, "kind": kind, "question": question, "answer": answer, "reasoning": reasoning, "split": split,
            "messages": [{"role": "system", "content": "You remember the notes."}, {"role": "user", "content": question},
                         {"role": "assistant", "content": target(answer, reasoning, mode)}], **columns}


def make_run(tmp_path: Path, journal: Path, rows: list[dict], chunks: dict[str, str] = CHUNKS,
             reasoning: str = "think_tags") -> Run:
    cfg = validate_config({"corpus": {"path": str(journal)}, "output": {"path": str(tmp_path / "run")},
                           "synth": {"reasoning": reasoning}})
    run = Run(cfg)
    run.write_table("chunks", pa.Table.from_pylist([
        {"id": cid, "document_id": "d", "chunk_index": i, "text": text, "n_tokens": 20}
        for i, (cid, text) in enumerate(chunks.items())]))
    for split in ("train", "test"):
        run.write_table("qa", pa.Table.from_pylist([r for r in rows if r["split"] == split], schema=schemas.schema_of("qa")), split)
    return run


def report(tmp_path: Path, journal: Path, rows: list[dict], voice: str | None = None, **kwargs) -> dict:
    rec = StageRecord("synthesis")
    if voice:
        rec.stats["voice"] = voice
    return quality_report(make_run(tmp_path, journal, rows, **kwargs), rec)


def holds(q: dict, name: str) -> bool | None:
    return next(t["holds"] for t in q["targets"] if t["name"] == name)


@pytest.mark.parametrize("mode", ["think_tags", "inline", "none"])
def test_final_answer_is_the_last_turn_without_its_reasoning(mode):
    row = qa("a", "local", "What happened?", "The ferry was cancelled.", reasoning="FERRY says so.\n\nAnswer: maybe", mode=mode)
    assert final_answer(row["messages"], row["answer"], row["reasoning"], mode) == "The ferry was cancelled."
    assert final_answer(None, "from the column", None, mode) == "from the column"
    # A think block the reasoning column does not match is still not part of the answer.
    turn = [{"role": "assistant", "content": "<think>\nsomething else\n</think>\n\nIt rained."}]
    assert final_answer(turn, "x", "other reasoning", mode) == "It rained."


@pytest.mark.parametrize("mode", ["think_tags", "inline", "none"])
def test_final_answers_of_a_batch_are_final_answer_of_each_row(mode):
    turns = [[{"role": "assistant", "content": target(t, r, mode)}] for t, r in [("It rained.", "Notes say rain."), ("Sun.", None)]]
    turns += [[{"role": "user", "content": "Q?"}], [], None, [{"role": "assistant", "content": None}],
              [{"role": "assistant", "content": "<think>a</think> first"}, {"role": "system", "content": "s"},
               {"role": "assistant", "content": " <think>\nother\n</think>\n\nlast"}]]
    rows = [{"messages": m, "answer": f"column {i}", "reasoning": ["Notes say rain.", None, "r", "", None, None, "x"][i]}
            for i, m in enumerate(turns)]
    fields = [schemas.schema_of("qa").field(c) for c in ("messages", "answer", "reasoning")]
    batch = pa.RecordBatch.from_pylist(rows, schema=pa.schema(fields))
    expected = [final_answer(r["messages"], r["answer"], r["reasoning"], mode) for r in rows]
    assert synth_report._final_answers(batch, mode).to_pylist() == expected
    assert expected[:5] == ["It rained.", "Sun.", "column 2", "column 3", "column 4"] and expected[6] == "last"


def test_arrow_prefilters_flag_every_text_the_patterns_find():
    """Arrow's RE2 searches supersets; a text its superset misses is a citation or a personal question lost."""
    cited = ["[DATA: x", "[chunK 1]", "[report  7]", "abc 3f2a9c0d1b7e4a56.", "Day (2025-03-27):", "(٢٠٢٥-٠٣-٢٧) says",
             "see chunk-garden here", "x" * 7 + " chunk-ferry"]
    personal = ["What did I do?", "I’m here", "''tell me'my notes", "MY garden", "tell me about myself", "I'LL go",
                "Help me,me", "(me)", "i've", "-I-"]
    impersonal = ["Tell me about it.", "Show me Maya.", "Minecraft", "myth", "Imam"]
    texts = TRICKY + cited + personal + impersonal
    cites = [bool(synth_report._citations({t}, set(CHUNKS))) for t in texts]
    assert all(cites[len(TRICKY):len(TRICKY) + len(cited)]) and not any(cites[:3])
    maybe = synth_report._any([pa.array(texts)], synth_report._MAYBE_CITATION + "|" + synth_report._re2_literal("chunk-"))
    assert maybe[cites].all()
    personal_rows = [synth_report.first_person_rate([synth_report._ADDRESSEE.sub("", t)]) > 0 for t in texts]
    assert all(personal_rows[-len(personal) - len(impersonal):-len(impersonal)]) and not any(personal_rows[-len(impersonal):])
    assert synth_report._any([pa.array(texts)], synth_report._MAYBE_PERSONAL)[personal_rows].all()


def test_local_answers_are_checked_against_their_own_source_chunk(tmp_path, journal):
    rows = [
        # Supported; the reasoning quotes another chunk, and reasoning is not the answer.
        qa("own", "local", "What did Maya plant?", GARDEN, reasoning=FERRY, source_chunk_id="chunk-garden", retrieved_source=True),
        # Copied from a different chunk than the one the question is about.
        qa("copied", "local", "What did Maya do on Saturday?", FERRY, source_chunk_id="chunk-garden", retrieved_source=True),
        qa("gone", "local", "What did Maya water?", GARDEN, source_chunk_id="chunk-missing", retrieved_source=False),
        # A paraphrase in the source's own words.
        qa("short", "local", "Why did Tomas stay home?", "Tomas stayed home because the ferry to Harwick was cancelled.",
           source_chunk_id="chunk-ferry", retrieved_source=True),
        qa("ent", "entity", "Who is Tomas?", FERRY),  # not local: not checked
    ]
    q = report(tmp_path, journal, rows)
    assert q["local_supported"] == {"rows": 4, "supported": 2, "missing_source": 1, "min_support": 0.8, "share": 0.5}
    assert q["examples"]["local_unsupported"] == ["copied"] and q["examples"]["local_missing_source"] == ["gone"]
    assert holds(q, "local_supported") is False
    assert q["retrieval_recall"] == {"local": {"rows": 4, "hits": 3, "share": 0.75}}


def test_duplicate_answers_need_a_different_question_and_near_twins_across_splits_count(tmp_path, journal):
    themes = "The notes keep returning to the garden, the ferry and the new job."
    harbour = "Harwick is a small harbour town on the east coast with a ferry to the islands."
    rows = [
        qa("maya", "entity", "Who is Maya?", MAYA),
        qa("maya-test", "entity", "What does Maya grow?", MAYA[:-1] + " daily.", split="test"),
        qa("themes", "global", "What are the main themes?", themes),
        qa("themes-2", "global", "What are the biggest challenges?", "The notes keep  returning to the garden,\nthe ferry and the new job."),
        # The same question asked twice with the same answer is not an answer shared with another question.
        qa("harwick", "entity", "Where is Harwick?", harbour),
        qa("harwick-again", "entity", "Where is  Harwick?", harbour),
        qa("other", "relationship", "How do Maya and Tomas know each other?", "They met at the allotment."),
    ]
    q = report(tmp_path, journal, rows)
    dup = q["duplicate_answers"]
    assert (dup["rows"], dup["exact"], dup["by_kind"]) == (4, 2, {"global": 2, "entity": 2, "relationship": 0})
    assert dup["share"] == round(4 / 7, 4) and holds(q, "duplicate_answers") is False
    over = q["cross_split_overlap"]
    assert (over["test_rows"], over["rows"], over["exact"]) == (1, 1, 0) and over["by_kind"]["entity"] == 1
    assert q["examples"]["cross_split_overlap"] == ["maya-test"] and holds(q, "cross_split_overlap") is False
    assert sorted(q["examples"]["duplicate_answers"]) == ["maya", "maya-test", "themes", "themes-2"]


def test_targets_with_citations_chunk_ids_or_passage_labels_are_counted_by_pattern(tmp_path, journal):
    rows = [
        qa("data", "global", "What are the main themes?", "Gardening and the ferry. [Data: Reports (3)]"),
        qa("label", "local", "What did I plant?", "In Saturday 8 February 2025 (2025-02-08): Maya planted tomatoes."),
        qa("id", "relationship", "How are Maya and Tomas linked?", "They share the allotment.",
           reasoning="Passage chunk-garden says they share it."),
        qa("report", "entity", "Who is Tomas?", "A carpenter [report 12]."),
        qa("hash", "entity", "Who is Maya?", "A gardener, see 3f2a9c0d1b7e4a56."),
        qa("chunk", "local", "What happened to the ferry?", "It was cancelled [chunk 3]."),
        # Clean: a bare date, a short hex-looking word, a number.
        qa("clean", "local", "When did Maya plant?", "On 2025-02-08, after 12 days of rain; the cafe was deadbeef-free."),
    ]
    q = report(tmp_path, journal, rows)
    c = q["citations"]
    assert c["rows"] == 6 and holds(q, "citations") is False
    assert c["by_pattern"] == {"chunk_id": 1, "chunk_label": 1, "content_hash": 1, "data_citation": 1,
                               "report_label": 1, "title_date_label": 1}
    assert c["by_kind"] == {"local": 2, "global": 1, "entity": 2, "relationship": 1}
    assert "clean" not in q["examples"]["citations"]


def test_personal_voice_target_applies_to_reference_corpora(tmp_path, journal):
    rows = [
        qa("a", "local", "What did I write about the ferry?", FERRY),
        qa("b", "local", "What do my notes say about Maya?", GARDEN),
        qa("c", "entity", "What does the glossary say about tomatoes?", GARDEN),
        qa("d", "entity", "Who is Maya?", GARDEN),
        qa("e", "entity", "Tell me about Maya.", GARDEN),  # the asker's "me", not the owner's voice
        qa("f", "entity", "Can you tell me what my allotment grows?", GARDEN),
    ]
    q = report(tmp_path / "reference", journal, rows, voice="reference")
    assert (q["voice"]["personal"], q["voice"]["share"], q["voice"]["corpus"]) == (3, 0.5, "reference")
    assert q["voice"]["by_kind"] == {"local": 2, "entity": 1} and holds(q, "personal_voice") is False
    diary = {"chunk-garden": "I planted my tomatoes today and I watered them before I went to bed."}
    q = report(tmp_path / "personal", journal, rows, chunks=diary)
    assert (q["voice"]["corpus"], q["voice"]["decided"]) == ("personal", None)
    assert holds(q, "personal_voice") is None  # a journal's owner may ask about "my notes"


def test_rows_lengths_groundedness_and_question_sets(tmp_path, journal):
    rows = [qa(f"l{i}", "local", f"Question {i} about the garden?", "x" * n, groundedness=g, question_set=qs)
            for i, (n, g, qs) in enumerate([(40, 0.05, "main"), (120, 0.55, "main"), (120, 0.95, "hard_global"), (5000, 1.0, None)])]
    rows += [qa("u", "unanswerable", "Who is Zorbly?", "I have no notes about Zorbly.", split="test")]
    q = quality_report(make_run(tmp_path, journal, rows))  # a null question set counts as main
    assert q["rows"]["total"] == 5
    assert q["rows"]["by_kind"] == {"local": {"train": 4, "test": 0}, "unanswerable": {"train": 0, "test": 1}}
    assert q["rows"]["by_question_set"] == {"hard_global": {"local": {"train": 1, "test": 0}},
                                            "main": {"local": {"train": 3, "test": 0}, "unanswerable": {"train": 0, "test": 1}}}
    lengths = q["answer_chars"]
    assert lengths["quantiles"]["local"]["p50"] == 120 and lengths["quantiles"]["local"]["p100"] == 5000
    assert lengths["histogram"]["counts"]["local"] == [1, 0, 2, 0, 0, 0, 0, 1, 0, 0]  # 0-50, 100-200, 3200-6400
    g = q["groundedness"]
    assert g["histogram"]["counts"]["local"] == [1, 0, 0, 0, 0, 1, 0, 0, 0, 2]
    assert g["missing"] == {"local": 0, "unanswerable": 1} and g["quantiles"]["unanswerable"] is None
    assert g["quantiles"]["local"]["p0"] == 0.05 and g["quantiles"]["local"]["p100"] == 1.0


def test_figures_are_the_same_bytes_for_the_same_report(tmp_path, journal):
    q = report(tmp_path, journal, [qa("a", "local", "What did Maya plant?", GARDEN, source_chunk_id="chunk-garden",
                                      groundedness=0.9), qa("b", "entity", "Who is Tomas?", FERRY, split="test")])
    first = figures(q)
    assert set(first) == {"rows_per_kind", "answer_chars", "groundedness", "targets", "by_kind"}
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in first.values())
    assert figures(json.loads(json.dumps(q, sort_keys=True))) == first  # from the manifest's JSON, byte for byte


@pytest.mark.slow
def test_generated_run_has_a_quality_section_card_table_and_plots(tmp_path, journal, ray_session):
    from datasets import load_dataset

    from factory.generate import generate
    from factory.pipeline import open_run
    from factory.publish import publish

    cfg = validate_config({"corpus": {"path": str(journal)}, "output": {"path": str(tmp_path / "run")},
                           "ray": {"cpu_actors": 1}})
    run = generate(cfg)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    q = manifest["quality"]
    local_rows = sum(manifest["stages"]["synthesis"]["stats"]["rows"][s]["local"] for s in ("train", "test"))
    assert q["rows"]["total"] == sum(n for k, n in manifest["counts"].items() if k.startswith("qa/"))
    assert q["local_supported"]["rows"] == local_rows and q["local_supported"]["missing_source"] == 0
    assert {t["name"] for t in q["targets"]} == {"local_supported", "duplicate_answers", "citations",
                                                 "cross_split_overlap", "personal_voice"}
    assert q["voice"]["corpus"] == "personal"

    card = (tmp_path / "run" / "README.md").read_text()
    assert "## Quality" in card and "| local answers supported by their source chunk (share) |" in card
    plots = re.findall(r"!\[[^\]]*\]\((quality/[\w-]+\.png)\)", card)
    assert len(plots) == 5 and all((tmp_path / "run" / p).read_bytes().startswith(b"\x89PNG") for p in plots)
    # The plot folder is not a table: the qa config loads as before.
    assert sum(load_dataset(run.root, "qa")[s].num_rows for s in ("train", "test")) == q["rows"]["total"]

    dest = tmp_path / "pub"
    publish(open_run(run.root), str(dest))
    published = re.findall(r"!\[[^\]]*\]\((quality/[\w-]+\.png)\)", (dest / "README.md").read_text())
    assert len(published) == 5 and all((dest / p).exists() for p in published)
    assert {f["path"] for f in json.loads((dest / "manifest.json").read_text())["figures"]} == set(published)
    assert sorted(p.name for p in (dest / "quality").iterdir()) == sorted(p.split("/")[1] for p in published)
