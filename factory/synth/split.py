"""The held-out split: `test` stratified by kind, decontaminated against `train`.

Per kind, rows are shuffled by a seed (after sorting by id, so the split does
not depend on row order) and `test_fraction` of them (at least one when a kind
has two or more rows) go to test. Then every train row whose question is a
near-duplicate of a test question is dropped, so no test question has a
near-twin in train.
"""

from __future__ import annotations

from factory.pipeline import StageRecord
from factory.synth.quality import NearDuplicates
from factory.synth.questions import rng_for


def split_rows(rec: StageRecord, rows: list[dict], test_fraction: float, seed: int, overlap_threshold: float) -> tuple[list[dict], list[dict]]:
    by_kind: dict[str, list[dict]] = {}
    for r in rows:
        by_kind.setdefault(r["kind"], []).append(r)
    train, test = [], []
    for kind in sorted(by_kind):
        group = sorted(by_kind[kind], key=lambda r: r["id"])
        rng_for(seed, "split", kind).shuffle(group)
        n = round(test_fraction * len(group))
        if test_fraction > 0 and n == 0 and len(group) >= 2:
            n = 1
        test += group[:n]
        train += group[n:]
    index = NearDuplicates(overlap_threshold)
    for r in test:
        index.add(r["question"])
    clean = [r for r in train if not index.seen(r["question"], add=False)]
    rec.drop("near_test_question", len(train) - len(clean))
    for r in clean:
        r["split"] = "train"
    for r in test:
        r["split"] = "test"
    return clean, test
