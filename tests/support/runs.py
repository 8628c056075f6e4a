"""Helpers for tests that run whole jobs as separate processes: the teacher server, corpora, tables."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
JOURNAL = ROOT / "examples" / "journal"


@contextlib.contextmanager
def teacher_process(log: Path, delay_s: float = 0.0, faults: bool = False, api_key: str | None = None,
                    hold: Path | None = None):
    """`tests.support.serve_openai` in its own process; yields its base URL."""
    args = [sys.executable, "-m", "tests.support.serve_openai", "--log", str(log), "--delay", str(delay_s)]
    if faults:
        args.append("--faults")
    if api_key:
        args += ["--api-key", api_key]
    if hold:
        args += ["--hold", str(hold)]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"teacher server did not start: {line!r}")
        yield line.split()[1]
    finally:
        proc.kill()
        proc.wait()


def events(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def journal_corpus(dst: Path, n: int, start: int = 0) -> Path:
    """The first `n` journal entries (from `start`) copied into `dst`."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(JOURNAL.glob("*.md"))[start:start + n]:
        shutil.copy(p, dst / p.name)
    return dst


def teacher_settings(base_url: str, **extra: object) -> list[str]:
    """--set arguments for an openai teacher at `base_url` (small batches: little is lost in a crash)."""
    values = {"engine": "openai", "model": "teacher", "base_url": base_url, "concurrency": 4, "batch_size": 2,
              "max_retries": 3, "backoff_s": 0.05, "timeout_s": 30, **extra}
    return [f"teacher.{k}={v}" for k, v in values.items()]


def sets(*pairs: str) -> list[str]:
    out = []
    for p in pairs:
        out += ["--set", p]
    return out


def job(name: str, *args: str, env: dict | None = None, timeout: float = 900, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"jobs.{name}", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False, **kw)


def read_table(root: str | Path, name: str, split: str | None = None) -> pa.Table:
    files = sorted(glob.glob(os.path.join(root, name, f"{split or '*'}-*.parquet")))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else pa.table({})


def rows_by_id(root: str | Path, name: str) -> dict[str, dict]:
    rows = read_table(root, name).to_pylist()
    out = {r["id"]: r for r in rows}
    assert len(out) == len(rows), f"{name}: duplicate ids"
    return out


def manifest(root: str | Path) -> dict:
    return json.loads(Path(root, "manifest.json").read_text())


def user_error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("ragtune: error:")]


def journal_chunk_table(cfg) -> pa.Table:
    """The journal's chunks as the chunk stage makes them (same functions, without Ray)."""
    import schemas
    from factory.chunking import chunk_document, load_tokenizer
    from factory.ingest import document_id, markdown_title, normalize

    tok = load_tokenizer(cfg.chunking.tokenizer)
    rows = []
    for path in sorted(JOURNAL.glob("*.md")):
        text = normalize(path.read_text(encoding="utf-8"))
        doc = {"id": document_id(text), "text": text, "title": markdown_title(text), "date": path.stem}
        rows += chunk_document(doc, tok, cfg.chunking)
    return schemas.validate("chunks", pa.Table.from_pylist(rows))
