"""Ingest stage: corpus (files, s3://, HF dataset) → normalized, deduplicated `documents`.

Reading, decoding, normalizing and MinHash signatures run sharded on Ray Data;
only the LSH banding of the (small) signatures runs on the driver, which then
filters the dataset by the ids it dropped. Bad records inside good input are
skipped and counted by reason (or fail the stage with `corpus.on_error: fail`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import unicodedata
from collections import Counter
from functools import cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from factory.config import Config, CorpusConfig
from factory.errors import UserError
from factory.pipeline import Run, StageRecord
from factory.storage import arrow_filesystem, check_readable, describe_error, filesystem

logger = logging.getLogger(__name__)

TEXT_FORMATS = {".txt": "txt", ".text": "txt", ".md": "md", ".markdown": "md", ".html": "html", ".htm": "html"}
RECORD_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
EXTENSIONS = {**TEXT_FORMATS, **RECORD_FORMATS}
DATE_IN_NAME = re.compile(r"(\d{4}-\d{2}-\d{2})")
HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
# Signatures are rebuilt on the driver from their values, so the scheme must be named.
MINHASH_SCHEME = "affine64"


# ---- input resolution -----------------------------------------------------------------
def _has_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def is_hf_dataset(cfg: Config) -> bool:
    """A HF dataset: format hf, an hf:// id, or a folder saved by `save_to_disk`."""
    c = cfg.corpus
    if c.format == "hf" or c.path.startswith("hf://"):
        return True
    if _has_glob(c.path):
        return False
    fs, fpath = check_readable(c.path, cfg.s3)
    return fs.isdir(fpath) and any(fs.exists(f"{fpath}/{m}") for m in HF_MARKERS)


def resolve_files(cfg: Config) -> tuple[Any, list[dict]]:
    """The filesystem and the input files (path, size, version) the corpus names."""
    path = cfg.corpus.path
    try:
        if _has_glob(path):
            fs, fpattern = filesystem(path, cfg.s3)
            infos = [fs.info(p) for p in fs.glob(fpattern)]
            if not infos:
                raise UserError(f"{path}: the pattern matches no files")
        else:
            fs, fpath = check_readable(path, cfg.s3)
            if fs.isdir(fpath):
                infos = list(fs.find(fpath, detail=True).values())
            else:
                infos = [fs.info(fpath)]
    except UserError:
        raise
    except Exception as exc:
        raise UserError(describe_error(path, exc)) from None
    files = []
    for info in sorted(infos, key=lambda i: i["name"]):
        name = info["name"]
        if info.get("type") != "file" or name.rsplit("/", 1)[-1].startswith("."):
            continue
        version = info.get("ETag") or info.get("mtime") or info.get("LastModified") or ""
        files.append({"path": name, "size": int(info.get("size") or 0), "version": str(version)})
    if not files:
        raise UserError(f"{path}: no files found (empty folder?)")
    return fs, files


def _format_of(path: str, cfg: CorpusConfig) -> str | None:
    if cfg.format not in ("auto", "hf"):
        return cfg.format
    return EXTENSIONS.get(os.path.splitext(path)[1].lower())


def input_listing(run: Run) -> str:
    """Fingerprint of the input: every file's path, size and version (mtime or ETag)."""
    cfg = run.cfg
    if is_hf_dataset(cfg):
        fs, fpath = filesystem(cfg.corpus.path, cfg.s3)
        listing: list = [cfg.corpus.path, cfg.corpus.hf_split]
        if os.path.isdir(fpath):
            listing += sorted((i["name"], i.get("size"), str(i.get("mtime"))) for i in fs.find(fpath, detail=True).values())
    else:
        _, files = resolve_files(cfg)
        listing = [(f["path"], f["size"], f["version"]) for f in files]
    return hashlib.sha256(json.dumps(listing, default=str).encode()).hexdigest()[:16]


# ---- normalization ----------------------------------------------------------------------
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANKS = re.compile(r"\n\s*\n\s*(\n\s*)+")


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANKS.sub("\n\n", text).strip()


def document_id(text: str) -> str:
    return "doc-" + hashlib.sha256(text.encode()).hexdigest()[:20]


