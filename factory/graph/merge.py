"""Merge per-chunk extractions into one graph: one entity per title, one relationship per pair.

Entities merge on the normalized title (`text.norm_key`); their type is the
type most chunks gave (ties: the order of the run's entity types). Merging on
title + type would leave two nodes with the same title, which relationships
(keyed by title, as in GraphRAG) could not tell apart.

Rule extractions get corpus-level cleanup that needs corpus-wide evidence
(`_clean_rules`):
  * noise: a one-word name seen only at sentence starts or in headings, or a
    capitalized word the corpus also uses in lower case at least as often
    ("Method", "Dinner"), is dropped;
  * types: cues from the chunks decide (merge counts each chunk's vote); a name
    no chunk gave a cue for is a person only when it looks like given name +
    surname and its first word behaves like a given name elsewhere (named alone
    with person cues, or the first word of other such names); otherwise it is a
    concept where the run has that type, and dropped where it does not;
  * folding: a bare first or last name folds into the one full person name it
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
from dataclasses import dataclass, field

import networkx as nx
import pyarrow as pa
import pyarrow.compute as pc

import schemas
from factory.config import GraphConfig
from factory.graph.rules import CONNECTORS, DEMONYMS, HONORIFICS, STOP
from factory.graph.text import approx_tokens, norm_key


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

    def absorb(self, other: "_Node") -> None:
        """Take in an alias's mentions; the titles and type stay this node's (the full name reads better)."""
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

    def rank(chunk_id: str) -> tuple:
        return order.get(chunk_id, len(order)), chunk_id

    rows = sorted(extractions.select(["chunk_id", "entities", "relationships"]).to_pylist(), key=lambda r: rank(r["chunk_id"]))
    nodes: dict[str, _Node] = {}
    stats: Counter = Counter()
    for r in rows:
        for e in r["entities"] or []:
            key = norm_key(e["title"])
            if not key:
                continue
            n = nodes.setdefault(key, _Node(key))
            n.titles[e["title"]] += 1
            if e["type"]:
                n.types[e["type"]] += 1
            if e["description"]:
                n.descriptions[e["description"]] = None
            n.chunks[r["chunk_id"]] = None
            n.initial_only &= bool(e["initial_only"])
            n.mid_chunks += not e["initial_only"]
    for n in nodes.values():
        n.etype = _top_type(n.types, types_order)
        if rules and n.etype == "person" and n.types["person"] < _person_evidence(len(n.chunks)):
            del n.types["person"]  # one "Tessaro brought its ..." in thirteen chunks does not make a person
            n.etype = _top_type(n.types, types_order)
    alias = _clean_rules(nodes, extractions, cfg, entity_types, stats) if rules else {}

    edges: dict[tuple[str, str], _Edge] = {}
    evidence: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in rows:
        for rel in r["relationships"] or []:
            a, b = (alias.get(k, k) for k in (norm_key(rel["source"]), norm_key(rel["target"])))
            if not a or not b or a == b:
                continue
            missing = [(k, t) for k, t in ((a, rel["source"]), (b, rel["target"])) if k not in nodes]
            if missing and rules:  # an endpoint was pruned as rare or noise
                continue
            for k, t in missing:
                # The LLM related something it did not list as an entity: keep it as an untyped node.
                nodes[k] = _Node(k, Counter({t: 1}), chunks={r["chunk_id"]: None}, initial_only=False)
                stats["entities_from_relationships"] += 1
            pair = (a, b) if a < b else (b, a)
            edge = edges.setdefault(pair, _Edge(a, b))
            edge.chunks[r["chunk_id"]] = None
            if rel["description"]:
                edge.descriptions[rel["description"]] = None
            if rules:
                evidence[pair].update(line for line in (rel["description"] or "").split("\n") if line)
            else:
                edge.weight += float(rel["weight"] or 1.0)
    if rules:
        # Overlapping chunks repeat sentences: count each evidence sentence once.
        for pair, edge in edges.items():
            edge.weight = float(len(evidence[pair]))
        weak = [p for p, e in edges.items() if e.weight < cfg.min_edge_weight]
        for p in weak:
            del edges[p]
        stats["weak_edges_pruned"] += len(weak)

    graph = nx.Graph()
    for key in sorted(nodes, key=lambda k: (-len(nodes[k].chunks), k)):
        n = nodes[key]
        # Most used surface form; ties go to the better capitalized (not shouting), then the first seen.
        title = max(enumerate(n.titles.items()),
                    key=lambda it: (it[1][1], not it[1][0].isupper(), sum(c.isupper() for c in it[1][0]), -it[0]))[1][0]
        graph.add_node(
            title, key=key, id=stable_id("entity", key), type=n.etype, descriptions=list(n.descriptions),
            text_unit_ids=sorted(n.chunks, key=rank), frequency=len(n.chunks),
        )
    title_of = {d["key"]: t for t, d in graph.nodes(data=True)}
    for (a, b), e in sorted(edges.items(), key=lambda kv: (-kv[1].weight, kv[0])):
        graph.add_edge(
            title_of[e.source], title_of[e.target], id=stable_id("relationship", a, b), weight=e.weight,
            descriptions=list(e.descriptions), text_unit_ids=sorted(e.chunks, key=rank), src=title_of[e.source], tgt=title_of[e.target],
        )
    long = _pool_descriptions(graph, cfg, cut=rules)
    stats.update(entities=graph.number_of_nodes(), relationships=graph.number_of_edges())
    return Merged(graph, long, dict(stats))


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
    fallback = "concept" if "concept" in entity_types else ""
    for key in sorted(cueless):
        n = nodes[key]
        if n.etype:  # a place prefix
            continue
        words = key.split()
        # Named alone as a person ("Turing proposed ... He"), or a first name shared by other such names.
        given = key in shaped and (words[0] in persons or words[-1] in persons or firsts[words[0]] >= 2)
        n.etype = "person" if given and "person" in entity_types else fallback
        stats["typed_person_by_given_name" if n.etype == "person" else "typed_without_cues"] += 1


def _fold_aliases(nodes: dict[str, _Node], cueless: set[str], stats: Counter) -> dict[str, str]:
    """Fold "Tomas", "von Neumann" and "Dr. Okafor" into the one full person name they belong to.

    A shorter key (without its honorific) folds into the single longer person
    name that starts or ends with its words; failing one, a one-word key folds
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
        if len(cands) == 1 and cands[0] in nodes and cands[0] != key:
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


