"""Publishing a finished run: copy a validated snapshot of it atomically elsewhere.

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
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

import fsspec
from botocore.exceptions import BotoCoreError

import schemas
from factory import card
from factory.config import S3Config
from factory.errors import UserError
from factory.pipeline import Run
from factory.provenance import package_versions
from factory.snapshot import FIGURES, SHARD, Shard, Snapshot, snapshot
from factory.storage import check_readable, check_writable, describe_error, is_local_fs, write_atomic

logger = logging.getLogger(__name__)

STAGING = ".staging-"


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
        logger.info(f"publish: uploading {len(todo)} of {len(snap.shards)} shards to {self.dest}")
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
        write_atomic(self.fs, self._p("README.md"), card_text.encode())
        write_atomic(self.fs, self._p("manifest.json"), json.dumps(manifest, indent=2, sort_keys=True).encode())
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
            logger.info(f"publish: {dest} already has version {version}; nothing to do")
            return Published(dest, version, False, snap.rows())
        card_text = card.render(snap, snap.data_files(published=True), dest, snap.figure_paths(published=True))
        target.commit(snap, card_text, published_manifest(snap), previous)
    except (OSError, BotoCoreError) as exc:  # s3fs and local storage failures, as one line
        raise UserError(describe_error(dest, exc)) from None
    logger.info(f"publish: {dest} now at version {version} (was {previous.get('version') if previous else 'empty'})")
    return Published(dest, version, True, snap.rows())
