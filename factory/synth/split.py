"""The held-out split: whole groups of related rows go to `test`, none of them near a train row.

Rows are linked when they share what an answer is made of, and a group is a connected set of
linked rows (union-find):
    local rows           their source chunk
    entity/relationship  their entity set (the same subject asked in two ways)
    global rows          any community their answer drew on
Near-equal answers were already removed corpus-wide (quality.dedup), so no test answer can
equal or nearly equal a train answer. Per kind, groups are taken in a seeded order until
`test_fraction` of the kind's rows is reached (a group too big to fit is skipped, so a kind
whose rows all hang together stays in train). The separately written hard global questions
(question_set "hard_global") are test rows by construction. Last, a train row whose question
is a near-duplicate of a test question is dropped.
"""

from __future__ import annotations

import hashlib

from factory.pipeline import StageRecord
from factory.synth.near import NearIndex, band_keys
from factory.synth.quality import sigs_of

HARD = "hard_global"


class _Groups:
    """Union-find over row indices, joined through shared keys."""

    def __init__(self, n: int):
        self.parent = list(range(n))
        self.owner: dict[str, int] = {}

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def link(self, i: int, key: str) -> None:
        j = self.owner.setdefault(key, i)
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def group_keys(r: dict) -> list[str]:
    if r.get("question_set") == HARD:  # written apart from the rest, and test rows by construction
        return [f"row:{r['id']}"]
    if r["kind"] == "local" and r.get("source_chunk_id"):
        return [f"chunk:{r['source_chunk_id']}"]
    if r["kind"] in ("entity", "relationship") and r.get("entity_ids"):
        return ["entities:" + ",".join(sorted(r["entity_ids"]))]
    if r["kind"] == "global" and r.get("community_ids"):
        return [f"community:{c}" for c in r["community_ids"]]
    return [f"row:{r['id']}"]


def _digest(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


def split_rows(rec: StageRecord, rows: list[dict], test_fraction: float, seed: int,
               question_threshold: float) -> dict[str, tuple[str, str]]:
    """id -> (split, group_id) for every row kept; see the module docstring."""
    groups = _Groups(len(rows))
    for i, r in enumerate(rows):
        for key in group_keys(r):
            groups.link(i, key)
    members: dict[int, list[int]] = {}
    for i in range(len(rows)):
        members.setdefault(groups.find(i), []).append(i)
    group_id = {root: _digest(*sorted(rows[i]["id"] for i in idx)) for root, idx in members.items()}

    test: set[int] = set()
    by_kind: dict[str, list[int]] = {}
    for root, idx in members.items():
        if rows[root].get("question_set") == HARD:
            test.add(root)
        else:
            by_kind.setdefault(rows[root]["kind"], []).append(root)
    for kind, roots in sorted(by_kind.items()):
        n_rows = sum(len(members[g]) for g in roots)
        target = round(test_fraction * n_rows)
        if test_fraction > 0 and target == 0 and len(roots) >= 2:
            target = 1
        taken = 0
        for g in sorted(roots, key=lambda g: _digest(seed, "split", group_id[g])):
            if taken >= target:
                break
            if taken + len(members[g]) <= max(target, 1):
                test.update(members[g])
                taken += len(members[g])

    sigs = sigs_of(rows, "question_sig")
    bands = band_keys(sigs).tolist()
    index = NearIndex(question_threshold)
    for i in sorted(test):
        index.add(sigs[i], bands=bands[i])
    out, near = {}, 0
    for i, r in enumerate(rows):
        if i in test:
            out[r["id"]] = ("test", group_id[groups.find(i)])
        elif index.similar(sigs[i], bands[i]) is not None:
            near += 1
        else:
            out[r["id"]] = ("train", group_id[groups.find(i)])
    rec.drop("near_test_question", near)
    return out