def html_to_text(html: str) -> tuple[str | None, str]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    title = soup.title.get_text(strip=True) if soup.title else None
    if soup.title:
        soup.title.decompose()
    return title, soup.get_text("\n")


def markdown_title(text: str) -> str | None:
    for line in text.split("\n", 20)[:20]:
        if line.startswith("#"):
            return line.lstrip("#").strip() or None
    return None


# ---- per-batch decoders (run in Ray tasks) ---------------------------------------------
def _empty_row(source: str) -> dict:
    return {"id": None, "title": None, "text": None, "source": source, "date": None, "metadata": None, "error": None}


def _finish(row: dict, cfg: CorpusConfig) -> dict:
    """Normalize text, apply size bounds, assign the content-hash id."""
    raw = row["text"]
    if row["error"] is None:
        if not isinstance(raw, str):
            row["error"] = "missing_text"
        elif len(raw) > cfg.max_doc_chars:
            row["error"] = "too_large"
        else:
            text = normalize(raw)
            if len(text) < cfg.min_doc_chars:
                row["error"] = "too_short"
            else:
                row["text"] = text
                row["id"] = document_id(text)
    if row["error"] is not None:
        row["text"] = None
    return row


def decode_files(batch: dict[str, np.ndarray], cfg: CorpusConfig) -> pa.Table:
    """Raw bytes of txt/md/html/jsonl files → one row per document (or per error)."""
    rows: list[dict] = []
    for path, data in zip(batch["path"], batch["bytes"]):
        fmt = _format_of(path, cfg)
        data = bytes(data)
        base = _empty_row(path)
        if b"\x00" in data[:8192]:
            rows.append({**base, "error": "binary"})
            continue
        try:
            content = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            rows.append({**base, "error": "not_utf8"})
            continue
        m = DATE_IN_NAME.search(os.path.basename(path))
        base["date"] = m.group(1) if m else None
        if fmt == "jsonl":
            rows.extend(_jsonl_rows(content, path, cfg))
            continue
        if fmt == "html":
            title, content = html_to_text(content)
        else:
            title = markdown_title(content) if fmt == "md" else None
        rows.append(_finish({**base, "title": title or os.path.basename(path), "text": content}, cfg))
    return _columns(rows)


def _jsonl_rows(content: str, path: str, cfg: CorpusConfig) -> list[dict]:
    out = []
    for lineno, line in enumerate(content.split("\n"), start=1):
        if not line.strip():
            continue
        source = f"{path}:{lineno}"
        if len(line) > cfg.max_doc_chars:
            out.append({**_empty_row(source), "error": "too_large"})
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            out.append({**_empty_row(source), "error": "malformed_jsonl"})
            continue
        if not isinstance(record, dict):
            out.append({**_empty_row(source), "error": "malformed_jsonl"})
            continue
        out.append(record_to_row(record, source, cfg))
    return out


def record_to_row(record: dict, source: str, cfg: CorpusConfig) -> dict:
    """One structured record (JSONL line, Parquet row, HF example) → a document row."""
    row = _empty_row(source)
    row["text"] = record.get(cfg.text_field)
    if cfg.title_field and record.get(cfg.title_field) is not None:
        row["title"] = str(record[cfg.title_field])
    if cfg.date_field and record.get(cfg.date_field) is not None:
        row["date"] = str(record[cfg.date_field])[:32]
    skip = {cfg.text_field, cfg.title_field, cfg.date_field}
    rest = {k: v for k, v in record.items() if k not in skip}
    row["metadata"] = json.dumps(rest, default=str, ensure_ascii=False) if rest else None
    return _finish(row, cfg)


def parquet_row_groups(fs: Any, paths: list[str], text_field: str) -> tuple[list[dict], list[str]]:
    """One work item per row group of each Parquet file, with the file row it starts at (the
    row number names a record's source, `file#row`, which must be unique for dedup); and the
    files whose footer cannot be read (skipped and counted like any bad input file)."""
    items, unreadable = [], []
    for p in paths:
        try:
            with fs.open(p, "rb") as f:
                meta = pq.ParquetFile(f).metadata
        except (pa.ArrowException, OSError):
            unreadable.append(p)
            continue
        _require_text_field(p, meta.schema.names, text_field)
        first = 0
        for g in range(meta.num_row_groups):
            items.append({"path": p, "row_group": g, "first_row": first})
            first += meta.row_group(g).num_rows
    return items, unreadable


