"""The run's `manifest.json`: what produced the run and what each stage did.

Keys: `config` (secrets masked) and `config_hash`, `ragtune_version`, `schema_versions`,
`packages`, `prompts` and `roles` (factory.provenance), `counts` (`table/split` -> rows, for
publish to check the shards against), `stages` (each stage's marker: rows, drops, tokens,
stats, timings), `stage_order` (the job's stages, in order: what a complete run has) and
whatever a stage adds (`quality`). Rewritten whole, atomically, on every update.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import schemas
from factory import __version__, provenance


def update_manifest(run: Any, **sections: Any) -> dict:
    """`run` (a factory.pipeline.Run, which calls this on every table it writes): merge `sections` into the manifest (a dict value into the section of that name, anything
    else replacing it), refresh provenance, and write it."""
    m = run.manifest
    m.setdefault("ragtune_version", __version__)
    m["config_hash"] = run.cfg.hash
    m["config"] = run.cfg.public_dict()
    m["schema_versions"] = schemas.versions()
    m.update(provenance.describe(run.cfg))  # packages, prompt hashes, engines per role
    m["updated_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    for key, value in sections.items():
        if isinstance(value, dict):
            m.setdefault(key, {}).update(value)
        else:
            m[key] = value
    run.write_json("manifest.json", m)
    return m
