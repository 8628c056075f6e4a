"""Tokens/s of ingest + dedup + chunk on Ray Data vs a plain single-process loop, same run.

    python bench/ingest_chunk.py --words 800000     # ≈1M WordPiece tokens

The baseline runs the same functions (decode, normalize, MinHash, LSH, chunk)
in one Python loop with no Ray, so the ratio is what Ray Data's sharding buys
(and costs) on this machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from bench.corpus import write_corpus  # noqa: E402
from factory.chunking import chunk_document, load_tokenizer  # noqa: E402
from factory.config import load_config  # noqa: E402
from factory.ingest import add_signatures, dedup_keys, decode_files  # noqa: E402


def plain_loop(corpus: Path, cfg) -> tuple[int, float]:
    start = time.perf_counter()
    paths = sorted(str(p) for p in corpus.glob("*.md"))
    table = decode_files({"path": np.array(paths), "bytes": np.array([Path(p).read_bytes() for p in paths], dtype=object)}, cfg.corpus)
    table = add_signatures(table, cfg.dedup.num_perm, cfg.dedup.shingle_words)
    keep, _, _ = dedup_keys(table["id"].to_pylist(), table["source"].to_pylist(),
                            np.asarray(table["signature"].to_pylist(), dtype=np.uint64), cfg)
    tok = load_tokenizer(cfg.chunking.tokenizer)
    tokens = 0
    for row in table.to_pylist():
        if f"{row['id']}@{row['source']}" in keep:
            tokens += sum(c["n_tokens"] for c in chunk_document(row, tok, cfg.chunking))
    return tokens, time.perf_counter() - start


def ray_pipeline(corpus: Path, out: Path, cfg_overrides: list[str]) -> tuple[int, float, float, dict]:
    import ray

    from factory.generate import generate

    t0 = time.perf_counter()
    cfg = load_config(None, [f"corpus.path={corpus}", f"output.path={out}", *cfg_overrides])
    ray.init(include_dashboard=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    t_start = time.perf_counter() - t0
    run = generate(cfg, until="chunk")
    total = time.perf_counter() - t0
    stages = {s: run.marker(s)["seconds"] for s in ("ingest", "chunk")}
    tokens = run.marker("chunk")["stats"]["tokens"]
    ray.shutdown()
    return tokens, total, t_start, stages


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--words", type=int, default=800_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        n_docs = write_corpus(corpus, args.words)
        cfg = load_config(None, [f"corpus.path={corpus}"])
        base_tokens, base_s = plain_loop(corpus, cfg)
        tokens, total, t_ray, stages = ray_pipeline(corpus, Path(tmp) / "run", [])
    print(f"corpus: {n_docs} documents, {tokens:,} chunk tokens (WordPiece, incl. overlap), {os.cpu_count()} CPUs\n")
    print("| pipeline | seconds | tokens/s | vs plain loop |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| plain single-process loop | {base_s:.1f} | {base_tokens / base_s:,.0f} | 1.00× |")
    print(f"| Ray Data ingest+chunk (incl. Ray start {t_ray:.1f} s) | {total:.1f} | {tokens / total:,.0f} | {base_s / total:.2f}× |")
    body = stages["ingest"] + stages["chunk"]
    print(f"| Ray Data stages only (ingest {stages['ingest']:.1f} s + chunk {stages['chunk']:.1f} s) | {body:.1f} | {tokens / body:,.0f} | {base_s / body:.2f}× |")


if __name__ == "__main__":
    main()