def _fields_hint(ds: Any, c: CorpusConfig, drops: Counter) -> str:
    """When no record had text: the fields one of them does have (its title, date and metadata)."""
    if "missing_text" not in drops:
        return ""
    row = ds.filter(expr="error == 'missing_text'").select_columns(["title", "date", "metadata"]).take(1)[0]
    fields = [f for f, v in ((c.title_field, row["title"]), (c.date_field, row["date"])) if v is not None]
    fields += list(json.loads(row["metadata"] or "{}"))
    return f"; corpus.text_field is '{c.text_field}', the records have: {', '.join(fields) or 'no fields'}"


def _require_text_field(source: str, columns: list[str], text_field: str) -> None:
    if text_field not in columns:
        raise UserError(f"{source}: corpus.text_field '{text_field}' is not a column (columns: {', '.join(columns)})")


def decode_row_groups(batch: pa.Table, cfg: CorpusConfig, fs: Any) -> pa.Table:
    rows = []
    for item in batch.to_pylist():
        with fs.open(item["path"], "rb") as f:
            records = pq.ParquetFile(f).read_row_group(item["row_group"]).to_pylist()
        rows += [record_to_row(r, f"{item['path']}#{item['first_row'] + i}", cfg) for i, r in enumerate(records)]
    return _columns(rows)


def decode_records(batch: pa.Table, cfg: CorpusConfig) -> pa.Table:
    """Rows of a HF dataset; each carries its source in the ROW_SOURCE column."""
    rows = []
    for record in batch.to_pylist():
        source = record.pop(ROW_SOURCE)
        rows.append(record_to_row(record, source, cfg))
    return _columns(rows)


# The column a HF dataset gets with each record's source (path#row): positions within a
# Ray batch restart per block, and dedup needs every record's `id@source` key to be unique.
ROW_SOURCE = "__source"

# Decoded rows before dedup: the documents columns plus the reason a record was skipped.
RAW_SCHEMA = pa.schema([(k, pa.string()) for k in ("id", "title", "text", "source", "date", "metadata", "error")])


def _columns(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=RAW_SCHEMA)


# ---- near-duplicate detection -------------------------------------------------------------
def dedup_keys(ids: list[str], sources: list[str], signatures: np.ndarray, cfg: Config) -> tuple[set[str], int, int]:
    """Keys (`id@source`) to keep after exact (same content hash) and near-duplicate (MinHash LSH) removal.

    The first document in source order is kept, so reruns keep the same ones. A document is a near
    duplicate when one band of its signature equals that band of a kept document's: datasketch's
    MinHashLSH query with its bands for the threshold, done on the signature array directly (the
    per-document index objects cost more than the whole comparison).
    """
    bands = _lsh_bands(cfg.dedup.threshold, cfg.dedup.num_perm) if cfg.dedup.near else []
    kept_bands: list[set[bytes]] = [set() for _ in bands]
    keep: set[str] = set()
    seen: set[str] = set()
    exact = near = 0
    for i in sorted(range(len(ids)), key=lambda i: (sources[i], ids[i])):
        doc, key = ids[i], f"{ids[i]}@{sources[i]}"
        if doc in seen and cfg.dedup.exact:
            exact += 1
            continue
        if bands:
            hashed = [signatures[i, lo:hi].tobytes() for lo, hi in bands]
            if any(h in kept for h, kept in zip(hashed, kept_bands)):
                near += 1
                continue
            for h, kept in zip(hashed, kept_bands):
                kept.add(h)
        seen.add(doc)
        keep.add(key)
    return keep, exact, near


@cache
def _lsh_bands(threshold: float, num_perm: int) -> list[tuple[int, int]]:
    from datasketch import MinHashLSH

    return MinHashLSH(threshold=threshold, num_perm=num_perm).hashranges


