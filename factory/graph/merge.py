"""Merge per-chunk extractions into one graph: one entity per title, one relationship per pair.

Entities merge on the normalized title (`text.norm_key`); their type is the
type most chunks gave (ties: the order of `graph.entity_types`). Merging on
title + type would leave two nodes with the same title, which relationships
(keyed by title, as in GraphRAG) could not tell apart.

Rule extractions get corpus-level cleanup that needs corpus-wide counts:
one-word names seen only at sentence starts are dropped, a bare first or last
name folds into the one full person name it belongs to ("Tomas" into "Tomas
Eriksen"), rare entities and weak edges are pruned. Pooled descriptions longer
than `max_description_tokens` are either summarized by the caller (LLM) or
ranked and cut here.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import networkx as nx
import pyarrow as pa

import schemas
from factory.config import GraphConfig
from factory.graph.rules import HONORIFICS
from factory.graph.text import approx_tokens, norm_key


def stable_id(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


@dataclass
class _Node:
    key: str
    titles: Counter = field(default_factory=Counter)
    types: Counter = field(default_factory=Counter)
    descriptions: dict[str, None] = field(default_factory=dict)  # ordered set: a busy entity has thousands
    chunks: dict[str, None] = field(default_factory=dict)  # ordered set
    initial_only: bool = True
    lowercase: int = 0

    def absorb(self, other: "_Node") -> None:
        """Take in an alias's mentions; the titles stay this node's (the full name reads better)."""
        self.types.update(other.types)
        self.descriptions.update(other.descriptions)
        self.chunks.update(other.chunks)
        self.initial_only &= other.initial_only
        self.lowercase += other.lowercase


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


def merge(extractions: pa.Table, cfg: GraphConfig, rules: bool, chunk_order: dict[str, int] | None = None) -> Merged:
    """Merge EXTRACTION rows; `rules` turns on the corpus-level cleanup of rule extractions."""
    order = chunk_order or {}


    def rank(chunk_id: str) -> tuple:
        return order.get(chunk_id, len(order)), chunk_id

    rows = sorted(extractions.to_pylist(), key=lambda r: rank(r["chunk_id"]))
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
            n.lowercase += e["lowercase"] or 0
    if rules:
        _type_place_prefixes(nodes)
    alias = _fold_aliases(nodes, stats) if rules else {}
    if rules:
        _prune_nodes(nodes, cfg, stats)

    edges: dict[tuple[str, str], _Edge] = {}
    evidence: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in rows:
        for rel in r["relationships"] or []:
            a, b = (alias.get(k, k) for k in (norm_key(rel["source"]), norm_key(rel["target"])))
            if not a or not b or a == b:
                continue
            missing = [(k, t) for k, t in ((a, rel["source"]), (b, rel["target"])) if k not in nodes]
            if missing and rules:  # an endpoint was pruned as rare
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
    types_order = {t: i for i, t in enumerate(cfg.entity_types)}
    for key in sorted(nodes, key=lambda k: (-len(nodes[k].chunks), k)):
        n = nodes[key]
        etype = min(n.types.items(), key=lambda tv: (-tv[1], types_order.get(tv[0], len(types_order)), tv[0]))[0] if n.types else ""
        # Most used surface form; ties go to the better capitalized (not shouting), then the first seen.
        title = max(enumerate(n.titles.items()),
                    key=lambda it: (it[1][1], not it[1][0].isupper(), sum(c.isupper() for c in it[1][0]), -it[0]))[1][0]
        graph.add_node(
            title, key=key, id=stable_id("entity", key), type=etype, descriptions=list(n.descriptions),
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


def _fold_aliases(nodes: dict[str, _Node], stats: Counter) -> dict[str, str]:
    """Fold "Tomas" and "Dr. Okafor" into the one full person name they belong to.

    A one-word key (or honorific + one word) folds into the single multi-word
    person whose first or last word it is; failing a full name, a one-word key
    folds into the single honorific form ("Rosa" into "Aunt Rosa").
    """
    def is_person(n: _Node) -> bool:
        return bool(n.types) and n.types.most_common(1)[0][0] == "person"

    full: dict[str, list[str]] = defaultdict(list)
    titled: dict[str, list[str]] = defaultdict(list)
    for key, n in nodes.items():
        words = key.split()
        if len(words) >= 2 and is_person(n):
            if words[0] in HONORIFICS:
                if len(words) == 2:
                    titled[words[1]].append(key)
            else:
                for w in {words[0], words[-1]}:
                    full[w].append(key)
    alias = {}
    for key in list(nodes):
        words = key.split()
        if len(words) == 1:
            if not is_person(nodes[key]):  # "Harwick" is a town, not the first name of "Harwick General"
                continue
            cands = full.get(key) or titled.get(key, [])
        elif len(words) == 2 and words[0] in HONORIFICS:
            cands = full.get(words[1], [])
        else:
            continue
        if len(cands) == 1 and cands[0] in nodes:
            nodes[cands[0]].absorb(nodes.pop(key))
            alias[key] = cands[0]
    stats["aliases_folded"] += len(alias)
    return alias


def _prune_nodes(nodes: dict[str, _Node], cfg: GraphConfig, stats: Counter) -> None:
    for key in list(nodes):
        n = nodes[key]
        phrase = all(t.islower() for t in n.titles)
        need = cfg.min_phrase_frequency if phrase else cfg.min_entity_frequency
        if " " not in key and n.initial_only:
            stats["sentence_initial_dropped"] += 1
            del nodes[key]
        elif " " not in key and not phrase and n.lowercase >= len(n.chunks):
            stats["common_word_dropped"] += 1
            del nodes[key]
        elif len(n.chunks) < need:
            stats["rare_entities_pruned"] += 1
            del nodes[key]


def _type_place_prefixes(nodes: dict[str, _Node]) -> None:
    """A one-word name that starts two or more place/organization/event names is a place ("Harwick")."""
    starts: Counter = Counter()
    for key, n in nodes.items():
        words = key.split()
        if len(words) >= 2 and n.types and n.types.most_common(1)[0][0] in ("geo", "organization", "event"):
            starts[words[0]] += 1
    for key, n in nodes.items():
        if " " not in key and starts[key] >= 2:
            n.types = Counter({"geo": 1})


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
