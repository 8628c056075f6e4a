"""A run made by the real `generate` (no-LLM mode, examples/journal) is a loadable, publishable dataset."""

from __future__ import annotations

import json

import pytest

from factory.card import write_card
from factory.config import validate_config
from factory.pipeline import open_run
from factory.publish import publish
from factory.snapshot import snapshot


@pytest.mark.slow
def test_generated_run_loads_and_publishes(tmp_path, journal, ray_session):
    from datasets import load_dataset

    from factory.generate import STAGES, generate

    cfg = validate_config({"corpus": {"path": str(journal)}, "output": {"path": str(tmp_path / "run")},
                           "ray": {"cpu_actors": 1}})
    run = generate(cfg)
    snap = write_card(open_run(run.root, read_only=False))
    assert {s.name for s in STAGES} <= set(json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"])
    assert snap.rows()["documents"]["train"] > 0 and snap.rows()["chunks"]["train"] > 0
    for table, splits in snap.rows().items():
        assert sum(splits.values()) == run.read_arrow(table).num_rows, table
        nonempty = {k: n for k, n in splits.items() if n}  # datasets cannot build an empty split
        if nonempty:
            loaded = load_dataset(run.root, table)
            assert {k: v.num_rows for k, v in loaded.items()} == nonempty, table

    done = publish(open_run(run.root), str(tmp_path / "pub"))
    assert done.rows == snap.rows()
    assert snapshot(open_run(run.root)).version == done.version  # nothing in the run changed
