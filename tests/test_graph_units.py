"""Graph building blocks without Ray: rule extraction, merge, hierarchical Leiden, report context and TextRank."""

from __future__ import annotations

import json
import random

import networkx as nx
import pyarrow as pa

from factory.config import GraphConfig
from factory.graph.communities import build_communities, hierarchical_leiden
from factory.graph.extract import EXTRACTION
from factory.graph.merge import finalize, merge, rank_and_cut
from factory.graph.reports import _Index, finalize as report_row, pack_context, render_context, rule_report, textrank
from factory.graph.rules import extract_rules
from factory.text import estimate_tokens

TYPES = ["person", "organization", "geo", "event", "concept"]


def by_title(ents):
    return {e["title"]: e for e in ents}


def test_rules_find_names_types_and_sentence_edges():
    text = (
        "# Saturday\n\nDr. Helen Okafor said my knee is fine. After work I went to Flour & Ember on Quay Road.\n"
        "At Greenline Studio, Priya Nair and Tomas talked about the Harwick Half Marathon. Dinner was late.\n"
        "We walked along the Calder River in Edinburgh. Tomas brought the sourdough starter home."
    )
    ents, rels, _ = extract_rules(text, TYPES)
    e = by_title(ents)
    assert e["Helen Okafor"]["type"] == "person"  # honorific dropped from a full name, still a person cue
    assert e["Flour & Ember"]["type"] == "organization"
    assert e["Quay Road"]["type"] == "geo" and e["Calder River"]["type"] == "geo"
    assert e["Greenline Studio"]["type"] == "organization"
    assert e["Harwick Half Marathon"]["type"] == "event"
    assert e["Edinburgh"]["type"] == "geo"  # "in Edinburgh"
    assert e["sourdough starter"]["type"] == "concept"  # a noun phrase, as the run's types allow
    assert e["Tomas"]["type"] == "person"  # "Tomas brought"
    assert e["Priya Nair"]["type"] == ""  # no cue in this chunk: merge decides
    # A comma ends a name: no "Greenline Studio Priya Nair"; "and" does not join two names.
    assert not any("Studio Priya" in t or " and " in t for t in e)
    assert e["Dinner"]["initial_only"] and not e["Tomas"]["initial_only"]
    assert "Saturday" not in e and "After" not in e and "I" not in e
    pairs = {frozenset((r["source"], r["target"])): r for r in rels}
    together = pairs[frozenset(("Priya Nair", "Tomas"))]
    assert together["weight"] == 1.0 and "Harwick Half Marathon" in together["description"]
    # Different sentences: not related.
    assert frozenset(("Helen Okafor", "Edinburgh")) not in pairs


def test_rules_list_the_chunks_lower_case_words():
    ents, _, lower = extract_rules("Dinner was soup. We cooked dinner together and dinner was good.", TYPES)
    assert by_title(ents)["Dinner"]["initial_only"] and "dinner" in lower and "soup" in lower


def test_rules_cues_labels_possessives_headings_and_table_cells():
    text = (
        "# Water Quality and the Filter Cartridge\n\n"
        "Tessaro brought its service in-house. See Section 5 for details.\n"
        "Mara Lindqvist visited Priya's Greenline Studio. She stayed late.\n"
        "| Soft | below 7 |\n"
    )
    ents, _, _ = extract_rules(text, TYPES)
    e = by_title(ents)
    assert e["Water Quality"]["initial_only"]  # capitals of a title-cased heading are style
    assert e["Tessaro"]["type"] == ""  # "brought" says person, "its" takes it back
    assert "Section" not in e  # a label before a number
    assert "Priya" in e and "Greenline Studio" in e and "Priya Greenline Studio" not in e  # a possessive ends a name
    assert e["Mara Lindqvist"]["type"] == "person"  # "She" opens the next sentence
    assert e["Soft"]["initial_only"]  # a table cell starts like a sentence


def extraction_table(rows: list[tuple[str, list[dict], list[dict]]], error: dict | None = None,
                     lower: dict[str, list[str]] | None = None) -> pa.Table:
    full = []
    for cid, ents, rels in rows:
        ents = [{"type": "", "description": "", "initial_only": False, **e} for e in ents]
        rels = [{"description": "", "weight": 1.0, **r} for r in rels]
        full.append({"chunk_id": cid, "entities": ents, "relationships": rels, "error": (error or {}).get(cid),
                     "lowercase_words": (lower or {}).get(cid, [])})
    return pa.Table.from_pylist(full, schema=EXTRACTION)


