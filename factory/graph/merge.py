"""Merge per-chunk extractions into one graph: one entity per title, one relationship per pair.

Entities merge on the normalized title (`text.norm_key`); their type is the
type most chunks gave (ties: the order of the run's entity types). Merging on
title + type would leave two nodes with the same title, which relationships
(keyed by title, as in GraphRAG) could not tell apart.

Rule extractions get corpus-level cleanup that needs corpus-wide evidence
(`_clean_rules`):
  * noise: a one-word name seen only at sentence starts or in headings, a
    capitalized word the corpus also uses in lower case at least as often
    ("Method", "Dinner"), a nationality ("English"), and a cue-less span that
    only ever opens a sentence with a common word ("Press BREW") are dropped;
  * types: cues from the chunks decide (merge counts each chunk's vote; a
    person needs cues in more chunks the more often it is named); a name no
    chunk gave a cue for is a person only when it looks like given name +
    surname and a word of it behaves like a name elsewhere (the first named
    alone as a person and no one's surname, the last named alone as a person,
    or the first opening other such names); otherwise it is a concept where
    the run has that type, and dropped where it does not;
  * folding: a bare first or last name folds into the full person name it
    belongs to ("Tomas" into "Tomas Eriksen"); a cue-less title fragment folds
    into the one longer title it is part of ("Old Mill" into "Old Mill
    Gardens"), or is dropped when it is mostly seen inside several ("Royal");
  * rare entities and weak edges are pruned.
Pooled descriptions longer than `max_description_tokens` are either summarized
by the caller (LLM) or ranked and cut here.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import networkx as nx
import pyarrow as pa
import pyarrow.compute as pc

import schemas
from factory.config import GraphConfig
from factory.graph.rules import CONNECTORS, DEMONYMS, HONORIFICS, STOP
from factory.text import estimate_tokens, norm_key


def stable_id(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


@dataclass
class _Node:
    key: str
    titles: Counter = field(default_factory=Counter)
    types: Counter = field(default_factory=Counter)  # chunks whose cues (or LLM) gave each type
    descriptions: dict[str, None] = field(default_factory=dict)  # ordered set: a busy entity has thousands
    chunks: dict[str, None] = field(default_factory=dict)  # ordered set
    initial_only: bool = True
    mid_chunks: int = 0  # chunks where it was capitalized away from a sentence start
    etype: str = ""  # the decided type
    absorbed: bool = False  # took in an alias's mentions (its chunks are no longer in corpus order)

    def absorb(self, other: "_Node") -> None:
        """Take in an alias's mentions; the titles and type stay this node's (the full name reads better)."""
        self.absorbed = True
        self.types.update(other.types)
        self.descriptions.update(other.descriptions)
        self.chunks.update(other.chunks)
        self.initial_only &= other.initial_only
        self.mid_chunks += other.mid_chunks

    @property
    def phrase(self) -> bool:
        return all(t.islower() for t in self.titles)


@dataclass
class _Edge:
    source: str
    target: str
    descriptions: dict[str, None] = field(default_factory=dict)  # ordered set
    weight: float = 0.0
    chunks: dict[str, None] = field(default_factory=dict)


@dataclass
class Merged:
    """The merged graph before descriptions are final; `long_descriptions` need summarizing or cutting."""

    graph: nx.Graph
    long_descriptions: dict[str, tuple[str, str, list[str]]]  # id -> (title, kind, pooled descriptions)
    stats: dict


def merge(extractions: pa.Table, cfg: GraphConfig, rules: bool, entity_types: list[str],
          chunk_order: dict[str, int] | None = None) -> Merged:
    """Merge EXTRACTION rows; `rules` turns on the corpus-level cleanup of rule extractions."""
    order = chunk_order or {}
    types_order = {t: i for i, t in enumerate(entity_types)}
    ids = extractions.column("chunk_id").to_pylist()
    # Rows in corpus order (chunks the order does not know last, by id): mentions, and so text_unit_ids, follow it.
    by_rank = sorted(range(len(ids)), key=lambda i: (order.get(ids[i], len(order)), ids[i]))
    extractions = extractions.take(by_rank)
    chunk_ids = [ids[i] for i in by_rank]
    rank_of = {c: i for i, c in enumerate(dict.fromkeys(chunk_ids))}
    key_of: dict[str, str] = {}  # title -> merge key; titles repeat, so each is normalized once

    def key(title: str) -> str:
        k = key_of.get(title)
        if k is None:
            k = key_of[title] = norm_key(title)
        return k

    nodes: dict[str, _Node] = {}
    stats: Counter = Counter()
    rows, (titles, types, descriptions, initial) = _flatten(extractions, "entities", ("title", "type", "description", "initial_only"))
    for r, title, etype, description, initial_only in zip(rows, titles, types, descriptions, initial):
        k = key_of.get(title)
        if k is None:
            k = key(title)
        if not k:
            continue
        n = nodes.get(k)
        if n is None:
            n = nodes[k] = _Node(k)
        n.titles[title] += 1
        if etype:
            n.types[etype] += 1
        if description:
            n.descriptions[description] = None
        n.chunks[chunk_ids[r]] = None
        n.initial_only &= bool(initial_only)
        n.mid_chunks += not initial_only
    for n in nodes.values():
        n.etype = _top_type(n.types, types_order)
        if rules and n.etype == "person" and n.types["person"] < _person_evidence(len(n.chunks)):
            del n.types["person"]  # one "Tessaro brought its ..." in thirteen chunks does not make a person
            n.etype = _top_type(n.types, types_order)
    alias = _clean_rules(nodes, extractions, cfg, entity_types, stats) if rules else {}

    rows, (sources, targets, descriptions, weights) = _flatten(extractions, "relationships", ("source", "target", "description", "weight"))
    merged_key = {t: alias.get(k, k) for t, k in key_of.items()}
    ends = []  # per relationship: its merged pair, or None when it is dropped
    for source, target in zip(sources, targets):
        a = merged_key.get(source)
        if a is None:  # a title only the LLM's relationships use
            a = merged_key[source] = alias.get(key(source), key(source))
        b = merged_key.get(target)
        if b is None:
            b = merged_key[target] = alias.get(key(target), key(target))
        ends.append((a, b) if a and b and a != b and (not rules or (a in nodes and b in nodes)) else None)
    if rules:
        # A pair whose chunks together hold fewer evidence sentences than min_edge_weight can never be kept:
        # skip it before pooling sentences (most co-occurrences of a corpus are single).
        bound: Counter = Counter()
        for pair, w in zip(ends, weights):
            if pair:
                bound[pair if pair[0] < pair[1] else pair[::-1]] += w or 0
        weak = {p for p, w in bound.items() if w < cfg.min_edge_weight}
        stats["weak_edges_pruned"] += len(weak)
    edges: dict[tuple[str, str], _Edge] = {}
    evidence: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r, ab, source, target, description, weight in zip(rows, ends, sources, targets, descriptions, weights):
        if ab is None:
            continue
        a, b = ab
        pair = (a, b) if a < b else (b, a)
        if rules and pair in weak:
            continue
        for k, t in ((a, source), (b, target)):
            if k not in nodes:
                # The LLM related something it did not list as an entity: keep it as an untyped node.
                nodes[k] = _Node(k, Counter({t: 1}), chunks={chunk_ids[r]: None}, initial_only=False)
                stats["entities_from_relationships"] += 1
        edge = edges.get(pair) or edges.setdefault(pair, _Edge(a, b))
        edge.chunks[chunk_ids[r]] = None
        if description:
            edge.descriptions[description] = None
        if rules:
            evidence[pair].update(line for line in (description or "").split("\n") if line)
        else:
            edge.weight += float(weight or 1.0)
    if rules:
        # Overlapping chunks repeat sentences: count each evidence sentence once.
        for pair, edge in edges.items():
            edge.weight = float(len(evidence[pair]))
        repeated = [p for p, e in edges.items() if e.weight < cfg.min_edge_weight]
        for p in repeated:
            del edges[p]
        stats["weak_edges_pruned"] += len(repeated)

    graph = nx.Graph()
    for key in sorted(nodes, key=lambda k: (-len(nodes[k].chunks), k)):
        n = nodes[key]
        # Most used surface form; ties go to the better capitalized (not shouting), then the first seen.
        title = next(iter(n.titles)) if len(n.titles) == 1 else max(
            enumerate(n.titles.items()),
            key=lambda it: (it[1][1], not it[1][0].isupper(), sum(c.isupper() for c in it[1][0]), -it[0]))[1][0]
        graph.add_node(
            title, key=key, id=stable_id("entity", key), type=n.etype, descriptions=list(n.descriptions),
            # Mentions came in corpus order; only an alias's, taken in later, need sorting in.
            text_unit_ids=sorted(n.chunks, key=rank_of.__getitem__) if n.absorbed else list(n.chunks), frequency=len(n.chunks),
        )
    title_of = {d["key"]: t for t, d in graph.nodes(data=True)}
    for (a, b), e in sorted(edges.items(), key=lambda kv: (-kv[1].weight, kv[0])):
        graph.add_edge(
            title_of[e.source], title_of[e.target], id=stable_id("relationship", a, b), weight=e.weight,
            descriptions=list(e.descriptions), text_unit_ids=list(e.chunks), src=title_of[e.source], tgt=title_of[e.target],
        )
    long = _pool_descriptions(graph, cfg, cut=rules)
    stats.update(entities=graph.number_of_nodes(), relationships=graph.number_of_edges())
    return Merged(graph, long, dict(stats))


def _flatten(table: pa.Table, column: str, fields: tuple[str, ...]) -> tuple[list[int], list[list]]:
    """A list-of-struct column as its items' row numbers and one Python list per field (no dict per item)."""
    lists = table.column(column).combine_chunks()
    items = pc.list_flatten(lists)
    return pc.list_parent_indices(lists).to_pylist(), [items.field(f).to_pylist() for f in fields]


