"""Chunking: token-aware, overlapping, sentence-aligned, stable ids."""

from __future__ import annotations

from factory.chunking import chunk_document, load_tokenizer, token_ranges
from factory.config import ChunkingConfig


def test_ranges_cover_everything_with_overlap():
    bounds = list(range(0, 3000, 25))
    ranges = token_ranges(3000, bounds, 500, 100)
    assert ranges[0][0] == 0 and ranges[-1][1] == 3000
    for (a0, b0), (a1, b1) in zip(ranges, ranges[1:]):
        assert b0 - a0 <= 500
        assert a1 < b0 and b0 - a1 <= 100  # overlap, within the limit
        assert a1 in bounds and b0 in bounds  # sentence-aligned when sentences allow


def test_ranges_without_boundaries_cut_by_tokens():
    ranges = token_ranges(1000, [0], 300, 50)
    assert all(b - a <= 300 for a, b in ranges)
    assert [a for a, _ in ranges][1] == 250


def test_chunks_of_a_document_are_stable_and_sentence_aligned():
    tok = load_tokenizer("default")
    text = " ".join(f"Sentence number {i} talks about Harwick and the Calder River." for i in range(200))
    cfg = ChunkingConfig(size=120, overlap=30)
    rows = chunk_document({"id": "doc-1", "text": text, "title": "t", "date": None}, tok, cfg)
    again = chunk_document({"id": "doc-1", "text": text, "title": "t", "date": None}, tok, cfg)
    assert [r["id"] for r in rows] == [r["id"] for r in again]
    assert len({r["id"] for r in rows}) == len(rows) > 5
    for r in rows:
        assert r["n_tokens"] <= 120
        assert r["text"].startswith("Sentence number") and r["text"].endswith(".")
        assert len(tok.encode(r["text"], add_special_tokens=False).ids) == r["n_tokens"]
    # consecutive chunks share text (the overlap)
    assert rows[1]["text"][:40] in rows[0]["text"]


class CountingTokenizer:
    """The real tokenizer, counting how much text it is asked to encode."""

    def __init__(self, tok):
        self.tok, self.chars = tok, 0

    def encode(self, text, **kw):
        self.chars += len(text)
        return self.tok.encode(text, **kw)


def test_huge_single_line_is_tokenized_once_and_cut_into_fixed_windows():
    """No sentence boundary in 200,000 tokens: the text is encoded once (work linear in its length,
    not once per chunk), and the windows are exactly `size` tokens, each starting `size - overlap` on."""
    tok = CountingTokenizer(load_tokenizer("default"))
    text = "word " * 200_000
    rows = chunk_document({"id": "d", "text": text}, tok, ChunkingConfig(size=500, overlap=100))
    assert tok.chars == len(text)
    assert len(rows) == 500 and [r["n_tokens"] for r in rows] == [500] * 499 + [400]
    assert [len(r["text"]) for r in rows[:-1]] == [500 * 5 - 1] * 499
    assert sum(len(r["text"]) + 1 for r in rows) == len(text) + 499 * 100 * 5


def test_a_document_within_size_is_one_chunk_of_its_token_span():
    tok = load_tokenizer("default")
    cfg = ChunkingConfig(size=40, overlap=10)
    texts = ["Zoë's café — “Harwick Mill” (1843). It closed.", "Tiny.", " ".join(["word"] * 40), "\u200b"]
    for text in texts:
        offsets = tok.encode(text, add_special_tokens=False).offsets
        rows = chunk_document({"id": "d", "text": text, "title": None, "date": None}, tok, cfg)
        if not offsets:
            assert rows == []
            continue
        assert [(r["text"], r["n_tokens"], r["chunk_index"]) for r in rows] == [
            (text[offsets[0][0]:offsets[-1][1]], len(offsets), 0)]
    # One token more than the size: two overlapping chunks.
    assert len(chunk_document({"id": "d", "text": " ".join(["word"] * 41), "title": None, "date": None}, tok, cfg)) == 2
