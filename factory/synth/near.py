"""Near-duplicate texts by MinHash, vectorized: signatures on Ray workers, decisions on the driver.

    sigs = signatures(["text one", "text two"])      # uint32 array, one row of NUM_PERM per text
    index = NearIndex(threshold=0.9)
    index.similar(sigs[0]); index.add(sigs[0])       # LSH buckets find candidates, the estimate decides

A text's features are its content words and word bigrams (text.shingles). Signatures are
seeded, so a row's signature is the same on every worker and in every run; only the
signatures (256 bytes a text) travel to the driver, never the texts.
"""

from __future__ import annotations

import zlib

import numpy as np

from factory.text import shingles

NUM_PERM = 64
# 12 bands of 5 values: a pair at Jaccard 0.8 is a candidate with p ~ 0.99, at 0.9 ~ 0.99998, at 0.5 ~ 0.32
BANDS, ROWS = 12, 5
# Texts per block: the (features x NUM_PERM) matrix of a block stays a few MB.
_BLOCK = 256
_rng = np.random.default_rng(20250601)
# Odd multipliers: x -> a*x + b is a bijection of uint32, so each row is a permutation of feature hashes.
_A = (_rng.integers(0, 1 << 31, NUM_PERM, dtype=np.uint32) << np.uint32(1)) | np.uint32(1)
_B = _rng.integers(0, 1 << 32, NUM_PERM, dtype=np.uint32)


def signatures(texts: list[str]) -> np.ndarray:
    """(len(texts), NUM_PERM) uint32 MinHash signatures; an empty text hashes as one empty feature."""
    out = np.empty((len(texts), NUM_PERM), np.uint32)
    for start in range(0, len(texts), _BLOCK):
        hashes, offsets = [], []
        for text in texts[start : start + _BLOCK]:
            offsets.append(len(hashes))
            hashes.extend(zlib.crc32(g.encode()) for g in (shingles(text) or {""}))
        permuted = np.asarray(hashes, np.uint32)[:, None] * _A + _B  # wraps mod 2^32
        permuted ^= permuted >> np.uint32(15)  # mix the high bits down, as multiply-shift hashing does
        out[start : start + len(offsets)] = np.minimum.reduceat(permuted, np.asarray(offsets), axis=0)
    return out


def jaccard_estimate(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.count_nonzero(a == b)) / NUM_PERM


def band_keys(sigs: np.ndarray) -> np.ndarray:
    """(n, BANDS) int64 keys: each band's ROWS values hashed into one number (one dict key per band)."""
    bands = sigs[:, : BANDS * ROWS].reshape(len(sigs), BANDS, ROWS).astype(np.uint64)
    key = np.zeros(bands.shape[:2], np.uint64)
    for r in range(ROWS):
        key = key * np.uint64(0x100000001B3) + bands[:, :, r]  # wraps mod 2^64: fine for a hash
    return key.view(np.int64)


class NearIndex:
    """Signatures added so far; `similar(sig)` returns the key of one at least `threshold` similar, or None.
    LSH buckets (one dict per band) find candidates; one vectorized comparison decides among them."""

    def __init__(self, threshold: float):
        self.need = threshold * NUM_PERM
        self.buckets: list[dict[int, int | list[int]]] = [{} for _ in range(BANDS)]
        self.sigs = np.empty((64, NUM_PERM), np.uint32)
        self.keys: list[object] = []

    def _candidates(self, bands: list[int]) -> list[int]:
        found: list[int] = []
        for bucket, band in zip(self.buckets, bands):
            hit = bucket.get(band)
            if hit is not None:
                found += hit if isinstance(hit, list) else (hit,)
        return found

    def similar(self, sig: np.ndarray, bands: list[int] | None = None) -> object | None:
        found = self._candidates(band_keys(sig[None])[0].tolist() if bands is None else bands)
        if not found:
            return None
        idx = np.fromiter(set(found), np.int64)
        hits = idx[np.count_nonzero(self.sigs[idx] == sig, axis=1) >= self.need]
        return self.keys[hits[0]] if len(hits) else None

    def add(self, sig: np.ndarray, key: object = None, bands: list[int] | None = None) -> None:
        """Index `sig`; `similar` answers with `key` (its position in the index when None)."""
        i = len(self.keys)
        if i == len(self.sigs):
            self.sigs = np.concatenate([self.sigs, np.empty_like(self.sigs)])
        self.sigs[i] = sig
        self.keys.append(i if key is None else key)
        for bucket, band in zip(self.buckets, band_keys(sig[None])[0].tolist() if bands is None else bands):
            # Most bands of most signatures are unique: a bare index until a second one arrives saves a list each.
            hit = bucket.get(band)
            if hit is None:
                bucket[band] = i
            elif isinstance(hit, list):
                hit.append(i)
            else:
                bucket[band] = [hit, i]
