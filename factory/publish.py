"""Publishing a finished run: validate it, write its card, copy it atomically elsewhere.

`publish(run, dest)` sends the dataset tables of a complete, valid run to a
local folder, `s3://bucket/prefix` or `hf://datasets/owner/name`. The visible
layout at DEST is the final one (`qa/train-00000-of-00002-<sha>.parquet`,
`README.md`, `manifest.json`), so Parquet globs, `datasets`, DuckDB and Spark
read it directly. Atomicity without multi-file transactions (docs/publishing.md):

* Shard names carry their content hash, so a name never changes meaning: new
  files never overwrite the files the current version names.
* Folder/S3: new shards are uploaded under `DEST/.staging-<version>/` (no
  table glob sees them), moved into their table folders (a rename locally, a
  server-side copy on S3), then `README.md` and, last, `manifest.json` are
  written (one PUT each): that switch is the commit. Files no longer named
  are deleted only after it. A crash before the switch leaves the previous
  version whole and readable; leftovers are swept by the next publish.
* Hub: one `create_commit` with every addition and deletion is atomic already.
* The same run published twice compares `version` (a content hash) and does nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from botocore.exceptions import BotoCoreError

import schemas
from factory import __version__, card
from factory.config import S3Config, validate_config
from factory.errors import UserError
from factory.pipeline import Run, log
from factory.provenance import package_versions
from factory.storage import check_readable, check_writable, describe_error, is_local_fs

SHARD = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<index>\d{5})-of-(?P<total>\d{5})\.parquet$")
# Run-manifest keys that change without the data changing.
VOLATILE = ("updated_at",)
N_SAMPLES = 3
STAGING = ".staging-"
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


# ---- opening and validating a run ------------------------------------------------------
def open_run(path: str, s3: S3Config | None = None) -> Run:
    """The run at `path` with the config it was generated with (from its manifest)."""
    fs, fpath = check_readable(path, s3)
    mpath = f"{fpath.rstrip('/')}/manifest.json"
    if not fs.exists(mpath):
        raise UserError(f"{path}: not a run folder (no manifest.json); run generate first")
    with fs.open(mpath, "r") as f:
        manifest = json.load(f)
    try:
        cfg = validate_config(manifest.get("config") or {}, f"{path}/manifest.json")
    except UserError as exc:
        raise UserError(f"{path}: the run's config no longer validates ({exc}); rerun generate") from None
    # The manifest holds masked secrets; storage access uses the publisher's.
    cfg.s3 = s3 or S3Config()
    return Run(cfg, root=path)


def generate_stages() -> list:
    from factory.generate import STAGES  # read at call time: the stage list grows

    return STAGES


def check_complete(run: Run) -> None:
    """Every stage of `generate` finished, and is up to date with the run's config and inputs."""
    for stage in generate_stages():
        marker = run.marker(stage.name)
        if marker is None:
            raise UserError(f"{run.root}: incomplete run: stage '{stage.name}' has not finished; run generate")
        if marker.get("fingerprint") != run.fingerprint(stage):
            raise UserError(
                f"{run.root}: stage '{stage.name}' is out of date with the run's config or inputs; rerun generate"
            )


def snapshot(run: Run) -> Snapshot:
    """Validate every table of a complete run against `schemas` and hash its shards.

    Raises one UserError line for an incomplete run, a missing or extra shard,
    a file that is not Parquet, a schema violation or a row count that
    disagrees with the manifest.
    """
    check_complete(run)
    manifest = {k: v for k, v in run.manifest.items() if k not in VOLATILE}
    # Stages in pipeline order (the manifest file stores keys sorted).
    order = {s.name: i for i, s in enumerate(generate_stages())}
    manifest["stages"] = dict(sorted(manifest.get("stages", {}).items(), key=lambda kv: order.get(kv[0], len(order))))
    snap = Snapshot(run, [], manifest)
    counts = run.manifest.get("counts", {})
    # qa first: it is the default config.
    for table in sorted(schemas.TABLES, key=lambda t: t != card.DEFAULT_CONFIG):
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


def write_card(run: Run, snap: Snapshot | None = None) -> Snapshot:
    """Validate `run` and write its README.md in place: the run folder becomes a loadable dataset."""
    snap = snap or snapshot(run)
    paths = snap.figure_paths(published=False)
    if snap.figures:
        run.fs.makedirs(run.uri(FIGURES), exist_ok=True)
    for name, png in snap.figures.items():
        _write_bytes(run.fs, run.uri(paths[name]), png)
    text = card.render(snap, snap.data_files(published=False), run.root, paths)
    _write_bytes(run.fs, run.uri("README.md"), text.encode())
    return snap


