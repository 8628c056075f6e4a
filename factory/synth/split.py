"""The held-out split: whole groups of related rows go to `test`, none of them near a train row.

Rows are linked when they share what an answer is made of, and a group is a connected set of
linked rows (connected components of the rows-keys graph):
    local rows           their source chunk
    entity/relationship  their entity set (the same subject asked in two ways)
    global rows          any community their answer drew on
Near-equal answers were already removed corpus-wide (quality.dedup), so no test answer can
equal or nearly equal a train answer. Per kind, groups are taken in a seeded order until
`test_fraction` of the kind's rows is reached (a group too big to fit is skipped, so a kind
whose rows all hang together stays in train). The separately written hard global questions
(question_set "hard_global") are test rows by construction. Last, a train row whose question
is a near-duplicate of a test question is dropped.

Everything runs on the driver over the compact Arrow columns (ids, kinds, keys, signatures),
never the rows' texts; the result does not depend on the rows' order.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from factory.pipeline import StageRecord
from factory.synth.quality import FILTER, HARD, sigs_of

DECISIONS = pa.schema([("id", pa.string()), ("kind", pa.string()), ("question_set", pa.string()),
                       ("split", pa.string()), ("group_id", pa.string()), ("judge_score", pa.float64())])


def _codes(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Dictionary codes of `values` (-1 for null or empty)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    encoded = pc.dictionary_encode(pc.if_else(pc.equal(values, ""), None, values))
    return pc.fill_null(encoded.indices, -1).to_numpy().astype(np.int64)


def _flat(lists: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(row, code) of every value of a list column."""
    lists = lists.combine_chunks()
    return pc.list_parent_indices(lists).to_numpy().astype(np.int64), _codes(pc.list_flatten(lists))


def links(t: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(row, key) of every link, keys as numbers: a local row's source chunk, an entity or relationship
    row's entity set (an order-free 64-bit hash of its ids' codes), each community of a global row. A
    hard global row, or a row with none of these, has no link: a group of its own."""
    kinds = t.column("kind")
    open_ = pc.invert(pc.fill_null(pc.equal(t.column("question_set"), HARD), False)).to_numpy(zero_copy_only=False)
    parts = []
    source = _codes(t.column("source_chunk_id"))
    local = np.flatnonzero(open_ & pc.equal(kinds, "local").to_numpy(zero_copy_only=False) & (source >= 0))
    parts.append((local, source[local].astype(np.uint64)))
    row, entity = _flat(t.column("entity_ids"))
    mixed = _splitmix64(entity.astype(np.uint64))  # a set's key: the sum of its members' hashes, order-free
    entity_set = np.zeros(t.num_rows, np.uint64)
    np.add.at(entity_set, row, mixed)
    subject = pc.is_in(kinds, value_set=pa.array(["entity", "relationship"])).to_numpy(zero_copy_only=False)
    has_entities = np.bincount(row, minlength=t.num_rows) > 0
    subjects = np.flatnonzero(open_ & subject & has_entities)
    parts.append((subjects, entity_set[subjects]))
    row, community = _flat(t.column("community_ids"))
    is_global = (open_ & pc.equal(kinds, "global").to_numpy(zero_copy_only=False))[row]
    parts.append((row[is_global], community[is_global].astype(np.uint64)))
    rows, keys = [], []
    for kind, (r, k) in enumerate(parts):  # one key space per kind of link
        rows.append(r)
        keys.append(np.unique(k, return_inverse=True)[1].ravel() * len(parts) + kind)
    return np.concatenate(rows), np.concatenate(keys).astype(np.int64)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A 64-bit mix of each value (wrapping arithmetic): sums of these are sums of random numbers."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _digest(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


def _groups(t: pa.Table) -> np.ndarray:
    """Each row's group number: connected components of rows linked through shared keys."""
    rows, keys = links(t)
    n = t.num_rows
    size = n + (int(keys.max()) + 1 if len(keys) else 0)
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, n + keys)), shape=(size, size))
    return connected_components(graph, directed=False)[1][:n]


def split_rows(rec: StageRecord, t: pa.Table, test_fraction: float, seed: int, question_threshold: float) -> pa.Table:
    """The kept rows' decisions (DECISIONS: split and group id); see the module docstring."""
    if not t.num_rows:
        return DECISIONS.empty_table()
    ids = t.column("id").to_pylist()
    group = _groups(t)
    # A group's members sorted by id: its id and its kind (its first member's) do not depend on row order.
    order = np.lexsort((np.asarray(ids, object).astype(str), group))
    starts = np.flatnonzero(np.append(True, group[order][1:] != group[order][:-1]))
    bounds = np.append(starts, len(order)).tolist()
    sorted_ids = [ids[i] for i in order.tolist()]
    group_id = [_digest(*sorted_ids[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])]
    number = np.empty(len(group), np.int64)  # group -> its position in sorted order
    number[group[order[starts]]] = np.arange(len(starts))
    of_row = number[group]
    size = np.diff(bounds)
    hard = pc.fill_null(pc.equal(t.column("question_set"), HARD), False).to_numpy(zero_copy_only=False)
    test_group = np.bincount(of_row, weights=hard, minlength=len(starts)) > 0
    kinds = np.asarray(t.column("kind").to_pylist(), object)[order[starts]]

    for kind in sorted(set(kinds[~test_group].tolist())):
        groups = np.flatnonzero((kinds == kind) & ~test_group).tolist()
        n_rows = int(size[groups].sum())
        target = round(test_fraction * n_rows)
        if test_fraction > 0 and target == 0 and len(groups) >= 2:
            target = 1
        taken = 0
        for g in sorted(groups, key=lambda g: _digest(seed, "split", group_id[g])):
            if taken >= target:
                break
            if taken + size[g] <= max(target, 1):
                test_group[g] = True
                taken += int(size[g])
    test = test_group[of_row]

    # A train question this near a test question (test_overlap_threshold): the test row would be learned.
    q_group, q_near = FILTER.near_pairs(sigs_of(t, "question_sig"), question_threshold)
    asked_in_test = np.zeros(int(q_group.max()) + 1, bool)
    asked_in_test[q_group[test]] = True
    near_test = asked_in_test.copy()
    for g, near in q_near.items():
        near_test[g] |= any(asked_in_test[n] for n in near)
    drop = ~test & near_test[q_group]
    rec.drop("near_test_question", int(drop.sum()))
    keep = pa.array(~drop)
    out = pa.table({
        "id": t.column("id"), "kind": t.column("kind"), "question_set": t.column("question_set"),
        "split": pa.array(np.where(test, "test", "train").tolist(), pa.string()),
        "group_id": pa.array([group_id[n] for n in of_row.tolist()], pa.string()),
        "judge_score": t.column("judge_score")}).filter(keep)
    return out.cast(DECISIONS)