def rank_and_cut(descriptions: list[str], budget_tokens: int, related: list[str] = ()) -> str:
    """Keep the most informative description lines within the budget, in their original order.

    A line ranks higher when it names more related entities (it says how things
    connect), then when it is closer to a typical sentence length.
    """
    lines = list(dict.fromkeys(line.strip() for d in descriptions for line in d.split("\n") if line.strip()))
    low_related = [r.lower() for r in related]

    def score(i: int) -> tuple:
        low = lines[i].lower()
        return (-sum(r in low for r in low_related), abs(len(lines[i].split()) - 20), i)

    keep, used = set(), 0
    for i in sorted(range(len(lines)), key=score):
        cost = approx_tokens(lines[i]) + 1
        if used + cost <= budget_tokens:
            keep.add(i)
            used += cost
    return "\n".join(lines[i] for i in sorted(keep))


def _pool_descriptions(graph: nx.Graph, cfg: GraphConfig, cut: bool) -> dict[str, tuple[str, str, list[str]]]:
    """Set `description` on nodes and edges; return the over-long ones when the caller will summarize."""
    long = {}
    items = [(t, d, list(graph.neighbors(t)), d["type"] or "entity") for t, d in graph.nodes(data=True)]
    items += [(f"{d['src']} -- {d['tgt']}", d, [d["src"], d["tgt"]], "relationship") for _, _, d in graph.edges(data=True)]
    for title, data, related, kind in items:
        pooled = "\n".join(dict.fromkeys(line for d in data["descriptions"] for line in d.split("\n") if line.strip()))
        if approx_tokens(pooled) > cfg.max_description_tokens:
            if cut:
                pooled = rank_and_cut(data["descriptions"], cfg.max_description_tokens, related)
            else:
                long[data["id"]] = (title, kind, data["descriptions"])
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
