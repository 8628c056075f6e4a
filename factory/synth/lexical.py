"""Lexical measures over whole Arrow columns: word ids, support, MinHash signatures, near pairs.

    vocab = Vocabulary()
    row, word = vocab.encode(texts)                      # (text index, word id) of every word, in order
    support(row, word, ...)                              # share of each text's content words in its evidence
    FILTER = MinHash(num_perm=64, bands=12, rows=5, seed=1)
    sig = FILTER.signatures(texts)                       # (n, num_perm) uint32, seeded: equal on every worker
    group, neighbours = FILTER.near_pairs(sig, 0.9)      # identical signatures grouped; near groups paired

Words are split from the UTF-8 bytes exactly as text.words() splits them and looked up once per
distinct word; a text's shingles (text.shingles: its content words, or all its words when it
has none, and their bigrams) are hashed from word ids (a bigram's crc32 by crc32's linear shift,
no strings made); MinHash is datasketch's "affine32" scheme over a whole block at once. The
quality filters (quality.py, on Ray workers) and the quality report (report.py, which measures
with its own, wider MinHash) both stand on this module, so the per-row Python cost of the
scores is one dictionary lookup per distinct word.
"""

from __future__ import annotations

import functools
import zlib
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from factory.text import DATE_WORDS, GLOBAL_FRAMING, content_words, sentence_spans, stem

# Bytes of a word character mapped to their lower case, all others to a space (a UTF-8 multi-byte
# character to a run of them), ’ is put back, and Arrow's whitespace split finds the same runs.
_BYTE_MAP = np.full(256, ord(" "), np.uint8)
for _c in b"abcdefghijklmnopqrstuvwxyz0123456789'-":
    _BYTE_MAP[_c] = _c
for _c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZ":
    _BYTE_MAP[_c] = _c + 32
_RSQUO = np.frombuffer("’".encode(), np.uint8)
_BLOCK = 8192  # shingles, signatures or pairs handled at once: 8k x 128 x 4 bytes = 4 MB, in cache