# ---- the stage ---------------------------------------------------------------------------
def read_corpus(cfg: Config):
    """A Ray Dataset of document rows (with an `error` column) and the number of inputs."""
    import ray.data

    c = cfg.corpus
    if is_hf_dataset(cfg):
        return _read_hf(c), 1
    fs, files = resolve_files(cfg)
    pafs = arrow_filesystem(fs)
    by_kind: dict[str, list[str]] = {"text": [], "parquet": [], "skipped": []}
    for f in files:
        fmt = _format_of(f["path"], c)
        kind = "parquet" if fmt == "parquet" else ("text" if fmt else "skipped")
        by_kind[kind].append(f["path"])
    parts = []
    if by_kind["text"]:
        raw = ray.data.read_binary_files(by_kind["text"], filesystem=pafs, include_paths=True)
        parts.append(raw.map_batches(decode_files, fn_kwargs={"cfg": c}, batch_format="numpy", batch_size=16))
    skipped = [{**_empty_row(p), "error": "unsupported_file"} for p in by_kind["skipped"]]
    if by_kind["parquet"]:
        groups, unreadable = parquet_row_groups(fs, by_kind["parquet"], c.text_field)
        skipped += [{**_empty_row(p), "error": "unreadable_parquet"} for p in unreadable]
        if groups:
            parts.append(ray.data.from_items(groups).map_batches(
                decode_row_groups, fn_kwargs={"cfg": c, "fs": fs}, batch_format="pyarrow", batch_size=1))
    if skipped:
        parts.append(ray.data.from_arrow(_columns(skipped)))
    ds = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
    return ds, len(files)


def _read_hf(c: CorpusConfig):
    import datasets
    import ray.data

    path = c.path.removeprefix("hf://").removeprefix("datasets/")
    try:
        if os.path.isdir(c.path):
            hf = datasets.load_from_disk(c.path)
        else:
            hf = datasets.load_dataset(path, split=c.hf_split)
    except Exception as exc:  # datasets raises many types for a missing or private dataset
        raise UserError(f"{c.path}: cannot load Hugging Face dataset: {type(exc).__name__}: {exc}") from None
    if isinstance(hf, datasets.DatasetDict):
        if c.hf_split not in hf:
            raise UserError(f"{c.path}: no split '{c.hf_split}' (splits: {', '.join(hf)})")
        hf = hf[c.hf_split]
    _require_text_field(c.path, hf.column_names, c.text_field)
    hf = hf.add_column(ROW_SOURCE, [f"{c.path}#{i}" for i in range(hf.num_rows)])
    ds = ray.data.from_huggingface(hf)
    return ds.map_batches(decode_records, fn_kwargs={"cfg": c}, batch_format="pyarrow")


def ingest(run: Run, rec: StageRecord) -> None:
    import ray

    cfg = run.cfg
    ds, n_inputs = read_corpus(cfg)
    # One JSONL or Parquet file decodes to one block: its signatures (the costly part) then run on
    # one CPU unless the block is cut first (the streaming repartition also joins the small blocks
    # of many small files, up to the same size).
    ds = ds.repartition(target_num_rows_per_block=_SIGNATURE_ROWS).map_batches(
        add_signatures, fn_kwargs={"num_perm": cfg.dedup.num_perm, "shingle": cfg.dedup.shingle_words},
        batch_format="pyarrow",
    ).materialize()
    # Only ids, sources, errors and signatures come to the driver; texts stay sharded.
    meta = pa.concat_tables(ray.get(ds.select_columns(["id", "source", "error", "signature"]).to_arrow_refs()))
    errors = [(src, err) for src, err in zip(meta["source"].to_pylist(), meta["error"].to_pylist()) if err]
    rec.stats["input_files"] = n_inputs
    rec.rows_in = meta.num_rows
    if errors and cfg.corpus.on_error == "fail":
        src, err = errors[0]
        raise UserError(f"{src}: {err.replace('_', ' ')} (corpus.on_error=fail)")
    for reason, n in sorted(Counter(err for _, err in errors).items()):
        rec.drop(reason, n)
        logger.info(f"[ingest] skipped {n} input record(s): {reason.replace('_', ' ')}")
    good = meta.filter(pc.is_null(meta["error"]))
    if good.num_rows == 0:
        reasons = ", ".join(f"{k} {v}" for k, v in rec.drops.items()) or "no text"
        raise UserError(f"{cfg.corpus.path}: no usable documents ({reasons}){_fields_hint(ds, cfg.corpus, rec.drops)}")

    ids = good["id"].to_pylist()
    sources = good["source"].to_pylist()
    signatures = good["signature"].combine_chunks().flatten().to_numpy().reshape(good.num_rows, cfg.dedup.num_perm)
    keep_keys, exact, near = dedup_keys(ids, sources, signatures, cfg)
    rec.drop("exact_duplicate", exact)
    rec.drop("near_duplicate", near)

    def keep(batch: pa.Table) -> pa.Table:
        keys = [f"{d}@{s}" for d, s in zip(batch["id"].to_pylist(), batch["source"].to_pylist())]
        batch = batch.filter(pa.array([k in keep_keys for k in keys], pa.bool_()))
        batch = batch.drop_columns(["error", "signature"])
        return batch.append_column("n_chars", pc.utf8_length(batch["text"]).cast(pa.int64()))

    rec.rows_out = run.write_table("documents", ds.map_batches(keep, batch_format="pyarrow"))