def test_merge_rules_folds_aliases_prunes_and_counts_distinct_evidence():
    s1, s2, s3 = "Tomas met Priya Nair.", "Priya and Tomas ran.", "Tomas Eriksen baked."
    rows = [
        ("c1", [{"title": "Tomas", "type": "person", "description": s1}, {"title": "Priya Nair", "type": "person", "description": s1},
                {"title": "Zed", "type": "person", "description": "Zed once."}],
         [{"source": "Tomas", "target": "Priya Nair", "description": s1}]),
        # c2 overlaps c1: the same evidence sentence again must not count twice.
        ("c2", [{"title": "Tomas", "type": "person", "description": s1}, {"title": "Priya Nair", "type": "person", "description": s1}],
         [{"source": "Tomas", "target": "Priya Nair", "description": s1}]),
        ("c3", [{"title": "Priya", "type": "person", "description": s2}, {"title": "Tomas", "type": "person", "description": s2},
                {"title": "Tomas Eriksen", "type": "person", "description": s3},
                {"title": "Dinner", "type": "person", "description": "Dinner was late.", "initial_only": True}],
         [{"source": "Priya", "target": "Tomas", "description": s2}]),
    ]
    cfg = GraphConfig(min_entity_frequency=2, min_edge_weight=2)
    m = merge(extraction_table(rows), cfg, rules=True, entity_types=TYPES, chunk_order={"c1": 0, "c2": 1, "c3": 2})
    g = m.graph
    assert set(g.nodes) == {"Tomas Eriksen", "Priya Nair"}  # Zed rare, Dinner sentence-initial only
    edge = g.edges["Tomas Eriksen", "Priya Nair"]
    assert edge["weight"] == 2.0  # s1 (twice, counted once) + s2
    assert g.nodes["Tomas Eriksen"]["frequency"] == 3 and g.nodes["Tomas Eriksen"]["text_unit_ids"] == ["c1", "c2", "c3"]
    assert m.stats["aliases_folded"] == 2 and m.stats["rare_entities_pruned"] == 1 and m.stats["sentence_initial_dropped"] == 1
    ents, rels = finalize(g)
    assert ents.column("degree").to_pylist() == [1, 1]
    assert rels.column("combined_degree").to_pylist() == [2]
    # Stricter pruning removes the edge.
    m2 = merge(extraction_table(rows), GraphConfig(min_edge_weight=3), rules=True, entity_types=TYPES)
    assert m2.graph.number_of_edges() == 0


def test_merge_rules_drops_noise_and_types_only_on_evidence():
    def mention(title, etype="", initial=False):
        return {"title": title, "type": etype, "description": f"{title} here.", "initial_only": initial}

    rows, lower = [], {}
    for i in range(8):
        rows.append((f"c{i}", [
            mention("Method", initial=True),  # only ever opens a sentence
            mention("Dinner"),  # capitalized mid-sentence, but the corpus writes "dinner" as often
            mention("Royal Society", "organization"), mention("Royal Navy", "organization"), mention("Royal"),
            mention("Old Mill Gardens", "geo"), *([mention("Old Mill")] if i < 2 else []),
            mention("Parmesan"),  # no cue anywhere
            mention("Fack Lathcurk"), mention("Fack Bemzaes"),  # a first name shared by two names
            mention("Tessaro", "person" if i == 0 else ""),  # one cue in eight chunks is not enough
            mention("English"),
        ], []))
        lower[f"c{i}"] = ["dinner", "method"]
    table = extraction_table(rows, lower=lower)
    cfg = GraphConfig(min_entity_frequency=2)
    personal = merge(table, cfg, rules=True, entity_types=["person", "organization", "geo", "event"])
    types = {t: d["type"] for t, d in personal.graph.nodes(data=True)}
    assert types == {"Royal Society": "organization", "Royal Navy": "organization", "Old Mill Gardens": "geo",
                     "Fack Lathcurk": "person", "Fack Bemzaes": "person"}
    assert personal.graph.nodes["Old Mill Gardens"]["frequency"] == 8 and personal.graph.nodes["Old Mill Gardens"]["descriptions"] \
        .count("Old Mill here.") == 1  # "Old Mill" folded in
    stats = personal.stats
    assert stats["sentence_initial_dropped"] == 1 and stats["common_word_dropped"] == 2  # Dinner, English
    assert stats["fragments_dropped"] == 1 and stats["fragments_folded"] == 1 and stats["untyped_dropped"] == 2
    # A reference corpus has concepts: what no cue typed is kept as one.
    reference = merge(table, cfg, rules=True, entity_types=TYPES)
    assert {t: d["type"] for t, d in reference.graph.nodes(data=True) if t in ("Parmesan", "Tessaro")} == \
        {"Parmesan": "concept", "Tessaro": "concept"}


