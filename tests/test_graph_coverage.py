"""The no-LLM graph of a real `generate` run (ingest, chunk, graph, reports) on corpora of two kinds.

Every entity is covered by a community and so by a report; entity types are the
ones resolved for the corpus's voice; report text carries no citation notes;
on the journal, names that are not people are not typed person.
"""

from __future__ import annotations

import pytest

from factory.config import load_config
from factory.generate import generate
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

# Journal names that are no people (a book, a guesthouse, a hospital, a cheese, a walking frame...).
NOT_PEOPLE = {"Field Guide", "Glasshouse", "Weathers", "Gull Rest", "Old Mill", "Harwick General", "Parmesan",
              "Portobello", "Gerald"}


@pytest.fixture(scope="module", params=["journal", "manual"])
def corpus_run(request, ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "run"
    cfg = load_config(None, [f"corpus.path={ROOT / 'examples' / request.param}", f"output.path={out}", "teacher.engine=none"])
    run = generate(cfg, until="reports")
    tables = {t: run.read_arrow(t).to_pylist() for t in ("entities", "communities", "community_reports")}
    return request.param, run.manifest["stages"]["graph"]["stats"], tables


def test_every_entity_is_in_a_community_with_a_report(corpus_run):
    _, stats, t = corpus_run
    ids = {e["id"] for e in t["entities"]}
    assert ids and ids == {i for c in t["communities"] if c["level"] == 0 for i in c["entity_ids"]}
    assert sorted(r["community"] for r in t["community_reports"]) == sorted(c["community"] for c in t["communities"])
    assert stats["communities"]["joined_nearest"] + stats["communities"]["residual_entities"] > 0


def test_types_follow_the_corpus_voice_and_reports_cite_nothing_in_their_text(corpus_run):
    name, stats, t = corpus_run
    voice, types = ("personal", ["person", "organization", "geo", "event"]) if name == "journal" else \
        ("reference", ["person", "organization", "geo", "event", "concept"])
    assert (stats["voice"], stats["entity_types"]) == (voice, types)
    assert {e["type"] for e in t["entities"]} <= set(types)
    for r in t["community_reports"]:
        texts = [r["title"], r["summary"], r["full_content"], *(f["explanation"] for f in r["findings"])]
        assert not any("[Data:" in x for x in texts)
    by_type = {}
    for e in t["entities"]:
        by_type.setdefault(e["type"], set()).add(e["title"])
    if name == "journal":
        assert {"Tomas Eriksen", "Priya Nair", "Jonah Webb", "Helen Okafor", "Aunt Rosa"} <= by_type["person"]
        assert not by_type["person"] & NOT_PEOPLE
    else:
        assert "Tessaro Duetto" in by_type["concept"] and "Section" not in {e["title"] for e in t["entities"]}