def _person_evidence(chunks: int) -> int:
    """Chunks with a person cue a rule-extracted name needs to be typed person: one, and more for frequent names."""
    return 1 + chunks // 8


def _top_type(types: Counter, order: dict[str, int]) -> str:
    """The type most chunks gave; ties go to the earlier configured type."""
    return min(types.items(), key=lambda tv: (-tv[1], order.get(tv[0], len(order)), tv[0]))[0] if types else ""


# ---- rule extractions: corpus-wide cleanup ----------------------------------------------------
def _clean_rules(nodes: dict[str, _Node], extractions: pa.Table, cfg: GraphConfig, entity_types: list[str],
                 stats: Counter) -> dict[str, str]:
    """Drop noise, decide types, fold aliases and fragments, prune; returns alias key -> kept key."""
    lower = _lowercase_chunks(extractions, {w for k in nodes for w in k.split()})
    _drop_noise(nodes, lower, stats)
    _type_place_prefixes(nodes)
    cueless = {k for k, n in nodes.items() if not n.types}
    _type_cueless(nodes, cueless, lower, entity_types, stats)
    alias = _fold_aliases(nodes, cueless, stats)
    alias.update(_fold_fragments(nodes, cueless, stats))
    allowed = set(entity_types)
    for key in [k for k, n in nodes.items() if n.etype not in allowed]:
        stats["untyped_dropped"] += 1
        del nodes[key]
    _prune_nodes(nodes, cfg, stats)
    # An alias of an alias (fragment of a folded name) points at the final node.
    for k, v in alias.items():
        while v in alias:
            v = alias[v]
        alias[k] = v
    return alias


