"""A finished run as publish sees it: validated from its own files, its shards hashed.

`snapshot(run)` checks that every stage of the job that made the run finished and is up to
date (from the markers and the manifest: nothing outside the run folder is read, so a run
publishes after its corpus is gone), that every table's shards are complete, valid Parquet
that matches `schemas` and the manifest's row counts, and collects what the dataset card
shows. `factory.card` renders a `Snapshot`; `factory.publish` copies it.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from factory import __version__
from factory.errors import UserError
from factory.pipeline import Run, check_finished

SHARD = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<index>\d{5})-of-(?P<total>\d{5})\.parquet$")
# Run-manifest keys that change without the data changing.
VOLATILE = ("updated_at",)
N_SAMPLES = 3
# The table that `load_dataset(path)` gives without a config name.
DEFAULT_CONFIG = "qa"
# The card's quality plots (factory/synth/report.py), beside the table folders; no config names it.
FIGURES = "quality"


@dataclass(frozen=True)
class Shard:
    table: str
    split: str
    index: int
    total: int
    src: str  # path on the run's filesystem
    rows: int
    size: int
    sha256: str

    @property
    def name(self) -> str:
        """Published name: Hub-style, plus the content hash so that a name never changes meaning."""
        return f"{self.table}/{self.split}-{self.index:05d}-of-{self.total:05d}-{self.sha256[:16]}.parquet"


@dataclass
class Snapshot:
    """A validated run: its shards with hashes, and the facts its card shows."""

    run: Run
    shards: list[Shard]
    manifest: dict[str, Any]
    kinds: dict[str, Counter] = field(default_factory=dict)  # qa kind -> split -> rows
    samples: list[dict] = field(default_factory=list)
    documents: int = 0
    corpus_chars: int = 0
    figures: dict[str, bytes] = field(default_factory=dict)  # quality plot name -> PNG

    def figure_paths(self, published: bool) -> dict[str, str]:
        """{plot: path}: named by content when published (a name never changes meaning), plainly in the run folder."""
        return {name: f"{FIGURES}/{name}-{hashlib.sha256(png).hexdigest()[:16]}.png" if published else f"{FIGURES}/{name}.png"
                for name, png in self.figures.items()}

    def rows(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for s in self.shards:
            out.setdefault(s.table, {}).setdefault(s.split, 0)
            out[s.table][s.split] += s.rows
        return out

    @property
    def version(self) -> str:
        material = {
            "shards": [(s.name, s.rows) for s in self.shards],
            "manifest": self.manifest,
            "ragtune": __version__,  # the card's renderer
        }
        return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def data_files(self, published: bool) -> dict[str, dict[str, Any]]:
        """{table: {split: files}}: exact names when published, globs in the run folder.

        Empty splits are left out: `datasets` cannot build a split with no rows.
        """
        rows = self.rows()
        out: dict[str, dict[str, Any]] = {}
        for s in self.shards:
            if not rows[s.table][s.split]:
                continue
            if published:
                out.setdefault(s.table, {}).setdefault(s.split, []).append(s.name)
            else:
                out.setdefault(s.table, {})[s.split] = f"{s.table}/{s.split}-*.parquet"
        return out


# ---- validating a run ------------------------------------------------------------------
def check_complete(run: Run) -> None:
    """Every stage of the job that made the run finished and is up to date with the run's config,
    judged from the run's own files: its manifest's stage order and its stage markers."""
    order = run.manifest.get("stage_order")
    if not order:
        raise UserError(f"{run.root}: the manifest lists no stages (made by an older ragtune?); rerun generate")
    check_finished(run, order)


def snapshot(run: Run) -> Snapshot:
    """Validate every table of a complete run against `schemas` and hash its shards.

    Raises one UserError line for an incomplete run, a missing or extra shard,
    a file that is not Parquet, a schema violation or a row count that
    disagrees with the manifest.
    """
    check_complete(run)
    manifest = {k: v for k, v in run.manifest.items() if k not in VOLATILE}
    # Stages in pipeline order (the manifest file stores keys sorted).
    order = {name: i for i, name in enumerate(manifest["stage_order"])}
    manifest["stages"] = dict(sorted(manifest.get("stages", {}).items(), key=lambda kv: order.get(kv[0], len(order))))
    snap = Snapshot(run, [], manifest)
    counts = manifest.get("counts", {})
    # qa first: it is the default config.
    for table in sorted(schemas.TABLES, key=lambda t: t != DEFAULT_CONFIG):
        by_split: dict[str, list[tuple[int, int, str]]] = {}
        for path in run.table_files(table):
            m = SHARD.match(path.rsplit("/", 1)[-1])
            if not m:
                raise UserError(f"{run.root}/{table}: unexpected file {path.rsplit('/', 1)[-1]}")
            by_split.setdefault(m["split"], []).append((int(m["index"]), int(m["total"]), path))
        for split, files in sorted(by_split.items()):
            total = files[0][1]
            if sorted(i for i, _, _ in files) != list(range(total)) or any(t != total for _, t, _ in files):
                raise UserError(f"{run.root}/{table}: split '{split}' has {len(files)} shards, expected {total}")
            shards = [_check_shard(run, snap, table, split, index, total, path) for index, _, path in sorted(files)]
            snap.shards += shards
            expected = counts.get(f"{table}/{split}")
            got = sum(s.rows for s in shards)
            if expected is not None and expected != got:
                raise UserError(f"{run.root}/{table}: split '{split}' has {got} rows, the manifest says {expected}")
    if not snap.shards:
        raise UserError(f"{run.root}: no tables to publish")
    if manifest.get("quality"):
        from factory.synth.report import figures

        snap.figures = figures(manifest["quality"])
    return snap


def _check_shard(run: Run, snap: Snapshot, table: str, split: str, index: int, total: int, path: str) -> Shard:
    rel = f"{table}/{path.rsplit('/', 1)[-1]}"
    data = run.fs.cat_file(path)
    try:
        pf = pq.ParquetFile(io.BytesIO(data))
        schemas.validate(table, pf.schema_arrow.empty_table())  # undeclared columns, even in an empty shard
        for i in range(pf.num_row_groups):
            _learn(snap, table, split, schemas.validate(table, pf.read_row_group(i)))
    except schemas.SchemaError as exc:
        raise UserError(f"{run.root}/{rel}: invalid: {exc}") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{run.root}/{rel}: not a readable Parquet file: {exc}") from None
    return Shard(table, split, index, total, path, pf.metadata.num_rows, len(data), hashlib.sha256(data).hexdigest())


def _learn(snap: Snapshot, table: str, split: str, t: pa.Table) -> None:
    """Collect what the card shows: counts per kind, sample rows, corpus size."""
    if table == "qa":
        for kind, n in Counter(t.column("kind").to_pylist()).items():
            snap.kinds.setdefault(kind, Counter())[split] += n
        if split == "train":
            seen = {r["kind"] for r in snap.samples}
            for row in t.select(["kind", "question", "answer"]).to_pylist():
                if len(snap.samples) < N_SAMPLES and row["kind"] not in seen:
                    snap.samples.append(row)
                    seen.add(row["kind"])
    elif table == "documents":
        snap.documents += t.num_rows
        snap.corpus_chars += sum(v or 0 for v in t.column("n_chars").to_pylist())