def utf8(texts: pa.Array) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """`texts` (nulls as ""), its offsets rebased to 0, and its UTF-8 bytes, without a copy."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
        texts = texts.cast(pa.large_string())
    if texts.null_count:
        texts = pc.fill_null(texts, "")
    width = np.int64 if pa.types.is_large_string(texts.type) else np.int32
    offsets = np.frombuffer(texts.buffers()[1], width)[texts.offset:texts.offset + len(texts) + 1]
    return texts, offsets - offsets[0], np.frombuffer(texts.buffers()[2] or b"", np.uint8)[offsets[0]:offsets[-1]]


def _runs(texts: pa.Array) -> pa.ListArray:
    """Each text's runs of word characters, lower-cased: text.words() before it drops leading ' and -."""
    texts, offsets, data = utf8(texts)
    mapped = _BYTE_MAP[data]
    at = np.flatnonzero(data[:-2] == _RSQUO[0])
    at = at[(data[at + 1] == _RSQUO[1]) & (data[at + 2] == _RSQUO[2])]
    for i in range(3):
        mapped[at + i] = _RSQUO[i]
    spaced = pa.Array.from_buffers(texts.type, len(texts), [None, pa.py_buffer(offsets), pa.py_buffer(mapped)])
    return pc.ascii_split_whitespace(spaced)


class Vocabulary:
    """Word ids for whole Arrow columns, tokenized as text.words() does, and per distinct word what the
    measures need: whether it is a content word (text.content_words) and the crc32 hashes shingles use."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}  # word -> id
        self._of_run: dict[str, int] = {}  # a run as split -> its word's id, -1 for none
        self._new: list[str] = []
        self.content = np.zeros(0, bool)
        self.crc = np.zeros(0, np.uint32)  # crc32 of the word
        self.crc_space = np.zeros(0, np.uint32)  # crc32 of the word and a space: a bigram's first half
        self.size = np.zeros(0, np.int64)  # its UTF-8 bytes
        self.stem = np.zeros(0, np.int64)  # the id of its text.stem() in `stems`
        self.topical = np.zeros(0, bool)  # it can say what a question asks about (text.topic_terms)
        self.stems: dict[str, int] = {}

    def encode(self, texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """(row, word id) of every word of every text, in order."""
        runs = _runs(texts)
        row = pc.list_parent_indices(runs).to_numpy()
        found = pc.dictionary_encode(pc.list_flatten(runs))
        ids = np.fromiter(map(self._id, found.dictionary.to_pylist()), np.int64, len(found.dictionary))
        word = ids[found.indices.to_numpy()]
        if self._new:
            new, self._new = self._new, []
            crc = np.fromiter((zlib.crc32(w.encode()) for w in new), np.uint32, len(new))
            self.crc = np.concatenate([self.crc, crc])
            self.crc_space = np.concatenate([self.crc_space, [zlib.crc32(b" ", c) for c in crc.tolist()]]).astype(np.uint32)
            self.content = np.concatenate([self.content, [bool(content_words(w)) for w in new]])
            self.size = np.concatenate([self.size, [len(w.encode()) for w in new]]).astype(np.int64)
            self.stem = np.concatenate([self.stem, self.stem_ids(map(stem, new))]).astype(np.int64)
            self.topical = np.concatenate([self.topical, [w not in GLOBAL_FRAMING and w not in DATE_WORDS and not w.isdigit()
                                                          for w in new]]).astype(bool)
        keep = word >= 0
        return row[keep], word[keep]

    def stem_ids(self, stems) -> list[int]:
        """Ids of stems (strings), new ones added."""
        return [self.stems.setdefault(s, len(self.stems)) for s in stems]

    def _id(self, run: str) -> int:
        found = self._of_run.get(run)
        if found is None:
            word = run.lstrip("'’-").replace("’", "'")
            found = self.ids.get(word, -1) if word else -1
            if word and found < 0:
                found = self.ids[word] = len(self.ids)
                self._new.append(word)
            self._of_run[run] = found
        return found


def support(row: np.ndarray, word: np.ndarray, source: np.ndarray, in_source: np.ndarray) -> np.ndarray:
    """text.support() of each text against its evidence: the share of its content words (`row`, `word`:
    each occurrence) that are words of its evidence number `source` (sorted `in_source`: number << 32 |
    word); 1.0 for a text without content words, 0.0 for one without evidence (source -1)."""
    key = source[row] << 32 | word
    at = np.minimum(np.searchsorted(in_source, key), len(in_source) - 1)
    found = (source[row] >= 0) & (in_source[at] == key) if len(in_source) else np.zeros(len(row), bool)
    n_words = np.bincount(row, minlength=len(source))
    return np.where(n_words > 0, np.bincount(row, weights=found, minlength=len(source)) / np.maximum(n_words, 1), 1.0)


def relevance(questions: pa.Array, cues: pa.Array, answers: list[str | None], vocab: Vocabulary) -> np.ndarray:
    """text.relevance(extractive.question_terms(question, cues), answer) of each row; NaN where that is
    None (no terms). An answer's sentences are cut by text.sentence_spans, one text at a time; their
    words, stems and the question's terms are matched as ids."""
    n = len(questions)
    row, word = vocab.encode(questions)
    keep = vocab.content[word] & vocab.topical[word]
    terms = [row[keep].astype(np.int64) << 32 | vocab.stem[word[keep]]]
    cues = cues.combine_chunks() if isinstance(cues, pa.ChunkedArray) else cues
    if len(cues) and len(flat := pc.list_flatten(cues)):
        cue_row = pc.list_parent_indices(cues).to_numpy().astype(np.int64)
        cue_stem = np.array(vocab.stem_ids(stem(c.lower()) for c in flat.to_pylist()), np.int64)
        terms.append(cue_row << 32 | cue_stem)
    terms = np.unique(np.concatenate(terms))
    has_terms = np.bincount((terms >> 32).astype(np.int64), minlength=n)[:n] > 0
    sentence_row, sentence_texts = [], []
    for i, answer in enumerate(answers):
        if has_terms[i] and answer:
            spans = sentence_spans(answer)
            sentence_row += [i] * len(spans)
            sentence_texts += [answer[a:b] for a, b in spans]
    sentence_row = np.array(sentence_row, np.int64)
    sentence, word = vocab.encode(pa.array(sentence_texts, pa.string()))
    content = vocab.content[word]
    sentence, word = sentence[content], word[content]
    key = sentence_row[sentence] << 32 | vocab.stem[word]
    at = np.minimum(np.searchsorted(terms, key), max(len(terms) - 1, 0))
    found = terms[at] == key if len(terms) else np.zeros(len(key), bool)
    mentions = np.bincount(sentence[found], minlength=len(sentence_texts)) > 0
    sentences = np.bincount(sentence_row, minlength=n)
    out = np.bincount(sentence_row, weights=mentions, minlength=n) / np.maximum(sentences, 1)
    out[~has_terms] = np.nan
    return out


def evidence_words(numbers: np.ndarray, row: np.ndarray, word: np.ndarray, vocab: Vocabulary) -> np.ndarray:
    """The sorted `in_source` keys of `support` for texts numbered `numbers` whose words are (`row`, `word`)."""
    content = vocab.content[word]
    return np.unique(numbers[row[content]] << 32 | word[content])


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


@functools.lru_cache(maxsize=None)
def _crc_shift_table(size: int) -> np.ndarray:
    """(4, 256) table of crc32's shift over `size` bytes, a linear map: crc32(x + y) is
    shift(crc32(x)) ^ crc32(y) for len(y) == size, and shift(c) the xor of table[i][byte i of c]."""
    zeros = bytes(size)
    empty = zlib.crc32(zeros)
    basis = np.array([zlib.crc32(zeros, 1 << bit) ^ empty for bit in range(32)], np.uint32)  # the shift of each bit
    bits = (np.arange(256)[:, None] >> np.arange(8)) & 1
    return np.stack([np.bitwise_xor.reduce(bits * basis[8 * i:8 * i + 8], axis=1) for i in range(4)]).astype(np.uint32)


def shingle_hashes(row: np.ndarray, word: np.ndarray, vocab: Vocabulary) -> tuple[np.ndarray, np.ndarray]:
    """crc32 of each text's shingles (text.shingles: its content words, or all its words when it has
    none, and their bigrams), from its words: (row, hash), grouped by row. A bigram's crc32 is its first
    word's (with the space) shifted over the second word's bytes, xor the second's, so no string is made."""
    content = vocab.content[word]
    keep = content | (np.bincount(row[content], minlength=row[-1] + 1 if len(row) else 0) == 0)[row]
    row, word = row[keep], word[keep]
    pair = np.flatnonzero(row[1:] == row[:-1])
    first, second = word[pair], word[pair + 1]
    size = vocab.size[second]
    sizes = np.flatnonzero(np.bincount(size))  # few: word lengths
    at = np.zeros(sizes[-1] + 1 if len(sizes) else 0, np.int64)
    at[sizes] = np.arange(len(sizes))
    at = at[size]
    table = np.stack([_crc_shift_table(int(n)) for n in sizes]) if len(sizes) else np.zeros((0, 4, 256), np.uint32)
    shifted = np.zeros(len(pair), np.uint32)
    for i in range(4):
        shifted ^= table[at, i, (vocab.crc_space[first] >> np.uint32(8 * i)) & np.uint32(255)]
    # Unigram i at 2i, the bigram of words i and i + 1 at 2i + 1: still grouped by row.
    hashes = np.zeros(2 * len(word), np.uint32)
    present = np.zeros(2 * len(word), bool)
    hashes[0::2], present[0::2] = vocab.crc[word], True
    hashes[2 * pair + 1], present[2 * pair + 1] = shifted ^ vocab.crc[second], True
    return np.repeat(row, 2)[present], hashes[present]


class MinHash:
    """Seeded MinHash signatures of texts' shingles and the near pairs among them (LSH: `bands` bands of
    `rows` values propose, the signatures decide). An empty text hashes as no shingle (all values the
    maximum), so empty texts are identical to each other only."""

    def __init__(self, num_perm: int, bands: int, rows: int, seed: int):
        if bands * rows > num_perm:
            raise ValueError("bands x rows must not exceed num_perm")
        rng = np.random.default_rng(seed)
        self.num_perm, self.bands, self.rows = num_perm, bands, rows
        # datasketch's "affine32" scheme: a shingle's crc32 mixed by murmur's finalizer, then h -> a*h + b
        # mod 2^32 with a odd per permutation, applied to a whole block of shingles at once.
        self._a = rng.integers(0, 2**31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        self._b = rng.integers(0, 2**32, num_perm, dtype=np.uint64).astype(np.uint32)
        # Odd 64-bit multipliers, one per value of a band: a band's key is its values mixed into one number.
        self._mix = rng.integers(0, 2**63, bands * rows, dtype=np.uint64) * np.uint64(2) + np.uint64(1)

    def signatures(self, texts: pa.Array, vocab: Vocabulary | None = None) -> np.ndarray:
        """(len(texts), num_perm) uint32 signatures of whole texts."""
        vocab = vocab or Vocabulary()
        row, word = vocab.encode(texts)
        return self.of_words(row, word, len(texts), vocab)

    def of_words(self, row: np.ndarray, word: np.ndarray, n: int, vocab: Vocabulary) -> np.ndarray:
        """Signatures of n texts that `vocab` encoded as (`row`, `word`)."""
        rows, hashes = shingle_hashes(row, word, vocab)
        return self._minhash(rows, hashes, n)

    def _minhash(self, row: np.ndarray, hashes: np.ndarray, n: int) -> np.ndarray:
        """(n, num_perm) signatures from the shingles' hashes (rows sorted)."""
        out = np.full((n, self.num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
        bounds = np.searchsorted(row, np.arange(n + 1))
        buffer = np.empty(self.num_perm * _BLOCK, np.uint32)  # one for all blocks: fresh memory per block costs more
        start = 0
        while start < n:
            end = max(start + 1, int(np.searchsorted(bounds, bounds[start] + _BLOCK, side="right")) - 1)
            rows = start + np.flatnonzero(np.diff(bounds[start:end + 1]))  # those with shingles
            if len(rows):
                flat = _fmix32(hashes[bounds[start]:bounds[end]])
                hashed = buffer[:self.num_perm * len(flat)].reshape(self.num_perm, -1) if len(flat) <= _BLOCK else None
                # wraps mod 2^32; a row per permutation: reduced along memory
                hashed = np.multiply(self._a[:, None], flat, out=hashed)
                hashed += self._b[:, None]
                out[rows] = np.minimum.reduceat(hashed, bounds[rows] - bounds[start], axis=1).T
            start = end
        return out

    def band_keys(self, sig: np.ndarray) -> np.ndarray:
        """(n, bands) 64-bit keys, one per band of `rows` values of each signature: equal bands, equal keys."""
        out = np.empty((len(sig), self.bands), np.uint64)
        for start in range(0, len(sig), _BLOCK):
            mixed = sig[start:start + _BLOCK, :self.bands * self.rows].astype(np.uint64) * self._mix  # wraps
            out[start:start + _BLOCK] = mixed.reshape(len(mixed), self.bands, self.rows).sum(axis=2)
        return out

    def near_pairs(self, sig: np.ndarray, threshold: float) -> tuple[np.ndarray, dict[int, set[int]]]:
        """Group identical signatures, then pair distinct ones whose estimated Jaccard is at least
        `threshold`. Returns each row's group and each group's near neighbours (groups)."""
        if not len(sig):
            return np.zeros(0, dtype=np.int64), {}
        bands = self.band_keys(sig)
        _, first, group = np.unique((bands * self._mix[:self.bands]).sum(axis=1), return_index=True, return_inverse=True)
        unique, bands = sig[first], bands[first]
        again = np.flatnonzero(first[group] != np.arange(len(sig)))  # rows after the first of their key
        if not (unique[group[again]] == sig[again]).all():  # two signatures with one key: sort the signatures themselves
            unique, group = np.unique(sig, axis=0, return_inverse=True)
            bands = self.band_keys(unique)
        pairs = np.concatenate([_pairs_sharing(bands[:, band]) for band in range(self.bands)])
        pairs.sort()  # a pair once, however many bands it shares (a sort: np.unique's hashing is far slower here)
        pairs = pairs[np.append(True, pairs[1:] != pairs[:-1])] if len(pairs) else pairs
        neighbours: dict[int, set[int]] = defaultdict(set)
        for start in range(0, len(pairs), _BLOCK):
            a, b = np.divmod(pairs[start:start + _BLOCK], len(unique))
            close = (unique[a] == unique[b]).mean(axis=1) >= threshold
            for x, y in zip(a[close].tolist(), b[close].tolist()):
                neighbours[x].add(y)
                neighbours[y].add(x)
        return group.ravel(), neighbours


def _pairs_sharing(key: np.ndarray) -> np.ndarray:
    """Every pair of rows with the same key, as a * len(key) + b with a < b."""
    order = np.argsort(key)
    ordered = key[order]
    starts = np.flatnonzero(np.append(True, ordered[1:] != ordered[:-1]))
    sizes = np.diff(starts, append=len(key))
    out = [np.zeros(0, np.int64)]
    for size in np.unique(sizes[sizes > 1]).tolist():  # most keys are one row's alone
        members = order[starts[sizes == size, None] + np.arange(size)]
        i, j = np.triu_indices(size, 1)
        a, b = members[:, i].ravel(), members[:, j].ravel()
        out.append(np.minimum(a, b) * len(key) + np.maximum(a, b))
    return np.concatenate(out)