def _lowercase_chunks(extractions: pa.Table, words: set[str]) -> dict[str, int]:
    """For each of `words`: in how many chunks it appears in lower case (Arrow, not a Python loop over chunks)."""
    flat = pc.list_flatten(extractions.column("lowercase_words"))
    if not len(flat) or not words:
        return {}
    counts = pc.value_counts(flat)
    values, n = counts.field("values"), counts.field("counts")
    keep = pc.is_in(values, value_set=pa.array(sorted(words), pa.string()))
    return dict(zip(values.filter(keep).to_pylist(), n.filter(keep).to_pylist()))


def _drop_noise(nodes: dict[str, _Node], lower: dict[str, int], stats: Counter) -> None:
    """Names capitalized only by position, and common words (lower case at least as often as capitalized).

    One word that only ever opens a sentence or heading ("Dinner was late.") is
    dropped; so is a longer span that only ever opens one, has no cue and starts
    with a common word ("Choose Maintenance Descale", "Press BREW").
    """
    for key in [k for k, n in nodes.items() if not n.phrase]:
        n, first = nodes[key], key.split()[0]
        if " " in key:
            if n.initial_only and not n.types and lower.get(first):
                stats["sentence_initial_dropped"] += 1
                del nodes[key]
        elif n.initial_only:
            stats["sentence_initial_dropped"] += 1
            del nodes[key]
        elif key in DEMONYMS or n.etype != "person" and lower.get(key, 0) >= n.mid_chunks:
            stats["common_word_dropped"] += 1
            del nodes[key]


def _type_place_prefixes(nodes: dict[str, _Node]) -> None:
    """A one-word name that starts two or more place/organization/event names is a place ("Harwick")."""
    starts: Counter = Counter()
    for key, n in nodes.items():
        words = key.split()
        if len(words) >= 2 and n.etype in ("geo", "organization", "event"):
            starts[words[0]] += 1
    for key, n in nodes.items():
        if " " not in key and starts[key] >= 2 and n.etype != "person":
            n.etype = "geo"