def test_merge_llm_sums_strength_keeps_unlisted_endpoints_and_flags_long_descriptions():
    long = "A long note about the bakery and everything that happened there. " * 12
    rows = [
        ("c1", [{"title": "Flour & Ember", "type": "organization", "description": long}],
         [{"source": "Flour & Ember", "target": "Tomas", "description": "Tomas runs it.", "weight": 8.0}]),
        ("c2", [{"title": "flour & ember", "type": "organization", "description": long.replace("bakery", "shop")},
                {"title": "Zed", "type": "person", "description": "Once."}],
         [{"source": "Tomas", "target": "Flour & Ember", "description": "He bakes there.", "weight": 5.0}]),
    ]
    m = merge(extraction_table(rows), GraphConfig(max_description_tokens=100), rules=False, entity_types=TYPES)
    g = m.graph
    assert set(g.nodes) == {"Flour & Ember", "Tomas", "Zed"}  # no pruning for LLM extractions
    assert g.nodes["Tomas"]["type"] == "" and m.stats["entities_from_relationships"] == 1
    assert g.edges["Flour & Ember", "Tomas"]["weight"] == 13.0
    assert [v[0] for v in m.long_descriptions.values()] == ["Flour & Ember"]
    ents, _ = finalize(g, {g.nodes["Flour & Ember"]["id"]: "A bakery."})
    assert by_title(ents.to_pylist())["Flour & Ember"]["description"] == "A bakery."


def test_rank_and_cut_prefers_related_lines_and_keeps_order():
    lines = ["Short.", "Tomas and Priya Nair planned the garden together at the studio today.", "Filler line " * 30]
    out = rank_and_cut(lines, 30, related=["Priya Nair"])
    assert out.split("\n") == ["Short.", lines[1]]
    assert estimate_tokens(out) <= 30