_SIGNATURE_ROWS = 1024  # documents per signature task


def add_signatures(batch: pa.Table, num_perm: int, shingle: int) -> pa.Table:
    """MinHash signature of each good row's text (null for error rows)."""
    texts = batch["text"].to_pylist()
    good = [t for t in texts if t is not None]
    rows = iter(minhash_signatures(good, num_perm, shingle))
    sigs = [None if t is None else next(rows) for t in texts]
    return batch.append_column("signature", pa.array(sigs, pa.list_(pa.uint64())))


# MurmurHash3's 64-bit finalizer, which datasketch's affine64 scheme applies to each input hash.
_FMIX64 = (np.uint64(33), np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53))
# Rows of the (shingles x num_perm) matrix computed at once: bounds the memory of a batch.
_SIGNATURE_CELLS = 1 << 18


def minhash_signatures(texts: list[str], num_perm: int, shingle: int) -> np.ndarray:
    """Signatures of `texts`' word shingles, equal to datasketch's `MinHash(num_perm, seed=1,
    scheme="affine64")` updated with them (a test holds the two equal), for a whole batch in a few
    numpy operations: a MinHash object per document cost more than its hashing, and importing
    datasketch (scipy) cost each worker a second."""
    grams = [_shingles(t, shingle) for t in texts]
    counts = np.fromiter(map(len, grams), np.int64, len(grams))
    digests = b"".join(hashlib.sha1(g).digest()[:8] for gs in grams for g in gs)
    shift, m1, m2 = _FMIX64
    h = np.frombuffer(digests, dtype="<u8").astype(np.uint64)
    h ^= h >> shift
    h *= m1
    h ^= h >> shift
    h *= m2
    h ^= h >> shift
    a, b = _permutations(num_perm)
    starts = np.concatenate([[0], np.cumsum(counts)])
    out = np.empty((len(texts), num_perm), np.uint64)
    lo = 0
    while lo < len(texts):
        # Documents lo..hi-1 whose shingles fit the cell budget (at least one document).
        hi = max(lo + 1, int(np.searchsorted(starts, starts[lo] + _SIGNATURE_CELLS // num_perm, "right")) - 1)
        first, last = starts[lo], starts[hi]
        permuted = h[first:last, None] * a + b  # wraps modulo 2^64, as the scheme defines
        out[lo:hi] = np.minimum.reduceat(permuted, starts[lo:hi] - first, axis=0)
        lo = hi
    return out


@cache
def _permutations(num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine64 permutation parameters for seed 1: odd multipliers and offsets."""
    gen = np.random.RandomState(1)
    a = gen.randint(0, 1 << 63, num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    return a, gen.randint(0, 1 << 64, num_perm, dtype=np.uint64)


def _shingles(text: str, shingle: int) -> set[bytes]:
    words = text.lower().split()
    return {" ".join(words[i:i + shingle]).encode() for i in range(max(1, len(words) - shingle + 1))}