def _type_cueless(nodes: dict[str, _Node], cueless: set[str], lower: dict[str, int], entity_types: list[str],
                  stats: Counter) -> None:
    """Types for names no chunk gave a cue for: person only on given-name evidence, else concept (or nothing)."""
    def name_shaped(key: str) -> bool:
        # Given name + surname: two or three words, none of them a common word; the first is no place or thing.
        words = key.split()
        if not 2 <= len(words) <= 3 or any(w in CONNECTORS or w in STOP or lower.get(w) for w in words):
            return False
        return words[0] not in nodes or nodes[words[0]].etype in ("", "person")

    persons = {k for k, n in nodes.items() if n.etype == "person"}
    shaped = {k for k in cueless | persons if name_shaped(k)}
    firsts = Counter(k.split()[0] for k in shaped)
    # A person's surname opening a name makes a thing named after them ("Brandt Medal"), not a person.
    surnames = {k.split()[-1] for k in shaped}
    fallback = "concept" if "concept" in entity_types else ""
    for key in sorted(cueless):
        n = nodes[key]
        if n.etype:  # a place prefix
            continue
        words = key.split()
        # Named alone as a person ("Turing proposed ... He"), or a first name shared by other such names.
        given = key in shaped and (words[0] in persons and words[0] not in surnames or words[-1] in persons
                                   or firsts[words[0]] >= 2)
        n.etype = "person" if given and "person" in entity_types else fallback
        stats["typed_person_by_given_name" if n.etype == "person" else "typed_without_cues"] += 1


def _fold_aliases(nodes: dict[str, _Node], cueless: set[str], stats: Counter) -> dict[str, str]:
    """Fold "Tomas", "von Neumann" and "Dr. Okafor" into the one full person name they belong to.

    A shorter key (without its honorific) folds into the longer person name
    that starts or ends with its words, when there is one or one is named at
    least twice as often as the others; failing one, a one-word key folds
    into the single honorific form ("Rosa" into "Aunt Rosa"). A key folds only
    when it is a person itself or had no cue at all: "Harwick" is a town, not
    the first name of "Harwick General".
    """
    ends: dict[tuple[str, ...], list[str]] = defaultdict(list)
    titled: dict[str, list[str]] = defaultdict(list)
    for key, n in nodes.items():
        words = tuple(key.split())
        if len(words) < 2 or n.etype != "person":
            continue
        if words[0] in HONORIFICS:
            if len(words) == 2:
                titled[words[1]].append(key)
            continue
        for size in range(1, len(words)):
            for part in {words[:size], words[-size:]}:
                ends[part].append(key)
    alias = {}
    for key in list(nodes):
        if nodes[key].etype != "person" and key not in cueless:
            continue
        words = tuple(key.split())
        bare = words[1:] if words[0] in HONORIFICS and len(words) > 1 else words
        cands = ends.get(bare) or (titled.get(bare[0], []) if len(words) == 1 else [])
        # One full name, or one named at least twice as often as any other ("Kessler" is Friedrich, not Walter).
        cands = sorted((c for c in cands if c in nodes and c != key), key=lambda c: (-len(nodes[c].chunks), c))
        if cands and (len(cands) == 1 or len(nodes[cands[0]].chunks) >= 2 * len(nodes[cands[1]].chunks)):
            nodes[cands[0]].absorb(nodes.pop(key))
            alias[key] = cands[0]
    stats["aliases_folded"] += len(alias)
    return alias


def _fold_fragments(nodes: dict[str, _Node], cueless: set[str], stats: Counter) -> dict[str, str]:
    """A cue-less name inside longer names: folded into the one it belongs to, or dropped when it is
    mostly seen inside several ("Royal" of "Royal Society" and "Royal Navy")."""
    supers: dict[str, list[str]] = defaultdict(list)
    for key in nodes:
        words = key.split()
        for size in range(1, len(words)):
            for start in range(len(words) - size + 1):
                sub = " ".join(words[start:start + size])
                if sub in cueless and sub in nodes:
                    supers[sub].append(key)
    alias = {}
    # Longest first: "old mill" folds into "old mill gardens" before "old" looks for where it belongs.
    for key in sorted(supers, key=lambda k: (-len(k.split()), k)):
        longer = [k for k in supers[key] if k in nodes]
        if not longer or sum(len(nodes[k].chunks) for k in longer) < len(nodes[key].chunks):
            continue  # seen on its own more than inside the longer names: a name of its own
        if len(longer) == 1:
            nodes[longer[0]].absorb(nodes.pop(key))
            alias[key] = longer[0]
            stats["fragments_folded"] += 1
        else:
            del nodes[key]
            stats["fragments_dropped"] += 1
    return alias