def planted(n: int, block: int, m: int, seed: int = 0):
    rnd = random.Random(seed)
    edges = set()
    while len(edges) < m:
        u = rnd.randrange(n)
        v = (u // block) * block + rnd.randrange(block) if rnd.random() < 0.85 else rnd.randrange(n)
        if u != v:
            edges.add((min(u, v), max(u, v)))
    return sorted(edges)


def test_hierarchical_leiden_respects_max_size_and_is_deterministic():
    edges = planted(2000, 40, 9000)
    a, over = hierarchical_leiden(2000, edges, [1.0] * len(edges), 10, seed=7)
    b, _ = hierarchical_leiden(2000, edges, [1.0] * len(edges), 10, seed=7)
    assert [(c.level, c.nodes, c.parent, c.children) for c in a] == [(c.level, c.nodes, c.parent, c.children) for c in b]
    assert over == 0
    leaves = [c for c in a if not c.children]
    assert max(len(c.nodes) for c in leaves) <= 10
    assert max(c.level for c in a) >= 1
    # Level 0 partitions every linked node; children partition their parent.
    assert sorted(v for c in a if c.level == 0 for v in c.nodes) == sorted({v for e in edges for v in e})
    for c in a:
        if c.children:
            assert sorted(v for k in c.children for v in a[k].nodes) == c.nodes
            assert all(a[k].parent == c.community and a[k].level == c.level + 1 for k in c.children)


def test_components_kept_or_largest_only_and_a_dense_core_split_at_a_higher_resolution():
    clique = [(i, j) for i in range(12) for j in range(i + 1, 12)]
    pair = [(20, 21)]
    edges = clique + pair
    kept, over = hierarchical_leiden(30, edges, [1.0] * len(edges), 10, seed=1)
    level0 = [c.nodes for c in kept if c.level == 0]
    assert [20, 21] in level0 and any(set(range(12)) == set(n) for n in level0)
    only, _ = hierarchical_leiden(30, edges, [1.0] * len(edges), 10, seed=1, largest_component_only=True)
    assert all(set(c.nodes) <= set(range(12)) for c in only)
    # A 30-clique where every edge is equally strong: plain modularity keeps it whole at level 0; the
    # retry at a higher resolution splits it one level down, so nothing is left oversized.
    big = [(i, j) for i in range(30) for j in range(i + 1, 30)]
    clusters, over = hierarchical_leiden(30, big, [1.0] * len(big), 10, seed=1)
    assert over == 0 and [len(c.nodes) for c in clusters if c.level == 0] == [30]
    assert clusters[0].children and {c.parent for c in clusters[1:]} == {0}
    assert sorted(v for k in clusters[0].children for v in clusters[k].nodes) == list(range(30))
    assert max(len(clusters[k].nodes) for k in clusters[0].children) <= 10


def small_graph() -> nx.Graph:
    g = nx.Graph()
    for i in range(8):
        g.add_node(f"N{i}", id=f"e{i}", text_unit_ids=[f"c{i}", f"c{i + 1}"])
    for i in range(7):
        g.add_edge(f"N{i}", f"N{i + 1}", id=f"r{i}", weight=1.0)
    g.add_node("Lonely", id="e9", text_unit_ids=["c0"])
    return g


def test_build_communities_table_fields_and_every_entity_in_a_community():
    g = small_graph()
    g.add_node("Alone", id="e10", text_unit_ids=["c99"])  # shares no chunk with anyone
    table, stats = build_communities(g, max_cluster_size=3, seed=3)
    rows = table.to_pylist()
    assert stats["oversized"] == 0 and stats["joined_nearest"] == 1 and stats["residual_entities"] == 1
    top = [r for r in rows if r["level"] == 0]
    assert all(r["parent"] == -1 for r in top)
    assert sorted(e for r in top for e in r["entity_ids"]) == sorted(d["id"] for _, d in g.nodes(data=True))
    # "Lonely" has no edge but is named in c0 with N0: it joins N0's leaf. "Alone" gets a residual community.
    leaves = [r for r in rows if not r["children"]]
    assert any({"e0", "e9"} <= set(r["entity_ids"]) for r in leaves)
    assert any(r["entity_ids"] == ["e10"] and r["level"] == 0 for r in rows)
    by_c = {r["community"]: r for r in rows}
    units = {d["id"]: set(d["text_unit_ids"]) for _, d in g.nodes(data=True)}
    for r in rows:
        assert r["size"] == len(r["entity_ids"]) and r["title"] == f"Community {r['community']}"
        for k in r["children"]:
            assert by_c[k]["parent"] == r["community"]
        members = {int(e[1:]) for e in r["entity_ids"]}
        # Internal relationships only: both ends inside.
        assert all({int(x[1:]), int(x[1:]) + 1} <= members for x in r["relationship_ids"])
        assert set(r["text_unit_ids"]) == set().union(*(units[e] for e in r["entity_ids"]))
    assert table.equals(build_communities(g, max_cluster_size=3, seed=3)[0])


def report_index(n_ents: int, desc_words: int, first_hid: int = 0) -> tuple[_Index, list[dict]]:
    ents = [{"id": f"e{i}", "human_readable_id": first_hid + i, "title": f"Name{i}", "type": "person",
             "description": " ".join(["word"] * desc_words), "text_unit_ids": [f"c{i}"], "frequency": 1, "degree": n_ents - i}
            for i in range(n_ents)]
    rels = [{"id": f"r{i}", "human_readable_id": first_hid + i, "source": f"Name{i}", "target": f"Name{i + 1}", "description": "linked",
             "weight": 1.0, "combined_degree": 2, "text_unit_ids": [f"c{i}"]} for i in range(n_ents - 1)]
    chunks = pa.table({"id": [f"c{i}" for i in range(n_ents)], "text": [f"Name{i} did a thing with Name{i + 1}." for i in range(n_ents)]})
    return _Index(pa.Table.from_pylist(ents), pa.Table.from_pylist(rels), chunks), ents


def community(ents: list[dict]) -> dict:
    return {"community": 0, "level": 0, "size": len(ents), "entity_ids": [e["id"] for e in ents],
            "relationship_ids": [f"r{i}" for i in range(len(ents) - 1)], "text_unit_ids": [f"c{i}" for i in range(len(ents))]}


def test_context_fits_budget_and_substitutes_sub_reports_when_over():
    idx, ents = report_index(40, 60)
    small = pack_context(community(ents[:3]), idx, 2000)
    assert len(small["entities"]) == 3 and len(small["relationships"]) == 2 and small["sources"] and not small["reports"]
    assert not small["over_budget"]
    child = {"community": 5, "id": "k5", "title": "Big child", "summary": "The first thirty names.", "size": 30,
             "entity_ids": [e["id"] for e in ents[:30]], "relationship_ids": [f"r{i}" for i in range(29)]}
    ctx = pack_context(community(ents), idx, 800, [child])
    assert ctx["tokens"] <= 800 and ctx["substituted"] == 1 and ctx["over_budget"]
    assert not {e["id"] for e in ctx["entities"]} & set(child["entity_ids"])
    # Without a child report the context is cut by rank (highest degree first), still within budget.
    cut = pack_context(community(ents), idx, 800)
    assert cut["tokens"] <= 800 and cut["entities"][0]["id"] == "e0" and len(cut["entities"]) < 40


def test_context_numbers_records_per_community_so_run_wide_counters_do_not_change_it():
    def context(first_hid: int, child_numbers: tuple[int, int]) -> tuple[str, dict]:
        idx, ents = report_index(8, 60, first_hid)
        kids = [{"community": n, "id": f"k{i}", "title": f"Child {i}", "summary": "Two names.", "size": 2,
                 "entity_ids": [e["id"] for e in ents[2 * i:2 * i + 2]], "relationship_ids": [f"r{2 * i}"]}
                for i, n in enumerate(child_numbers)]
        ctx = pack_context(community(ents[:4]), idx, 300, kids)
        return render_context(ctx), rule_report(ctx, community(ents[:4]), 99)

    text, rules = context(0, (7, 8))
    assert "\n1|Child 0|" in text and "\n1|Name2|person|" in text and "\n1|Name1|Name2|" in text
    # The same community in a bigger run: its records and children renumbered run-wide (the children swapped).
    assert context(50, (38, 37)) == (text, rules)


def test_textrank_picks_the_central_sentence():
    sents = ["Tomas bakes bread at the bakery.", "The bakery sells bread that Tomas bakes daily.",
             "Bread from the bakery is what Tomas bakes best.", "It rained."]
    assert textrank(sents, 1) != ["It rained."]
    assert textrank(sents, 2) == [s for s in sents if s in textrank(sents, 2)]  # original order


def test_report_row_maps_cited_ids_and_falls_back_to_rules():
    refs = json.dumps({"e": {"3": "e3"}, "r": {"7": "r7"}, "s": {"1": "c9"}})
    llm = {"title": "T", "summary": "S", "rating": 7, "rating_explanation": "why",
           "findings": [{"summary": "f", "explanation": "x", "entity_ids": [3, 99], "relationship_ids": [7], "source_ids": [1]}]}
    com = {"id": "k", "community": 4, "level": 1, "size": 2}
    row = report_row({"report": json.dumps(llm), "error": None, "rule_report": "{}", "refs": refs}, com, "openai", "m", "h")
    assert row["engine"] == "openai" and row["rank"] == 7.0
    assert (row["entity_ids"], row["relationship_ids"], row["text_unit_ids"]) == (["e3"], ["r7"], ["c9"])
    assert row["findings"][0]["explanation"] == "x"  # lineage in the id columns, not in the text
    rule = {**llm, "title": "Rules"}
    bad = report_row({"report": None, "error": "invalid_output: x", "rule_report": json.dumps(rule), "refs": refs}, com, "openai", "m", "h")
    assert bad["title"] == "Rules" and bad["engine"] == "none" and bad["model"] is None
