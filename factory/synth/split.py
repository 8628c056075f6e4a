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


def group_keys(t: pa.Table) -> tuple[np.ndarray, list[str]]:
    """(row, key) of every link: each row has one key, a global row one per community."""
    ids, kinds = t.column("id").to_pylist(), t.column("kind").to_pylist()
    hard = pc.fill_null(pc.equal(t.column("question_set"), HARD), False).to_pylist()
    sources, entities = t.column("source_chunk_id").to_pylist(), t.column("entity_ids").to_pylist()
    communities = t.column("community_ids").to_pylist()
    rows, keys = [], []
    for i, (id_, kind, is_hard, source, ents, comms) in enumerate(zip(ids, kinds, hard, sources, entities, communities)):
        if is_hard:  # written apart from the rest, and test rows by construction
            found = [f"row:{id_}"]
        elif kind == "local" and source:
            found = [f"chunk:{source}"]
        elif kind in ("entity", "relationship") and ents:
            found = ["entities:" + ",".join(sorted(ents))]
        elif kind == "global" and comms:
            found = [f"community:{c}" for c in comms]
        else:
            found = [f"row:{id_}"]
        rows += [i] * len(found)
        keys += found
    return np.asarray(rows, np.int64), keys


def _digest(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


def _groups(t: pa.Table) -> np.ndarray:
    """Each row's group number: connected components of rows linked through shared keys."""
    rows, keys = group_keys(t)
    key = pc.dictionary_encode(pa.array(keys, pa.string())).indices.to_numpy().astype(np.int64)
    n = t.num_rows
    size = n + int(key.max()) + 1  # every row has a key
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, n + key)), shape=(size, size))
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
    members = np.split(order, starts[1:])
    group_id = [_digest(*(ids[i] for i in m)) for m in members]
    number = np.empty(len(group), np.int64)
    number[group[order[starts]]] = np.arange(len(starts))
    kinds = t.column("kind").to_pylist()
    hard = pc.fill_null(pc.equal(t.column("question_set"), HARD), False).to_numpy(zero_copy_only=False)

    test = np.zeros(t.num_rows, bool)
    by_kind: dict[str, list[int]] = {}
    for g, m in enumerate(members):
        if hard[m].any():
            test[m] = True
        else:
            by_kind.setdefault(kinds[m[0]], []).append(g)
    for kind, groups in sorted(by_kind.items()):
        n_rows = sum(len(members[g]) for g in groups)
        target = round(test_fraction * n_rows)
        if test_fraction > 0 and target == 0 and len(groups) >= 2:
            target = 1
        taken = 0
        for g in sorted(groups, key=lambda g: _digest(seed, "split", group_id[g])):
            if taken >= target:
                break
            if taken + len(members[g]) <= max(target, 1):
                test[members[g]] = True
                taken += len(members[g])

    # A train question as near a test question as the dedup threshold: the test row would be learned.
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
        "group_id": pa.array([group_id[n] for n in number[group].tolist()], pa.string()),
        "judge_score": t.column("judge_score")}).filter(keep)
    return out.cast(DECISIONS)