def _prune_nodes(nodes: dict[str, _Node], cfg: GraphConfig, stats: Counter) -> None:
    for key in list(nodes):
        n = nodes[key]
        if len(n.chunks) < (cfg.min_phrase_frequency if n.phrase else cfg.min_entity_frequency):
            stats["rare_entities_pruned"] += 1
            del nodes[key]


def _lines(descriptions: list[str]) -> list[str]:
    """Distinct non-empty description lines, in order."""
    return list(dict.fromkeys(filter(None, map(str.strip, "\n".join(descriptions).split("\n")))))


def rank_and_cut(descriptions: list[str], budget_tokens: int, related: list[str] = ()) -> str:
    """Keep the most informative description lines within the budget, in their original order.

    A line ranks higher when it names more related entities (it says how things
    connect), then when it is closer to a typical sentence length.
    """
    low_related = [r.lower() for r in related]
    return _cut(_lines(descriptions), budget_tokens, lambda line: sum(r in line.lower() for r in low_related))


def _cut(lines: list[str], budget_tokens: int, named: Callable[[str], int]) -> str:
    """The lines that fit `budget_tokens`, best first by `named` then closeness to 20 words; in their order."""
    ranked = sorted(range(len(lines)), key=lambda i: (-named(lines[i]), abs(len(lines[i].split()) - 20), i))
    keep, used = set(), 0
    for i in ranked:
        cost = estimate_tokens(lines[i]) + 1
        if used + cost <= budget_tokens:
            keep.add(i)
            used += cost
    return "\n".join(lines[i] for i in sorted(keep))


def _pool_descriptions(graph: nx.Graph, cfg: GraphConfig, cut: bool) -> dict[str, tuple[str, str, list[str]]]:
    """Set `description` on nodes and edges; return the over-long ones when the caller will summarize.

    Rule descriptions are evidence sentences, and an edge's are the sentences
    naming both its ends: the related entities a node's line names are the
    edges whose evidence holds that line, counted without searching any text.
    """
    long = {}
    items = [(t, d, True) for t, d in graph.nodes(data=True)]
    items += [(f"{d['src']} -- {d['tgt']}", d, False) for _, _, d in graph.edges(data=True)]
    for title, data, is_node in items:
        lines = _lines(data["descriptions"])
        pooled = "\n".join(lines)
        if estimate_tokens(pooled) > cfg.max_description_tokens:
            if cut:
                counts = Counter(line for edge in graph[title].values() for line in _lines(edge["descriptions"])) if is_node else {}
                pooled = _cut(lines, cfg.max_description_tokens, lambda line: counts.get(line, 0))
            else:
                long[data["id"]] = (title, (data["type"] or "entity") if is_node else "relationship", data["descriptions"])
        data["description"] = pooled
    return long


def finalize(graph: nx.Graph, summaries: dict[str, str] | None = None) -> tuple[pa.Table, pa.Table]:
    """Apply summaries (id -> text) and build the `entities` and `relationships` tables."""
    summaries = summaries or {}
    ents = []
    for hid, (title, d) in enumerate(graph.nodes(data=True)):
        d["description"] = summaries.get(d["id"], d["description"])
        d["human_readable_id"] = hid
        ents.append({
            "id": d["id"], "human_readable_id": hid, "title": title, "type": d["type"], "description": d["description"],
            "text_unit_ids": d["text_unit_ids"], "frequency": d["frequency"], "degree": graph.degree(title),
        })
    rels = []
    edges = sorted(graph.edges(data=True), key=lambda e: (-e[2]["weight"], e[2]["id"]))
    for hid, (u, v, d) in enumerate(edges):
        d["description"] = summaries.get(d["id"], d["description"])
        d["human_readable_id"] = hid
        rels.append({
            "id": d["id"], "human_readable_id": hid, "source": d["src"], "target": d["tgt"], "description": d["description"],
            "weight": d["weight"], "combined_degree": graph.degree(u) + graph.degree(v), "text_unit_ids": d["text_unit_ids"],
        })
    return (
        pa.Table.from_pylist(ents, schema=schemas.schema_of("entities")),
        pa.Table.from_pylist(rels, schema=schemas.schema_of("relationships")),
    )
