"""Lexical helpers shared by synthesis: tokens, sentences, overlap, token estimates.

All of it is rule-based and offline: the no-LLM path, the groundedness score
and the near-duplicate filter rest on these few functions.
"""

from __future__ import annotations

import functools
import re

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’\-]*")
_SENTENCE = re.compile(r"(?<=[.!?])[\"”’)\]]*\s+(?=[\"“‘(\[]?[A-Z0-9])|\n{2,}|\n(?=[-*#] )")

# Function words and question scaffolding: they match everything, so they rank nothing.
STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have having
    he her here hers herself him himself his how i if in into is it its itself just me more most my myself no
    nor not now of off on once only or other our ours ourselves out over own same she should so some such than
    that the their theirs them themselves then there these they this those through to too under until up very
    was we were what when where which while who whom why will with would you your yours yourself yourselves
    tell know say said says write wrote written note noted entry entries journal describe described happen
    happened happens thing things anything something also get got one ever much many like""".split()
)


def words(text: str) -> list[str]:
    """Lower-cased word tokens (apostrophes and hyphens kept inside words)."""
    found = _WORD.findall(text or "")
    # One lower() over all the words instead of one per word (a word holds no space).
    return " ".join(found).lower().replace("’", "'").split(" ") if found else []


def content_words(text: str) -> list[str]:
    """Words that carry meaning: no stopwords, no single letters (single digits stay)."""
    return [w for w in words(text) if w not in STOPWORDS and (len(w) > 1 or w.isdigit())]


# A period after these (or after a single capital, an initial) does not end a sentence.
_ABBREVIATIONS = frozenset("dr mr mrs ms prof st mt jr sr vs etc no fig approx dept univ".split())


def sentences(text: str) -> list[str]:
    """Split prose into sentences; headings and list items count as their own."""
    out, start = [], 0
    text = text or ""
    for m in _SENTENCE.finditer(text):
        before = text[start : m.start()].rsplit(None, 1)
        last = before[-1].rstrip(".").lower() if before else ""
        if text[m.start() - 1 : m.start()] == "." and (last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha())):
            continue
        out.append(text[start : m.start()])
        start = m.end()
    out.append(text[start:])
    return [" ".join(p.split()) for p in out if p.strip()]


@functools.lru_cache(maxsize=16384)
def sentence_words(text: str) -> tuple[tuple[str, frozenset[str]], ...]:
    """The sentences of a passage with their content words, memoized: one chunk is
    retrieved for many questions, and splitting it again each time was most of the cost."""
    return tuple((s, frozenset(content_words(s))) for s in sentences(text))


@functools.lru_cache(maxsize=16384)
def _paragraph_words(text: str) -> frozenset[str]:
    return frozenset(content_words(text))


def support(claim: str, evidence: str) -> float:
    """Share of the claim's content words found in the evidence (0..1; 1.0 for an empty claim)."""
    claim_words = content_words(claim)
    if not claim_words:
        return 1.0
    # Evidence is passages joined by blank lines, and the same passages back many rows: their
    # word sets are memoized. No word spans a blank line, so the union is the whole's set.
    ev = frozenset().union(*map(_paragraph_words, (evidence or "").split("\n\n")))
    return sum(w in ev for w in claim_words) / len(claim_words)


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate (about 4 characters per token) used for prompt budgets."""
    return max(1, len(text or "") // 4)


def shingles(text: str, n: int = 2) -> set[str]:
    """Content words and their n-grams, for near-duplicate detection of short texts: two
    questions that differ only in a name, a date or a number stay apart, while two phrasings
    of the same question about the same subject come together."""
    w = content_words(text) or words(text)
    grams = {" ".join(w[i : i + n]) for i in range(len(w) - n + 1)}
    return grams | set(w)