def data_files(path: str, table: str = "qa", s3: S3Config | None = None) -> dict[str, list[str]]:
    """{split: [file URIs]} of `table` at `path`: exactly the files a published copy's manifest
    names (safe while another publish is in flight), or a run folder's shards.

    For `datasets.load_dataset("parquet", data_files=..., storage_options=...)`, pandas or DuckDB.
    """
    fs, fpath = check_readable(path, s3)
    base = path.rstrip("/")
    mpath = f"{fpath.rstrip('/')}/manifest.json"
    manifest = json.loads(fs.cat_file(mpath)) if fs.exists(mpath) else {}
    out: dict[str, list[str]] = {}
    if "files" in manifest:
        for f in manifest["files"]:
            if f["table"] == table:
                out.setdefault(f["split"], []).append(f"{base}/{f['path']}")
        return out
    folder = f"{fpath.rstrip('/')}/{table}"
    for p in sorted(fs.ls(folder, detail=False)) if fs.exists(folder) else []:
        m = SHARD.match(p.rsplit("/", 1)[-1])
        if m:
            out.setdefault(m["split"], []).append(f"{base}/{table}/{p.rsplit('/', 1)[-1]}")
    return out


# ---- destinations ----------------------------------------------------------------------
def published_manifest(snap: Snapshot) -> dict[str, Any]:
    """The run's manifest plus what names this version: the pointer readers trust."""
    return {
        **snap.manifest,
        "version": snap.version,
        "published_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "published_with": package_versions(),
        "files": [
            {"path": s.name, "table": s.table, "split": s.split, "rows": s.rows, "bytes": s.size, "sha256": s.sha256}
            for s in snap.shards
        ],
        "figures": [
            {"path": path, "bytes": len(snap.figures[name]), "sha256": hashlib.sha256(snap.figures[name]).hexdigest()}
            for name, path in snap.figure_paths(published=True).items()
        ],
    }


def _write_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Readers see the old file or the new one: one PUT on S3, write-then-rename locally."""
    if is_local_fs(fs):
        tmp = f"{path}.tmp-{os.getpid()}"
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)
    else:
        fs.pipe_file(path, data)


class FolderTarget:
    """A local folder or an s3:// prefix."""

    def __init__(self, dest: str, s3: S3Config | None):
        self.dest = dest
        self.fs, self.path = check_writable(dest, s3)

    def _p(self, rel: str) -> str:
        return f"{self.path}/{rel}"

    def current(self) -> dict | None:
        if not self.fs.exists(self._p("manifest.json")):
            listing = self.fs.ls(self.path, detail=False) if self.fs.exists(self.path) else []
            leftovers = [p for p in listing if not p.rsplit("/", 1)[-1].startswith(STAGING)]
            if leftovers:
                raise UserError(f"{self.dest}: not empty and not a ragtune dataset (no manifest.json); refusing to write there")
            return None
        with self.fs.open(self._p("manifest.json"), "r") as f:
            return json.load(f)

    def commit(self, snap: Snapshot, card_text: str, manifest: dict, previous: dict | None) -> None:
        staging = self._p(STAGING + manifest["version"])
        if self.fs.exists(staging):
            self.fs.rm(staging, recursive=True)
        present = self._shards()
        todo = [s for s in snap.shards if present.get(s.name) != s.size]
        log(f"publish: uploading {len(todo)} of {len(snap.shards)} shards to {self.dest}")
        for s in todo:
            _copy(snap.run.fs, s.src, self.fs, f"{staging}/{s.name}")
        figures = {path: snap.figures[name] for name, path in snap.figure_paths(published=True).items()
                   if path not in present}
        for path, png in figures.items():
            if is_local_fs(self.fs):
                self.fs.makedirs(f"{staging}/{FIGURES}", exist_ok=True)
            self.fs.pipe_file(f"{staging}/{path}", png)
        for rel in [s.name for s in todo] + list(figures):  # into place under names no version uses yet
            if is_local_fs(self.fs):
                self.fs.makedirs(self._p(rel.rsplit("/", 1)[0]), exist_ok=True)
            self.fs.mv(f"{staging}/{rel}", self._p(rel))
        _write_bytes(self.fs, self._p("README.md"), card_text.encode())
        _write_bytes(self.fs, self._p("manifest.json"), json.dumps(manifest, indent=2, sort_keys=True).encode())
        # After the switch: drop shards and plots no longer named, and staging left by crashed publishes.
        keep = {s.name for s in snap.shards} | set(snap.figure_paths(published=True).values())
        for rel in self._shards():
            if rel not in keep:
                self.fs.rm(self._p(rel))
        for entry in self.fs.ls(self.path, detail=False):
            if entry.rsplit("/", 1)[-1].startswith(STAGING):
                self.fs.rm(entry, recursive=True)

    def _shards(self) -> dict[str, int]:
        """{folder/file: size} of every file in the table and plot folders, from one listing."""
        if not self.fs.exists(self.path):
            return {}
        out = {}
        for path, info in self.fs.find(self.path, detail=True).items():
            rel = path[len(self.path) + 1:]
            if (rel.split("/", 1)[0] in schemas.TABLES or rel.startswith(f"{FIGURES}/")) and rel.count("/") == 1:
                out[rel] = info["size"]
        return out


