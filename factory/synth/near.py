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

from factory.synth.text import shingles

NUM_PERM = 64
BANDS = 16  # 16 bands of 4 rows: a pair at Jaccard 0.8 is a candidate with p ~ 0.999, at 0.5 ~ 0.65
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


class NearIndex:
    """Signatures added so far; `similar(sig)` returns the key of one at least `threshold` similar, or None."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.buckets: list[dict[bytes, list[int]]] = [{} for _ in range(BANDS)]
        self.sigs: list[np.ndarray] = []
        self.keys: list[object] = []

    @staticmethod
    def _bands(sig: np.ndarray) -> list[bytes]:
        return [band.tobytes() for band in np.split(sig, BANDS)]

    def similar(self, sig: np.ndarray) -> object | None:
        seen: set[int] = set()
        for bucket, band in zip(self.buckets, self._bands(sig)):
            for i in bucket.get(band, ()):
                if i not in seen:
                    seen.add(i)
                    if jaccard_estimate(sig, self.sigs[i]) >= self.threshold:
                        return self.keys[i]
        return None

    def add(self, sig: np.ndarray, key: object = None) -> None:
        """Index `sig`; `similar` answers with `key` (its position in the index when None)."""
        i = len(self.sigs)
        self.sigs.append(sig)
        self.keys.append(i if key is None else key)
        for bucket, band in zip(self.buckets, self._bands(sig)):
            bucket.setdefault(band, []).append(i)
