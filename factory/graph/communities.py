"""Hierarchical Leiden communities (igraph's C Leiden), seeded and deterministic.

As in GraphRAG (graspologic's hierarchical_leiden): level 0 is Leiden on the
whole graph; every community larger than `max_cluster_size` is clustered again
on its own subgraph, its parts becoming its children one level down, until all
leaves fit. A part that modularity will not split (a dense core) is retried
with a higher resolution; what still does not split stays whole and is counted
as oversized. igraph's Leiden, iterated until an iteration changes nothing
(at most 50 times), clusters a 50k-node/250k-edge graph in ~3 s here, where leidenalg took 230 s (see
bench/graph.py). Leiden communities never span components, so every component is
kept; `keep_all_components: false` keeps only the largest one.

Every entity belongs to a community, so some report covers it. An entity that
Leiden did not place (no relationship: its co-occurrences were too weak to keep
as edges; or a component `keep_all_components: false` left out) joins the leaf
community whose members are named with it in the most chunks, and that leaf's
ancestors; such members can take a leaf past `max_cluster_size` (they have no
edges for Leiden to split on, and a popular name with none would otherwise be a
star that only shatters into single entities). What shares no chunk with any
clustered entity goes into residual communities of at most `max_cluster_size`
entities in corpus order, with reports of their own.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field

import igraph as ig
import networkx as nx
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import schemas
from factory.graph.merge import stable_id

# Resolutions tried, in order, on a community that is too big; 1.0 is plain modularity.
_RESOLUTIONS = (1.0, 2.0, 4.0, 8.0)
_MAX_ITERATIONS = 50  # Leiden iterations per partition (most are stable after a few)


@dataclass
class Cluster:
    level: int
    nodes: list[int]  # vertex indices into the node list given to hierarchical_leiden
    parent: int = -1
    children: list[int] = field(default_factory=list)
    community: int = -1


# igraph's Leiden takes no seed: it draws from the one generator igraph has per process (by default
# the `random` module, set at import; igraph offers no getter). A seeded generator is put in only for
# the length of one Leiden call, under a lock so no other thread's call draws from it, and the default
# put back; the `random` module's own state is never touched.
_IGRAPH_RNG = threading.Lock()


def _partition(g: ig.Graph, seed: int, resolution: float) -> list[list[int]]:
    """Leiden iterated until an iteration changes nothing, for at most _MAX_ITERATIONS: igraph's own
    "until stable" (n_iterations=-1) never returned on a 16-vertex subgraph of a 10x bench corpus
    whose partition kept changing."""
    membership = None
    with _IGRAPH_RNG:
        ig.set_random_number_generator(random.Random(seed))
        try:
            for _ in range(_MAX_ITERATIONS):
                part = g.community_leiden(objective_function="modularity", weights="weight", resolution=resolution,
                                          n_iterations=1, initial_membership=membership)
                if part.membership == membership:
                    break
                membership = part.membership
        finally:
            ig.set_random_number_generator(random)
    return [list(c) for c in part if c]


def hierarchical_leiden(
    n_nodes: int, edges: list[tuple[int, int]], weights: list[float], max_cluster_size: int, seed: int,
    largest_component_only: bool = False,
) -> tuple[list[Cluster], int]:
    """Clusters of every level (parents before children, numbered in that order) and the oversized count."""
    g = ig.Graph(n=n_nodes, edges=edges)
    g.es["weight"] = [float(w) if w > 0 else 1.0 for w in weights]
    linked = [v for v, d in enumerate(g.degree()) if d > 0]
    if largest_component_only and linked:
        linked = sorted(max(g.connected_components(), key=lambda c: (len(c), -min(c))))
        linked = linked if len(linked) > 1 else []
    clusters: list[Cluster] = []
    oversized = 0
    # (vertices, level, parent community)
    todo: list[tuple[list[int], int, int]] = [(linked, 0, -1)] if linked else []
    while todo:
        vertices, level, parent = todo.pop(0)
        parts = _split(g, vertices, seed, force=level > 0)
        if parts is None:
            oversized += 1
            continue
        for part in sorted(parts, key=lambda p: (-len(p), p[0])):
            # Breadth-first, so community numbers grow with level and parents come first.
            c = Cluster(level, part, parent, community=len(clusters))
            clusters.append(c)
            if parent >= 0:
                clusters[parent].children.append(c.community)
            if len(part) > max_cluster_size:
                todo.append((part, level + 1, c.community))
    return clusters, oversized


def _split(g: ig.Graph, vertices: list[int], seed: int, force: bool) -> list[list[int]] | None:
    """Leiden parts of the subgraph on `vertices` (sorted), or None when it will not split."""
    sub = g.induced_subgraph(vertices) if len(vertices) < g.vcount() else g
    for res in _RESOLUTIONS if force else _RESOLUTIONS[:1]:
        parts = _partition(sub, seed, res)
        if len(parts) > 1 or not force:
            return [sorted(vertices[i] for i in p) for p in parts]
    return None


def nearest_leaves(units: list[list[str]], outside: list[int], leaf_of: np.ndarray) -> dict[int, int]:
    """For each vertex in `outside`, the leaf community whose members are named with it in the most chunks.

    `units[v]` are entity v's chunks; `leaf_of[v]` is v's leaf community or -1. A vertex that shares
    no chunk with any clustered entity is left out. A hash join in Arrow, not a Python loop over chunk members.
    """
    inside = np.flatnonzero(leaf_of >= 0)
    if not outside or not len(inside):
        return {}

    def mentions(vertices) -> tuple[np.ndarray, pa.Array]:
        return (np.repeat(np.asarray(vertices, dtype=np.int64), [len(units[v]) for v in vertices]),
                pa.array([c for v in vertices for c in units[v]], pa.string()))

    u, u_chunks = mentions(outside)
    v, v_chunks = mentions(inside)
    pairs = pa.table({"u": u, "chunk": u_chunks}).join(pa.table({"leaf": leaf_of[v], "chunk": v_chunks}), keys="chunk",
                                                           join_type="inner")
    counts = pairs.group_by(["u", "leaf"]).aggregate([("chunk", "count")])
    if not counts.num_rows:
        return {}
    u, leaf, n = (counts[c].to_numpy() for c in ("u", "leaf", "chunk_count"))
    # Shared mentions over the root of the leaf's own mentions: a name in a passage with a popular entity
    # and with that passage's own subject joins the subject's community, not the popular one's.
    score = n / np.sqrt(np.bincount(leaf_of[v], minlength=int(leaf_of.max()) + 1)[leaf])
    order = np.lexsort((leaf, -score, u))  # per vertex: best score first, then the lower community number
    u, leaf = u[order], leaf[order]
    first = np.r_[True, u[1:] != u[:-1]]
    return dict(zip(u[first].tolist(), leaf[first].tolist()))


def _cover(clusters: list[Cluster], units: list[list[str]], n_nodes: int, max_cluster_size: int,
           chunk_rank: dict[str, int]) -> dict:
    """Put every vertex outside all clusters into the nearest leaf (and its ancestors) or a residual community."""
    leaf_of = np.full(n_nodes, -1, dtype=np.int64)
    for c in clusters:
        if not c.children:
            leaf_of[c.nodes] = c.community
    outside = np.flatnonzero(leaf_of < 0).tolist()
    nearest = nearest_leaves(units, outside, leaf_of)
    for v, leaf in nearest.items():
        k = leaf
        while k >= 0:
            clusters[k].nodes.append(v)
            k = clusters[k].parent
    end = len(chunk_rank)

    def first_seen(v: int) -> tuple[int, int]:
        return chunk_rank.get(units[v][0], end) if units[v] else end, v

    # Alone in all their chunks: residual communities, in corpus order, so entities of one passage stay together.
    rest = sorted((v for v in outside if v not in nearest), key=first_seen)
    for i in range(0, len(rest), max_cluster_size):
        clusters.append(Cluster(0, rest[i:i + max_cluster_size], community=len(clusters)))
    return {"joined_nearest": len(nearest), "residual_entities": len(rest)}


def build_communities(graph: nx.Graph, max_cluster_size: int, seed: int, keep_all_components: bool = True,
                      chunk_rank: dict[str, int] | None = None) -> tuple[pa.Table, dict]:
    """The `communities` table of a merged graph (nodes carry id, text_unit_ids; edges carry id).

    `chunk_rank` orders chunks (corpus order) for the residual communities; by default, by id.
    """
    titles = list(graph.nodes)
    index = {t: i for i, t in enumerate(titles)}
    edge_list = list(graph.edges(data=True))
    clusters, oversized = hierarchical_leiden(
        len(titles), [(index[u], index[v]) for u, v, _ in edge_list], [d.get("weight", 1.0) for _, _, d in edge_list],
        max_cluster_size, seed, largest_component_only=not keep_all_components,
    )
    units = [graph.nodes[t]["text_unit_ids"] or [] for t in titles]
    covered = _cover(clusters, units, len(titles), max_cluster_size,
                     chunk_rank or {c: i for i, c in enumerate(sorted({c for u in units for c in u}))})
    # Per level: vertex -> community, to find each community's internal relationships in one pass over edges.
    member: dict[int, dict[int, int]] = {}
    for c in clusters:
        for v in c.nodes:
            member.setdefault(c.level, {})[v] = c.community
    rel_ids: dict[int, list[str]] = {c.community: [] for c in clusters}
    for u, v, d in edge_list:
        for level_map in member.values():
            cu = level_map.get(index[u])
            if cu is not None and cu == level_map.get(index[v]):
                rel_ids[cu].append(d["id"])
    rows = []
    nodes = graph.nodes
    for c in clusters:
        ent_ids = [nodes[titles[v]]["id"] for v in c.nodes]
        units = list(dict.fromkeys(u for v in c.nodes for u in nodes[titles[v]]["text_unit_ids"]))
        rows.append({
            "id": stable_id("community", str(c.level), *sorted(ent_ids)),
            "human_readable_id": c.community,
            "community": c.community,
            "level": c.level,
            "parent": c.parent,
            "children": c.children,
            "title": f"Community {c.community}",
            "entity_ids": ent_ids,
            "relationship_ids": rel_ids[c.community],
            "text_unit_ids": units,
            "size": len(c.nodes),
        })
    biggest = max((r["size"] for r in rows if not r["children"]), default=0)
    stats = {
        "communities": len(rows),
        "levels": 1 + max((r["level"] for r in rows), default=-1),
        "oversized": oversized,
        "largest_leaf": biggest,
        # Entities outside every Leiden community: joined to the nearest leaf, or left to residual communities.
        **covered,
    }
    return pa.Table.from_pylist(rows, schema=schemas.schema_of("communities")), stats