def _copy(src_fs: fsspec.AbstractFileSystem, src: str, dst_fs: fsspec.AbstractFileSystem, dst: str) -> None:
    if is_local_fs(dst_fs):
        dst_fs.makedirs(dst.rsplit("/", 1)[0], exist_ok=True)
    if is_local_fs(src_fs):
        dst_fs.put_file(src, dst)  # s3fs: (multipart) upload; the object exists only once complete
    else:
        with src_fs.open(src, "rb") as fin, dst_fs.open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout, 16 << 20)


class HubTarget:
    """`hf://datasets/owner/name`: one Hub commit per version (token from HF_TOKEN)."""

    def __init__(self, dest: str):
        m = re.fullmatch(r"hf://datasets/([\w.-]+/[\w.-]+)/?", dest)
        if not m:
            raise UserError(f"{dest}: expected hf://datasets/<owner>/<name>")
        from huggingface_hub import HfApi

        self.dest, self.repo = dest, m.group(1)
        # Read at call time (huggingface_hub reads HF_ENDPOINT once, at import).
        self.endpoint = os.environ.get("HF_ENDPOINT") or None
        self.api = HfApi(endpoint=self.endpoint, token=os.environ.get("HF_TOKEN") or None)

    def current(self) -> dict | None:
        from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError

        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = self.api.hf_hub_download(self.repo, "manifest.json", repo_type="dataset", local_dir=tmp)
            except (RemoteEntryNotFoundError, RepositoryNotFoundError):
                return None
            except Exception as exc:  # the Hub client raises HTTP, network and cache errors of many types
                raise UserError(f"{self.dest}: cannot read the current manifest: {_hub_error(exc)}") from None
            with open(path, encoding="utf-8") as f:
                return json.load(f)

    def commit(self, snap: Snapshot, card_text: str, manifest: dict, previous: dict | None) -> None:
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        had = {f["path"] for key in ("files", "figures") for f in (previous or {}).get(key, [])}
        figures = snap.figure_paths(published=True)
        keep = {s.name for s in snap.shards} | set(figures.values())
        with tempfile.TemporaryDirectory() as tmp:
            ops: list = []
            for s in snap.shards:
                if s.name not in had:  # content-addressed: same name, same bytes
                    ops.append(CommitOperationAdd(s.name, _local_copy(snap.run, s, tmp)))
            ops += [CommitOperationAdd(path, snap.figures[name]) for name, path in figures.items() if path not in had]
            ops.append(CommitOperationAdd("README.md", card_text.encode()))
            ops.append(CommitOperationAdd("manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode()))
            ops += [CommitOperationDelete(p) for p in sorted(had - keep)]
            try:
                self.api.create_repo(self.repo, repo_type="dataset", exist_ok=True, private=True)
                self.api.create_commit(
                    self.repo, ops, repo_type="dataset", commit_message=f"ragtune publish {manifest['version']}"
                )
            except Exception as exc:  # as above: every failure becomes one line
                raise UserError(f"{self.dest}: {_hub_error(exc)}") from None


def _local_copy(run: Run, s: Shard, tmp: str) -> str:
    if is_local_fs(run.fs):
        return s.src
    out = os.path.join(tmp, s.name.replace("/", "__"))
    run.fs.get_file(s.src, out)
    return out


def _hub_error(exc: BaseException) -> str:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    text = " ".join(str(exc).split())[:300]
    if status in (401, 403):
        return f"HTTP {status}: not allowed; check HF_TOKEN (a write token for this repo)"
    return f"HTTP {status}: {text}" if status else f"{type(exc).__name__}: {text}"


@dataclass
class Published:
    dest: str
    version: str
    changed: bool
    rows: dict[str, dict[str, int]]


def publish(run: Run, dest: str, s3: S3Config | None = None) -> Published:
    """Validate `run` and publish it to `dest` atomically; a no-op when `dest` has this version."""
    snap = snapshot(run)
    target = HubTarget(dest) if dest.startswith("hf://") else FolderTarget(dest, s3 if s3 is not None else run.cfg.s3)
    if isinstance(target, FolderTarget) and target.path == run.path and type(target.fs) is type(run.fs):
        raise UserError(f"{dest}: is the run folder itself; omit --to to write the card in place")
    version = snap.version
    try:
        previous = target.current()
        if previous and previous.get("version") == version:
            log(f"publish: {dest} already has version {version}; nothing to do")
            return Published(dest, version, False, snap.rows())
        card_text = card.render(snap, snap.data_files(published=True), dest, snap.figure_paths(published=True))
        target.commit(snap, card_text, published_manifest(snap), previous)
    except (OSError, BotoCoreError) as exc:  # s3fs and local storage failures, as one line
        raise UserError(describe_error(dest, exc)) from None
    log(f"publish: {dest} now at version {version} (was {previous.get('version') if previous else 'empty'})")
    return Published(dest, version, True, snap.rows())
